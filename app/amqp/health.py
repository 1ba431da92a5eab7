"""Per-broker health with HAProxy-style rise/fall thresholds.

States: ``unknown`` (start-up, nothing learned yet), ``up`` and ``down``.

* The first successful connection at start-up makes an unknown broker ``up``
  at once, so the gateway serves as soon as a broker is there.
* ``fall`` consecutive failures (a failed connect, a failed probe, a
  connection lost or a confirm timed out under a publish) make it ``down``.
* A down broker becomes ``up`` only after ``rise`` consecutive good *probes*,
  which come one per health interval: a broker that merely accepts one lucky
  connection does not get the traffic back.
* A success while up (a confirmed publish) resets the failure count.
* A failure of something begun before the broker last came up (a publish
  stuck through the outage, timing out just after the broker rose again) is
  old news: it does not count against the broker's fresh state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

UNKNOWN, UP, DOWN = "unknown", "up", "down"


class BrokerHealth:
    """Rise/fall state of one broker; listeners hear every state change."""

    def __init__(self, name: str, rise: int, fall: int, log_fields: dict[str, str] | None = None):
        self.name = name
        self.log_fields = log_fields or {}  # e.g. conn_id and role, added to each log line
        self.rise = rise
        self.fall = fall
        self.state = UNKNOWN
        self.successes = 0
        self.failures = 0
        self.last_error: str | None = None
        self.changed_at = time.monotonic()
        self._listeners: list[Callable[[BrokerHealth, str], None]] = []

    def subscribe(self, listener: Callable[[BrokerHealth, str], None]) -> None:
        """Call ``listener(health, old_state)`` after each state change."""
        self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[BrokerHealth, str], None]) -> None:
        """Stop calling ``listener`` (a connection id that let go of this pool)."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    @property
    def is_up(self) -> bool:
        return self.state == UP

    @property
    def is_down(self) -> bool:
        return self.state == DOWN

    def record_failure(self, reason: str, began: float | None = None) -> None:
        """A connect, probe or publish (begun at monotonic time ``began``) failed on this broker."""
        if began is not None and self.state == UP and began < self.changed_at:
            return
        self.last_error = reason
        self.successes = 0
        self.failures += 1
        if self.state != DOWN and (self.failures >= self.fall or self.state == UNKNOWN):
            self._set(DOWN, reason)

    def record_connected(self) -> None:
        """A connection opened; enough to bring an unknown broker up."""
        if self.state == UNKNOWN:
            self.failures = 0
            self._set(UP, "first connection")

    def record_probe_ok(self) -> None:
        """A periodic health probe succeeded; counts towards ``rise``."""
        self.failures = 0
        if self.state == UP:
            return
        self.successes += 1
        if self.state == UNKNOWN or self.successes >= self.rise:
            self._set(UP, f"{self.successes} good probes in a row")

    def record_ok(self) -> None:
        """Traffic succeeded; clears the failure count but does not raise a down broker."""
        if self.state == UP:
            self.failures = 0

    def _set(self, state: str, why: str) -> None:
        old, self.state = self.state, state
        self.successes = 0
        self.changed_at = time.monotonic()
        level = logging.WARNING if state == DOWN else logging.INFO
        log.log(level, "broker %s is %s (%s)", self.name, state, why,
                extra={"event": f"broker_{state}", "broker": self.name, **self.log_fields})
        for listener in list(self._listeners):  # one may unsubscribe meanwhile
            listener(self, old)
