"""The worker's fast path for plain ``POST /publish`` (app/http/fast_path.py) and its hand-over to gunicorn.

Against the real gateway (gunicorn, two gevent workers) and the real broker.
A connection starts on the fast path and moves to gunicorn's own loop at its
first request that is not plain, with every byte not yet answered: the
answers, their headers and what reaches the queue must be those of gunicorn
either way. The hostile-client suites (test_abuse, test_flood, test_limits)
run against the same workers.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.support.rabbit import AMQP_PORT
from tests.support.server import GatewayProcess
from tests.support.settings import FAST

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, rabbit_available):
    cfg = FAST + f"\nCLIENT_BODY_TIMEOUT,2\nRMQ_CONN_STR,a,guest:guest@127.0.0.1:{AMQP_PORT}/\nMANAGEMENT_VHOSTS,/=a\n"
    proc = GatewayProcess(tmp_path_factory.mktemp("fast"), cfg, env={"GATEWAY_KEEPALIVE": "2"}).start()
    yield proc
    proc.stop()


def plain(queue: str, body: bytes, extra: str = "") -> bytes:
    message = f"a|{queue}|".encode() + body
    return (f"POST /publish HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: {len(message)}\r\n\r\n").encode() + message


def chunked(queue: str, body: bytes) -> bytes:
    message = f"a|{queue}|".encode() + body
    return (b"POST /publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n%s\r\n0\r\n\r\n" % (len(message), message))


def read_answers(sock: socket.socket, count: int, timeout: float = 10) -> list[tuple[int, dict[str, str], bytes]]:
    """``count`` HTTP/1.1 answers (status, lower-case headers, body) read off one connection, in order."""
    sock.settimeout(timeout)
    data, answers = b"", []
    while len(answers) < count:
        head_end = data.find(b"\r\n\r\n")
        if head_end >= 0:
            lines = data[:head_end].decode("latin-1").split("\r\n")
            headers = dict(line.lower().split(": ", 1) for line in lines[1:])
            end = head_end + 4 + int(headers["content-length"])
            if len(data) >= end:
                answers.append((int(lines[0].split()[1]), headers, data[head_end + 4:end]))
                data = data[end:]
                continue
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return answers


def test_pipelined_plain_publishes_are_each_answered_in_order_and_all_in_the_queue(gateway, rabbit):
    queue = rabbit.queue()
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(b"".join(plain(queue, b"m%d" % i) for i in range(50)))
        answers = read_answers(sock, 50)
    assert [status for status, _, _ in answers] == [200] * 50
    assert rabbit.bodies(queue) == [b"m%d" % i for i in range(50)]
    _status, headers, body = answers[0]
    assert json.loads(body) == {"status": "ok"}
    # gunicorn's own head: status line, Server, Date, Connection, then the app's headers.
    assert headers["server"] == "gunicorn" and headers["connection"] == "keep-alive" and headers["date"]
    assert headers["content-type"] == "application/json" and len(headers["x-request-id"]) == 32


def test_a_connection_moves_to_gunicorn_at_its_first_request_that_is_not_plain(gateway, rabbit):
    queue = rabbit.queue()
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(plain(queue, b"fast") + chunked(queue, b"chunked") + plain(queue, b"after")
                     + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answers = read_answers(sock, 4)
    assert [status for status, _, _ in answers] == [200, 200, 200, 200]
    assert json.loads(answers[3][2]) == {"status": "ok"}
    assert rabbit.bodies(queue) == [b"fast", b"chunked", b"after"]


def test_a_body_that_arrives_after_its_head_is_gunicorns_and_published_once(gateway, rabbit):
    queue = rabbit.queue()
    request = plain(queue, b"late body")
    head_end = request.index(b"\r\n\r\n") + 4
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(request[:head_end])
        time.sleep(0.3)
        sock.sendall(request[head_end:])
        [(status, _headers, _body)] = read_answers(sock, 1)
    assert status == 200 and rabbit.bodies(queue) == [b"late body"]


@pytest.mark.parametrize("head, status", [
    (b"Content-Length: 12\r\nContent-Length: 12\r\n", 400),  # duplicate length: smuggling
    (b"Content-Length: 12\r\nTransfer-Encoding: chunked\r\n", 400),  # both: smuggling
    (b"Content-Length: +12\r\n", 400),
    (b"Content-Length: 12\r\nX-Folded: a\r\n b\r\n", 400),  # obsolete folding
])
def test_smuggling_shapes_get_gunicorns_answer_and_publish_nothing(gateway, rabbit, head, status):
    queue = rabbit.queue()
    message = f"a|{queue}|xx".encode()[:12].ljust(12, b"x")
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(b"POST /publish HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n" + message)
        sock.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    assert out.startswith(b"HTTP/1.1 %d" % status), out[:200]
    assert rabbit.count(queue) == 0


def test_connection_close_is_honoured_and_an_error_closes_too(gateway, rabbit):
    queue = rabbit.queue()
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(plain(queue, b"bye", "Connection: close\r\n") + plain(queue, b"never read"))
        [(status, headers, _body)] = read_answers(sock, 1)
        assert (status, headers["connection"]) == (200, "close")
        assert sock.recv(65536) == b""  # closed: the pipelined one after it is not answered
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(b"POST /publish HTTP/1.1\r\nHost: x\r\nAuthorization: Basic x\r\nContent-Length: 3\r\n\r\nabc")
        [(status, headers, body)] = read_answers(sock, 1)
        assert (status, json.loads(body)["error"], headers["connection"]) == (400, "malformed_body", "keep-alive")
    assert rabbit.bodies(queue) == [b"bye"]


def addressed(path: str, body: bytes, extra: str = "", chunk: bool = False) -> bytes:
    if chunk:  # gunicorn's: the fast path takes Content-Length bodies only
        return (f"POST {path} HTTP/1.1\r\nHost: x\r\n{extra}Transfer-Encoding: chunked\r\n\r\n").encode() \
            + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: {len(body)}\r\n\r\n").encode() + body


def test_the_exchange_and_management_forms_answer_alike_on_the_fast_path_and_on_gunicorns(gateway, rabbit):
    queue = rabbit.queue()
    management = json.dumps({"routing_key": queue, "payload": "bWFuYWdlZA==", "payload_encoding": "base64",
                             "properties": {"correlation_id": "c-m"}}).encode()
    cases = [
        (f"/publish/a/amq.default/{queue}", b"exchange form", "X-AMQP-Correlation-Id: c-e\r\n"),
        (f"/publish/a//{queue}", b"empty exchange", ""),  # the default exchange, named empty
        ("/api/exchanges/%2F/amq.default/publish", management, ""),
        ("/publish/a/test.no.such.exchange/k", b"nowhere", ""),  # 404 unknown_exchange
        ("/publish/nope/amq.default/q", b"unknown id", ""),  # 404 unknown_connection_id
        (f"/publish/a/amq.default/{queue}", b"bad priority", "X-AMQP-Priority: 300\r\n"),  # 400
        ("/api/exchanges/%2F/amq.default/publish", b"{not json", ""),  # 400, the management API's body
    ]
    answered = {}
    for chunk in (False, True):
        with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
            sock.sendall(b"".join(addressed(path, body, extra, chunk) for path, body, extra in cases))
            answers = read_answers(sock, len(cases))
        answered[chunk] = [(status, headers["content-type"], headers["connection"], json.loads(body))
                           for status, headers, body in answers]
    assert answered[False] == answered[True]
    assert [status for status, *_ in answered[False]] == [200, 200, 200, 404, 404, 400, 400], answered[False]
    delivered = rabbit.drain(queue)
    assert [(body, props.correlation_id) for body, props in delivered] == \
        [(b"exchange form", "c-e"), (b"empty exchange", None), (b"managed", "c-m")] * 2
