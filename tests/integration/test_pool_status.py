"""Pool gauges, the longest current wait, the confirm round trip, and the /pools view."""

import gevent
import pytest
from prometheus_client import REGISTRY

from app.ops.pool_status import PoolStatus, merge
from tests.support.settings import broker, make_settings
from tests.support.wait import wait_until


def _sample(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


@pytest.mark.integration
def test_longest_wait_grows_while_a_caller_waits(start_gateway, rabbit):
    gw = start_gateway(make_settings({"lw": broker()}, "NO_OF_CONNECTIOS,1\nPOOL_TIMEOUT,3\nPOOL_MAX_OVERFLOW,0"))
    pool = gw.route("lw").pools[0]
    wait_until(lambda: pool.open_count == 1, 5)
    held = pool.acquire(1)
    waiter = gevent.spawn(pool.acquire, 3)
    gevent.sleep(0.6)
    pool.refresh_gauges()
    waited = _sample("gateway_pool_longest_wait_seconds", endpoint=pool.name)
    assert 0.5 <= waited < 1.5
    assert _sample("gateway_pool_waiting", endpoint=pool.name) == 1
    assert _sample("gateway_pool_connections", endpoint=pool.name, state="in_use") == 1
    view = PoolStatus(gw, directory="").view()["connections"]["lw"]["brokers"]["primary"]
    assert view["waiting"] == 1 and view["longest_wait"] >= 0.5 and view["in_use"] == 1
    pool.release(held)
    pool.release(waiter.get(timeout=1))
    pool.refresh_gauges()  # gauges are refreshed each second and before /metrics answers
    assert _sample("gateway_pool_longest_wait_seconds", endpoint=pool.name) == 0
    assert _sample("gateway_pool_open_connections", endpoint=pool.name) == 1


@pytest.mark.integration
def test_confirm_round_trip_is_observed_per_batch(start_gateway, rabbit):
    gw = start_gateway(make_settings({"rt": broker()}))
    wait_until(lambda: gw.ready, 5)
    queue = rabbit.queue()
    endpoint = gw.route("rt").pools[0].name
    before = _sample("gateway_confirm_duration_seconds_count", endpoint=endpoint, role="primary")
    gw.publish("rt", queue, b"one")
    gw.publish_batch("rt", [(queue, b"%d" % i) for i in range(50)])
    assert _sample("gateway_confirm_duration_seconds_count", endpoint=endpoint, role="primary") == before + 2
    assert rabbit.count(queue) == 51


def _worker(pid: int, state: str, open_: int, active: str = "primary", error: str | None = None) -> dict:
    pool = {"broker": "amqp://u@h:5672/%2F", "state": state, "open": open_, "idle": open_, "in_use": 0,
            "connecting": 0, "waiting": 0, "longest_wait": 0.1 * pid, "size": 2, "last_error": error}
    return {"pid": pid, "time": 0, "endpoints": {"ep": {**pool, "ids": ["x"]}},
            "connections": {"x": {"ready": state == "up", "active": active, "brokers": {"primary": "ep"}}}}


def test_merge_sums_counts_and_flags_disagreement():
    view = merge([_worker(1, "up", 2), _worker(2, "down", 0, active="backup", error="refused")])
    route = view["connections"]["x"]
    primary = route["brokers"]["primary"]
    assert set(view["workers"]) == {"1", "2"}
    assert primary["open"] == 2 and primary["size"] == 4 and primary["state"] == "mixed"
    assert primary["longest_wait"] == pytest.approx(0.2) and primary["last_error"] == "refused"
    assert route["active"] == "mixed" and route["ready"] is False
    assert primary["workers"]["2"]["state"] == "down" and primary["endpoint"] == "ep"
    assert view["endpoints"]["ep"]["ids"] == ["x"] and view["endpoints"]["ep"]["open"] == 2
    same = merge([_worker(1, "up", 2), _worker(2, "up", 2)])["connections"]["x"]
    assert same["active"] == "primary" and same["brokers"]["primary"]["state"] == "up" and same["ready"]
