"""Rise/fall health of one broker (no I/O)."""

import time

from app.amqp.health import DOWN, UP, BrokerHealth


def _down_health() -> BrokerHealth:
    health = BrokerHealth("b", rise=3, fall=2)
    health.record_connected()
    health.record_failure("one")
    health.record_failure("two")
    assert health.state == DOWN
    return health


def test_fall_failures_take_it_down_and_rise_probes_bring_it_back():
    health = _down_health()
    health.record_probe_ok()
    health.record_probe_ok()
    assert health.state == DOWN
    health.record_probe_ok()
    assert health.state == UP


def test_a_failure_of_work_begun_before_the_broker_rose_is_not_counted():
    health = _down_health()
    stuck_since = time.monotonic()  # a publish caught in the outage
    for _ in range(3):
        health.record_probe_ok()
    assert health.state == UP
    # Its confirm times out only now, after the broker came back: old news.
    health.record_failure("publish not confirmed in time", began=stuck_since)
    health.record_failure("publish not confirmed in time", began=stuck_since)
    assert health.state == UP and health.failures == 0
    # The same failure of a publish begun after it rose does count.
    health.record_failure("publish not confirmed in time", began=time.monotonic())
    health.record_failure("publish not confirmed in time", began=time.monotonic())
    assert health.state == DOWN
