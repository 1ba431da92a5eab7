"""The pool against the real broker: bounds, discard-and-refill, keepalive, recycling."""

import time

import gevent
import pytest

from app.amqp.pool import ConnectionPool
from app.core.errors import PoolTimeout
from tests.support.settings import broker, make_settings
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration


def test_exhausted_pool_times_out_with_named_error(start_gateway, rabbit):
    gw = start_gateway(make_settings({"a": broker()}, "NO_OF_CONNECTIOS,2\nPOOL_TIMEOUT,0.3\nPOOL_MAX_OVERFLOW,0"))
    pool = gw.route("a").pools[0]
    wait_until(lambda: pool.open_count == 2, 5, message="pool filled")
    held = [pool.acquire(1), pool.acquire(1)]
    started = time.monotonic()
    with pytest.raises(PoolTimeout) as info:
        pool.acquire(0.3)
    assert 0.25 <= time.monotonic() - started < 1.0
    assert info.value.status == 503 and info.value.code == "pool_timeout"
    # A waiter gets the connection handed over as soon as one is released.
    waiter = gevent.spawn(pool.acquire, 2)
    gevent.sleep(0.05)
    pool.release(held.pop())
    assert waiter.get(timeout=1) is not None
    pool.release(waiter.value)
    pool.release(held.pop())
    assert pool.snapshot()["idle"] == 2 and pool.snapshot()["in_use"] == 0


def test_killed_connection_is_discarded_and_refilled(start_gateway, rabbit, proxy):
    queue = rabbit.queue()
    gw = start_gateway(make_settings({"a": broker(proxy.port)}))
    pool = gw.route("a").pools[0]
    wait_until(lambda: pool.open_count == 3, 5, message="pool filled")
    before = proxy.accepted
    proxy.cut_one()
    wait_until(lambda: proxy.accepted == before + 1 and pool.open_count == 3, 5, message="refilled")
    for i in range(20):  # every connection in the pool works, none is the dead one
        gw.publish("a", queue, b"m%d" % i)
    assert rabbit.count(queue) == 20
    assert pool.health.is_up  # one lost connection is not a down broker


def test_connection_lost_mid_publish_is_retried_and_counted(start_gateway, rabbit, proxy):
    queue = rabbit.queue()
    gw = start_gateway(make_settings({"a": broker(proxy.port)}, "NO_OF_CONNECTIOS,1"))
    pool = gw.route("a").pools[0]
    wait_until(lambda: pool.open_count == 1, 5)
    proxy.delay(0.3)  # the confirm will be slow enough to cut under it
    worker = gevent.spawn(gw.publish, "a", queue, b"retried")
    gevent.sleep(0.1)
    proxy.cut()
    proxy.delay(0)
    worker.get(timeout=10)  # answered OK: the retry on a new connection was confirmed
    bodies = rabbit.bodies(queue)
    assert 1 <= bodies.count(b"retried") <= 2  # at-least-once, never zero


def test_idle_pool_survives_far_past_heartbeat(start_gateway, rabbit, proxy):
    queue = rabbit.queue()
    # Heartbeat 2 s, no probes and no keepalive for the whole idle spell: only
    # the heartbeats pika answers from the hub keep the connections alive.
    gw = start_gateway(make_settings({"a": broker(proxy.port)},
                                     "HEARTBEAT,2\nHEALTH_INTERVAL,60\nKEEPALIVE_INTERVAL,600"))
    pool = gw.route("a").pools[0]
    wait_until(lambda: pool.open_count == 3, 5)
    opened = proxy.accepted
    gevent.sleep(10)
    assert pool.open_count == 3 and pool.health.is_up
    for i in range(6):
        gw.publish("a", queue, b"after-idle-%d" % i)
    assert proxy.accepted == opened, "a connection was re-opened: the idle ones did not survive"
    assert rabbit.count(queue) == 6


def test_connections_past_max_age_are_recycled(start_gateway, rabbit, proxy):
    queue = rabbit.queue()
    gw = start_gateway(make_settings({"a": broker(proxy.port)},
                                     "CONNECTION_MAX_AGE,1\nKEEPALIVE_INTERVAL,0.3"))
    pool = gw.route("a").pools[0]
    wait_until(lambda: proxy.accepted >= 6, 8, message="every connection replaced once")
    gw.publish("a", queue, b"still fine")
    assert rabbit.count(queue) == 1
    assert pool.open_count <= 3


def test_dead_broker_does_not_block_start_or_other_ids(start_gateway, rabbit):
    queue = rabbit.queue()
    settings = make_settings({"dead": broker(1), "live": broker()})
    started = time.monotonic()
    gw = start_gateway(settings)
    assert time.monotonic() - started < 0.5
    wait_until(lambda: gw.route("live").ready, 5)
    gw.publish("live", queue, b"x")
    assert not gw.route("dead").ready and not gw.ready


def test_close_closes_everything_cleanly(rabbit):
    settings = make_settings({"a": broker()})
    pool = ConnectionPool("a/primary", settings.connection("a").primary, settings)
    pool.start()
    wait_until(lambda: pool.open_count == 3, 5)
    conns = list(pool._idle)
    pool.close()
    assert all(c._closed.is_set() and c.lost_reason for c in conns)
    assert pool.open_count == 0


def test_every_connection_event_names_its_server(start_gateway, rabbit, proxy):
    import logging

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler, logger = Keep(logging.DEBUG), logging.getLogger("app")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.DEBUG)  # (setLevel, not .level: it clears the loggers' cached decisions)
    try:
        queue = rabbit.queue()
        gw = start_gateway(make_settings({"a": broker(proxy.port), "d": "app:Pw0rdZ@127.0.0.1:1/vh"},
                                         "CONNECTION_MAX_AGE,1\nKEEPALIVE_INTERVAL,0.2"))
        pool = gw.route("a").pools[0]
        wait_until(lambda: pool.open_count == 3, 5)
        held = pool.acquire(1)
        proxy.cut()  # the idle connections are lost, the one lent out is discarded on return
        gevent.sleep(0.3)
        pool.release(held)
        wait_until(lambda: pool.open_count == 3, 5)
        gw.publish("a", queue, b"x")
        gevent.sleep(1.5)  # recycled past max age
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    events = {"connect_failed", "connection_discarded", "connection_recycled", "connection_lost"}
    seen = [r for r in records if getattr(r, "event", None) in events]
    assert {r.event for r in seen} == events, {r.event for r in seen}  # type: ignore[attr-defined]
    for record in seen:
        server = getattr(record, "server", "")
        assert server.startswith("amqp://") and "127.0.0.1:" in server, (record.event, record.__dict__)
        assert server in record.getMessage()
        assert "Pw0rdZ" not in server + record.getMessage()
