"""config/schema.sql against the real PostgreSQL: idempotent, notifies on every kind of change."""

from __future__ import annotations

import subprocess
import sys

import pytest

from app.db.live_source import CHANNEL, QUERY
from app.db.schema import apply_schema
from tests.db.conftest import db_settings
from tests.support.pg import PgDatabase
from tests.support.server import REPO, free_port

pytestmark = pytest.mark.integration


def test_schema_applied_twice_keeps_rows_and_one_trigger(pgdb: PgDatabase):
    pgdb.insert("a", "guest:guest@127.0.0.1:5672/")
    apply_schema(db_settings(pgdb))  # the second time (the fixture applied it once)
    assert pgdb.execute(QUERY) == [("a", "guest:guest@127.0.0.1:5672/", None)]
    triggers = pgdb.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = 'rmq_connections'::regclass "
                            "AND NOT tgisinternal")
    assert triggers == [("rmq_connections_notify",)]
    columns = pgdb.execute("SELECT column_name, data_type, is_nullable, column_default FROM information_schema.columns "
                           "WHERE table_name = 'rmq_connections' ORDER BY ordinal_position")
    assert columns == [("connection_id", "text", "NO", None), ("primary_url", "text", "NO", None),
                       ("backup_url", "text", "YES", None), ("enabled", "boolean", "NO", "true")]


def test_every_kind_of_change_notifies_once_per_statement(pgdb: PgDatabase):
    listener = PgDatabase.__new__(PgDatabase)  # a second connection as the same owner
    listener.__dict__.update(pgdb.__dict__, _conn=None)
    listener.execute(f"LISTEN {CHANNEL}")
    pgdb.execute("INSERT INTO rmq_connections (connection_id, primary_url) VALUES ('a', 'x'), ('b', 'y')")
    pgdb.execute("UPDATE rmq_connections SET enabled = false")
    pgdb.execute("DELETE FROM rmq_connections WHERE connection_id = 'a'")
    pgdb.execute("TRUNCATE rmq_connections")
    listener.execute("SELECT 1")  # let the notifications in
    assert [n.payload for n in listener.conn.notifies] == ["INSERT", "UPDATE", "DELETE", "TRUNCATE"]
    listener.conn.close()


def _schema_command(cfg, env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "GATEWAY_CONFIG": str(cfg), **env_extra}
    return subprocess.run([sys.executable, "-m", "app.db.schema"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def test_schema_command_uses_the_gateway_settings(bare_db: PgDatabase, tmp_path):
    cfg = tmp_path / "pool.cfg"
    cfg.write_text(bare_db.config_lines())
    for _ in range(2):
        done = _schema_command(cfg, {"GATEWAY_DB_PASSWORD": bare_db.password})
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"schema: schema.sql applied to {bare_db.role}@127.0.0.1:5432/{bare_db.name}"
    assert bare_db.execute("SELECT count(*) FROM rmq_connections") == [(0,)]


def test_schema_command_fails_in_one_line_without_the_password(bare_db: PgDatabase, tmp_path):
    cfg = tmp_path / "pool.cfg"
    port = free_port()  # nothing listens there
    cfg.write_text(bare_db.config_lines(port))
    done = _schema_command(cfg, {"GATEWAY_DB_PASSWORD": bare_db.password})
    assert done.returncode == 1
    assert done.stderr.startswith(f"schema: cannot connect to {bare_db.role}@127.0.0.1:{port}/{bare_db.name}: ")
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert bare_db.password not in done.stderr + done.stdout
