"""Per-queue circuits: a queue that stops confirming fails fast, without taking its broker down.

A confirm timeout is either the broker's (it stalls: every queue on it stops
confirming) or one queue's (a quorum queue without its majority accepts
publishes and never confirms them, while the broker's other queues do). When
messages time out while another queue of the same route got a confirm since
they were sent, the timeout is the queue's: its circuit opens for
``QUEUE_CIRCUIT_OPEN`` seconds, during which its publishes are answered at once
``503 queue_unavailable`` (with ``Retry-After``) instead of each holding a client
for the full confirm timeout, and the broker's health is left alone (it would
otherwise be marked down for every queue, then up again, and so on). After that
one trial publish goes through (half-open): a confirm closes the circuit, another
timeout opens it again. With nothing else confirming, the timeout stays the
broker's, as before.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from app.core.errors import QueueUnavailable

# Queues whose last confirm is remembered; older entries are dropped past this
# (a route that publishes to unbounded queue names must not grow without end).
_REMEMBERED = 4096


@dataclass
class _Circuit:
    open_until: float
    trial_since: float | None = None  # a trial publish is in flight since then


class QueueCircuits:
    """The circuits of one lane's queues (one per worker; no I/O, no greenlets)."""

    def __init__(self, open_for: float, confirm_timeout: float):
        self.open_for = open_for
        self.confirm_timeout = confirm_timeout
        self._circuits: dict[str, _Circuit] = {}
        self._last_confirm: dict[str, float] = {}

    @property
    def enabled(self) -> bool:
        return self.open_for > 0

    @property
    def any_open(self) -> bool:
        """Some queue's circuit is open or half-open (the hot path checks only then)."""
        return bool(self._circuits)

    def refusal(self, queue: str, now: float) -> QueueUnavailable | None:
        """The answer for a publish to ``queue`` while its circuit is open, else None (go ahead)."""
        circuit = self._circuits.get(queue)
        if circuit is None:
            return None
        if now < circuit.open_until:
            return QueueUnavailable(f"queue {queue!r} stopped confirming; retried in "
                                    f"{circuit.open_until - now:.1f}s")
        if circuit.trial_since is None or now - circuit.trial_since > 2 * self.confirm_timeout:
            circuit.trial_since = now  # half-open: this one publish is the trial
            return None
        return QueueUnavailable(f"queue {queue!r} stopped confirming; a trial publish is in flight")

    def record(self, confirmed: Iterable[str], timed_out: Iterable[str], sent_at: float) -> bool:
        """Book a batch's confirms and timeouts; True if the timeouts were the queues' own (not the broker's)."""
        now = time.monotonic()
        for queue in confirmed:
            self._last_confirm[queue] = now
            self._circuits.pop(queue, None)
        late = set(timed_out)
        if not late:
            return False
        others_confirmed = any(at >= sent_at for queue, at in self._last_confirm.items() if queue not in late)
        for queue in late:
            circuit = self._circuits.get(queue)
            if others_confirmed or (circuit is not None and circuit.trial_since is not None):
                self._circuits[queue] = _Circuit(now + self.open_for)
        if len(self._last_confirm) > _REMEMBERED:
            for queue, _ in sorted(self._last_confirm.items(), key=lambda item: item[1])[:_REMEMBERED // 2]:
                del self._last_confirm[queue]
        return others_confirmed

    def open_queues(self) -> list[str]:
        """The queues whose circuit is open or half-open (for /readyz and /pools)."""
        return sorted(self._circuits)
