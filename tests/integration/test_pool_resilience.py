"""No greenlet of a pool dies, whatever fails: failures injected at each stage of a connection's life.

The seams are the pool's own (``BrokerConnection`` and what it calls); the
broker is the real one. After each failure stops, the pool refills, its
broker is up, a publish is confirmed, and the filler and keepalive greenlets
are still alive.
"""

import gevent
import pytest

from app.amqp import connection as broker_module
from app.amqp.connection import BrokerConnection
from app.config import ConfigError, settings_from_text
from app.db.live_source import specs_from_rows
from tests.support.settings import broker, make_settings
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration


class Boom(RuntimeError):
    """An error nobody expects."""


def _raise(*_args, **_kwargs):
    raise Boom("injected")


STAGES = {
    # A TLS file that went missing after the config was loaded, a pika bug, ...
    "parameters": (broker_module, "connection_parameters"),
    "connect": (broker_module, "PikaConnection"),
    "channel open (in the hub)": (BrokerConnection, "_on_open"),
    "probe": (BrokerConnection, "probe"),
    "close": (BrokerConnection, "close"),
    "abort": (BrokerConnection, "abort"),
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_the_pool_recovers_from_a_failure_at_each_stage(stage, start_gateway, rabbit, monkeypatch):
    queue = rabbit.queue()
    gw = start_gateway(make_settings({"a": broker()}, "CONNECTION_MAX_AGE,0.5\nKEEPALIVE_INTERVAL,0.2"))
    pool = gw.route("a").pools[0]
    wait_until(lambda: pool.open_count == 3 and pool.health.is_up, 5, message="pool filled")
    target, name = STAGES[stage]
    with monkeypatch.context() as patch:
        patch.setattr(target, name, _raise)
        if stage in ("close", "abort") and pool.checker.connection is not None:
            pool.checker.connection.suspect = True  # the health check replaces (aborts) its connection now
        gevent.sleep(2)  # recycling, probes, refills: every path runs into the failure
    assert all(not g.dead for g in pool.greenlets), f"a pool greenlet died at stage {stage}"
    wait_until(lambda: pool.open_count == 3 and pool.health.is_up, 10, message=f"recovered after {stage}")
    gw.publish("a", queue, b"after")
    assert rabbit.count(queue) == 1
    assert all(not g.dead for g in pool.greenlets)


def test_a_missing_tls_file_is_a_config_error_naming_the_id_and_file():
    line = "RMQ_CONN_STR,orders,amqps://app:Secret99x@rabbit:5671/?cacertfile=/nonexistent/ca.pem"
    with pytest.raises(ConfigError) as info:
        settings_from_text(line, "pool.cfg", {})
    message = str(info.value)
    assert message.startswith("pool.cfg:1: ") and "'orders'" in message and "/nonexistent/ca.pem" in message
    assert "Secret99x" not in message and "\n" not in message


def test_a_database_row_with_a_missing_tls_file_is_skipped_with_its_reason(tmp_path):
    key = tmp_path / "key.pem"
    key.write_text("not a key")
    rows = [("ok", "u:p@h:5672/", None),
            ("tls", "amqps://u:p@h:5671/?cacertfile=/nonexistent/ca.pem", None),
            ("badkey", "u:p@h:5672/", f"amqps://u:p@h:5671/?certfile={key}&keyfile={key}")]
    specs, skipped = specs_from_rows(rows)
    assert [s.conn_id for s in specs] == ["ok"]
    assert "/nonexistent/ca.pem" in skipped["tls"] and "not found" in skipped["tls"]
    assert "backup" in skipped["badkey"] and str(key) in skipped["badkey"]
