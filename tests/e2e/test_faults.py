"""Fault injection: break the brokers for real under a burst, then count.

Every scenario runs a bounded burst of HTTP publishes against gunicorn (two
gevent workers) and ends by counting: every 200 must be in the primary's or
the backup's queue (two vhosts behind two TCP proxies stand for two brokers).
Each adds a row to the summary table printed at the end of the run
(``tests/support/report.py``); the README keeps a copy.
"""

import os
import signal
import statistics
import time

import gevent
import pytest

from tests.support import report
from tests.support.burst import Burst, account, over_http
from tests.support.rabbit import AMQP_PORT, Rabbit, rabbitmqctl, unique
from tests.support.server import GatewayProcess, publish, request
from tests.support.settings import FAST

pytestmark = pytest.mark.e2e

TIMINGS = FAST + "CONFIRM_TIMEOUT,2\nPUBLISH_TIMEOUT,3\n"


@pytest.fixture
def fault_env(tmp_path, two_brokers, vhosts):
    """(start(extra_cfg) -> GatewayProcess on id 'x', primary proxy, backup proxy, rp, rb, queue)."""
    primary, backup, rp, rb, queue = two_brokers
    spec = (f"guest:guest@127.0.0.1:{primary.port}/{vhosts['primary'].name},"
            f"guest:guest@127.0.0.1:{backup.port}/{vhosts['backup'].name}")
    made = []

    def start(extra: str = "", workers: int = 2, on_primary: bool = True) -> GatewayProcess:
        proc = GatewayProcess(tmp_path, TIMINGS + extra + f"\nRMQ_CONN_STR,x,{spec}\n", workers=workers)
        made.append(proc)
        proc.start()
        if on_primary:
            # Every worker on the primary first: a worker still connecting would
            # send its first publishes to the backup, where the scenario does not look.
            proc.wait_active("x")
        return proc

    yield start, primary, backup, rp, rb, queue
    for proc in made:
        proc.stop()


def finish(name: str, burst: Burst, rp: Rabbit, rb: Rabbit, queue: str, recovery: float | None) -> dict:
    counts = account(burst, rp.bodies(queue), rb.bodies(queue))
    report.record(name, {k: counts[k] for k in ("sent", "acknowledged", "found", "lost", "duplicated")},
                  len(burst.errors), recovery)
    assert counts["lost"] == 0, counts
    assert counts["refused_but_delivered"] == 0, counts
    return counts


def test_primary_resets_connections_mid_burst(fault_env):
    start, primary, _backup, rp, rb, queue = fault_env
    gw = start()
    burst = Burst(over_http(gw.port, "x", queue), concurrency=8).start()
    gevent.sleep(1)
    cut_at = time.monotonic()
    primary.cut()
    gevent.sleep(2)
    burst.stop()
    counts = finish("primary RST mid-burst", burst, rp, rb, queue, burst.first_ok_after(cut_at))
    assert counts["acknowledged"] >= 0.9 * counts["sent"]


def test_primary_blackholed_mid_burst(fault_env):
    start, primary, _backup, rp, rb, queue = fault_env
    gw = start()
    burst = Burst(over_http(gw.port, "x", queue), concurrency=8).start()
    gevent.sleep(1)
    hole_at = time.monotonic()
    primary.blackhole()
    gevent.sleep(4)
    burst.stop()
    in_backup = {int(b) for b in rb.bodies(queue)}
    recovery = burst.first_ok_after(hole_at, in_backup)
    for body in sorted(in_backup):  # put them back for the count
        rb.channel.basic_publish("", queue, str(body).encode())
    finish("primary blackholed mid-burst", burst, rp, rb, queue, recovery)
    assert recovery is not None and recovery < 5
    assert {code for _, code in burst.errors.values()} <= {"confirm_timeout", "pool_timeout", "connection_lost"}


def test_primary_slow(fault_env):
    start, primary, _backup, rp, rb, queue = fault_env
    gw = start()
    burst = Burst(over_http(gw.port, "x", queue), concurrency=8).start()
    gevent.sleep(0.5)
    primary.delay(0.02)
    gevent.sleep(2)
    primary.delay(0)
    gevent.sleep(0.5)
    burst.stop()
    counts = finish("primary slow (+20 ms per chunk)", burst, rp, rb, queue, None)
    assert counts["acknowledged"] == counts["sent"]  # slow is not down: nothing refused


