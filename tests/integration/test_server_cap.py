"""MAX_CONNECTIONS_PER_SERVER: the gateway never opens more than its cap to one broker server.

Against the shared local broker, with a cap of a handful: the ids sit on three
vhosts of the one server (three endpoints), and the broker itself is asked how
many connections the gateway holds on them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import quote

import gevent
import pika
import pytest

from app.amqp.server_cap import CAP, ServerCap
from app.config import parse_broker
from app.core.errors import ConnectionCapReached
from app.ops import metrics
from tests.support.rabbit import Vhost, rabbitmqctl
from tests.support.settings import make_settings
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

CAP_UNDER_TEST = 8  # NO_OF_CONNECTIOS 3 + 1 health: two endpoints fill it, the third gets none


def broker_connections(vhosts: list[str]) -> int:
    """Connections the broker has on these vhosts."""
    listing = rabbitmqctl("list_connections", "vhost", "--no-table-headers", "--quiet")
    return sum(1 for line in listing.splitlines() if line.strip() in vhosts)


def _can_connect(vhost: Vhost) -> bool:
    try:
        vhost.rabbit().close()
    except pika.exceptions.AMQPError:
        return False
    return True


@pytest.fixture
def three_vhosts(rabbit_available) -> Iterator[list[Vhost]]:
    made = [Vhost("cap") for _ in range(3)]
    for vhost in made:  # add_vhost may answer before the vhost takes connections
        wait_until(lambda v=vhost: _can_connect(v), 10, message=f"vhost {vhost.name} up")
    yield made
    for vhost in made:
        vhost.delete()


def test_the_cap_holds_across_vhosts_and_an_id_over_it_is_answered_503_at_once(start_gateway, rabbit, three_vhosts,
                                                                                proxy, caplog):
    # Through a proxy of the test's own: a server (host:port) no other test's connections count against.
    names = [vhost.name for vhost in three_vhosts]
    ids = {f"cap{i}": f"guest:guest@127.0.0.1:{proxy.port}/{quote(names[i % 3], safe='')}" for i in range(5)}
    address = parse_broker(next(iter(ids.values())))
    assert CAP.held(address) == 0
    extra = f"MAX_CONNECTIONS_PER_SERVER,{CAP_UNDER_TEST}\nPOOL_MAX_OVERFLOW,0"
    gw = start_gateway(make_settings(ids, extra))
    wait_until(lambda: CAP.held(address) == CAP_UNDER_TEST and not any(p._connecting for p in gw.endpoints), 10,
               message="the cap filled")
    gevent.sleep(1.5)  # fillers and health checks keep trying: still no more
    assert CAP.held(address) == CAP_UNDER_TEST
    assert broker_connections(names) == CAP_UNDER_TEST  # 3 endpoints would take 12 without the cap

    # One more id, on a fourth vhost of the same server: no slot left for it.
    late = make_settings({**ids, "late": f"guest:guest@127.0.0.1:{proxy.port}/"}, extra)
    gw.set_connections(late.connections)
    queue = rabbit.queue()
    started = time.monotonic()
    with pytest.raises(ConnectionCapReached) as info:
        gw.publish("late", queue, b"over the cap")
    assert time.monotonic() - started < 1.0  # refused at once, not after the pool timeout
    assert info.value.status == 503 and info.value.code == "connection_cap"
    assert info.value.detail.startswith("late/primary: ")
    for leak in ("127.0.0.1", str(proxy.port), "guest", "@"):  # producers never see broker addresses
        assert leak not in info.value.detail
    assert rabbit.count(queue) == 0
    assert gw.routes["late"].snapshot()["brokers"]["primary"]["connection_cap"]
    assert any(getattr(r, "event", None) == "connection_cap_reached" for r in caplog.records)
    assert metrics.CONNECTION_CAP_REFUSALS.labels(f"127.0.0.1:{proxy.port}")._value.get() > 0
    assert CAP.held(address) == CAP_UNDER_TEST

    # The other ids removed give their slots back: the late one gets connections then.
    gw.set_connections([late.connection("late")])
    wait_until(lambda: gw.routes["late"].pools[0].open_count > 0, 15, message="served once slots were free")
    gw.publish("late", queue, b"now served")
    assert rabbit.count(queue) == 1
    assert CAP.held(address) <= CAP_UNDER_TEST


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
