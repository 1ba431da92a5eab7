"""Plain single-message publishes served without gunicorn's per-request Python; everything else is gunicorn's.

A worker's CPU per single-message publish was half gunicorn's own request
handling (parsing the request into its objects, building the environ, the
response and its headers: README, Benchmarks). The publishes that make up
the load are all alike, so for them (the publish endpoint's own paths:
``/publish``, its exchange form and the management API's publish,
:func:`app.http.publish_endpoint.answers_itself`) the worker (:class:`~app.http.worker.GatewayWorker`)
reads the connection itself and parses each request with the C parser
gunicorn itself uses (``gunicorn_h1c``, picohttpparser: headers checked as
gunicorn checks them, a duplicate ``Content-Length``, ``Content-Length``
with ``Transfer-Encoding``, obsolete folding and control characters refused,
names with ``_`` dropped), calls the same WSGI app with a plain environ and
writes the answer in one ``send``, with gunicorn's status line and headers.

Only a request that is complete in what was read and plain takes this path:
``POST <one of those paths> HTTP/1.1`` without a query (``PATH_INFO``
percent-decoded and ``RAW_URI`` as sent, as gunicorn sets them), a ``Content-Length`` body within
``MAX_BODY_SIZE`` and wholly received, no ``Transfer-Encoding``, ``Expect``
or ``Upgrade``, within gunicorn's request line and header limits. At the first
request that is not, the connection goes to gunicorn's own loop with every
byte not yet answered (:class:`Replay`), so gunicorn answers it, whatever is
wrong with it, exactly as before: truncated, chunked, smuggled, slow or huge
requests, every other route and method. Answered here, a request is logged
(the access log) and counted towards ``max_requests`` as gunicorn does;
gunicorn's ``pre_request``/``post_request`` hooks are not called for it (the
gateway's ``gunicorn.conf.py`` sets neither).

Waiting for a request is bounded and sheddable as in gunicorn's loop
(:meth:`~app.http.worker.GatewayWorker.timeout_ctx`); a request whose head
trickles in is gunicorn's from its first incomplete read (bounded by a
keep-alive of its own from there).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from email.utils import formatdate
from typing import Any

from gunicorn import SERVER, util
from gunicorn.util import unquote_to_wsgi_str
from gunicorn_h1c import ParseError, parse_to_wsgi_environ

from app.http.client_guard import PENDING

POST = b"POST /"
HEAD_END = b"\r\n\r\n"
RECV_SIZE = 65536
_REFUSED = ("HTTP_TRANSFER_ENCODING", "HTTP_EXPECT", "HTTP_UPGRADE")
# A lingering close reads at most this much of a body left unread, for at most this long
# (nginx's lingering_close alike): enough for a body some times MAX_BODY_SIZE on a fast link.
LINGER_SECONDS = 2.0
LINGER_BYTES = 16 * 1024 * 1024

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class Answered:
    """What gunicorn's access log reads of a response: its status and the body bytes sent."""

    __slots__ = ("sent", "status")

    def __init__(self, status: str, sent: int):
        self.status = status
        self.sent = sent


class Replay:
    """The client socket for gunicorn's loop: the bytes already read come first, then the socket's.

    It also closes the connection as RFC 9112 (9.6) asks after an answer that
    left the request's body unread (a 413 at the header, a malformed or cut
    body): ``linger`` set, :meth:`close` half-closes, reads and drops what the
    client is still sending, then closes (gunicorn's ``close_graceful``, as its
    sync and threaded workers close). A plain close with unread bytes in the
    kernel's buffer sends a reset, and the client, still sending its body,
    gets a broken pipe instead of the answer. Bounded in bytes and seconds,
    and sheddable: a client that never stops sending is cut off.
    """

    __slots__ = ("_client", "_pending", "linger")

    def __init__(self, sock: Any, pending: bytes):
        self._client = sock
        self._pending = pending
        self.linger = False

    def recv(self, size: int, *args: Any) -> bytes:
        pending = self._pending
        if not pending:
            data: bytes = self._client.recv(size, *args)
            return data
        self._pending = pending[size:]
        return pending[:size]

    def close(self) -> None:
        if not self.linger:
            self._client.close()
            return
        try:
            with PENDING.waiting(_LingerShed()):
                util.close_graceful(self._client, timeout=LINGER_SECONDS, max_drain=LINGER_BYTES)
        except _LingerShed:
            util.close(self._client)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class _LingerShed(Exception):
    """Raised in a lingering close when the worker sheds connections: close at once."""


