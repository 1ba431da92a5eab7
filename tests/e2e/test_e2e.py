"""End to end: gunicorn (2 gevent workers) as a subprocess, over real HTTP, real broker."""

import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import gevent
import pytest
from gevent.pool import Pool

from app.config import parse_broker
from tests.support.rabbit import AMQP_PORT
from tests.support.server import REPO, GatewayProcess, publish, request
from tests.support.settings import FAST

pytestmark = pytest.mark.e2e

RABBIT_LOG = "/var/log/rabbitmq/rabbit@localhost.log"


def cfg(conns: dict[str, str], extra: str = "") -> str:
    return FAST + extra + "\n" + "\n".join(f"RMQ_CONN_STR,{cid},{spec}" for cid, spec in conns.items())


@pytest.fixture
def server(tmp_path, rabbit_available):
    made = []

    def start(conns, extra="", workers=2, wait_ready=True, env=None):
        proc = GatewayProcess(tmp_path, cfg(conns, extra), workers=workers, env=env)
        made.append(proc)
        return proc.start(wait_ready=wait_ready)

    yield start
    for proc in made:
        proc.stop()


def test_publish_and_consume_byte_exact(server, rabbit):
    queue = rabbit.queue()
    gw = server({"a": f"guest:guest@127.0.0.1:{AMQP_PORT}/"})
    bodies = [b"hello", b"", b"a|b|c", b"\x00\xff\n\r\n", "\u2603".encode()]
    for body in bodies:
        status, answer = publish(gw.port, b"a|" + queue.encode() + b"|" + body)
        assert (status, answer) == (200, {"status": "ok"})
    # Content-Type does not matter: the body is read raw.
    status, _h, _b = request(gw.port, "POST", "/publish", b"a|" + queue.encode() + b"|x=1&y=2",
                             {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200
    assert rabbit.bodies(queue) == [*bodies, b"x=1&y=2"]


def test_every_status_over_http(server, rabbit):
    queue = rabbit.queue()
    gw = server({"a": f"guest:guest@127.0.0.1:{AMQP_PORT}/", "dead": "guest:guest@127.0.0.1:1/"},
                "MAX_BODY_SIZE,1000\nRETRY_AFTER,3", wait_ready=False)
    gw.wait_for("/healthz", 10)
    deadline = time.monotonic() + 10
    while publish(gw.port, b"a|" + queue.encode() + b"|warm")[0] != 200 and time.monotonic() < deadline:
        gevent.sleep(0.1)

    def check(body, status, code, **headers):
        got, head, data = request(gw.port, "POST", "/publish", body, headers)
        assert got == status, data
        assert head["content-type"] == "application/json"
        assert re.fullmatch(rb'\{"detail": ".+", "error": "' + code.encode() + rb'"\}\n', data), data
        return head

    check(b"nopipes", 400, "malformed_body")
    check(b"a|q", 400, "malformed_body")
    check(b"|q|m", 400, "invalid_connection_id")
    check(b"a||m", 400, "invalid_queue")
    check(b"unknown|q|m", 404, "unknown_connection_id")
    check(b"a|" + queue.encode() + b"|" + b"x" * 1000, 413, "body_too_large")
    check(b"a|test.no.such.queue|m", 422, "unroutable")
    head = check(b"dead|q|m", 503, "broker_unavailable")
    assert head["retry-after"] == "3"
    # A chunked body over the limit is cut off at the limit, not read whole.
    def chunks():
        yield b"a|" + queue.encode() + b"|"
        for _ in range(20):
            yield b"y" * 100
    got, _h, _d = request(gw.port, "POST", "/publish", chunks())  # http.client sends it chunked
    assert got == 413
    got, head, data = request(gw.port, "GET", "/publish")
    assert got == 405 and "POST" in head["allow"] and b'"method_not_allowed"' in data
    got, _h, data = request(gw.port, "GET", "/nowhere")
    assert got == 404 and b'"not_found"' in data
    # Nothing a refused request sent was published.
    assert rabbit.bodies(queue) == [b"warm"]


def test_2000_concurrent_publishes_exactly_the_200s_are_queued(server, rabbit):
    queue = rabbit.queue()
    gw = server({"a": f"guest:guest@127.0.0.1:{AMQP_PORT}/"}, "NO_OF_CONNECTIOS,5\nPOOL_TIMEOUT,5")
    statuses: dict[int, int] = {}

    def one(i):
        try:
            statuses[i] = publish(gw.port, b"a|" + queue.encode() + b"|%d" % i)[0]
        except OSError:
            statuses[i] = -1

    pool = Pool(500)
    for i in range(2000):
        pool.spawn(one, i)
    pool.join(timeout=120)
    ok = {i for i, s in statuses.items() if s == 200}
    found = [int(b) for b in rabbit.bodies(queue)]
    assert len(found) == len(set(found)), "duplicates"
    assert set(found) == ok
    assert len(ok) >= 1990, {s: list(statuses.values()).count(s) for s in set(statuses.values())}


def test_sigterm_during_burst_every_200_is_queued_and_connections_close_cleanly(server, rabbit):
    queue = rabbit.queue()
    conn_id = "e2e" + uuid.uuid4().hex[:8]
    gw = server({conn_id: f"guest:guest@127.0.0.1:{AMQP_PORT}/"})
    ok: set[int] = set()
    answered: dict[int, int] = {}

    def sender(start):
        i = start
        while True:
            try:
                status, _ = publish(gw.port, f"{conn_id}|{queue}|{i}".encode(), timeout=30)
            except OSError:
                return  # the listener is gone: shutdown has begun
            answered[i] = status
            if status == 200:
                ok.add(i)
            i += 100

    senders = [gevent.spawn(sender, s) for s in range(50)]
    gevent.sleep(1.5)
    workers = gw.worker_pids()
    code = gw.stop(signal.SIGTERM, timeout=40)
    gevent.joinall(senders, timeout=40)
    assert code == 0, gw.logs()[-2000:]
    assert len(ok) > 100
    found = [int(b) for b in rabbit.bodies(queue)]
    assert ok <= set(found), f"{len(ok - set(found))} acknowledged messages are missing"
    assert set(answered.values()) <= {200, 503}
    # worker_exit closed the AMQP connections with the close handshake.
    gevent.sleep(0.5)
    entries = re.split(r"\n(?=\d{4}-\d\d-\d\d )", Path(RABBIT_LOG).read_text(errors="replace"))
    # Connections are named by worker pid and endpoint (a pool serves every id of its endpoint).
    ours = [e for e in entries if any(f"gateway {pid}/endpoint" in e for pid in workers)
            and "closing AMQP connection" in e]
    assert len(ours) >= 2 * 3, "expected both workers' pooled connections (3 each) to be closed"
    assert not [e for e in ours if "unexpectedly" in e], "a connection was not closed cleanly"


def test_healthz_stays_fast_while_primary_is_blackholed(server, rabbit, proxy):
    queue = rabbit.queue()
    gw = server({"a": f"guest:guest@127.0.0.1:{proxy.port}/"}, "CONFIRM_TIMEOUT,3\nPUBLISH_TIMEOUT,4")
    assert publish(gw.port, f"a|{queue}|before".encode())[0] == 200
    proxy.blackhole()
    stuck = [gevent.spawn(publish, gw.port, f"a|{queue}|stuck{i}".encode()) for i in range(20)]
    gevent.sleep(0.3)
    worst = 0.0
    for _ in range(20):
        started = time.monotonic()
        status, _h, _b = request(gw.port, "GET", "/healthz", timeout=5)
        worst = max(worst, time.monotonic() - started)
        assert status == 200
        gevent.sleep(0.05)
    assert worst < 0.5, f"/healthz took {worst:.3f}s"
    gevent.joinall(stuck, timeout=15)
    statuses = [g.value[0] for g in stuck]
    assert set(statuses) <= {200, 503}  # answered, truthfully, within the publish deadline
    status, _h, body = request(gw.port, "GET", "/readyz")
    assert status == 503 and b"password" not in body


def test_starts_without_broker_and_serves_once_it_appears(server, rabbit, proxy):
    queue = rabbit.queue()
    proxy.refuse()
    gw = server({"a": f"guest:guest@127.0.0.1:{proxy.port}/"}, wait_ready=False)
    assert request(gw.port, "GET", "/healthz")[0] == 200
    status, _h, body = request(gw.port, "GET", "/readyz")
    assert status == 503 and b'"ready": false' in body.replace(b'"ready":false', b'"ready": false')
    assert publish(gw.port, f"a|{queue}|early".encode())[0] == 503
    proxy.restore()
    gw.wait_for("/readyz", 15)
    assert publish(gw.port, f"a|{queue}|late".encode())[0] == 200
    assert rabbit.bodies(queue) == [b"late"]


def test_bad_config_fails_start_with_one_line(tmp_path):
    bad = tmp_path / "bad.cfg"
    bad.write_text("NO_OF_CONNECTIOS,5\nRMQ_CONN_STR,a,user:SuperSecret99@host:notaport/\n")
    done = subprocess.run([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", "127.0.0.1:0"],
                          cwd=REPO, env={"GATEWAY_CONFIG": str(bad), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "config error" in line]
    assert errors == [f"gateway: config error: {bad}:2: RMQ_CONN_STR: primary: invalid port (a number from 1 to 65535)"]
    assert "Traceback" not in done.stderr and "SuperSecret99" not in done.stderr + done.stdout
    assert "Booting worker" not in done.stderr


def test_metrics_add_up_over_both_workers(server, rabbit):
    queue = rabbit.queue()
    gw = server({"a": f"guest:guest@127.0.0.1:{AMQP_PORT}/"})
    jobs = [gevent.spawn(publish, gw.port, f"a|{queue}|{i}".encode()) for i in range(200)]
    gevent.joinall(jobs, timeout=60)
    assert all(job.value[0] == 200 for job in jobs)
    publish(gw.port, b"a|test.no.such.queue|x")
    status, headers, body = request(gw.port, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    text = body.decode()

    def sample(name, **labels):
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            if line.startswith(name + "{"):
                got = ",".join(sorted(line[len(name) + 1:line.index("}")].split(",")))
                if got == want:
                    return float(line.rsplit(" ", 1)[1])
        return 0.0

    assert sample("gateway_publish_total", ingress="http", conn_id="a", outcome="ok") == 200
    assert sample("gateway_publish_total", ingress="http", conn_id="a", outcome="unroutable") == 1
    assert rabbit.count(queue) == 200
    # Live gauges add up over the two workers: 3 pooled connections each.
    endpoint = parse_broker(f"guest:guest@127.0.0.1:{AMQP_PORT}/").display
    open_total = sum(sample("gateway_pool_connections", endpoint=endpoint, state=s)
                     for s in ("idle", "in_use"))
    assert open_total == 6
