"""Pool semantics operators know from SQLAlchemy, django_pgpool and pgbouncer."""

import time

import gevent
import pytest

from app.core.errors import ConnectionLost, PoolTimeout
from app.core.retry import RetryBudget
from tests.support.proxy import TcpProxy
from tests.support.rabbit import AMQP_PORT
from tests.support.settings import broker, make_settings
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration


def test_overflow_opens_extras_after_maxwait_and_closes_them_on_return(start_gateway, rabbit):
    gw = start_gateway(make_settings({"a": broker()}, "NO_OF_CONNECTIOS,2\nPOOL_MAX_OVERFLOW,2\n"
                                     "POOL_OVERFLOW_WAIT,0.2\nPOOL_TIMEOUT,0.5"))
    pool = gw.route("a").pools[0]
    wait_until(lambda: pool.open_count == 2, 5)
    held = [pool.acquire(1), pool.acquire(1)]
    started = time.monotonic()
    held.append(pool.acquire(1))  # overflow, after waiting maxwait
    assert 0.15 <= time.monotonic() - started < 1.0
    held.append(pool.acquire(1))
    assert pool.open_count == 4
    with pytest.raises(PoolTimeout):
        pool.acquire(0.5)  # the hard limit: size + overflow
    for conn in held:
        pool.release(conn)
    wait_until(lambda: pool.open_count == 2, 2, message="overflow closed on return")
    assert sum(c.suspect for c in held) == 2  # two were retired (closed), two kept


def test_lifo_reuse_keeps_extras_cold(start_gateway, rabbit):
    gw = start_gateway(make_settings({"a": broker()}, "NO_OF_CONNECTIOS,3"))
    pool = gw.route("a").pools[0]
    wait_until(lambda: pool.open_count == 3, 5)
    first, second = pool.acquire(1), pool.acquire(1)
    pool.release(first)
    pool.release(second)
    assert pool.acquire(1) is second  # the most recently returned goes out first


def test_idle_connections_above_minimum_are_closed(start_gateway, rabbit):
    gw = start_gateway(make_settings({"a": broker()}, "NO_OF_CONNECTIOS,4\nPOOL_MIN_SIZE,1\n"
                                     "POOL_IDLE_TIMEOUT,0.5\nKEEPALIVE_INTERVAL,0.2\nPOOL_MAX_OVERFLOW,0"))
    pool = gw.route("a").pools[0]
    wait_until(lambda: pool.open_count == 1, 5, message="filled to the minimum only")
    held = [pool.acquire(2) for _ in range(4)]  # grows on demand, no overflow wait below the size
    assert pool.open_count == 4
    for conn in held:
        pool.release(conn)
    assert pool.open_count == 4  # kept: they are within the pool size
    wait_until(lambda: pool.open_count == 1, 5, message="shrunk to the minimum")


def test_several_servers_per_role_spread_and_quarantine(start_gateway, rabbit, proxies):
    servers = [TcpProxy(AMQP_PORT) for _ in range(3)]
    proxies.extend(servers)
    queue = rabbit.queue()
    primary = ";".join(broker(p.port) for p in servers)
    gw = start_gateway(make_settings({"a": primary}, "NO_OF_CONNECTIOS,6\nSERVER_QUARANTINE,1\nPOOL_MAX_OVERFLOW,0"))
    pool = gw.route("a").pools[0]
    wait_until(lambda: pool.open_count == 6, 5)
    pooled = [len([c for c in p.pairs if c[1] is not None]) for p in servers]
    assert sum(pooled) >= 6 and min(pooled) >= 2, pooled  # round-robin (+1 health connection)
    servers[1].refuse()
    wait_until(lambda: pool.open_count == 6, 5, message="refilled on the other servers")
    for i in range(30):
        gw.publish("a", queue, b"%d" % i)
    assert rabbit.count(queue) == 30
    assert pool.health.is_up  # one server of three down is not the role down
    snapshot = pool.snapshot()["servers"]
    assert snapshot[1]["quarantined_for"] > 0 or servers[1].accepted > 0
    servers[1].restore()
    gevent.sleep(1.2)  # past its quarantine
    before = servers[1].accepted
    # Churn the pool: every connection is replaced, and the recovered server
    # (probed by a real connection first) takes its share again.
    for conn in [pool.acquire(1) for _ in range(6)]:
        conn.suspect = True
        pool.release(conn)
    wait_until(lambda: pool.open_count == 6, 5)
    assert servers[1].accepted >= before + 2


def test_retry_budget_bounds_retries():
    budget = RetryBudget(ratio=0.5, min_per_second=0.0, window=10)
    budget._balance = 0
    assert not budget.allow()
    budget.deposit()
    budget.deposit()
    assert budget.allow() and not budget.allow()


def test_exhausted_retry_budget_answers_instead_of_retrying(start_gateway, rabbit, proxy):
    queue = rabbit.queue()
    gw = start_gateway(make_settings({"a": broker(proxy.port)},
                                     "NO_OF_CONNECTIOS,1\nRETRY_BUDGET_RATIO,0\nRETRY_BUDGET_MIN,0"))
    route = gw.route("a")
    route.lane.retry_budget._balance = 0  # the budget is the lane's (ids on the same endpoints share it)
    wait_until(lambda: route.ready, 5)
    proxy.delay(0.3)
    job = gevent.spawn(gw.publish, "a", queue, b"x")
    gevent.sleep(0.1)
    proxy.cut()
    proxy.delay(0)
    with pytest.raises(ConnectionLost):
        job.get(timeout=10)
