"""Retrying without making things worse: a retry budget, and exponential backoff.

A retry budget: retries stay a bounded share of the traffic.

Each publish attempt (one message, or one group-committed batch of them)
deposits ``ratio`` tokens; each retry (of that message or batch) spends one; ``min_per_second``
tokens flow in regardless, so a quiet gateway can still retry. When a broker
flaps, the retries it causes cannot multiply the load on the brokers (the
approach of Finagle's and Envoy's retry budgets).
"""

from __future__ import annotations

import random
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


class Backoff:
    """Exponential backoff with jitter: waits from ``start`` doubling up to ``maximum``.

    The jitter (each wait drawn from ``[1 - jitter, 1]`` of its step) keeps the
    workers and pools that lost the same broker from all retrying in step.
    """

    def __init__(self, start: float, maximum: float, jitter: float = 0.5):
        self.start = start
        self.maximum = maximum
        self.jitter = jitter
        self._step = start

    def next(self) -> float:
        """Seconds to wait before the next attempt; the step after doubles."""
        delay = self._step * random.uniform(1.0 - self.jitter, 1.0) if self.jitter else self._step
        self._step = min(self._step * 2, self.maximum)
        return delay

    @property
    def step(self) -> float:
        """The step the next wait is drawn from (for a log line)."""
        return self._step

    def reset(self) -> None:
        """An attempt succeeded: the next failure waits ``start`` again."""
        self._step = self.start
