"""Connection strings from PostgreSQL, kept live (``USE_DB,true``).

Each worker runs one :class:`DbSource` greenlet with one database connection
of its own. It LISTENs on ``rmq_connections_changed`` (sent by the trigger in
``config/schema.sql``), reads every enabled row of ``rmq_connections`` and
hands the result to :meth:`Gateway.set_connections`, which opens new ids,
moves a changed id to a fresh pool once that pool is up and drains the old
one, and drops removed ids (``404`` from then on). The table is re-read on
every notification and every ``DB_RESYNC_INTERVAL`` seconds, the safety net
for a notification that never came; the whole table is read each time, so
nothing depends on a notification's payload or on seeing every one.

Database trouble never stops publishing. Unreachable at start-up, the source
retries with backoff, logs why (database named as ``user@host:port/name``,
never the password) and ``/readyz`` answers ``503`` with the reason until a
first config is loaded. Lost later, the last good config keeps serving; on
reconnect the table is read again, so changes made meanwhile arrive then.
A row that does not parse is skipped with one log line naming its id; the
other rows load.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from typing import Any

import gevent
import psycopg2.extensions
from gevent.socket import wait_read

from app.config import ConfigError, ConnectionSpec, Settings, parse_connection
from app.core.gateway import Gateway
from app.core.lifecycle import Status
from app.core.retry import Backoff
from app.db import connection as db
from app.ops import logs, metrics

log = logging.getLogger(__name__)

CHANNEL = "rmq_connections_changed"
QUERY = ("SELECT connection_id, primary_url, backup_url FROM rmq_connections "
         "WHERE enabled ORDER BY connection_id")
# A changed id keeps its old pool until the new one is up, at most this long,
# so that the change still lands within the 2 s promise.
SWITCH_WARMUP = 1.5
RECONNECT_BACKOFF_START = 0.1  # seconds before the first reconnect
_REMIND_EVERY = 60.0  # seconds between repeated warnings while the database stays away
_UNDEFINED_TABLE = "42P01"

Row = tuple[str, str | None, str | None]


def _shown(conn_id: str) -> str:
    # Ids come from a table anyone with write access fills: keep log lines bounded.
    return repr(conn_id if len(conn_id) <= 80 else conn_id[:80] + "...")


def _passwords_in(text: str) -> list[str]:
    """The passwords written in a broker address (or a ``;`` list of them), raw and decoded."""
    found: set[str] = set()
    for url in text.split(";"):
        userinfo, at, _ = url.split("://", 1)[-1].rpartition("@")
        _, colon, password = userinfo.partition(":")
        if at and colon and password:
            found.update((password, urllib.parse.unquote(password)))
    return sorted(found)


def specs_from_rows(rows: Iterable[Row]) -> tuple[list[ConnectionSpec], dict[str, str]]:
    """Parse table rows into specs; rows that do not parse go to ``skipped`` (id -> reason)."""
    specs: list[ConnectionSpec] = []
    skipped: dict[str, str] = {}
    for conn_id, primary, backup in rows:
        urls = [primary or "", backup or ""]
        try:
            specs.append(parse_connection(conn_id, urls))
        except ValueError as exc:
            # The parser's messages quote no part of an address (a password
            # may be anywhere in it); the log redactor and status() mask the
            # row's passwords all the same.
            skipped[conn_id] = str(exc)
    return specs, skipped


def secrets_of(settings: Settings, specs: Sequence[ConnectionSpec], rows: Iterable[Row] = ()) -> list[str]:
    """Every broker password in the specs and in the raw rows, for the log redactor."""
    found = settings.replace(connections=tuple(specs)).secrets()
    for _, primary, backup in rows:
        for url in (primary or "", backup or ""):
            found.extend(_passwords_in(url))
    return found


class DbSource:
    """Keeps one worker's gateway in step with the ``rmq_connections`` table."""

    name = "config_source"  # its part of /readyz

    def __init__(self, settings: Settings, gateway: Gateway):
        self.settings = settings
        self.gateway = gateway
        self.database = db.display(settings)
        self.loaded = False  # a config has been read at least once
        self.connected = False
        self.skipped: dict[str, str] = {}
        self.last_error: str | None = None
        self.last_sync: float | None = None  # wall clock, for /readyz
        self.syncs = 0
        self._conn: psycopg2.extensions.connection | None = None
        self._greenlet: gevent.Greenlet | None = None
        self._failing_since: float | None = None
        self._last_warning = 0.0

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Start the source's greenlet (in the worker, never the master)."""
        db.ensure_cooperative()
        log.info("connection ids come from PostgreSQL %s, table rmq_connections", self.database,
                 extra={"event": "config_source", "database": self.database})
        self._greenlet = gevent.spawn(self._run)

    @property
    def running(self) -> bool:
        """Started and not stopped."""
        return self._greenlet is not None

    def stop(self, timeout: float = 2.0) -> None:
        """Stop listening and close the database connection."""
        greenlet, self._greenlet = self._greenlet, None
        if greenlet is not None:
            greenlet.kill(block=True, timeout=timeout)
        self._disconnect()

    # -- the loop --------------------------------------------------------------

    def _run(self) -> None:
        backoff = Backoff(RECONNECT_BACKOFF_START, self.settings.db_reconnect_backoff_max)
        while True:
            try:
                self._connect()
                self._sync("connect")
                backoff.reset()  # only once the table was read: a missing table backs off too
                self._recovered()
                self._listen()
            except db.DatabaseError as exc:
                self._failed(self._explain(exc), backoff.step)
            except Exception as exc:  # a bug must not end live config for good: say so, retry
                log.exception("unexpected error in the PostgreSQL config source",
                              extra={"event": "config_source_error"})
                self._failed(f"unexpected {type(exc).__name__}", backoff.step)
            gevent.sleep(backoff.next())

    def _connect(self) -> None:
        self._disconnect()
        conn = db.connect(self.settings)
        self._conn = conn
        # LISTEN before the first read: a change committed in between is not missed.
        with db.deadline(self.settings.db_timeout, f"LISTEN on {self.database}"), conn.cursor() as cur:
            cur.execute(f"LISTEN {CHANNEL}")
        self.connected = True

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        self.connected = False
        db.close_quietly(conn)

    def _listen(self) -> None:
        """Wait for notifications; re-read on each and every resync interval. Returns only by raising."""
        conn = self._conn
        assert conn is not None
        next_sync = time.monotonic() + self.settings.db_resync_interval
        while True:
            if conn.notifies:
                # Cleared before the read: one that comes during it triggers another.
                del conn.notifies[:]
                self._sync("notification")
                next_sync = time.monotonic() + self.settings.db_resync_interval
                continue
            remaining = next_sync - time.monotonic()
            if remaining <= 0:
                self._sync("periodic")
                next_sync = time.monotonic() + self.settings.db_resync_interval
                continue
            try:
                wait_read(conn.fileno(), timeout=remaining)  # cooperative select()
            except TimeoutError:
                continue
            with db.deadline(self.settings.db_timeout, f"reading notifications from {self.database}"):
                conn.poll()  # raises if the server went away

    def _sync(self, trigger: str) -> None:
        """Read the enabled rows and make the gateway's routes match them."""
        assert self._conn is not None
        with db.deadline(self.settings.db_timeout, f"reading rmq_connections from {self.database}"), \
                self._conn.cursor() as cur:
            cur.execute(QUERY)
            rows: list[Row] = cur.fetchall()
        specs, skipped = specs_from_rows(rows)
        logs.register_secrets(secrets_of(self.settings, specs, rows))
        self._report_skipped(skipped)
        before = {conn_id: route.spec for conn_id, route in self.gateway.routes.items()}
        try:
            self.gateway.set_connections(specs, warmup=SWITCH_WARMUP if self.loaded else 0.0)
        except ConfigError as exc:
            # e.g. more rows than MAX_CONNECTION_IDS: keep serving what we have, say why.
            log.error("rmq_connections not applied: %s", exc, extra={"event": "config_rejected"})
            return
        self._report_changes(trigger, before, specs)
        self.loaded = True
        self.last_sync = time.time()
        self.syncs += 1
        metrics.CONFIG_SYNCS.labels(trigger).inc()
        metrics.CONFIG_DB_UP.labels(self.database).set(1)

    # -- reporting ---------------------------------------------------------------

    def _explain(self, exc: db.DatabaseError) -> str:
        reason = logs.redact(str(exc))
        if exc.pgcode == _UNDEFINED_TABLE:
            reason += " (apply config/schema.sql: `make schema`)"
        return reason

    def _failed(self, reason: str, backoff: float) -> None:
        self._disconnect()
        now = time.monotonic()
        first = self._failing_since is None
        if first:
            self._failing_since = now
        changed, self.last_error = reason != self.last_error, reason
        metrics.CONFIG_DB_RETRIES.inc()
        metrics.CONFIG_DB_UP.labels(self.database).set(0)
        if not (first or changed or now - self._last_warning >= _REMIND_EVERY):
            log.debug("PostgreSQL still unreachable: %s", reason, extra={"event": "config_db_retry"})
            return
        self._last_warning = now
        down_for = now - (self._failing_since or now)
        if self.loaded:
            what = f"serving the last config ({len(self.gateway.routes)} connection ids) meanwhile"
        else:
            what = "no connection ids loaded yet (/readyz answers 503)"
        log.warning("PostgreSQL %s: %s; %s; retrying (next in up to %.1fs%s)",
                    self.database, reason, what, backoff,
                    f", failing for {down_for:.0f}s" if down_for >= 1 else "",
                    extra={"event": "config_db_down", "database": self.database})

    def _recovered(self) -> None:
        if self._failing_since is not None:
            log.info("PostgreSQL %s is back after %.1fs; config re-read", self.database,
                     time.monotonic() - self._failing_since,
                     extra={"event": "config_db_up", "database": self.database})
        self._failing_since = None
        self.last_error = None

    def _report_skipped(self, skipped: dict[str, str]) -> None:
        # One line per bad row when it appears or its problem changes, not on every re-read.
        for conn_id, reason in sorted(skipped.items()):
            if self.skipped.get(conn_id) != reason:
                log.error("rmq_connections row %s skipped: %s", _shown(conn_id), reason,
                          extra={"event": "config_row_skipped", "conn_id": conn_id[:80]})
        for conn_id in sorted(self.skipped.keys() - skipped.keys()):
            log.info("rmq_connections row %s no longer skipped", _shown(conn_id),
                     extra={"event": "config_row_fixed", "conn_id": conn_id[:80]})
        self.skipped = skipped
        metrics.CONFIG_ROWS_SKIPPED.set(len(skipped))

    def _report_changes(self, trigger: str, before: dict[str, ConnectionSpec],
                        specs: Sequence[ConnectionSpec]) -> None:
        after = {spec.conn_id: spec for spec in specs}
        added = sorted(after.keys() - before.keys())
        removed = sorted(before.keys() - after.keys())
        changed = sorted(k for k in after.keys() & before.keys() if after[k] != before[k])
        if self.loaded and not (added or removed or changed):
            return
        log.info("connection ids from PostgreSQL (%s): %d in use; added %s, changed %s, removed %s",
                 trigger, len(after), added or "none", changed or "none", removed or "none",
                 extra={"event": "config_change", "trigger": trigger,
                        "added": added, "changed": changed, "removed": removed})

    def status(self) -> Status:
        """Its part of /readyz (no say in readiness: the gateway's ids have)."""
        return Status(None, self.view())

    def view(self) -> dict[str, Any]:
        """The source's state: no secrets."""
        if not self.loaded:
            state = "connecting"
            detail = "waiting for the first config from PostgreSQL"
        elif self.connected and self.last_error is None:
            state = "live"
            detail = "listening for changes"
        else:
            state = "disconnected"
            detail = "PostgreSQL unreachable: serving the last config read; changes wait until it is back"
        if self.last_error and state != "live":
            detail += f" ({self.last_error})"
        return {
            "type": "postgresql",
            "database": self.database,
            "state": state,
            "detail": detail,
            "loaded": self.loaded,
            "last_sync": (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.last_sync))
                          if self.last_sync else None),
            "last_error": self.last_error,
            "skipped_rows": {conn_id: logs.redact(reason) for conn_id, reason in self.skipped.items()},
        }

