"""PostgreSQL connections: parameters from the settings, cooperative, bounded in time.

psycopg2 is made cooperative by psycogreen's wait callback: gunicorn's
``post_fork`` installs it in each worker before any connection, and
:func:`ensure_cooperative` installs it wherever it is still missing (tests,
the schema command). libpq's own ``connect_timeout`` does not apply to a
cooperative (non-blocking) connect, so every call runs under
:func:`deadline`, a ``gevent.Timeout``; a connection it interrupts is broken
(psycopg2 marks it so) and must be closed.

Every failure becomes :class:`DatabaseError`, one line naming the database
as ``user@host:port/name``, never the password.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import gevent
import psycopg2
import psycopg2.extensions

from app.config import Settings
from app.core.errors import StartupError, describe_exception

APPLICATION_NAME = "amqp-publish-gateway"


class DatabaseError(StartupError):
    """PostgreSQL could not be reached or refused a statement; ``str()`` is one safe line."""

    def __init__(self, message: str, pgcode: str | None = None):
        super().__init__(message)
        self.pgcode = pgcode  # SQLSTATE when the server answered, e.g. 42P01 (no such table)


def ensure_cooperative() -> None:
    """Install psycogreen's gevent wait callback unless one is already set."""
    if psycopg2.extensions.get_wait_callback() is None:
        from psycogreen.gevent import patch_psycopg

        patch_psycopg()


def display(settings: Settings) -> str:
    """The database as safe to log: ``user@host:port/name``."""
    return f"{settings.db_username}@{settings.db_host}:{settings.db_port}/{settings.db_name}"


@contextlib.contextmanager
def deadline(seconds: float, what: str) -> Iterator[None]:
    """Run the block within ``seconds``; map every database failure to :class:`DatabaseError`."""
    timer = gevent.Timeout(seconds)
    timer.start()
    try:
        yield
    except gevent.Timeout as exc:
        if exc is not timer:
            raise
        raise DatabaseError(f"{what}: no answer within {seconds:g}s") from None
    except psycopg2.Error as exc:
        raise DatabaseError(f"{what}: {describe_exception(exc)}", exc.pgcode) from None
    except OSError as exc:
        raise DatabaseError(f"{what}: {describe_exception(exc)}") from None
    finally:
        timer.close()


def connect(settings: Settings, autocommit: bool = True) -> psycopg2.extensions.connection:
    """Open one cooperative connection to the configured database, within ``DB_TIMEOUT``."""
    ensure_cooperative()
    params: dict[str, object] = {
        "host": settings.db_host,
        "port": settings.db_port,
        "dbname": settings.db_name,
        "user": settings.db_username,
        "connect_timeout": max(2, math.ceil(settings.db_timeout)),  # libpq's minimum is 2
        "application_name": APPLICATION_NAME,
    }
    if settings.db_password:
        params["password"] = settings.db_password  # else libpq's PGPASSWORD or ~/.pgpass
    with deadline(settings.db_timeout, f"cannot connect to {display(settings)}"):
        conn = psycopg2.connect(**params)
    conn.autocommit = autocommit
    return conn


def close_quietly(conn: psycopg2.extensions.connection | None) -> None:
    """Close a connection that may already be broken."""
    if conn is not None:
        with contextlib.suppress(psycopg2.Error):
            conn.close()