class FastPath:
    """Serves one connection's plain publishes; hands the rest of the connection to gunicorn."""

    def __init__(self, worker: Any, app: WSGIApp, max_body: int, answers_itself: Callable[[str], bool]):
        self.worker = worker
        self.app = app
        self.max_body = max_body
        self.answers_itself = answers_itself  # the publish endpoint's paths (app.http.publish_endpoint)
        cfg = worker.cfg
        # A head longer than one header line may be is gunicorn's (it checks each line against its limits).
        self.head_limit = cfg.limit_request_field_size
        self.max_lines = cfg.limit_request_fields + 2  # the headers, the request line, the blank line
        self.access_on = bool(cfg.accesslog)
        self._date = (0, "")

    @staticmethod
    def applies(cfg: Any) -> bool:
        """Whether gunicorn's settings leave plain HTTP/1.1 to this path (not with TLS, PROXY or HTTP/2)."""
        proxy = getattr(cfg, "proxy_protocol", False)
        return (not cfg.is_ssl and proxy in (False, "off", None)
                and getattr(cfg, "http2_cleartext", "off") not in ("prior-knowledge", "both"))

    def serve(self, client: Any, server: Any, addr: Any) -> bytes | None:
        """Answer the connection's requests while they are plain; the bytes left for gunicorn, or None: done."""
        if not (isinstance(server, tuple) and isinstance(addr, tuple)):
            return b""  # a unix socket: gunicorn's (its environ differs)
        buf = b""
        while True:  # as gunicorn's loop: a worker that stops still answers, with Connection: close
            if not buf:
                with self.worker.timeout_ctx():
                    buf = client.recv(RECV_SIZE)
                if not buf:
                    return None  # the client closed, or no request within keepalive, or shed: closed
            if not buf.startswith(POST):
                return buf
            head_end = buf.find(HEAD_END, 0, self.head_limit)
            if head_end < 0:
                return buf  # incomplete or too long: gunicorn's
            head_end += len(HEAD_END)
            try:
                environ = parse_to_wsgi_environ(buf[:head_end], server, addr)
            except ParseError:
                return buf  # gunicorn answers what is wrong with it
            length_text = environ.get("CONTENT_LENGTH", "")
            path = environ["PATH_INFO"]  # as sent: gunicorn_h1c does not percent-decode it
            if (environ["QUERY_STRING"] or environ["SERVER_PROTOCOL"] != "HTTP/1.1"
                    or not self.answers_itself(path) or "#" in path
                    or not length_text.isdigit() or len(length_text) > 12
                    or any(key in environ for key in _REFUSED)
                    or environ.get("HTTP_CONNECTION", "keep-alive").lower() not in ("keep-alive", "close")
                    or buf.count(b"\r\n", 0, head_end) > self.max_lines):
                return buf
            end = head_end + int(length_text)
            if end - head_end > self.max_body or end > len(buf):
                return buf  # too large (gunicorn's 413) or not all here yet (gunicorn reads the rest, bounded)
            body, buf = buf[head_end:end], buf[end:]
            if not self._answer(client, environ, body):
                return None

    def _answer(self, client: Any, environ: dict[str, Any], body: bytes) -> bool:
        """Call the app for one request and send its answer; False if the connection is to close."""
        started = time.time()
        worker = self.worker
        del environ["_consumed"]
        environ["wsgi.input"] = io.BytesIO(body)
        raw = environ["RAW_URI"] = environ["PATH_INFO"]
        if "%" in raw:  # gunicorn's PATH_INFO is percent-decoded; the endpoint reads the parts from RAW_URI
            environ["PATH_INFO"] = unquote_to_wsgi_str(raw)
        environ["SCRIPT_NAME"] = ""
        environ["wsgi.multithread"] = True
        worker.nr += 1
        if worker.nr >= worker.max_requests and worker.alive:
            worker.log.info("Autorestarting worker after current request.")
            worker.alive = False
        answer: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            answer[:] = [status, headers]

        chunks = self.app(environ, start_response)
        payload = b"".join(chunks)
        status, headers = answer
        close = not worker.alive or environ.get("HTTP_CONNECTION", "").lower() == "close"
        lines = [f"HTTP/1.1 {status}\r\nServer: {SERVER}\r\nDate: {self._http_date()}\r\n"]
        length_sent = False
        for name, value in headers:
            lowered = name.lower()
            if lowered == "connection":
                close = close or value.lower() == "close"
                continue
            length_sent = length_sent or lowered == "content-length"
            lines.append(f"{name}: {value}\r\n")
        if not length_sent:
            lines.append(f"Content-Length: {len(payload)}\r\n")
        lines.append("Connection: close\r\n\r\n" if close else "Connection: keep-alive\r\n\r\n")
        client.sendall("".join(lines).encode("latin-1") + payload)
        if self.access_on:
            worker.log.access(Answered(status, len(payload)), None, environ,
                              timedelta(seconds=time.time() - started))
        return not close

    def _http_date(self) -> str:
        # gunicorn formats it for every response; once a second is enough.
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, formatdate(now, usegmt=True))
        return self._date[1]
