"""End to end: gunicorn (2 gevent workers) with USE_DB,true against the real PostgreSQL and RabbitMQ."""

from __future__ import annotations

import json
import time

import gevent
import pytest

from app.core.errors import GatewayError
from tests.db.conftest import DB_FAST
from tests.support.burst import Burst, account
from tests.support.pg import PgDatabase
from tests.support.server import GatewayProcess, publish, request
from tests.support.settings import FAST, broker
from tests.support.wait import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def start_gateway(tmp_path, database: PgDatabase, port: int | None = None, extra: str = "",
                  wait_ready: bool = True) -> GatewayProcess:
    cfg = "\n".join([FAST, DB_FAST, database.config_lines(port) if port else database.config_lines(), extra])
    server = GatewayProcess(tmp_path, cfg, workers=2, env={"GATEWAY_DB_PASSWORD": database.password})
    return server.start(wait_ready=wait_ready)


@pytest.fixture
def servers():
    made: list[GatewayProcess] = []
    yield made
    for server in made:
        server.stop()


def http_publisher(port: int, conn_id: str, queue: str):
    """A Burst publish function over HTTP: a non-200 raises with the answer's code."""

    def send(body: bytes) -> None:
        status, answer = publish(port, f"{conn_id}|{queue}|".encode() + body, timeout=15)
        if status != 200:
            error = GatewayError(answer.get("detail", ""))
            error.status, error.code = status, answer.get("error", str(status))
            raise error

    return send


def log_events(server: GatewayProcess, event: str) -> list[dict]:
    return server.events(event)


def readyz(server: GatewayProcess) -> tuple[int, dict]:
    status, _headers, body = request(server.port, "GET", "/readyz", timeout=5)
    return status, json.loads(body)


def test_live_changes_reach_every_worker(tmp_path, pgdb, servers, two_brokers, vhosts):
    _p, _b, rp, rb, queue = two_brokers
    pgdb.insert("a", broker() + vhosts["primary"].name)
    server = start_gateway(tmp_path, pgdb, extra=f"RMQ_CONN_STR,filed,{broker()}")
    servers.append(server)
    # Every worker loaded the table and said the file's line is ignored.
    wait_until(lambda: len(log_events(server, "config_change")) == 2, 5)
    assert len(log_events(server, "config_lines_ignored")) == 2
    assert publish(server.port, f"filed|{queue}|x".encode())[0] == 404

    pgdb.insert("b", broker() + vhosts["primary"].name)
    inserted = time.monotonic()
    wait_until(lambda: publish(server.port, f"b|{queue}|new".encode())[0] == 200, 2, message="new id within 2 s")
    print(f"insert -> 200 over HTTP: {time.monotonic() - inserted:.3f}s")
    wait_until(lambda: len({e["pid"] for e in log_events(server, "config_change") if e["added"] == ["b"]}) == 2,
               2, message="both workers added b")
    for _ in range(20):  # whichever worker answers
        assert publish(server.port, f"b|{queue}|again".encode())[0] == 200

    # Move a's primary to the other broker under a burst: every 200 is in a queue.
    burst = Burst(http_publisher(server.port, "a", queue), interval=0.005, concurrency=6).start()
    gevent.sleep(0.5)
    pgdb.execute("UPDATE rmq_connections SET primary_url = %s WHERE connection_id = 'a'",
                 (broker() + vhosts["backup"].name,))
    wait_until(lambda: len({e["pid"] for e in log_events(server, "config_change") if e["changed"] == ["a"]}) == 2,
               2, message="both workers moved a")
    gevent.sleep(0.5)
    burst.stop()
    in_primary, in_backup = rp.bodies(queue), rb.bodies(queue)
    primary_bursts = [b for b in in_primary if b.isdigit()]
    counts = account(burst, primary_bursts, in_backup)
    print("HTTP burst during a primary change:", counts, "in the new primary:", len(in_backup))
    assert counts["lost"] == 0 and counts["duplicated"] == 0 and burst.errors == {}, counts
    assert counts["acknowledged"] == counts["sent"] and len(in_backup) > 0
    assert max(burst.ok) in {int(b) for b in in_backup}
    assert in_primary.count(b"again") == 20 and in_primary.count(b"new") == 1

    pgdb.execute("DELETE FROM rmq_connections WHERE connection_id = 'b'")
    deleted = time.monotonic()
    wait_until(lambda: all(publish(server.port, f"b|{queue}|gone".encode())[0] == 404 for _ in range(6)), 2,
               message="deleted id answers 404 in every worker")
    print(f"delete -> 404 over HTTP: {time.monotonic() - deleted:.3f}s")
    status, ready = readyz(server)
    assert status == 200 and list(ready["connections"]) == ["a"] and ready["config_source"]["state"] == "live"
    assert pgdb.password not in server.logs() and pgdb.password not in json.dumps(ready)


def test_database_trouble_end_to_end(tmp_path, pgdb, servers, pg_proxy, rabbit):
    queue = rabbit.queue()
    pgdb.insert("a", broker())
    pg_proxy.refuse()
    server = start_gateway(tmp_path, pgdb, port=pg_proxy.port, wait_ready=False)
    servers.append(server)
    # Up and alive, not ready, and /readyz says why.
    assert request(server.port, "GET", "/healthz", timeout=1)[0] == 200
    wait_until(lambda: readyz(server)[1]["config_source"]["last_error"] is not None, 5)
    status, ready = readyz(server)
    assert status == 503 and ready["ready"] is False
    source = ready["config_source"]
    assert source["state"] == "connecting" and f"127.0.0.1:{pg_proxy.port}/{pgdb.name}" in source["last_error"]
    assert publish(server.port, f"a|{queue}|early".encode())[0] == 404
    down = log_events(server, "config_db_down")
    assert down and f"{pgdb.role}@127.0.0.1:{pg_proxy.port}/{pgdb.name}" in down[0]["message"]

    pg_proxy.restore()
    server.wait_for("/readyz", 5)
    wait_until(lambda: all(publish(server.port, f"a|{queue}|m".encode())[0] == 200 for _ in range(4)), 5)

    # Lost after start-up: publishing goes on with the last config.
    pg_proxy.refuse()
    pgdb.insert("c", broker())
    burst = Burst(http_publisher(server.port, "a", queue), interval=0.01, concurrency=4).start()
    wait_until(lambda: len({e["pid"] for e in log_events(server, "config_db_down")}) == 2, 5,
               message="both workers noticed the loss")
    gevent.sleep(0.5)
    assert publish(server.port, f"c|{queue}|unseen".encode())[0] == 404
    assert readyz(server)[0] == 200  # the brokers are fine: still ready

    pg_proxy.restore()
    restored = time.monotonic()
    wait_until(lambda: all(publish(server.port, f"c|{queue}|seen".encode())[0] == 200 for _ in range(6)), 5,
               message="re-synced after the database came back")
    print(f"database back -> new id 200 over HTTP: {time.monotonic() - restored:.3f}s")
    burst.stop()
    bodies = rabbit.bodies(queue)
    counts = account(burst, [b for b in bodies if b.isdigit()])
    assert counts["lost"] == 0 and burst.errors == {} and counts["acknowledged"] > 50, counts
    assert pgdb.password not in server.logs()
