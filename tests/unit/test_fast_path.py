"""The fast path's hand-over pieces without a server: the replayed socket and when the path applies."""

from types import SimpleNamespace

from app.http.fast_path import FastPath, Replay


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
