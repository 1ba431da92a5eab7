"""Fixtures of the PostgreSQL tests: a database of each test's own, the source running in-process."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import psycopg2
import pytest
from psycogreen.gevent import patch_psycopg

from app.config import Settings, settings_from_text
from app.db.schema import apply_schema
from app.http.auth import Access
from app.http.services import WorkerServices
from tests.support.pg import PG_HOST, PG_PORT, PgDatabase, admin_connection
from tests.support.proxy import TcpProxy
from tests.support.settings import FAST

# The test process runs the source in greenlets beside its own queries: both cooperative.
patch_psycopg()

# Timings for the database side: quick reconnects, and a resync slow enough
# that a change seen within 2 s was carried by NOTIFY (tests that want the
# periodic re-read set their own).
DB_FAST = "DB_TIMEOUT,1\nDB_RECONNECT_BACKOFF_MAX,0.3\nDB_RESYNC_INTERVAL,60\n"


@pytest.fixture(scope="session")
def pg_available() -> None:
    try:
        admin_connection().close()
    except psycopg2.Error as exc:
        # Loud, never a skip: these tests mean nothing without the real database.
        pytest.exit(f"PostgreSQL is not reachable on {PG_HOST}:{PG_PORT} as the test superuser "
                    f"({str(exc).strip().splitlines()[0]}); run `make services` (or `make test`, which does)",
                    returncode=3)


@pytest.fixture
def bare_db(pg_available: None) -> Iterator[PgDatabase]:
    """A database of the test's own, without the schema."""
    database = PgDatabase()
    yield database
    database.drop()


@pytest.fixture
def pgdb(bare_db: PgDatabase) -> PgDatabase:
    """A database of the test's own with config/schema.sql applied (by the shipped code path)."""
    apply_schema(db_settings(bare_db))
    return bare_db


@pytest.fixture
def pg_proxy(proxies: list[TcpProxy], pg_available: None) -> TcpProxy:
    """A TCP proxy in front of PostgreSQL, to cut the database for real."""
    proxy = TcpProxy(PG_PORT, PG_HOST)
    proxies.append(proxy)
    return proxy


def db_settings(database: PgDatabase, extra: str = "", port: int = PG_PORT, conns: str = "") -> Settings:
    """Gateway settings reading ``database``; the password comes from GATEWAY_DB_PASSWORD, as in Kubernetes."""
    text = "\n".join([FAST, DB_FAST, database.config_lines(port), conns, extra])
    return settings_from_text(text, "<test>", {"GATEWAY_DB_PASSWORD": database.password})


@pytest.fixture
def run_source() -> Iterator:
    """run_source(settings) -> the worker's services (gateway and DbSource), started; stopped after the test."""
    made: list[WorkerServices] = []

    def run(settings: Settings) -> WorkerServices:
        services = WorkerServices(settings, Access(None, "", False))
        made.append(services)
        services.start()
        return services

    yield run
    for services in made:
        services.stop(2.0)


@pytest.fixture
def app_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog for the ``app`` loggers, whether or not create_app turned their propagation off."""
    logger = logging.getLogger("app")
    saved = logger.level, logger.propagate
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # captured once, by the handler above
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.setLevel(saved[0])
    logger.propagate = saved[1]


def events(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    """The captured records of one event."""
    return [r for r in caplog.records if getattr(r, "event", "") == event]
