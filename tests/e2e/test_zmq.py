"""ZeroMQ ingress end to end: gunicorn as a subprocess, real sockets, the real broker.

Every claim about delivery is checked by counting the queue. Messages carry
their correlation id in the body (``m<id>|...``), so each body found in a
queue names the message it came from.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq.green as zmq
from zmq import auth as zmq_auth

from tests.support.producer import (
    Producer,
    events,
    gunicorn_workers,
    relay_backend_dir,
    relay_pid,
    wait_for_event,
    wait_for_workers,
)
from tests.support.rabbit import Rabbit
from tests.support.server import REPO, GatewayProcess, free_port, request
from tests.support.settings import FAST, broker

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

CANNOT_KNOW = {b"ERR 503 worker_lost", b"ERR 503 connection_lost", b"ERR 503 confirm_timeout"}


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory for ipc:// paths (107 bytes at most, pytest's tmp_path can be long)."""
    path = Path(tempfile.mkdtemp(prefix="zq"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def gateways() -> Iterator[list[GatewayProcess]]:
    made: list[GatewayProcess] = []
    yield made
    for gw in made:
        gw.stop()


@pytest.fixture
def start(tmp_path: Path, gateways: list[GatewayProcess], rabbit_available: None):
    """start(address, conns=..., workers=2, extra="", env=None, wait_ready=True) -> a running gateway."""

    def run(address: str, conns: dict[str, str] | None = None, workers: int = 2, extra: str = "",
            env: dict[str, str] | None = None, wait_ready: bool = True) -> GatewayProcess:
        conns = conns or {"a": broker()}
        lines = [FAST, extra, f"ZMQ_SOCK_ADDRESS,{address}"]
        lines += [f"RMQ_CONN_STR,{cid},{value}" for cid, value in conns.items()]
        gw = GatewayProcess(tmp_path, "\n".join(lines) + "\n", workers=workers, env=env)
        gateways.append(gw)
        gw.start(wait_ready=wait_ready)
        wait_for_event(gw, "zmq_worker_joined", workers)  # the relay knows every worker
        return gw

    return run


def bodies_for(queue: str, count: int, start: int = 0) -> dict[bytes, bytes]:
    """{correlation id: body}; each message says which one it is, with bytes that need care."""
    prefix = f"a|{queue}|".encode()
    return {b"%d" % i: prefix + b"m%d|pipes|\n\x00\xff" % i for i in range(start, start + count)}


def consume(rabbit: Rabbit, queue: str, expected: int, timeout: float = 30) -> list[bytes]:
    """Every message in the queue, at least ``expected`` (many at a time: basic_get is slow for 10,000).

    Called once the producer has all its answers: what was published is there already.
    """
    found: list[bytes] = []
    deadline = time.monotonic() + timeout
    for method, _props, body in rabbit.channel.consume(queue, auto_ack=True, inactivity_timeout=0.5):
        if method is None:
            if len(found) >= expected or time.monotonic() > deadline:
                break
            continue
        found.append(body)
    rabbit.channel.cancel()
    return found


def message_ids(found: list[bytes]) -> list[bytes]:
    return [re.match(rb"m(\d+)\|", body).group(1) for body in found]  # type: ignore[union-attr]


# -- the happy path, many at once ---------------------------------------------------


def test_10000_pipelined_dealer_messages_each_answered_once_all_in_queue(start, rabbit, short_dir):
    queue = rabbit.queue("zmq")
    address = f"ipc://{short_dir}/feeds/0"  # the seed's form; feeds/ does not exist yet
    gw = start(address)
    backend_dir = relay_backend_dir(gw)
    sent = bodies_for(queue, 10_000)
    producer = Producer(address)
    replies = producer.burst(sent, timeout=30)
    producer.close()

    assert len(replies) == 10_000
    assert all(answers == [b"OK"] for answers in replies.values())
    found = consume(rabbit, queue, 10_000)
    assert len(found) == 10_000
    assert sorted(found) == sorted(body.split(b"|", 2)[2] for body in sent.values())  # byte-exact

    assert gw.stop() == 0
    handled = {r["worker"]: r["handled"] for r in events(gw, "zmq_worker_left")}
    assert len(handled) == 2 and all(n > 0 for n in handled.values()), handled  # both workers took part
    assert sum(handled.values()) == 10_000
    # Nothing left behind: the public socket, the directory made for it, the private one.
    assert not os.path.exists(f"{short_dir}/feeds")
    assert not os.path.exists(backend_dir)


# -- shapes, producers and errors ---------------------------------------------------


def test_req_dealer_one_frame_and_every_bad_shape_over_tcp(start, rabbit):
    queue = rabbit.queue("zmq")
    address = f"tcp://127.0.0.1:{free_port()}"
    gw = start(address, workers=1, extra="MAX_BODY_SIZE,2000")
    dealer = Producer(address)
    req = Producer(address, zmq.REQ)
    try:
        assert req.ask(f"a|{queue}|by req".encode()) == [b"OK"]
        assert req.ask(b"r1", f"a|{queue}|by req, two frames".encode()) == [b"r1", b"OK"]
        assert dealer.ask(f"a|{queue}|one frame".encode()) == [b"OK"]
        assert dealer.ask(b"", f"a|{queue}|dealer with an envelope".encode()) == [b"", b"OK"]

        # Each bad body gets over ZeroMQ the status and code HTTP gives it.
        bad_bodies = [b"", b"a|" + queue.encode(), b"|q|m", b"bad id|q|m", b"a||m", b"a|" + b"q" * 256 + b"|m",
                      b"nope|q|m", b"a|test.no.such.queue|m", b"a|q|" + b"x" * 2000]
        for body in bad_bodies:
            status, _, data = request(gw.port, "POST", "/publish", body)
            code = re.search(rb'"error": ?"([a-z_]+)"', data).group(1)  # type: ignore[union-attr]
            assert dealer.ask(b"c", body) == [b"c", b"ERR %d %s" % (status, code)], body[:40]

        # Frame shapes no HTTP body can have.
        assert dealer.ask(b"") == [b"", b"ERR 400 malformed_frames"]
        assert dealer.ask(b"c1", b"two", b"three") == [b"c1", b"ERR 400 malformed_frames"]
        assert dealer.ask(b"", b"c2", b"two", b"three") == [b"", b"c2", b"ERR 400 malformed_frames"]
        assert req.ask(b"c3", b"two", b"three") == [b"c3", b"ERR 400 malformed_frames"]

        # Still serving, and only the good ones were published.
        assert dealer.ask(b"last", f"a|{queue}|still fine".encode()) == [b"last", b"OK"]
        assert sorted(rabbit.bodies(queue)) == sorted([b"by req", b"by req, two frames", b"one frame",
                                                       b"dealer with an envelope", b"still fine"])
    finally:
        dealer.close()
        req.close()

    metrics = request(gw.port, "GET", "/metrics")[2].decode()
    assert re.search(r'gateway_publish_total\{conn_id="a",ingress="zmq",outcome="ok"\} 5\.0', metrics)
    assert re.search(r'gateway_publish_total\{conn_id="_unknown",ingress="zmq",outcome="malformed_frames"\} 4\.0',
                     metrics)
    assert re.search(r'gateway_publish_total\{conn_id="a",ingress="zmq",outcome="unroutable"\} 1\.0', metrics)
    assert re.search(r'gateway_publish_total\{conn_id="a",ingress="http",outcome="unroutable"\} 1\.0', metrics)
    received = re.search(r"^gateway_zmq_received_total (\S+)$", metrics, re.M)
    assert received and float(received.group(1)) == 18, received


def test_no_reachable_broker_is_503_promptly_and_other_ids_still_publish(start, rabbit):
    queue = rabbit.queue("zmq")
    dead = f"guest:guest@127.0.0.1:{free_port()}/,guest:guest@127.0.0.1:{free_port()}/"
    address = f"tcp://127.0.0.1:{free_port()}"
    gw = start(address, conns={"a": broker(), "dead": dead}, workers=1, wait_ready=False)
    gw.wait_for("/healthz", 10)
    dealer = Producer(address)
    try:
        started = time.monotonic()
        reply = dealer.ask(b"d", f"dead|{queue}|nowhere".encode())
        assert reply is not None and reply[0] == b"d" and reply[1].startswith(b"ERR 503 ")
        assert time.monotonic() - started < 5  # pool timeout at most, never held forever
        assert dealer.ask(b"ok", f"a|{queue}|somewhere".encode()) == [b"ok", b"OK"]
    finally:
        dealer.close()
    assert rabbit.bodies(queue) == [b"somewhere"]


# -- workers dying, recycling and stopping -----------------------------------------------


def test_worker_killed_mid_burst_every_ok_is_in_the_queue(start, rabbit, short_dir):
    queue = rabbit.queue("zmq")
    address = f"ipc://{short_dir}/in"
    gw = start(address)
    victim = gunicorn_workers(gw)[0]
    sent = bodies_for(queue, 6000)
    killed = []

    def kill_once(answered: int) -> None:
        if answered >= 1000 and not killed:
            os.kill(victim, signal.SIGKILL)
            killed.append(time.monotonic())

    producer = Producer(address)
    replies = producer.burst(sent, timeout=15, on_reply=kill_once)
    assert killed
    assert all(len(answers) == 1 for answers in replies.values())  # one answer per message, never two
    oks = {corr for corr, answers in replies.items() if answers == [b"OK"]}
    found = message_ids(consume(rabbit, queue, len(oks)))
    in_queue = set(found)
    assert len(found) == len(in_queue)  # nothing published twice here
    assert oks <= in_queue  # no OK for a message that is not there
    assert in_queue <= set(sent)
    for corr in in_queue - oks:
        # Published but not confirmed to the producer: only "cannot know" answers (or none).
        assert corr not in replies or replies[corr][0] in CANNOT_KNOW, replies[corr]
    # The relay answers what the dead worker held: every message got its one reply.
    assert len(replies) == len(sent)
    assert {answers[0] for answers in replies.values()} <= {b"OK", b"ERR 503 worker_lost"}

    # gunicorn replaces the worker, and it takes its share again.
    wait_for_workers(gw, 2)
    wait_for_event(gw, "zmq_worker_joined", 3)
    more = bodies_for(queue, 500, start=10_000)
    again = producer.burst(more, timeout=15)
    producer.close()
    assert all(answers == [b"OK"] for answers in again.values()) and len(again) == 500


def test_max_requests_recycling_loses_nothing(start, rabbit, short_dir):
    queue = rabbit.queue("zmq")
    address = f"ipc://{short_dir}/in"
    gw = start(address, env={"GUNICORN_CMD_ARGS": "--max-requests 1500 --max-requests-jitter 0"})
    sent = bodies_for(queue, 6000)
    producer = Producer(address)
    replies = producer.burst(sent, timeout=20)
    producer.close()
    assert len(events(gw, "zmq_recycle")) >= 2  # workers drained and were replaced under load
    assert len(replies) == 6000 and all(answers == [b"OK"] for answers in replies.values())
    found = message_ids(consume(rabbit, queue, 6000))
    assert sorted(found) == sorted(sent)


def test_sigterm_mid_burst_answers_everything_taken_and_leaves_no_files(start, rabbit, short_dir):
    queue = rabbit.queue("zmq")
    address = f"ipc://{short_dir}/in"
    gw = start(address)
    backend_dir = relay_backend_dir(gw)
    sent = bodies_for(queue, 20_000)
    stopping = []

    def stop_once(answered: int) -> None:
        if answered >= 2000 and not stopping:
            assert gw.proc is not None
            gw.proc.send_signal(signal.SIGTERM)
            stopping.append(answered)

    producer = Producer(address)
    replies = producer.burst(sent, timeout=3, on_reply=stop_once)
    producer.close()
    assert gw.stop() == 0
    assert stopping and len(replies) < len(sent)  # it stopped taking new ones
    assert all(answers == [b"OK"] for answers in replies.values())  # what it took, it finished
    found = message_ids(consume(rabbit, queue, len(replies)))
    assert sorted(found) == sorted(replies)  # published exactly when answered OK
    assert not os.path.exists(f"{short_dir}/in")
    assert not os.path.exists(backend_dir)
    assert "Traceback" not in gw.logs()


# -- the relay ------------------------------------------------------------------------


def test_relay_killed_is_restarted_and_producers_carry_on(start, rabbit, short_dir):
    queue = rabbit.queue("zmq")
    address = f"ipc://{short_dir}/in"
    gw = start(address)
    producer = Producer(address)
    assert producer.ask(b"before", f"a|{queue}|before".encode()) == [b"before", b"OK"]

    old = relay_pid(gw)
    os.kill(old, signal.SIGKILL)
    wait_for_event(gw, "zmq_relay_restarted")
    assert relay_pid(gw) != old
    # The same socket reconnects by itself (the stale ipc file was rebound).
    reply = producer.ask(b"after", f"a|{queue}|after".encode(), timeout=10)
    assert reply == [b"after", b"OK"]
    replies = producer.burst(bodies_for(queue, 2000), timeout=15)
    producer.close()
    assert len(replies) == 2000 and all(answers == [b"OK"] for answers in replies.values())
    assert rabbit.count(queue) == 2002
    assert gw.stop() == 0
    assert not os.path.exists(f"{short_dir}/in")


def test_master_killed_outright_relay_exits_and_removes_its_files(start, short_dir, tmp_path):
    metrics_dir = tmp_path / "metrics"  # ours: the killed master cannot remove the one it would make
    metrics_dir.mkdir()
    gw = start(f"ipc://{short_dir}/in", env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    backend_dir = relay_backend_dir(gw)
    orphans = [relay_pid(gw), *gunicorn_workers(gw)]
    assert gw.proc is not None
    gw.proc.kill()  # no hooks run: the relay must notice on its own
    gw.proc.wait()
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in orphans) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in orphans)  # the relay and the workers all went away
    assert not os.path.exists(f"{short_dir}/in")
    assert not os.path.exists(backend_dir)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # orphans are reaped by init; until then a zombie counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _gunicorn_fails(tmp_path: Path, cfg: str) -> str:
    path = tmp_path / "bad.cfg"
    path.write_text(cfg)
    done = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{free_port()}"],
        cwd=REPO, env={**os.environ, "GATEWAY_CONFIG": str(path)}, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    return done.stderr


def test_start_up_fails_with_one_line_when_the_address_cannot_be_bound(tmp_path, short_dir, rabbit_available):
    base = f"RMQ_CONN_STR,a,{broker()}\n"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        err = _gunicorn_fails(tmp_path, base + f"ZMQ_SOCK_ADDRESS,tcp://127.0.0.1:{port}\n")
    assert f"gateway: ZeroMQ relay: cannot bind tcp://127.0.0.1:{port}: Address already in use" in err

    # An ipc path another live process serves is not silently taken over.
    other = zmq.Context()
    holder = other.socket(zmq.ROUTER)
    holder.bind(f"ipc://{short_dir}/busy")
    try:
        err = _gunicorn_fails(tmp_path, base + f"ZMQ_SOCK_ADDRESS,ipc://{short_dir}/busy\n")
        assert "is in use by another process" in err
    finally:
        holder.close(linger=0)
        other.term()

    err = _gunicorn_fails(tmp_path, base + f"ZMQ_SOCK_ADDRESS,tcp://127.0.0.1:{free_port()}\n"
                          f"ZMQ_CURVE_SERVER_KEY,{tmp_path}/missing.key_secret\nZMQ_CURVE_CLIENT_KEYS_DIR,{tmp_path}\n")
    assert "gateway: ZeroMQ relay: CURVE server key" in err


# -- failover under a burst -------------------------------------------------------------


def test_primary_refused_mid_burst_every_ok_is_in_primary_or_backup(start, two_brokers, vhosts):
    primary, backup, rp, rb, queue = two_brokers
    conns = {"a": f"guest:guest@127.0.0.1:{primary.port}/{vhosts['primary'].name},"
                  f"guest:guest@127.0.0.1:{backup.port}/{vhosts['backup'].name}"}
    address = f"tcp://127.0.0.1:{free_port()}"
    start(address, conns=conns)
    sent = bodies_for(queue, 6000)
    cut = []

    def cut_once(answered: int) -> None:
        if answered >= 1500 and not cut:
            primary.refuse()  # reset every connection, refuse new ones
            cut.append(answered)

    producer = Producer(address)
    replies = producer.burst(sent, timeout=20, on_reply=cut_once)
    producer.close()
    assert cut
    in_primary = message_ids(consume(rp, queue, 0))
    in_backup = message_ids(consume(rb, queue, 0))
    assert in_backup, "the backup took nothing"
    delivered = set(in_primary) | set(in_backup)
    assert all(len(answers) == 1 for answers in replies.values())
    oks = {corr for corr, answers in replies.items() if answers == [b"OK"]}
    assert oks <= delivered  # every OK accounted for
    assert len(oks) >= len(sent) * 0.9, (len(oks), len(replies))
    for corr, answers in replies.items():
        if answers[0] != b"OK":
            assert answers[0].startswith(b"ERR 503 ")
            assert corr not in delivered or answers[0] in CANNOT_KNOW


# -- CURVE ----------------------------------------------------------------------------------


def test_curve_lets_allowed_keys_in_and_gives_unknown_keys_nothing(start, rabbit, tmp_path):
    queue = rabbit.queue("zmq")
    keys = tmp_path / "keys"
    allowed = tmp_path / "allowed"
    for path in (keys, allowed):
        path.mkdir()
    server_public, _ = zmq_auth.load_certificate(zmq_auth.create_certificates(keys, "server")[0])
    clients = {}
    for name in ("in_dir", "in_list", "stranger"):
        _public_file, secret_file = zmq_auth.create_certificates(keys, name)
        clients[name] = zmq_auth.load_certificate(secret_file)
    shutil.copy(keys / "in_dir.key", allowed / "in_dir.key")
    address = f"tcp://127.0.0.1:{free_port()}"
    gw = start(address, workers=1, extra=f"ZMQ_CURVE_SERVER_KEY,{keys}/server.key_secret\n"
                                    f"ZMQ_CURVE_CLIENT_KEYS_DIR,{allowed}\n"
                                    f"ZMQ_CURVE_CLIENT_KEYS,{clients['in_list'][0].decode()}")
    producers = {name: Producer(address, curve=(public, secret, server_public))
                 for name, (public, secret) in clients.items()}
    plain = Producer(address)
    try:
        assert producers["in_dir"].ask(b"1", f"a|{queue}|from the directory".encode()) == [b"1", b"OK"]
        assert producers["in_list"].ask(b"2", f"a|{queue}|from the list".encode()) == [b"2", b"OK"]
        # Refused at the handshake: the message is either never taken or never answered.
        for producer, body in ((producers["stranger"], "unknown key"), (plain, "no CURVE at all")):
            assert not producer.send(b"3", f"a|{queue}|{body}".encode(), timeout=1) or producer.recv(1) is None
        assert producers["in_dir"].ask(b"5", f"a|{queue}|still serving".encode()) == [b"5", b"OK"]
    finally:
        for producer in [*producers.values(), plain]:
            producer.close()
    assert sorted(rabbit.bodies(queue)) == [b"from the directory", b"from the list", b"still serving"]
    assert events(gw, "zmq_auth_denied")  # the operator sees who was refused


def _peak_rss_kib(pid: int) -> int:
    """The process's peak resident set size (VmHWM), in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1))  # type: ignore[union-attr]


def test_a_huge_frame_never_enters_the_relays_memory(start, rabbit):
    # ZMQ_MAXMSGSIZE on the producer side: libzmq refuses the frame from its
    # header, before allocating it, and drops that producer's connection.
    queue = rabbit.queue("zmq")
    address = f"tcp://127.0.0.1:{free_port()}"
    gw = start(address, workers=2)
    relay = relay_pid(gw)
    producer, attacker = Producer(address), Producer(address)
    try:
        assert producer.ask(b"1", f"a|{queue}|before".encode()) == [b"1", b"OK"]
        before = _peak_rss_kib(relay)
        huge = f"a|{queue}|".encode() + b"x" * (256 * 1024 * 1024)
        attacker.sock.send_multipart([b"huge", huge], copy=False)
        del huge
        assert attacker.recv(timeout=3) is None  # dropped, never answered
        # Slightly over MAX_BODY_SIZE is still read and answered.
        assert producer.ask(b"2", f"a|{queue}|".encode() + b"x" * (1024 * 1024)) == [b"2", b"ERR 413 body_too_large"]
        assert producer.ask(b"3", f"a|{queue}|after".encode()) == [b"3", b"OK"]
        grown_mib = (_peak_rss_kib(relay) - before) / 1024
        assert grown_mib < 32, f"relay's peak RSS grew by {grown_mib:.1f} MiB"
        print(f"relay peak RSS before {before / 1024:.1f} MiB, growth with a 256 MiB frame {grown_mib:.1f} MiB")
    finally:
        producer.close()
        attacker.close()
    assert sorted(rabbit.bodies(queue)) == [b"after", b"before"]
