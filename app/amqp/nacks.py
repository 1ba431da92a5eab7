"""When a broker's nacks are a connection's fault, and when they are a queue's.

A nack is normally the message's fate: a queue full with ``x-overflow:
reject-publish`` nacks it on every connection, and reconnecting changes
nothing. But a channel can also be broken on its own: after a quorum queue's
leader was killed, channels opened within a fraction of a second of the kill
nacked every later publish (RabbitMQ 3.10) while fresh ones were fine. So,
per lane (the ids of one primary and backup pair, :mod:`app.core.lane`):

* a connection that nacked ``NACK_RETIRE_AFTER`` messages in a row, with no
  ack between, is retired (closed cleanly, replaced), and the nacked messages
  of that batch are retried once on another connection;
* if such a retry is nacked again on a connection opened *after* the streak
  began (so not one broken by the same event), the nack is the queue's: for
  ``NACK_QUEUE_HOLD`` seconds that queue's nacks retire no connection and are
  not retried. A full queue thus costs one reconnect and one retry per hold
  period, not a reconnect every few messages; a broken channel is retired
  after a handful of nacks, whatever the queue.

Nacks are logged, at most one line per ``LOG_INTERVAL`` per lane with the
count since the last line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from app.amqp.connection import BrokerConnection

log = logging.getLogger(__name__)

LOG_INTERVAL = 5.0  # seconds between two nack log lines of one lane


class NackJudge:
    """The nack rules of one lane (see the module docstring)."""

    def __init__(self, name: str, retire_after: int, queue_hold: float):
        self.name = name  # the lane's, in log lines
        self.retire_after = retire_after  # 0: never retire for nacks
        self.queue_hold = queue_hold
        self._queue_fate: dict[str, float] = {}  # queue -> monotonic time its nacks are its own until
        self._unlogged = 0
        self._logged_at = float("-inf")

    def is_queue_fate(self, queue: str) -> bool:
        """The queue's nacks are known to be its own (full queue), for now."""
        until = self._queue_fate.get(queue)
        if until is None:
            return False
        if time.monotonic() < until:
            return True
        del self._queue_fate[queue]
        return False

    def should_retire(self, conn: BrokerConnection, nacked_queues: Iterable[str]) -> bool:
        """After a batch with nacks on ``conn``: are they the connection's (retire it)?"""
        if not self.retire_after or conn.nack_streak < self.retire_after:
            return False
        return not all(self.is_queue_fate(queue) for queue in nacked_queues)

    def nacked_again(self, queue: str, conn: BrokerConnection, streak_began: float) -> None:
        """A message retried after a nack streak was nacked again on ``conn``."""
        if conn.created_at > streak_began and queue not in self._queue_fate:
            self._queue_fate[queue] = time.monotonic() + self.queue_hold
            log.info("nacks on queue %s are the queue's (nacked again on a fresh connection to %s): "
                     "they retire no connection for %gs", queue, conn.address.display, self.queue_hold,
                     extra={"event": "nacks_are_the_queues", **conn.log_fields})

    def note(self, conn: BrokerConnection, count: int, queues: Iterable[str]) -> None:
        """Count ``count`` nacks on ``conn``; log them, at most once per LOG_INTERVAL."""
        self._unlogged += count
        now = time.monotonic()
        if now - self._logged_at < LOG_INTERVAL:
            return
        names = sorted(set(queues))
        log.warning("broker %s nacked %d message(s) of %s since the last report (queues %s)",
                    conn.address.display, self._unlogged, self.name, ", ".join(names[:5]),
                    extra={"event": "nacked", "nacks": self._unlogged, **conn.log_fields})
        self._unlogged = 0
        self._logged_at = now
