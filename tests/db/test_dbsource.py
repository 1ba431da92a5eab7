"""Connection ids from the real PostgreSQL, live: the source and the gateway in this process.

Each test has a database of its own (tests/support/pg.py) with config/schema.sql
applied; "two brokers" are two vhosts of the local RabbitMQ, so the queue a
message landed in says which one took it. The resync interval is 60 s here
unless a test says otherwise: a change seen within 2 s came by NOTIFY.
"""

from __future__ import annotations

import time

import gevent
import pytest

from app.config import parse_connection
from app.core.errors import UnknownConnection
from app.ops import metrics
from tests.db.conftest import db_settings, events
from tests.support.burst import Burst, account
from tests.support.settings import broker
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration


def vhost_url(vhosts, role: str) -> str:
    return broker() + vhosts[role].name


def publishable(gateway, conn_id: str, queue: str, body: bytes = b"probe") -> bool:
    try:
        gateway.publish(conn_id, queue, body)
    except UnknownConnection:
        return False
    return True


def uses(gateway, conn_id: str, *urls: str) -> bool:
    """The id's route is built from exactly these broker URLs."""
    route = gateway.routes.get(conn_id)
    return route is not None and route.spec == parse_connection(conn_id, list(urls))


def gone(gateway, conn_id: str) -> bool:
    return conn_id not in gateway.routes


def test_rows_load_and_changes_arrive_within_2s(pgdb, run_source, two_brokers, vhosts):
    _p, _b, rp, rb, queue = two_brokers
    pgdb.insert("a", vhost_url(vhosts, "primary"))
    pgdb.insert("off", vhost_url(vhosts, "primary"), enabled=False)
    worker = run_source(db_settings(pgdb))
    gateway, source = worker.gateway, worker.config_source
    wait_until(lambda: gateway.ready, 5, message="first config loaded")
    assert sorted(gateway.routes) == ["a"]  # disabled rows are not loaded
    gateway.publish("a", queue, b"1")

    # Insert: publishable within 2 s.
    pgdb.insert("b", vhost_url(vhosts, "primary"))
    took = wait_until(lambda: publishable(gateway, "b", queue, b"2"), 2, message="new id publishable")
    print(f"insert -> publishable: {took:.3f}s")

    # Update the primary: traffic moves to the other broker.
    pgdb.execute("UPDATE rmq_connections SET primary_url = %s WHERE connection_id = 'b'",
                 (vhost_url(vhosts, "backup"),))
    took = wait_until(lambda: uses(gateway, "b", vhost_url(vhosts, "backup")), 2,
                      message="changed primary in use")
    print(f"update -> moved: {took:.3f}s")
    gateway.publish("b", queue, b"3")

    # Disable: 404 within 2 s; enable again: back.
    pgdb.execute("UPDATE rmq_connections SET enabled = false WHERE connection_id = 'b'")
    wait_until(lambda: gone(gateway, "b"), 2, message="disabled id gone")
    with pytest.raises(UnknownConnection):
        gateway.publish("b", queue, b"lost")
    pgdb.execute("UPDATE rmq_connections SET enabled = true WHERE connection_id = 'b'")
    wait_until(lambda: publishable(gateway, "b", queue, b"4"), 2, message="re-enabled id publishable")

    # Delete: 404 within 2 s.
    pgdb.execute("DELETE FROM rmq_connections WHERE connection_id = 'b'")
    took = wait_until(lambda: gone(gateway, "b"), 2, message="deleted id gone")
    print(f"delete -> 404: {took:.3f}s")
    with pytest.raises(UnknownConnection):
        gateway.publish("b", queue, b"lost")

    assert sorted(rp.bodies(queue)) == [b"1", b"2"]
    assert sorted(rb.bodies(queue)) == [b"3", b"4"]
    status = worker.readiness()["config_source"]
    assert status["state"] == "live" and status["loaded"] and status["skipped_rows"] == {}
    assert source.syncs >= 6  # connect + one per change


