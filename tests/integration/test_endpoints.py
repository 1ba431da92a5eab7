"""Pools per broker endpoint: ids naming the same endpoint share one pool, its health and its connections.

Primary and backup are two vhosts of the local RabbitMQ behind two TCP proxies
(``two_brokers``); the broker itself is asked how many connections each vhost
has, and each queue is counted.
"""

from __future__ import annotations

import time

import gevent
import pytest

from tests.support.rabbit import rabbitmqctl
from tests.support.settings import make_settings
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

HEALTH = "HEALTH_INTERVAL,0.2\nHEALTH_RISE,2\nHEALTH_FALL,2"


def _spec(primary, backup, vhosts) -> str:
    return (f"guest:guest@127.0.0.1:{primary.port}/{vhosts['primary'].name},"
            f"guest:guest@127.0.0.1:{backup.port}/{vhosts['backup'].name}")


def vhost_connections(vhost: str) -> int:
    """Connections the broker has on ``vhost``."""
    listing = rabbitmqctl("list_connections", "vhost", "--no-table-headers", "--quiet")
    return sum(1 for line in listing.splitlines() if line.strip() == vhost)


def test_ten_ids_on_one_endpoint_open_one_pool_and_a_warm_backup(start_gateway, two_brokers, vhosts):
    primary, backup, rp, _, queue = two_brokers
    ids = {f"id{i}": _spec(primary, backup, vhosts) for i in range(10)}
    gw = start_gateway(make_settings(ids, HEALTH))  # NO_OF_CONNECTIOS 3 (FAST), BACKUP_WARM_SIZE 1
    wait_until(lambda: gw.ready, 10, message="every id ready")
    assert len(gw.endpoints) == 2
    first = gw.route("id0")
    assert all(gw.route(conn_id).pools == first.pools for conn_id in ids)
    main_pool, backup_pool = first.pools
    wait_until(lambda: all(gw.route(c).active_role == "primary" for c in ids), 5, message="all on the primary")
    # Warm: the backup keeps 1 (and its health check). If its first connection beat the primary's,
    # the ids published to it for that instant and it grew; it shrinks back after POOL_IDLE_TIMEOUT.
    wait_until(lambda: main_pool.open_count == 3 and 1 <= backup_pool.open_count <= 3, 5, message="pools settled")
    assert backup_pool.min_size == 1
    gevent.sleep(0.5)
    # 3 pooled + 1 health check on the primary, the backup's warm set + 1 health check: for all ten
    # ids (+ 1 on each: the test's own, to count the queues).
    assert vhost_connections(vhosts["primary"].name) == 3 + 1 + 1
    assert vhost_connections(vhosts["backup"].name) == backup_pool.open_count + 1 + 1
    assert gw.endpoints.users(main_pool) == sorted(ids)

    for conn_id in ids:
        gw.publish(conn_id, queue, conn_id.encode())
    assert sorted(rp.bodies(queue)) == sorted(conn_id.encode() for conn_id in ids)


def test_two_ids_on_a_shared_endpoint_fail_over_together_and_come_back(start_gateway, two_brokers, vhosts):
    primary, backup, rp, rb, queue = two_brokers
    gw = start_gateway(make_settings({"a": _spec(primary, backup, vhosts), "b": _spec(primary, backup, vhosts)},
                                     HEALTH))
    routes = [gw.route("a"), gw.route("b")]
    wait_until(lambda: all(r.ready and r.active_role == "primary" for r in routes), 10)
    backup_pool = routes[0].pools[1]
    assert backup_pool.min_size == 1  # warm while nobody publishes to it

    primary.refuse()
    cut_at = time.monotonic()
    wait_until(lambda: all(r.active_role == "backup" for r in routes), 5, message="both fail over within 5 s")
    gw.publish("a", queue, b"a-on-backup")
    gw.publish("b", queue, b"b-on-backup")
    gap = time.monotonic() - cut_at
    assert gap < 5.0
    assert backup_pool.min_size == 3  # grown at once: both ids publish to it now

    primary.restore()
    wait_until(lambda: all(r.active_role == "primary" for r in routes), 30, message="both fail back")
    gw.publish("a", queue, b"a-back")
    gw.publish("b", queue, b"b-back")
    assert sorted(rb.bodies(queue)) == [b"a-on-backup", b"b-on-backup"]
    assert sorted(rp.bodies(queue)) == [b"a-back", b"b-back"]
    wait_until(lambda: backup_pool.min_size == 1, 5, message="the backup warm again")


def test_a_live_change_reuses_an_open_pool_and_closes_one_only_when_unused(start_gateway, two_brokers, vhosts):
    primary, backup, rp, _, queue = two_brokers
    spec = _spec(primary, backup, vhosts)
    gw = start_gateway(make_settings({"a": spec, "b": spec}, HEALTH))
    wait_until(lambda: gw.ready, 10)
    pools = gw.route("a").pools
    opened = [pool._opened for pool in pools]

    settings = make_settings({"a": spec, "b": spec, "c": spec}, HEALTH)
    gw.set_connections(settings.connections)
    assert gw.route("c").pools == pools  # attached: no new pool, no new connection
    assert [pool._opened for pool in pools] == opened

    gw.set_connections([settings.connection("c")])  # a and b go: the pools stay, c uses them
    wait_until(lambda: "a" not in gw.routes and gw.endpoints.users(pools[0]) == ["c"], 10)
    gevent.sleep(0.3)
    assert all(not pool._closed for pool in pools)
    gw.publish("c", queue, b"still served")
    assert rp.bodies(queue) == [b"still served"]

    gw.set_connections([])
    wait_until(lambda: all(pool._closed for pool in pools), 10, message="unused pools closed")
    assert len(gw.endpoints) == 0
