"""Hostile and broken clients (issue 13): nothing half-published, one clear 4xx, never a traceback.

Against the real gateway (gunicorn, two gevent workers) and the real broker;
every test counts the queue a message could have leaked into.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from app.http.batch import encode_batch
from tests.support.rabbit import AMQP_PORT
from tests.support.server import GatewayProcess, publish, request
from tests.support.settings import FAST

pytestmark = pytest.mark.e2e

BROKER = f"guest:guest@127.0.0.1:{AMQP_PORT}/"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, rabbit_available):
    cfg = FAST + f"\nCLIENT_BODY_TIMEOUT,2\nRMQ_CONN_STR,a,{BROKER}\nRMQ_CONN_STR,dead,guest:s3cret@127.0.0.1:1/vh\n"
    proc = GatewayProcess(tmp_path_factory.mktemp("abuse"), cfg, env={"GATEWAY_KEEPALIVE": "2"}).start(wait_ready=False)
    proc.wait_active("a")
    yield proc
    proc.stop()


def raw(port: int, data: bytes, *, half_close: bool = True, timeout: float = 10) -> bytes:
    """Send ``data`` on a fresh connection, shut the sending side (or not), read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        return out


def answer(raw_response: bytes) -> tuple[int, dict[str, str], dict]:
    """Status, headers (lower-case names) and JSON body of one raw HTTP/1.1 response."""
    head, _, body = raw_response.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body) if body else {}


def post(path: str, headers: str, body: bytes) -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode() + body


def chunked(path: str, chunks: bytes) -> bytes:
    return post(path, "Transfer-Encoding: chunked\r\n", chunks)


def assert_nothing_published(gateway: GatewayProcess, rabbit, queue: str) -> None:
    # A sentinel through the same gateway: once it is in, anything sent before it would be too.
    assert publish(gateway.port, b"a|" + queue.encode() + b"|sentinel")[0] == 200
    assert rabbit.bodies(queue) == [b"sentinel"]


def test_a_truncated_body_is_not_published(gateway, rabbit):
    queue = rabbit.queue()
    record = f"a|{queue}|".encode() + b"fragment of a message"
    batch = encode_batch([f"a|{queue}|one".encode(), f"a|{queue}|two".encode()])
    for path, body in (("/publish", record), ("/publish/batch", batch[:-3])):
        # Content-Length larger than what arrives, then the client half-closes: 400, connection closed.
        status, headers, error = answer(raw(gateway.port, post(path, "Content-Length: 1000\r\n", body)))
        assert (status, error["error"]) == (400, "incomplete_body"), error
        assert headers["connection"] == "close" and "1000" in error["detail"]
        # A chunked body without its last chunk: the same.
        status, _h, error = answer(raw(gateway.port, chunked(path, b"%x\r\n%s\r\n" % (len(body), body))))
        assert (status, error["error"]) == (400, "incomplete_body"), error
        # The client gone altogether: nothing to answer, nothing published.
        with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
            sock.sendall(post(path, "Content-Length: 1000\r\n", body))
    assert_nothing_published(gateway, rabbit, queue)
    assert "Traceback" not in gateway.logs()