def test_burst_during_primary_change_loses_nothing(pgdb, run_source, two_brokers, vhosts):
    _p, _b, rp, rb, queue = two_brokers
    pgdb.insert("x", vhost_url(vhosts, "primary"))
    worker = run_source(db_settings(pgdb))
    gateway, _source = worker.gateway, worker.config_source
    wait_until(lambda: gateway.ready, 5)
    burst = Burst(lambda body: gateway.publish("x", queue, body), interval=0.005, concurrency=8).start()
    gevent.sleep(0.5)
    pgdb.execute("UPDATE rmq_connections SET primary_url = %s WHERE connection_id = 'x'",
                 (vhost_url(vhosts, "backup"),))
    changed_at = time.monotonic()
    wait_until(lambda: uses(gateway, "x", vhost_url(vhosts, "backup")), 2)
    gevent.sleep(0.5)
    # And back, while the first old route may still be draining.
    pgdb.execute("UPDATE rmq_connections SET primary_url = %s WHERE connection_id = 'x'",
                 (vhost_url(vhosts, "primary"),))
    wait_until(lambda: uses(gateway, "x", vhost_url(vhosts, "primary")), 2)
    gevent.sleep(0.5)
    burst.stop()

    in_primary, in_backup = rp.bodies(queue), rb.bodies(queue)
    counts = account(burst, in_primary, in_backup)
    print(counts, "in backup:", len(in_backup))
    assert counts["lost"] == 0, counts
    assert counts["duplicated"] == 0, counts
    assert counts["refused_but_delivered"] == 0, counts
    assert burst.errors == {}, list(burst.errors.values())[:5]  # a change to a healthy broker refuses nothing
    assert counts["found"] == counts["acknowledged"] == counts["sent"]
    assert in_backup, "traffic moved to the new primary"
    moved = {int(b) for b in in_backup}
    assert min(t for seq, t in burst.ok.items() if seq in moved) - changed_at < 2.0
    assert max(burst.ok) in {int(b) for b in in_primary}  # and back again


def test_bad_row_is_skipped_and_the_others_work(pgdb, run_source, rabbit, app_log):
    queue = rabbit.queue()
    secret = "n0t-in-any-log"
    pgdb.insert("good", broker())
    pgdb.insert("bad", f"guest:{secret}@127.0.0.1:notaport/")
    pgdb.insert("bad id!", broker())
    pgdb.insert("badbackup", broker(), f"amqp://guest:{secret}@127.0.0.1:5672/?nope=1")
    worker = run_source(db_settings(pgdb))
    gateway, source = worker.gateway, worker.config_source
    wait_until(lambda: gateway.ready, 5)
    gateway.publish("good", queue, b"ok")
    assert sorted(gateway.routes) == ["good"]
    skipped = worker.readiness()["config_source"]["skipped_rows"]
    assert sorted(skipped) == ["bad", "bad id!", "badbackup"]
    assert "invalid port" in skipped["bad"] and "backup" in skipped["badbackup"]
    lines = [r.getMessage() for r in events(app_log, "config_row_skipped")]
    assert len(lines) == 3 and any("'bad'" in line for line in lines), lines
    assert secret not in repr(skipped) and not any(secret in line for line in lines)
    # Fixing the row brings the id in, with a log line saying so; the rest is untouched.
    good_route = gateway.routes["good"]
    pgdb.execute("UPDATE rmq_connections SET primary_url = %s WHERE connection_id = 'bad'", (broker(),))
    wait_until(lambda: publishable(gateway, "bad", queue, b"fixed"), 2)
    assert gateway.routes["good"] is good_route
    assert sorted(worker.readiness()["config_source"]["skipped_rows"]) == ["bad id!", "badbackup"]
    assert rabbit.bodies(queue) == [b"ok", b"fixed"]
    assert source.skipped.keys() == {"bad id!", "badbackup"}


def test_periodic_resync_catches_a_missed_notification(pgdb, run_source, rabbit, app_log):
    queue = rabbit.queue()
    pgdb.insert("a", broker())
    worker = run_source(db_settings(pgdb, "DB_RESYNC_INTERVAL,0.5"))
    gateway, _source = worker.gateway, worker.config_source
    wait_until(lambda: gateway.ready, 5)
    # A change that sends no notification (trigger off): only the re-read can see it.
    pgdb.execute("ALTER TABLE rmq_connections DISABLE TRIGGER rmq_connections_notify")
    pgdb.insert("quiet", broker())
    wait_until(lambda: publishable(gateway, "quiet", queue), 2, message="re-read picked the row up")
    changes = events(app_log, "config_change")
    assert changes[-1].trigger == "periodic" and changes[-1].added == ["quiet"]


def test_database_down_at_start_retries_and_readyz_says_why(pgdb, run_source, pg_proxy, rabbit, app_log):
    queue = rabbit.queue()
    pgdb.insert("a", broker())
    pg_proxy.refuse()
    retries_before = metrics.CONFIG_DB_RETRIES._value.get()
    worker = run_source(db_settings(pgdb, port=pg_proxy.port))
    gateway, source = worker.gateway, worker.config_source
    wait_until(lambda: len(events(app_log, "config_db_down")) >= 1, 3)
    gevent.sleep(1)  # several retries
    state = worker.readiness()
    assert state["ready"] is False and state["connections"] == {}
    status = state["config_source"]
    assert status["state"] == "connecting" and status["loaded"] is False
    assert f"127.0.0.1:{pg_proxy.port}/{pgdb.name}" in status["last_error"]
    assert "waiting for the first config" in status["detail"]
    warnings = [r.getMessage() for r in events(app_log, "config_db_down")]
    # Backoff: a few attempts in ~1 s, each counted, and only the first is logged as a warning.
    assert len(warnings) == 1 and f"{pgdb.role}@127.0.0.1:{pg_proxy.port}/{pgdb.name}" in warnings[0], warnings
    assert metrics.CONFIG_DB_RETRIES._value.get() - retries_before >= 3
    assert pgdb.password not in repr(state) and not any(pgdb.password in w for w in warnings)
    pg_proxy.restore()
    took = wait_until(lambda: gateway.ready, 3, message="config loaded once the database is back")
    print(f"database back -> ready: {took:.3f}s")
    gateway.publish("a", queue, b"after")
    assert worker.readiness()["config_source"]["state"] == "live"
    assert rabbit.bodies(queue) == [b"after"]
    assert source.last_error is None


