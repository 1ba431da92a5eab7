"""Hostile load (issue 13 points 4 and 6): health stays fast, innocent publishes succeed, counted.

gunicorn with two workers and the real broker; the attackers are greenlets of
this process on loopback, each loop bounded in time. /healthz is probed like a
kubelet (a new connection each time, every 50 ms) and its p99 held to the
contract's 0.5 s; a well-behaved publisher (a new connection per publish)
runs throughout, and the queue is counted against its 200s. Each scenario adds
a row to the fault-injection table (tests/support/report.py).
"""

from __future__ import annotations

import time

import pytest

from app.http.batch import encode_batch
from tests.support import report
from tests.support.flood import Flood, Prober, ProcessProber, ensure_fd_limit, get_status, percentile
from tests.support.producer import Producer, wait_for_event
from tests.support.rabbit import AMQP_PORT
from tests.support.server import GatewayProcess, free_port, request
from tests.support.settings import FAST

pytestmark = pytest.mark.e2e

BROKER = f"guest:guest@127.0.0.1:{AMQP_PORT}/"
ATTACK_SECONDS = 12
HEALTH_P99 = 0.5  # the contract's bound
MIN_RATE_SHARE = 0.05  # of the publish rate before the flood: publishing does not stall


@pytest.fixture
def gateway(tmp_path, rabbit_available):
    made: list[GatewayProcess] = []

    def start(extra: str = "", env: dict[str, str] | None = None) -> GatewayProcess:
        proc = GatewayProcess(tmp_path, FAST + extra + f"\nRMQ_CONN_STR,a,{BROKER}\n", env=env)
        made.append(proc)
        return proc.start()

    yield start
    for proc in made:
        proc.stop()


def _attack(gw: GatewayProcess, rabbit, queue: str, name: str, make_attack) -> dict[str, float]:
    """Run ``make_attack()`` for ATTACK_SECONDS with a health prober and a publisher; count and report."""
    body = f"a|{queue}|good".encode()
    # The kubelet is not in the attacker's process: the probe runs in one of its own.
    health = ProcessProber(gw.port, "/healthz", 0.05, str(gw.log_path.with_name("probes.txt")))
    publisher = Prober(lambda: get_status(gw.port, "POST", "/publish", body, timeout=10) == 200, interval=0.0)
    time.sleep(1)
    baseline_ok, baseline_started = publisher.ok, time.monotonic()
    time.sleep(2)
    baseline_rate = (publisher.ok - baseline_ok) / (time.monotonic() - baseline_started)
    attack = make_attack()
    # Measured once the attacker holds its connections: the burst that opens
    # them (thousands of SYNs within a second, beyond the listen backlog) is a
    # connection-rate attack of its own; its worst probe is reported apart.
    ramp_started = time.monotonic()
    while getattr(attack, "held", attack.count) < 0.95 * attack.count and time.monotonic() - ramp_started < 10:
        time.sleep(0.1)
    time.sleep(0.5)
    ok_before, failed_before = publisher.ok, publisher.failed
    started = time.monotonic()
    ramp_worst = max(health.latencies(ramp_started, started), default=0.0)
    time.sleep(ATTACK_SECONDS)
    during = health.latencies(started, time.monotonic())
    ok_during, failed_during = publisher.ok - ok_before, publisher.failed - failed_before
    elapsed = time.monotonic() - started
    attack.stop()
    health.stop()
    publisher.stop()
    p50, p99 = percentile(during, 0.5), percentile(during, 0.99)
    rate = ok_during / elapsed
    found = rabbit.count(queue)
    print(f"{name}: /healthz n={len(during)} p50 {p50 * 1000:.1f} ms p99 {p99 * 1000:.1f} ms "
          f"max {max(during) * 1000:.1f} ms (opening burst: worst {ramp_worst * 1000:.0f} ms); "
          f"publishes {rate:.0f}/s during vs {baseline_rate:.0f}/s before, "
          f"{failed_during} failed; queue {found} vs {publisher.ok} acknowledged")
    report.record(f"{name} (/healthz p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms; "
                  f"{rate:.0f} publishes/s vs {baseline_rate:.0f} before)",
                  {"sent": publisher.ok + publisher.failed, "acknowledged": publisher.ok, "found": found,
                   "lost": max(publisher.ok - found, 0), "duplicated": max(found - publisher.ok, 0)},
                  publisher.failed, None)
    assert found == publisher.ok, "every 200 is in the queue once, and nothing else"
    assert p99 < HEALTH_P99, f"/healthz p99 {p99:.3f}s under {name}"
    # Publishing goes on, slower: under 4,000 idle connections the rate measured
    # 7-61/s against 100-230/s before (2026-12-02, ten runs): it depends on how
    # the flood lands on the two workers, so the bound is "not stalled", 5 %.
    assert failed_during == 0 and rate > MIN_RATE_SHARE * baseline_rate, (failed_during, rate, baseline_rate)
    assert "Traceback" not in gw.logs()
    return {"p50": p50, "p99": p99, "rate": rate}


