"""Failover to the backup and fail-back to the primary, through real broken sockets.

Primary and backup are two vhosts of the local RabbitMQ behind two TCP proxies,
so each "broker" can be cut, blackholed or refused on its own and the queue
each message landed in says which broker took it. Health timings are the
defaults here: these tests check the promises in the contract.
"""

import time

import gevent
import pytest

from app.core.errors import BrokerUnavailable, GatewayError
from tests.support.burst import Burst, account, in_process
from tests.support.settings import make_settings
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

DEFAULT_HEALTH = "HEALTH_INTERVAL,1\nHEALTH_RISE,3\nHEALTH_FALL,2\nCONFIRM_TIMEOUT,5\nPUBLISH_TIMEOUT,8"


def _spec(primary, backup, vhosts) -> str:
    return (f"guest:guest@127.0.0.1:{primary.port}/{vhosts['primary'].name},"
            f"guest:guest@127.0.0.1:{backup.port}/{vhosts['backup'].name}")


def _first_after(times: dict[int, float], seqs: set[int], after: float) -> float:
    """Seconds from ``after`` to the first acknowledgement among ``seqs`` (inf if none)."""
    return min((t for seq, t in times.items() if seq in seqs and t >= after), default=float("inf")) - after


@pytest.mark.parametrize("fault", ["refuse", "cut_and_refuse_later", "blackhole"])
def test_primary_fault_moves_traffic_to_backup_and_back(fault, start_gateway, two_brokers, vhosts):
    primary, backup, rp, rb, queue = two_brokers
    gw = start_gateway(make_settings({"x": _spec(primary, backup, vhosts)}, DEFAULT_HEALTH))
    route = gw.route("x")
    wait_until(lambda: route.ready and route.active_role == "primary", 5)
    burst = Burst(in_process(gw, "x", queue)).start()
    gevent.sleep(1)

    broke_at = time.monotonic()
    if fault == "refuse":
        primary.refuse()
    elif fault == "cut_and_refuse_later":
        primary.cut()  # connections reset, listener still up: a blip first
        gevent.sleep(0.5)
        primary.refuse()
    else:
        primary.blackhole()
    # Open loop: a fresh publish every 0.25 s, as new requests keep arriving
    # (the burst's own publishers may all be caught in the stall).
    probes: dict[int, float] = {}

    def probe(seq: int) -> None:
        if in_process(gw, "x", queue)(b"%d" % seq) is None:
            probes[seq] = time.monotonic()

    prober = [gevent.spawn_later(0.25 * i, probe, 1_000_000 + i) for i in range(24)]
    wait_until(lambda: route.active_role == "backup", 5, message="failover within 5 s")
    gevent.sleep(1)
    primary.restore()
    restored_at = time.monotonic()
    wait_until(lambda: route.active_role == "primary", 30, message="fail-back within 30 s")
    gevent.sleep(1)
    burst.stop()
    gevent.joinall(prober, timeout=15)
    burst.ok.update(probes)
    burst.sent += len(prober)

    in_primary, in_backup = rp.bodies(queue), rb.bodies(queue)
    counts = account(burst, in_primary, in_backup)
    assert counts["lost"] == 0, counts
    assert counts["refused_but_delivered"] == 0, counts
    backup_seqs = {int(b) for b in in_backup}
    primary_seqs = {int(b) for b in in_primary}
    assert _first_after(probes, backup_seqs, broke_at) < 5.0  # new publishes bypass the primary
    assert _first_after(burst.ok, primary_seqs, restored_at) < 30.0
    # After fail-back the primary takes the traffic again.
    last = max(seq for seq in burst.ok if seq < 1_000_000)  # the burst's, not a probe's
    assert last in primary_seqs
    if fault == "blackhole":
        # Only publishes caught in the stall may be answered 503; none falsely 200.
        assert all(code in ("confirm_timeout", "connection_lost", "broker_unavailable", "pool_timeout")
                   for _, code in burst.errors.values())
    else:
        assert counts["acknowledged"] >= counts["sent"] * 0.8, counts


def test_both_brokers_gone_answers_503_within_10s(start_gateway, two_brokers, vhosts):
    primary, backup, _rp, _rb, queue = two_brokers
    gw = start_gateway(make_settings({"x": _spec(primary, backup, vhosts)}, DEFAULT_HEALTH))
    wait_until(lambda: gw.ready, 5)
    primary.blackhole()
    backup.blackhole()
    started = time.monotonic()
    with pytest.raises(Exception) as info:
        gw.publish("x", queue, b"nowhere")
    assert time.monotonic() - started < 10
    assert info.value.status == 503
    primary.refuse()
    backup.refuse()
    wait_until(lambda: not gw.route("x").ready, 10)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable):
        gw.publish("x", queue, b"nowhere")
    assert time.monotonic() - started < 1.0  # known down: fail fast


def test_primary_down_at_start_serves_from_backup(start_gateway, two_brokers, vhosts):
    primary, backup, rp, rb, queue = two_brokers
    primary.refuse()
    gw = start_gateway(make_settings({"x": _spec(primary, backup, vhosts)}, DEFAULT_HEALTH))
    wait_until(lambda: gw.ready, 5)
    gw.publish("x", queue, b"to-backup")
    assert rb.bodies(queue) == [b"to-backup"] and rp.bodies(queue) == []
    primary.restore()
    wait_until(lambda: gw.route("x").active_role == "primary", 30)
    gw.publish("x", queue, b"to-primary")
    assert rp.bodies(queue) == [b"to-primary"]


def test_flapping_primary_needs_rise_probes_before_traffic(start_gateway, two_brokers, vhosts):
    primary, backup, _rp, _rb, _queue = two_brokers
    gw = start_gateway(make_settings({"x": _spec(primary, backup, vhosts)}, DEFAULT_HEALTH))
    route = gw.route("x")
    wait_until(lambda: route.active_role == "primary", 5)
    primary.refuse()
    wait_until(lambda: route.active_role == "backup", 5)
    primary.restore()
    back = time.monotonic()
    wait_until(lambda: route.pools[0].open_count > 0, 5, message="primary reconnected")
    assert route.active_role == "backup"  # one lucky connect is not enough
    wait_until(lambda: route.active_role == "primary", 30)
    assert time.monotonic() - back >= 2.0  # rise = 3 probes, 1 s apart


def test_a_publish_lost_after_sending_stays_cannot_know_when_every_retry_is_refused(start_gateway, two_brokers,
                                                                                     vhosts):
    primary, backup, rp, _rb, queue = two_brokers
    gw = start_gateway(make_settings({"x": _spec(primary, backup, vhosts)}))
    route = gw.route("x")
    wait_until(lambda: route.ready and route.active_role == "primary" and all(p.open_count for p in route.pools), 5)
    primary.mute()  # the broker takes the message; its confirm never comes back
    backup.refuse()  # and no retry anywhere can send it again
    job = gevent.spawn(gw.publish, "x", queue, b"maybe")
    gevent.sleep(0.5)
    primary.refuse()  # the connection dies under the publish, reconnects are refused
    job.join(timeout=10)
    assert job.dead and isinstance(job.exception, GatewayError)
    primary.restore()
    assert rp.bodies(queue) == [b"maybe"]  # it is in the primary's queue...
    # ... so the answer must not say it is not: "cannot know", never broker_unavailable.
    assert job.exception.code == "connection_lost", job.exception