def test_primary_returns_and_takes_traffic_back(fault_env):
    start, primary, _backup, rp, rb, queue = fault_env
    primary.refuse()
    gw = start(on_primary=False)
    burst = Burst(over_http(gw.port, "x", queue), concurrency=4).start()
    gevent.sleep(1)
    back_at = time.monotonic()
    primary.restore()
    gevent.sleep(3)
    burst.stop()
    in_primary = {int(b) for b in rp.bodies(queue)}
    recovery = burst.first_ok_after(back_at, in_primary)
    for seq in sorted(in_primary):
        rp.channel.basic_publish("", queue, str(seq).encode())
    finish("primary returns (fail-back)", burst, rp, rb, queue, recovery)
    # rise = 3 probes at 0.2 s in these timings: back in well under a few seconds
    assert recovery is not None and 0.4 <= recovery < 3


def test_backup_also_gone_answers_503_in_time(fault_env):
    start, primary, backup, rp, rb, queue = fault_env
    gw = start()
    primary.blackhole()
    backup.blackhole()
    burst = Burst(over_http(gw.port, "x", queue), concurrency=8).start()
    gevent.sleep(3)
    primary.refuse()
    backup.refuse()
    gevent.sleep(2)
    burst.stop()
    assert max(burst.latencies) < 3 + 1.5  # PUBLISH_TIMEOUT plus scheduling
    status, headers, _ = request(gw.port, "POST", "/publish", f"x|{queue}|late".encode())
    assert status == 503 and headers["retry-after"] == "1"
    finish("primary and backup gone", burst, rp, rb, queue, None)


def test_all_connections_severed_at_once(fault_env):
    start, primary, backup, rp, rb, queue = fault_env
    gw = start()
    burst = Burst(over_http(gw.port, "x", queue), concurrency=8).start()
    gevent.sleep(1)
    cut_at = time.monotonic()
    primary.cut()
    backup.cut()
    gevent.sleep(2)
    burst.stop()
    recovery = burst.first_ok_after(cut_at)
    finish("every connection severed at once", burst, rp, rb, queue, recovery)
    assert recovery is not None and recovery < 2


def test_worker_killed_mid_burst(fault_env):
    start, _primary, _backup, rp, rb, queue = fault_env
    gw = start()
    burst = Burst(over_http(gw.port, "x", queue), concurrency=8).start()
    gevent.sleep(1)
    os.kill(gw.worker_pids()[0], signal.SIGKILL)
    killed_at = time.monotonic()
    gevent.sleep(2)
    burst.stop()
    finish("worker SIGKILL mid-burst", burst, rp, rb, queue, burst.first_ok_after(killed_at))
    assert request(gw.port, "GET", "/healthz")[0] == 200


def test_worker_sigterm_mid_burst(fault_env):
    start, _primary, _backup, rp, rb, queue = fault_env
    gw = start()
    burst = Burst(over_http(gw.port, "x", queue), concurrency=8).start()
    gevent.sleep(1)
    os.kill(gw.worker_pids()[0], signal.SIGTERM)  # gunicorn replaces it
    termed_at = time.monotonic()
    gevent.sleep(2)
    burst.stop()
    finish("worker SIGTERM mid-burst", burst, rp, rb, queue, burst.first_ok_after(termed_at))


def test_queue_full_with_reject_publish_is_503_and_recovers(fault_env):
    start, _primary, _backup, rp, _rb, _queue = fault_env
    queue = unique("full")
    rp.channel.queue_declare(queue, durable=True, arguments={"x-max-length": 5, "x-overflow": "reject-publish"})
    rp.queues.append(queue)
    gw = start()
    send = over_http(gw.port, "x", queue)
    codes = [send(b"%d" % i) for i in range(20)]
    assert codes[:5] == [None] * 5 and set(codes[5:]) == {"nacked"}  # the broker's nack is a 503
    kept = rp.bodies(queue)  # reading them clears the queue: it takes publishes again
    assert kept == [b"%d" % i for i in range(5)]
    assert send(b"after") is None
    assert rp.bodies(queue) == [b"after"]
    report.record("queue full (max-length, reject-publish)",
                  {"sent": 21, "acknowledged": codes.count(None) + 1, "found": len(kept) + 1, "lost": 0,
                   "duplicated": 0}, codes.count("nacked"), None)


