"""Talking to the real PostgreSQL from tests: a database and a role of the test's own."""

from __future__ import annotations

import contextlib
import os
import uuid

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

PG_HOST = os.environ.get("TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("TEST_PG_PORT", "5432"))
# The superuser the tests create databases and roles with (scripts/ensure-services.sh sets it up).
PG_ADMIN = os.environ.get("TEST_PG_USER", "postgres")
PG_ADMIN_PASSWORD = os.environ.get("TEST_PG_PASSWORD", "postgres")


def admin_connection(dbname: str = "postgres") -> psycopg2.extensions.connection:
    conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, dbname=dbname, user=PG_ADMIN,
                            password=PG_ADMIN_PASSWORD, connect_timeout=5)
    conn.autocommit = True
    return conn


class PgDatabase:
    """A fresh database owned by a fresh login role with a unique password; ``drop()`` removes both.

    The role's password is a real secret for the tests to look for: it must
    never show up in a log line, an error or /readyz.
    """

    def __init__(self) -> None:
        suffix = uuid.uuid4().hex[:10]
        self.name = f"test_gw_{suffix}"
        self.role = f"test_gw_{suffix}"
        self.password = f"pw-{uuid.uuid4().hex}"
        conn = admin_connection()
        try:
            with conn.cursor() as cur:
                cur.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(self.role)),
                            [self.password])
                # template0: never "being accessed by other users" when others create databases too.
                cur.execute(sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE template0").format(
                    sql.Identifier(self.name), sql.Identifier(self.role)))
        finally:
            conn.close()
        self._conn: psycopg2.extensions.connection | None = None

    def config_lines(self, port: int = PG_PORT) -> str:
        """The DB_* lines of a gateway config for this database (the password goes by environment)."""
        return (f"USE_DB,true\nDB_NAME,{self.name}\nDB_USERNAME,{self.role}\n"
                f"DB_HOST_ADDRESS,{PG_HOST}\nDB_PORT,{port}\n")

    @property
    def conn(self) -> psycopg2.extensions.connection:
        """The test's own connection to the database, as its owner (not through any proxy)."""
        if self._conn is None or self._conn.closed:
            self._conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, dbname=self.name, user=self.role,
                                          password=self.password, connect_timeout=5)
            self._conn.autocommit = True
        return self._conn

    def execute(self, statement: str, params: tuple | list = ()) -> list[tuple]:
        with self.conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else []

    def insert(self, conn_id: str, primary: str, backup: str | None = None, enabled: bool = True) -> None:
        self.execute("INSERT INTO rmq_connections (connection_id, primary_url, backup_url, enabled) "
                     "VALUES (%s, %s, %s, %s)", (conn_id, primary, backup, enabled))

    def drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg2.Error):
                self._conn.close()
        conn = admin_connection()
        try:
            with conn.cursor() as cur:
                # FORCE: a gateway the test left behind must not keep the database alive.
                cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name)))
                cur.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(self.role)))
        finally:
            conn.close()
