"""gunicorn's gevent worker, with a connection limit that sheds waiting clients instead of queueing new ones.

gunicorn's gevent worker serves at most ``worker_connections`` connections; at
the limit it stops accepting, and every new connection waits in the listen
backlog, ``/healthz`` probes included: 5,000 idle keep-alive connections made
the probes take seconds. The first defence is a limit high enough to hold such
a flood (``gunicorn.conf.py``: an idle connection costs a few kB) and a
bounded, jittered idle/header time. This subclass adds that, when a new
connection arrives with fewer than 10 % of the slots free, the worker sheds
the oldest connections that have not delivered a complete request
(:mod:`app.http.client_guard`): idle keep-alive connections and slow headers are
closed, a body still arriving is answered ``503 overloaded``; so the worker
keeps accepting past its limit, rather than leave every newcomer in the backlog.

It serves the plain ``POST /publish`` requests of a connection itself
(:mod:`app.http.fast_path`: gunicorn's C parser, the same WSGI app, one
``send`` per answer) and hands the connection to gunicorn's own loop at its
first request that is not plain, with the bytes not yet answered.

It also honours an application's ``Connection: close``: gunicorn drops that
header as hop-by-hop and keeps the connection open, but after a body that was
cut short, malformed or left unread the rest of the connection cannot be
trusted (``app.core.errors``: ``closes``). Such a connection, and one closed
after gunicorn's own error answer, is closed with a linger
(:class:`~app.http.fast_path.Replay`), so that a client still sending the
body it was refused reads its answer instead of a reset.

And it tells the worker's services when the worker stops taking work
(:meth:`GatewayWorker.when_stopping`: the ZeroMQ ingress drains), and counts
the work they take outside HTTP towards ``max_requests``
(:meth:`GatewayWorker.count_requests`).

Only gunicorn's worker extension points are used: ``handle()`` (one call per
accepted connection), ``timeout_ctx()`` (the context in which the worker
waits for the next request's headers, bounded by ``keepalive``),
``load_wsgi()`` and the ``alive`` flag its signal handlers and
``max_requests`` clear; and ``force_close()`` of the response whose
``start_response`` the application calls.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import gevent
from gunicorn import util
from gunicorn.workers.ggevent import GeventWorker

from app.http.client_guard import PENDING
from app.http.fast_path import FastPath, Replay

log = logging.getLogger(__name__)

HEADROOM_RATIO = 0.1  # slots kept free for new connections, of worker_connections
KEEPALIVE_JITTER = 0.5  # an idle connection is closed after 50-100 % of keepalive


class _Shed(Exception):
    """Raised in a greenlet waiting for its next request: close the connection, answer nothing."""


class GatewayWorker(GeventWorker):
    """The gevent worker; sheds idle and slow clients when near ``worker_connections``."""

    def __init__(self, *args: Any, **kwargs: Any):
        self._on_stopping: list[Callable[[], None]] = []
        self._alive = False
        super().__init__(*args, **kwargs)
        self.fast_path: FastPath | None = None  # set once the app is loaded
        self._listener_names: dict[Any, Any] = {}
        self.open_connections = 0
        self.soft_limit = max(1, self.worker_connections - max(1, int(self.worker_connections * HEADROOM_RATIO)))

    @property
    def alive(self) -> bool:
        """gunicorn's flag: cleared by SIGTERM/SIGQUIT and at ``max_requests``."""
        return self._alive

    @alive.setter
    def alive(self, value: bool) -> None:
        stopping = self._alive and not value
        self._alive = value
        if stopping:
            for callback in self._on_stopping:
                # Possibly inside a signal handler (SIGTERM): run it in a greenlet,
                # as gunicorn's own gevent worker does with SIGQUIT.
                gevent.spawn(callback)

    def when_stopping(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the worker stops taking work (before its last requests finish)."""
        self._on_stopping.append(callback)

    def count_requests(self, count: int) -> None:
        """Work taken outside HTTP (ZeroMQ messages) counts towards ``max_requests``, as requests do."""
        self.nr += count
        if self.max_requests and self.nr >= self.max_requests and self.alive:
            log.info("max_requests reached; the worker drains and restarts", extra={"event": "zmq_recycle"})
            self.alive = False

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        """Serve one connection; first make room if the worker is near its limit."""
        self.open_connections += 1
        try:
            over = self.open_connections - self.soft_limit
            if over > 0:
                PENDING.shed(over)
            if self.fast_path is not None:
                # As gunicorn's gevent worker does first: an accepted socket may inherit the
                # listener's non-blocking mode, and a recv before the request arrived would fail.
                client.setblocking(1)
                try:
                    rest = self.fast_path.serve(client, self._listener_name(listener), addr)
                except OSError:  # the client went away mid-answer, as gunicorn lets it
                    rest = None
                except Exception:
                    log.exception("unexpected error on the fast publish path", extra={"event": "internal_error"})
                    rest = None
                except BaseException:  # killed (the worker's graceful timeout ran out): close, then go on dying
                    util.close(client)
                    raise
                if rest is None:
                    util.close(client)
                    return
                # Even with nothing replayed: Replay closes with a linger after an early answer.
                client = Replay(client, rest)
            super().handle(listener, client, addr)
        finally:
            self.open_connections -= 1

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """gunicorn's error answer (a bad request line or header, too long a head); then a lingering close."""
        if isinstance(client, Replay):
            client.linger = True  # the request was not read to its end
        super().handle_error(req, client, addr, exc)

    def _listener_name(self, listener: Any) -> Any:
        """The listener's address, asked once (a listener closed while the worker stops has none to give)."""
        name = self._listener_names.get(listener)
        if name is None:
            name = self._listener_names[listener] = listener.getsockname()
        return name

    def load_wsgi(self) -> None:
        """Load the app, wrapped so that its ``Connection: close`` closes the connection."""
        super().load_wsgi()
        app: WSGIApp = self.wsgi  # type: ignore[has-type]  # set by gunicorn's load_wsgi
        self.wsgi = _HonourConnectionClose(app)
        services = getattr(app, "extensions", {}).get("services")  # the gateway's app (not a test's stand-in)
        if services is not None and FastPath.applies(self.cfg):
            # The app itself: the fast path honours the app's Connection: close on its own.
            from app.http.publish_endpoint import answers_itself  # here: the master imports this module

            self.fast_path = FastPath(self, app, services.settings.max_body_size, answers_itself)

    @contextmanager
    def timeout_ctx(self) -> Iterator[None]:
        """Wait for the next request's headers at most ``keepalive`` seconds, sheddable meanwhile."""
        # gunicorn's own: gevent.Timeout(keepalive, False), which ends the wait
        # quietly (no request: the connection is closed). Shedding ends it alike.
        # Jittered (like CONNECTION_MAX_AGE): connections opened together, a
        # flood's, are not all closed together and reopened in one burst that
        # overflows the listen backlog.
        seconds = self.cfg.keepalive * random.uniform(1.0 - KEEPALIVE_JITTER, 1.0)
        try:
            with PENDING.waiting(_Shed()), gevent.Timeout(seconds, False):
                yield
        except _Shed:
            pass


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class _HonourConnectionClose:
    """The WSGI app, whose ``Connection: close`` makes gunicorn close the connection.

    Everything else is the app's own (the hooks reach the Flask app through
    ``worker.wsgi``: ``worker.wsgi.extensions`` keeps working).
    """

    def __init__(self, app: WSGIApp):
        self.app = app

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        def close_aware(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if any(name.lower() == "connection" and value.lower() == "close" for name, value in headers):
                response = getattr(start_response, "__self__", None)  # gunicorn's Response
                if response is not None and hasattr(response, "force_close"):
                    response.force_close()
                sock = environ.get("gunicorn.socket")
                if isinstance(sock, Replay):
                    sock.linger = True  # the body may be unread: closed with a linger, not a reset
            return start_response(status, headers, exc_info)

        return self.app(environ, close_aware)