def test_memory_alarm_blocks_then_recovers(fault_env):
    start, _primary, _backup, rp, rb, queue = fault_env
    gw = start()
    assert over_http(gw.port, "x", queue)(b"0") is None
    original = rabbitmqctl("eval", "vm_memory_monitor:get_vm_memory_high_watermark().").strip()
    burst = Burst(over_http(gw.port, "x", queue), concurrency=4, interval=0.05)
    try:
        rabbitmqctl("set_vm_memory_high_watermark", "0")  # alarm at once: the broker blocks publishers
        gevent.sleep(1)
        burst.start()
        # The first publish on each connection waits out its confirm (primary,
        # then backup: the same node here); from then on refusals are fast.
        gevent.sleep(6)
        blocked = dict(burst.errors)
    finally:
        rabbitmqctl("set_vm_memory_high_watermark", original if original.replace(".", "").isdigit() else "0.4")
    cleared_at = time.monotonic()
    gevent.sleep(3)
    burst.stop()
    assert blocked, "no publish was refused while the broker was blocked"
    codes = [code for _, code in blocked.values()]
    assert set(codes) <= {"broker_blocked", "confirm_timeout", "broker_unavailable"}  # all truthful 503s
    assert codes.count("broker_blocked") > codes.count("confirm_timeout"), codes
    assert max(burst.latencies) < 3 + 1.5  # never hangs past the publish deadline
    recovery = burst.first_ok_after(cleared_at)
    assert recovery is not None
    finish("memory alarm (connection.blocked)", burst, rp, rb, queue, recovery)


def test_dead_ids_do_not_slow_the_live_ones(tmp_path, rabbit):
    queue, warm = rabbit.queue(), rabbit.queue("warm")
    live = "".join(f"RMQ_CONN_STR,live{i},guest:guest@127.0.0.1:{AMQP_PORT}/\n" for i in range(5))
    dead = "".join(f"RMQ_CONN_STR,dead{i},guest:guest@127.0.0.1:{1 + i}/\n" for i in range(5))

    def run(cfg: str, name: str) -> tuple[Burst, dict]:
        (tmp_path / name).mkdir()
        gw = GatewayProcess(tmp_path / name, TIMINGS + "NO_OF_CONNECTIOS,5\n" + cfg, workers=2)
        gw.start(wait_ready=False)  # never ready: half the ids have no broker
        deadline = time.monotonic() + 10
        while publish(gw.port, f"live0|{warm}|0".encode())[0] != 200 and time.monotonic() < deadline:
            gevent.sleep(0.1)
        burst = Burst(lambda body: None if publish(gw.port, f"live{int(body) % 5}|{queue}|".encode() + body)[0]
                      == 200 else "failed", concurrency=8, interval=0, limit=1500).start()
        gevent.joinall(burst._greenlets, timeout=60)
        burst.stop()
        gw.stop()
        return burst, account(burst, rabbit.bodies(queue))

    healthy, healthy_counts = run(live, "healthy")
    mixed, counts = run(live + dead, "mixed")
    fast, slow = statistics.median(healthy.latencies), statistics.median(mixed.latencies)
    report.record(f"10 ids x 5 conns, half on dead ports (median {slow * 1000:.1f} ms vs "
                  f"{fast * 1000:.1f} ms healthy)",
                  {k: counts[k] for k in ("sent", "acknowledged", "found", "lost", "duplicated")},
                  len(mixed.errors), None)
    for c in (healthy_counts, counts):
        assert c["lost"] == 0 and c["acknowledged"] == c["sent"], c
    assert slow < fast * 2 + 0.005, f"median {slow * 1000:.1f} ms vs {fast * 1000:.1f} ms healthy"
