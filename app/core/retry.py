"""A retry budget: retries stay a bounded share of the traffic.

Each publish attempt (one message, or one group-committed batch of them)
deposits ``ratio`` tokens; each retry (of that message or batch) spends one; ``min_per_second``
tokens flow in regardless, so a quiet gateway can still retry. When a broker
flaps, the retries it causes cannot multiply the load on the brokers (the
approach of Finagle's and Envoy's retry budgets).
"""

from __future__ import annotations

import time


class RetryBudget:
    """Token bucket of retries; ``allow()`` says whether one more may run."""

    def __init__(self, ratio: float, min_per_second: float, window: float = 10.0):
        self.ratio = ratio
        self.min_per_second = min_per_second
        self.capacity = max(min_per_second * window, 1.0)
        self._balance = self.capacity
        self._refilled = time.monotonic()

    def deposit(self) -> None:
        """A publish was attempted: it earns ``ratio`` retries."""
        self._balance = min(self._balance + self.ratio, self.capacity)

    def allow(self) -> bool:
        """Spend one retry if the budget has it."""
        now = time.monotonic()
        self._balance = min(self._balance + (now - self._refilled) * self.min_per_second, self.capacity)
        self._refilled = now
        if self._balance >= 1.0:
            self._balance -= 1.0
            return True
        return False
