"""MAX_CONNECTIONS_PER_SERVER: the gateway never opens more than its cap to one broker server.

Against the shared local broker, with a cap of a handful: the ids sit on three
vhosts of the one server (no endpoint in common), and the broker itself is
asked how many connections the gateway holds.
"""

from __future__ import annotations

import time
from urllib.parse import quote

import gevent
import pytest

from app.amqp.server_cap import CAP, ServerCap
from app.config import parse_broker
from app.core.errors import ConnectionCapReached
from app.ops import metrics
from tests.support.rabbit import AMQP_HOST, AMQP_PORT, rabbitmqctl, unique
from tests.support.settings import make_settings
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

CAP_UNDER_TEST = 8  # NO_OF_CONNECTIOS 3 + 1 health: two ids fill it


def broker_connections(tag: str) -> int:
    """Connections the broker has whose client-given name carries ``tag``."""
    listing = rabbitmqctl("list_connections", "client_properties", "--no-table-headers", "--quiet")
    return sum(1 for line in listing.splitlines() if tag in line)


def test_the_cap_holds_across_vhosts_and_a_capped_id_is_answered_503_at_once(start_gateway, rabbit, vhosts, caplog):
    tag = unique("cap")
    paths = ["", quote(vhosts["primary"].name, safe=""), quote(vhosts["backup"].name, safe="")]
    ids = {f"{tag}{i}": f"guest:guest@{AMQP_HOST}:{AMQP_PORT}/{paths[i % 3]}" for i in range(5)}
    address = parse_broker(next(iter(ids.values())))
    wait_until(lambda: CAP.held(address) == 0, 10, message="no connection of an earlier test's gateway left")
    gw = start_gateway(make_settings(ids, f"MAX_CONNECTIONS_PER_SERVER,{CAP_UNDER_TEST}\nPOOL_MAX_OVERFLOW,0"))
    wait_until(lambda: CAP.held(address) == CAP_UNDER_TEST, 10, message="the cap filled")
    gevent.sleep(1.5)  # fillers and health checks keep trying: still no more
    assert CAP.held(address) == CAP_UNDER_TEST
    assert broker_connections(tag) == CAP_UNDER_TEST

    served = [conn_id for conn_id, route in gw.routes.items() if route.pools[0].open_count > 0]
    capped = [conn_id for conn_id in ids if conn_id not in served]
    assert served and capped
    queue = rabbit.queue()
    gw.publish(served[0], queue, b"under the cap")
    assert rabbit.count(queue) == 1
    started = time.monotonic()
    with pytest.raises(ConnectionCapReached) as info:
        gw.publish(capped[0], queue, b"over the cap")
    assert time.monotonic() - started < 1.0  # refused at once, not after the pool timeout
    assert info.value.status == 503 and info.value.code == "connection_cap"
    assert f"{AMQP_HOST}:{AMQP_PORT}" in info.value.detail and "guest" not in info.value.detail
    assert rabbit.count(queue) == 1  # nothing of the refused one
    assert gw.routes[capped[0]].snapshot()["brokers"]["primary"]["connection_cap"]
    assert any(getattr(r, "event", None) == "connection_cap_reached" for r in caplog.records)
    refusals = metrics.CONNECTION_CAP_REFUSALS.labels(f"{AMQP_HOST}:{AMQP_PORT}")._value.get()
    assert refusals > 0

    # Ids removed give their slots back: the capped ones get connections then.
    gw.set_connections([spec for spec in gw.settings.connections if spec.conn_id not in served])
    def now_served() -> list[str]:
        return [c for c in capped if gw.routes[c].pools[0].open_count > 0]

    wait_until(lambda: len(now_served()) >= min(2, len(capped)), 15, message="capped ids served once slots were free")
    assert CAP.held(address) <= CAP_UNDER_TEST
    gw.publish(now_served()[0], queue, b"now served")
    assert rabbit.count(queue) == 2


def test_a_workers_share_is_the_gateway_cap_divided_by_the_workers():
    cap = ServerCap()
    cap.workers = 4
    cap.configure(200)
    assert cap.limit == 50
    cap.configure(3)
    assert cap.limit == 1  # never zero: a worker can always open one
    cap.configure(0)
    assert cap.limit == 0  # no cap
    address = parse_broker("guest:guest@h:5672/")
    for _ in range(100):
        cap.take(address)
    assert cap.held(address) == 100
    for _ in range(100):
        cap.give_back(address)
    assert cap.held(address) == 0
