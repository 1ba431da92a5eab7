"""The fast path's hand-over pieces without a server: the replayed socket and when the path applies."""

import time
from types import SimpleNamespace

import gevent
from gevent import socket

from app.http import fast_path
from app.http.client_guard import PENDING
from app.http.fast_path import FastPath, Replay
from app.http.publish_endpoint import answers_itself


class FakeSocket:
    def __init__(self, chunks: list[bytes]):
        self.chunks = chunks

    def recv(self, size: int) -> bytes:
        return self.chunks.pop(0)[:size] if self.chunks else b""

    def getpeername(self) -> tuple[str, int]:
        return ("127.0.0.1", 1)


def test_replay_hands_over_the_bytes_read_first_then_the_sockets():
    sock = Replay(FakeSocket([b"from the socket"]), b"0123456789")
    assert sock.recv(4) == b"0123" and sock.recv(100) == b"456789"
    assert sock.recv(100) == b"from the socket" and sock.recv(100) == b""
    assert sock.getpeername() == ("127.0.0.1", 1)  # everything else is the socket's


def test_the_path_applies_to_plain_http_only():
    def cfg(**changes):
        return SimpleNamespace(**{"is_ssl": False, "proxy_protocol": "off", "http2_cleartext": "off", **changes})

    assert FastPath.applies(cfg())
    assert not FastPath.applies(cfg(is_ssl=True))
    assert not FastPath.applies(cfg(proxy_protocol="v1"))
    assert not FastPath.applies(cfg(http2_cleartext="prior-knowledge"))
    assert FastPath.applies(cfg(http2_cleartext="upgrade"))  # an Upgrade request is gunicorn's anyway


def _sender(sock, size):
    """Send ``size`` bytes, then read until closed; what the sender saw."""
    try:
        sock.sendall(b"x" * size)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer
    except OSError as exc:
        return exc
    finally:
        sock.close()


def test_a_lingering_close_drains_what_the_client_still_sends_then_closes():
    ours, theirs = socket.socketpair()
    ours.sendall(b"HTTP/1.1 413\r\n\r\n")
    client = gevent.spawn(_sender, theirs, 4 * 1024 * 1024)  # more than the socket buffers hold
    conn = Replay(ours, b"")
    conn.linger = True
    conn.close()
    assert client.get(timeout=5) == b"HTTP/1.1 413\r\n\r\n"  # its send completed, its answer arrived
    assert ours.fileno() == -1


def test_a_lingering_close_is_bounded_and_sheddable(monkeypatch):
    monkeypatch.setattr(fast_path, "LINGER_BYTES", 256 * 1024)
    ours, theirs = socket.socketpair()
    client = gevent.spawn(_sender, theirs, 64 * 1024 * 1024)  # never done within the bound
    conn = Replay(ours, b"")
    conn.linger = True
    conn.close()
    assert ours.fileno() == -1 and isinstance(client.get(timeout=5), OSError)

    ours, theirs = socket.socketpair()  # a client that sends nothing and never closes: shed
    conn = Replay(ours, b"")
    conn.linger = True
    closing = gevent.spawn(conn.close)
    gevent.sleep(0.05)
    started = time.monotonic()
    assert PENDING.shed(1) == 1
    closing.get(timeout=1)
    assert ours.fileno() == -1 and time.monotonic() - started < 0.5
    theirs.close()


def test_without_a_linger_the_close_is_plain():
    ours, theirs = socket.socketpair()
    conn = Replay(ours, b"")
    conn.close()
    assert ours.fileno() == -1 and theirs.recv(10) == b""
    theirs.close()


class FakeWorker:
    def __init__(self):
        self.cfg = SimpleNamespace(limit_request_field_size=8190, limit_request_fields=100, accesslog=None)
        self.nr, self.max_requests, self.alive = 0, 1000, True

    @staticmethod
    def timeout_ctx():
        return gevent.Timeout(5, False)


def _served(request: bytes) -> tuple[list[dict], bytes | None]:
    """The environs the app was called with on the fast path, and what was left for gunicorn."""
    seen = []

    def app(environ, start_response):
        seen.append(dict(environ))
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b"{}"]

    path = FastPath(FakeWorker(), app, 1024, answers_itself)
    ours, theirs = socket.socketpair()
    theirs.sendall(request)
    theirs.shutdown(socket.SHUT_WR)
    try:
        return seen, path.serve(ours, ("127.0.0.1", 80), ("127.0.0.1", 5))
    finally:
        ours.close()
        theirs.close()


def test_the_exchange_form_is_served_with_gunicorns_paths_and_the_rest_handed_over():
    head = b"POST /publish/a/amq.default/k%2Fx HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
    seen, rest = _served(head)
    assert rest is None and len(seen) == 1  # answered here, then the client closed
    assert seen[0]["RAW_URI"] == "/publish/a/amq.default/k%2Fx"  # as sent: the endpoint splits it
    assert seen[0]["PATH_INFO"] == "/publish/a/amq.default/k/x"  # percent-decoded, as gunicorn's
    assert seen[0]["wsgi.input"].read() == b"hi"
    for not_ours in (b"POST /publish/a/amq.default/k?x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
                     b"POST /publish/batch HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",  # not the endpoint's
                     b"POST /publish/a/b/c HTTP/1.0\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
                     b"GET /publish/a/b/c HTTP/1.1\r\nHost: x\r\n\r\n"):
        seen, rest = _served(not_ours)
        assert seen == [] and rest == not_ours, not_ours
