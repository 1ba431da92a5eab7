"""Fairness on a shared pool: a flood on one id does not starve another id of the same endpoint."""

from __future__ import annotations

import statistics
import time

import gevent
import pytest

from tests.support.settings import make_settings
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

FLOODERS = 150  # concurrent publishers on id "flood": more flushers than the pool has connections
TRICKLE = 200  # publishes of id "trickle", one every 10 ms (p99 then is not just the worst one)


def _spec(primary, backup, vhosts) -> str:
    return (f"guest:guest@127.0.0.1:{primary.port}/{vhosts['primary'].name},"
            f"guest:guest@127.0.0.1:{backup.port}/{vhosts['backup'].name}")


def trickle_latencies(gw, queue: str) -> list[float]:
    seconds = []
    for i in range(TRICKLE):
        started = time.perf_counter()
        gw.publish("trickle", queue, b"t%d" % i)
        seconds.append(time.perf_counter() - started)
        gevent.sleep(0.01)
    return sorted(seconds)


def p99(values: list[float]) -> float:
    return values[min(len(values) - 1, int(len(values) * 0.99))]


def test_a_flood_on_one_id_leaves_another_id_of_the_endpoint_its_share(start_gateway, two_brokers, vhosts):
    primary, backup, rp, rb, queue = two_brokers
    spec = _spec(primary, backup, vhosts)
    gw = start_gateway(make_settings({"flood": spec, "trickle": spec}, "PUBLISH_TIMEOUT,10\nPOOL_TIMEOUT,5"))
    wait_until(lambda: gw.ready, 10)
    alone = trickle_latencies(gw, queue)

    flooded = 0
    stop = False

    def flood() -> None:
        nonlocal flooded
        while not stop:
            gw.publish("flood", queue, b"f")
            flooded += 1

    assert gw.route("trickle").pools == gw.route("flood").pools  # one endpoint: one pool
    flooders = [gevent.spawn(flood) for _ in range(FLOODERS)]
    try:
        gevent.sleep(0.5)  # the flood holds the shared pool's connections
        during = trickle_latencies(gw, queue)
    finally:
        stop = True
        gevent.joinall(flooders, timeout=15, raise_error=True)

    # Every acknowledged publish is in the queue, of both ids. (In the first
    # milliseconds the backup may have come up before the primary and taken a
    # message: an id publishes to whichever broker is up. Seen once in make test.)
    bodies = rp.bodies(queue) + rb.bodies(queue)
    assert sum(1 for b in bodies if b.startswith(b"t")) == 2 * TRICKLE
    assert sum(1 for b in bodies if b == b"f") == flooded
    # The trickle waits for at most about one batch round trip of the flood, not behind its queue.
    print(f"trickle alone: p50 {statistics.median(alone) * 1e3:.1f} ms, p99 {p99(alone) * 1e3:.1f} ms; "
          f"under a flood of {flooded} publishes: p50 {statistics.median(during) * 1e3:.1f} ms, "
          f"p99 {p99(during) * 1e3:.1f} ms")
    assert p99(during) < 10 * p99(alone) + 0.05