MALFORMED_CHUNKS = {
    "bad size zz": b"zz\r\n",
    "negative size": b"-5\r\nhello\r\n0\r\n\r\n",
    "chunk shorter than declared": b"40\r\nMSG\r\n0\r\n\r\n",
    "missing CRLF after a chunk": b"%x\r\nMSGxx0\r\n\r\n",
    "bad chunk extension": b"3;=\r\nMSG\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("path", ["/publish", "/publish/batch"])
def test_malformed_chunked_bodies_are_400_with_one_log_line(gateway, rabbit, path):
    queue = rabbit.queue()
    message = f"a|{queue}|m".encode()
    if path == "/publish/batch":
        message = encode_batch([message])
    before = len(gateway.events("body_refused"))
    for name, template in MALFORMED_CHUNKS.items():
        chunks = template.replace(b"MSG", message)
        if b"%x" in chunks:
            chunks = chunks.replace(b"%x", b"%x" % len(message))
        status, headers, error = answer(raw(gateway.port, chunked(path, chunks)))
        assert status == 400 and set(error) == {"error", "detail"}, (name, error)
        assert error["error"] in ("malformed_chunked_body", "incomplete_body"), (name, error)
        assert headers["connection"] == "close"
    # Disconnect in the middle of a chunk: nothing to answer.
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(chunked(path, b"%x\r\n" % (len(message) + 10) + message))
    assert_nothing_published(gateway, rabbit, queue)
    logs = gateway.logs()
    assert "Traceback" not in logs and '"internal_error"' not in logs
    # One line each at most (and at most LOG_LINES_PER_SECOND a second, so a flood is not a log flood).
    assert 1 <= len(gateway.events("body_refused")) - before <= len(MALFORMED_CHUNKS) + 1


def test_a_transfer_coding_other_than_chunked_is_501(gateway, rabbit):
    queue = rabbit.queue()
    message = f"a|{queue}|compressed?".encode()
    for path in ("/publish", "/publish/batch"):
        body = message if path == "/publish" else encode_batch([message])
        data = post(path, "Transfer-Encoding: gzip, chunked\r\n", b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        status, headers, error = answer(raw(gateway.port, data))
        assert (status, error["error"]) == (501, "unsupported_transfer_coding"), error
        assert headers["connection"] == "close"
    assert_nothing_published(gateway, rabbit, queue)


def test_a_connection_id_with_a_trailing_newline_is_400(gateway, rabbit):
    queue = rabbit.queue()
    for conn_id in (b"a\n", b"t\n", b"a\r\n"):
        status, error = publish(gateway.port, conn_id + b"|" + queue.encode() + b"|m")
        assert (status, error["error"]) == (400, "invalid_connection_id"), (conn_id, error)
        batch = encode_batch([conn_id + b"|" + queue.encode() + b"|m"])
        status, _h, data = request(gateway.port, "POST", "/publish/batch", batch)
        assert (status, json.loads(data)["error"]) == (400, "invalid_connection_id")
    assert_nothing_published(gateway, rabbit, queue)


def test_error_details_name_the_id_and_role_not_the_broker_address(gateway):
    status, error = publish(gateway.port, b"dead|q|m")
    assert (status, error["error"]) == (503, "broker_unavailable"), error
    assert "dead/primary" in error["detail"]
    for leak in ("127.0.0.1", ":1/", "guest", "@", "vh", "s3cret"):
        assert leak not in error["detail"], error
    # The address is in the log, for the operator (without the password).
    failed = [e for e in gateway.events("connect_failed") if "dead" in e.get("conn_ids", [])]
    assert failed and failed[0]["server"].endswith("@127.0.0.1:1/vh")
    assert "s3cret" not in gateway.logs()


def trickle(port: int, head: bytes, drip: bytes, every: float = 0.25, limit: float = 10) -> tuple[bytes, float]:
    """Send ``head``, then ``drip`` one byte at a time; what the server answered and when it closed."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as sock:
        sock.sendall(head)
        sock.settimeout(every)
        out = b""
        for byte in drip:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break  # closed by the server
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                break  # closed with our bytes unread: the kernel resets, and may drop the answer
            out += chunk
            if not chunk:
                break
        else:
            raise AssertionError(f"still open after {time.monotonic() - started:.1f}s")
        return out, time.monotonic() - started


def test_a_slow_body_or_slow_headers_get_a_bounded_time(gateway, rabbit):
    queue = rabbit.queue()
    body = f"a|{queue}|".encode() + b"s" * 200
    # The body: CLIENT_BODY_TIMEOUT (2 s here, 75-100 % of it) after the headers, then 408 and closed.
    for path in ("/publish", "/publish/batch"):
        head = post(path, f"Content-Length: {len(body)}\r\n", b"")
        out, took = trickle(gateway.port, head, body)
        status, headers, error = answer(out)
        assert (status, error["error"], headers["connection"]) == (408, "body_timeout", "close"), error
        assert 1.4 < took < 5, took  # CLIENT_BODY_TIMEOUT, jittered 75-100 %
        out, took = trickle(gateway.port, chunked(path, b""), b"%x\r\n" % len(body) + body)
        assert (not out or answer(out)[0] == 408) and 1.4 < took < 5, (out, took)
    # The headers: gunicorn's keepalive (GATEWAY_KEEPALIVE, 2 s here), then closed without an answer.
    out, took = trickle(gateway.port, b"POST /publish HTTP/1.1\r\n", b"X-Slow: " + b"h" * 100)
    assert out == b"" and 0.9 < took < 5, (out, took)  # keepalive, jittered 50-100 %
    assert_nothing_published(gateway, rabbit, queue)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_far_over_the_limit_gets_its_413_not_a_reset(gateway, rabbit, framing):
    # The gateway answers at the header (or at the limit, chunked) and closes while the client
    # is still sending: closed with a linger, the client's send completes and it reads its 413.
    # Closed plainly, the unread bytes made the kernel reset the connection: a broken pipe.
    queue = rabbit.queue()
    body = f"a|{queue}|".encode() + b"x" * (6 * 1024 * 1024)  # MAX_BODY_SIZE is 1 MiB
    if framing == "chunked":
        data = chunked("/publish", b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
    else:
        data = post("/publish", f"Content-Length: {len(body)}\r\n", body)
    for _ in range(3):
        out = raw(gateway.port, data, half_close=False)  # a BrokenPipeError or ConnectionResetError: the defect
        status, headers, error = answer(out)
        assert (status, error["error"], headers["connection"]) == (413, "body_too_large", "close"), error
    assert_nothing_published(gateway, rabbit, queue)


def test_gunicorns_own_error_answer_is_read_too_while_the_body_is_still_sent(gateway):
    # A head gunicorn refuses (an invalid header name: 400) followed by a body far over
    # the socket buffers: gunicorn answers and the connection closes with a linger too.
    data = b"POST /publish HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\nContent-Length: 6291456\r\n\r\n" + b"x" * 6291456
    for _ in range(3):
        out = raw(gateway.port, data, half_close=False)  # a BrokenPipeError or ConnectionResetError: the defect
        assert out.startswith(b"HTTP/1.1 400"), out[:200]
