"""Waiting for a condition, cooperatively (the tests run under gevent)."""

from __future__ import annotations

import time

import gevent


def wait_until(predicate, timeout: float, interval: float = 0.05, message: str = "condition") -> float:
    """Wait cooperatively until ``predicate()``; return the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{message} not met within {timeout}s")
        gevent.sleep(interval)
    return time.monotonic() - start