def _flood(gw: GatewayProcess, rabbit, count: int, kind: str, name: str) -> Flood:
    """``count`` attacking connections of ``kind`` under _attack's measurement; the flood, for its counts."""
    queue = rabbit.queue("flood")
    flood: list[Flood] = []

    def attack() -> Flood:
        flood.append(Flood(gw.port, count, kind, queue, duration=ATTACK_SECONDS + 5))
        return flood[0]

    _attack(gw, rabbit, queue, name, attack)
    return flood[0]


def test_idle_connection_flood_keeps_health_fast(gateway, rabbit):
    ensure_fd_limit(6000)
    gw = gateway(env={"GATEWAY_KEEPALIVE": "5"})
    flood = _flood(gw, rabbit, 4000, "idle", "idle-connection flood, 4000 held and reopened")
    assert flood.closed_by_server > 0  # idle connections are timed out (keepalive) and reopened


def test_slow_body_flood_keeps_health_fast_and_publishes_nothing(gateway, rabbit):
    ensure_fd_limit(4000)
    gw = gateway("CLIENT_BODY_TIMEOUT,5")
    flood = _flood(gw, rabbit, 1500, "trickle", "slow-body flood, 1500 bodies at 1 byte/s")
    # Their bodies never completed: cut off by CLIENT_BODY_TIMEOUT, reopened, nothing of them published.
    assert flood.closed_by_server >= 1500


class _PoisonStream:
    """Poison over HTTP, batch and ZeroMQ, 10 a second each, alongside innocent ZeroMQ messages."""

    def __init__(self, gw: GatewayProcess, queue: str, zmq_address: str):
        import gevent

        self.gw, self.queue = gw, queue
        self.poison = b"a|amq.rabbitmq.reply-to.x.y|poison"
        self.answers: list[int] = []
        self.zmq_ok = 0
        self.zmq_bad: list[list[bytes]] = []
        self.producer = Producer(zmq_address)
        self.stopping = False
        self.greenlets = [gevent.spawn(self._http), gevent.spawn(self._zmq)]

    def _http(self) -> None:
        import gevent

        batch = encode_batch([self.poison, f"a|{self.queue}|batch-innocent".encode()])
        while not self.stopping:
            self.answers.append(request(self.gw.port, "POST", "/publish", self.poison)[0])
            self.answers.append(request(self.gw.port, "POST", "/publish/batch", batch)[0])
            gevent.sleep(0.1)

    def _zmq(self) -> None:
        import gevent

        seq = 0
        while not self.stopping:
            frames = [b"p%d" % seq, self.poison]
            innocent = [[b"i%d.%d" % (seq, n), f"a|{self.queue}|zmq-innocent".encode()] for n in range(20)]
            for message in [frames, *innocent]:
                self.producer.send(*message)
            for _ in range(21):
                reply = self.producer.recv(timeout=10)
                if reply is None:
                    self.zmq_bad.append([b"no reply"])
                elif reply[0].startswith(b"p"):
                    self.answers.append(400 if reply[1] == b"ERR 400 invalid_queue" else 0)
                elif reply[1] == b"OK":
                    self.zmq_ok += 1
                else:
                    self.zmq_bad.append(reply)
            seq += 1
            gevent.sleep(0.1)

    def stop(self) -> None:
        import gevent

        self.stopping = True
        gevent.joinall(self.greenlets, timeout=15)
        self.producer.close()


