"""A role with several servers: each pool starts its round elsewhere, and a server that returns gets its share."""

import collections

import gevent
import pytest

from app.amqp.servers import ServerSet
from app.config import parse_servers
from tests.support.settings import broker, make_settings
from tests.support.wait import wait_until


def test_each_server_set_starts_its_round_at_a_server_of_its_own():
    servers = parse_servers("u:p@a:5672/;u:p@b:5672/;u:p@c:5672/")
    firsts = collections.Counter(ServerSet(servers).pick().host for _ in range(60))
    # 60 workers' (or roles') first connections, health checks included, do not all land on one node.
    assert len(firsts) == 3 and max(firsts.values()) < 40, firsts


@pytest.mark.integration
def test_a_server_that_returns_gets_its_share_back_without_a_failed_publish(start_gateway, rabbit, proxies):
    from tests.support.proxy import TcpProxy
    from tests.support.rabbit import AMQP_PORT

    first, second = TcpProxy(AMQP_PORT), TcpProxy(AMQP_PORT)
    proxies.extend([first, second])
    second.refuse()  # a node that is down when the pool fills
    queue = rabbit.queue()
    servers = f"{broker(first.port)};{broker(second.port)}"
    gw = start_gateway(make_settings({"a": servers}, "NO_OF_CONNECTIOS,4\nREBALANCE_INTERVAL,0.2\n"
                                                      "SERVER_QUARANTINE,0.2\nCONNECTION_MAX_AGE,0"))
    pool = gw.route("a").pools[0]
    on = pool.connections_per_server
    wait_until(lambda: pool.open_count == 4, 10, message="pool filled")
    assert sorted(on().values()) == [0, 4]
    second.restore()
    published = 0
    failures = []

    def publish_steadily() -> None:
        nonlocal published
        while published < 400:
            try:
                gw.publish("a", queue, b"%d" % published)
            except Exception as exc:  # counted: there must be none
                failures.append(repr(exc))
            published += 1
            gevent.sleep(0.005)

    publisher = gevent.spawn(publish_steadily)
    wait_until(lambda: sorted(on().values()) == [2, 2], 10, message=f"rebalanced: {on()}")
    publisher.join(timeout=30)
    assert failures == []
    assert rabbit.count(queue) == published
    assert [s["connections"] for s in pool.snapshot()["servers"]] == [2, 2]
    assert pool.open_count == 4