@pytest.mark.parametrize("fault", ["refuse", "blackhole"])
def test_database_lost_keeps_last_config_and_resyncs_when_back(fault, pgdb, run_source, pg_proxy, rabbit):
    queue = rabbit.queue()
    pgdb.insert("a", broker())
    pgdb.insert("doomed", broker())
    # A blackholed link sends nothing, not even an error: the re-read (0.5 s) notices it.
    worker = run_source(db_settings(pgdb, "DB_RESYNC_INTERVAL,0.5\nDB_TIMEOUT,0.5", port=pg_proxy.port))
    gateway, source = worker.gateway, worker.config_source
    wait_until(lambda: gateway.ready and source.connected, 5)
    getattr(pg_proxy, fault)()
    wait_until(lambda: worker.readiness()["config_source"]["state"] == "disconnected", 3,
               message="database loss noticed")
    # Changes made while the gateway cannot see them.
    pgdb.insert("c", broker())
    pgdb.execute("DELETE FROM rmq_connections WHERE connection_id = 'doomed'")
    burst = Burst(lambda body: gateway.publish("a", queue, body), interval=0.01, concurrency=4).start()
    gevent.sleep(1.5)
    assert gateway.ready and "doomed" in gateway.routes and "c" not in gateway.routes
    assert worker.readiness()["config_source"]["detail"].startswith("PostgreSQL unreachable: serving the last")
    pg_proxy.restore()
    restored = time.monotonic()
    wait_until(lambda: "c" in gateway.routes and "doomed" not in gateway.routes, 3,
               message="re-synced after the database came back")
    print(f"database back -> re-synced: {time.monotonic() - restored:.3f}s")
    burst.stop()
    counts = account(burst, rabbit.bodies(queue))
    assert burst.errors == {} and counts["lost"] == 0 and counts["acknowledged"] > 100, counts
    # And live changes flow again.
    pgdb.insert("d", broker())
    wait_until(lambda: "d" in gateway.routes, 2, message="notification after reconnect")
    assert worker.readiness()["config_source"]["state"] == "live"


def test_missing_table_is_reported_then_picked_up(bare_db, run_source, rabbit):
    from app.db.schema import apply_schema

    queue = rabbit.queue()
    settings = db_settings(bare_db)
    worker = run_source(settings)
    gateway, _source = worker.gateway, worker.config_source
    wait_until(lambda: (worker.readiness()["config_source"]["last_error"] or "").endswith("`make schema`)"), 3)
    assert 'relation "rmq_connections" does not exist' in worker.readiness()["config_source"]["last_error"]
    apply_schema(settings)
    bare_db.insert("a", broker())
    wait_until(lambda: gateway.ready, 3)
    gateway.publish("a", queue, b"x")
    assert rabbit.bodies(queue) == [b"x"]


def test_create_app_reads_the_database_and_ignores_file_lines(pgdb, rabbit, app_log):
    from app.http.factory import create_app, services_of, shutdown

    queue = rabbit.queue()
    pgdb.insert("a", broker())
    settings = db_settings(pgdb, conns=f"RMQ_CONN_STR,filed,{broker()}")
    assert [spec.conn_id for spec in settings.connections] == ["filed"]
    assert pgdb.password in settings.secrets()  # from GATEWAY_DB_PASSWORD, masked in every log line
    app = create_app(settings)
    services_of(app).start()  # as gunicorn's post_worker_init does
    try:
        client = app.test_client()
        wait_until(lambda: client.get("/readyz").status_code == 200, 5)
        assert client.post("/publish", data=f"a|{queue}|hello".encode()).status_code == 200
        answer = client.post("/publish", data=f"filed|{queue}|nope".encode())
        assert answer.status_code == 404 and answer.get_json()["error"] == "unknown_connection_id"
        ready = client.get("/readyz").get_json()
        assert ready["config_source"]["state"] == "live" and list(ready["connections"]) == ["a"]
        assert pgdb.password not in client.get("/readyz").get_data(as_text=True)
    finally:
        shutdown(app)
    assert not services_of(app).config_source.running
    ignored = [r.getMessage() for r in events(app_log, "config_lines_ignored")]
    assert len(ignored) == 1 and "1 RMQ_CONN_STR line(s)" in ignored[0]
    assert rabbit.bodies(queue) == [b"hello"]