def test_poison_stream_fails_only_the_poison(gateway, rabbit):
    address = f"tcp://127.0.0.1:{free_port()}"
    gw = gateway(f"ZMQ_SOCK_ADDRESS,{address}")
    wait_for_event(gw, "zmq_worker_joined", 2)
    queue = rabbit.queue("poison")
    stream: list[_PoisonStream] = []

    def attack() -> _PoisonStream:
        stream.append(_PoisonStream(gw, queue, address))
        return stream[0]

    # The publisher's 200s and the queue are counted by _attack; the innocent
    # ZeroMQ messages are added to the count here.
    body = f"a|{queue}|good".encode()
    health = Prober(lambda: get_status(gw.port, "GET", "/healthz") == 200, interval=0.05)
    publisher = Prober(lambda: get_status(gw.port, "POST", "/publish", body, timeout=10) == 200, interval=0.0)
    poison = attack()
    time.sleep(ATTACK_SECONDS)
    poison.stop()
    health.stop()
    publisher.stop()
    innocents = publisher.ok + poison.zmq_ok
    found = rabbit.bodies(queue)
    print(f"poison stream: {len(poison.answers)} poison answers {sorted(set(poison.answers))}; "
          f"{publisher.ok} HTTP and {poison.zmq_ok} ZeroMQ innocents OK, {publisher.failed} + {len(poison.zmq_bad)} "
          f"not; /healthz p99 {percentile(health.latencies, 0.99) * 1000:.1f} ms; queue {len(found)}")
    report.record(f"poison stream, 10/s each over HTTP, batch and ZeroMQ (/healthz p99 "
                  f"{percentile(health.latencies, 0.99) * 1000:.0f} ms)",
                  {"sent": innocents + publisher.failed + len(poison.zmq_bad), "acknowledged": innocents,
                   "found": len(found), "lost": max(innocents - len(found), 0),
                   "duplicated": max(len(found) - innocents, 0)},
                  publisher.failed + len(poison.zmq_bad), None)
    assert set(poison.answers) == {400}, "poison refused up front, over every ingress"
    assert publisher.failed == 0 and not poison.zmq_bad, poison.zmq_bad[:5]
    assert sorted(set(found)) == [b"good", b"zmq-innocent"] and len(found) == innocents, "each innocent exactly once"
    assert b"poison" not in found and b"batch-innocent" not in found  # the batch was refused whole (400)
    assert percentile(health.latencies, 0.99) < HEALTH_P99


def test_a_stream_of_poison_the_broker_refuses_fails_only_the_poison(gateway, rabbit):
    # Poison no parser can know: each request to an exchange that does not exist (a new
    # name each time) or with a user_id the broker refuses, so RabbitMQ closes a channel
    # over each, while innocents publish concurrently over the same pooled connections
    # (the exchange form and the plain /publish, sharing batches with the poison).
    import gevent

    gw = gateway()
    queue = rabbit.queue("refused")
    answers: dict[str, list[int]] = {"missing": [], "user_id": []}
    stopping = False

    def poison(worker: int) -> None:
        sent = 0
        while not stopping:
            missing = f"/publish/a/test.missing.{worker}.{sent}/k"
            answers["missing"].append(request(gw.port, "POST", missing, b"poison")[0])
            answers["user_id"].append(request(gw.port, "POST", f"/publish/a/amq.default/{queue}", b"poison-user",
                                              {"X-AMQP-User-Id": "mallory"})[0])
            sent += 1
            gevent.sleep(0.05)

    exchange_form = f"/publish/a/amq.default/{queue}"
    innocents = [Prober(lambda: get_status(gw.port, "POST", exchange_form, b"exchange-good", timeout=10) == 200, 0.0)
                 for _ in range(4)]
    innocents += [Prober(lambda: get_status(gw.port, "POST", "/publish", f"a|{queue}|good".encode(), timeout=10)
                         == 200, 0.0) for _ in range(4)]
    attackers = [gevent.spawn(poison, n) for n in range(2)]
    time.sleep(ATTACK_SECONDS)
    stopping = True
    gevent.joinall(attackers, timeout=15, raise_error=True)
    for prober in innocents:
        prober.stop()
    ok = sum(p.ok for p in innocents)
    failed = sum(p.failed for p in innocents)
    latencies = [s for p in innocents for s in p.latencies]
    found = rabbit.bodies(queue)
    refused = len(answers["missing"]) + len(answers["user_id"])
    p99 = percentile(latencies, 0.99) * 1000
    print(f"refused poison stream: {refused} poison answers {answers['missing'][:3]}..., {ok} innocents OK, "
          f"{failed} not, p99 {p99:.1f} ms; queue {len(found)}")
    report.record(f"broker-refused poison stream, {refused / ATTACK_SECONDS:.0f}/s to missing exchanges and with "
                  f"refused user ids (innocents p99 {p99:.0f} ms)",
                  {"sent": ok + failed, "acknowledged": ok, "found": len(found), "lost": max(ok - len(found), 0),
                   "duplicated": max(len(found) - ok, 0)}, failed, None)
    assert set(answers["missing"]) == {404} and set(answers["user_id"]) == {422}, answers
    assert failed == 0
    assert sorted(set(found)) == [b"exchange-good", b"good"] and len(found) == ok, "each innocent exactly once"
