"""The health check of one pool's broker role, beside the pool rather than in it.

Every health interval the checker probes the role on a connection of its own,
outside the pool, and tells the role's :class:`~app.amqp.health.BrokerHealth`:
a pool whose connections are all lent out, or all stuck on a stalled broker,
is still checked, and a down role learns when it is back. The pool only
lends (kombu's ``resource.py`` split: lending policy in the pool, everything
else beside it).
"""

from __future__ import annotations

import logging
import time

import gevent

from app.amqp.connection import BrokerConnection
from app.amqp.health import BrokerHealth
from app.amqp.servers import ServerSet
from app.config import Settings
from app.core.errors import ConnectionCapReached, ConnectionLost, describe_exception

log = logging.getLogger(__name__)

HANDSHAKE_FLOOR = 1.0  # seconds the check's own connection may take to open, at least (within CONNECT_TIMEOUT)


class HealthChecker:
    """Probes one role's servers every ``HEALTH_INTERVAL`` and records the result in its health."""

    def __init__(self, name: str, servers: ServerSet, health: BrokerHealth, settings: Settings,
                 log_fields: dict[str, str]):
        self.name = name
        self.servers = servers
        self.health = health
        self.settings = settings
        self.log_fields = log_fields
        self.connection: BrokerConnection | None = None  # the check's own, opened on the first probe
        self.greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        """Probe in a greenlet of its own until closed."""
        self.greenlet = gevent.spawn(self._loop)

    def close(self, timeout: float = 2.0) -> gevent.Greenlet | None:
        """Stop probing; the closing of its connection, to join (None without one)."""
        if self.greenlet is not None:
            self.greenlet.kill(block=True, timeout=timeout)
        conn, self.connection = self.connection, None
        return None if conn is None else gevent.spawn(_close_quietly, conn, timeout)

    def _loop(self) -> None:
        interval = self.settings.health_interval
        next_check = time.monotonic() + interval
        while True:
            # A steady cadence: a check that timed out is followed by the next at once.
            gevent.sleep(max(next_check - time.monotonic(), 0))
            next_check = time.monotonic() + interval
            self.probe(max(interval, 0.2))

    def probe(self, timeout: float) -> None:
        """One check: open the connection if needed, probe it; never raises."""
        conn = self.connection
        try:
            if conn is None or not conn.usable:
                if conn is not None:
                    gevent.spawn(_close_quietly, conn, 0.0, abort=True)
                self.connection = conn = None
                # The handshake (five round trips) gets at least HANDSHAKE_FLOOR:
                # a sub-second health interval on a busy worker marked healthy
                # brokers down at start (a backup down, a failover to nowhere:
                # seen in tests/e2e/test_zmq.py). Bounded by CONNECT_TIMEOUT, so
                # that a blackholed broker is still found down in seconds.
                conn = BrokerConnection.open(self.servers.pick(), self.settings, f"gateway {self.name} health",
                                             timeout=min(self.settings.connect_timeout, max(timeout, HANDSHAKE_FLOOR)))
                self.connection = conn
            conn.probe(timeout)
        except ConnectionCapReached:
            return  # no slot for the check's own connection: nothing learned (the cap warns)
        except Exception as exc:
            if isinstance(exc, ConnectionLost):
                detail = exc.detail
            else:
                detail = f"unexpected error: {describe_exception(exc)}"
                log.error("unexpected error in the health check of %s: %s", self.name, detail, exc_info=True,
                          extra={"event": "pool_internal_error", **self.log_fields})
                if conn is not None:
                    conn.suspect = True  # state unknown: the next check opens a new one
            self.health.record_failure(f"health check failed: {detail}")
        else:
            self.health.record_probe_ok()


def _close_quietly(conn: BrokerConnection, timeout: float, abort: bool = False) -> None:
    """Close (or abort) the check's connection; an error there is logged, never raised."""
    try:
        if abort:
            conn.abort()
        else:
            conn.close(timeout)
    except Exception as exc:
        log.error("unexpected error closing the health check's connection %s: %s", conn.name,
                  describe_exception(exc), exc_info=True, extra={"event": "pool_internal_error"})
