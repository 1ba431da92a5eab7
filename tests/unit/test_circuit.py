"""Per-queue circuits, the bookkeeping; on a real cluster: tests/cluster (no quorum, other queues confirming)."""

import time

from app.core.circuit import QueueCircuits
from app.core.errors import QueueUnavailable


def test_timeouts_are_the_queues_when_another_queue_confirmed_since():
    circuits = QueueCircuits(open_for=5, confirm_timeout=1)
    sent = time.monotonic()
    assert circuits.record(["good"], ["stuck"], sent) is True
    now = time.monotonic()
    assert isinstance(circuits.refusal("stuck", now), QueueUnavailable)
    assert circuits.refusal("good", now) is None
    # After the open period one trial goes through; the next waits for its outcome.
    later = now + 5.1
    assert circuits.refusal("stuck", later) is None
    assert isinstance(circuits.refusal("stuck", later), QueueUnavailable)
    circuits.record(["stuck"], [], later)  # the trial confirmed: closed
    assert circuits.refusal("stuck", later) is None and not circuits.any_open


def test_timeouts_with_nothing_else_confirming_are_the_brokers():
    circuits = QueueCircuits(open_for=5, confirm_timeout=1)
    assert circuits.record([], ["a", "b"], time.monotonic()) is False
    assert circuits.refusal("a", time.monotonic()) is None


def test_a_failed_trial_opens_the_circuit_again():
    circuits = QueueCircuits(open_for=1, confirm_timeout=1)
    circuits.record(["good"], ["stuck"], time.monotonic())
    later = time.monotonic() + 1.1
    assert circuits.refusal("stuck", later) is None  # the trial
    circuits.record([], ["stuck"], later)
    assert isinstance(circuits.refusal("stuck", time.monotonic()), QueueUnavailable)
