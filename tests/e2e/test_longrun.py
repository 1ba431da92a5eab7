"""Months in production, in minutes: gunicorn against dead and recycling brokers.

Each worker's open file descriptors (``/proc/<pid>/fd``) and resident memory
must stay flat while its pools reconnect to a dead broker over and over, and
while they recycle connections every second.
"""

from __future__ import annotations

import os
import time

import gevent
import pytest

from tests.support.server import GatewayProcess, free_port, request

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

FAST = "HEALTH_INTERVAL,0.2\nCONNECT_TIMEOUT,1\nRECONNECT_BACKOFF_MAX,0.3\nPOOL_TIMEOUT,1\nPUBLISH_TIMEOUT,4\n"


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def resources(gw: GatewayProcess) -> dict[int, tuple[int, int]]:
    """{worker pid: (open fds, RSS in KiB)}."""
    return {pid: (open_fds(pid), rss_kib(pid)) for pid in gw.worker_pids()}


def recycled(port: int) -> float:
    _, _, body = request(port, "GET", "/metrics")
    return sum(float(line.rpartition(" ")[2]) for line in body.decode().splitlines()
               if line.startswith("gateway_connection_events_total{") and 'event="recycled"' in line)


def assert_flat(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]], what: str) -> None:
    assert before.keys() == after.keys(), f"workers changed during {what}: {before} -> {after}"
    print(f"{what}: (fds, RSS KiB) per worker {before} -> {after}")
    for pid, (fds, rss) in before.items():
        fds_after, rss_after = after[pid]
        # A few descriptors come and go (connections being opened right now);
        # a leak grows by two per connection attempt.
        assert fds_after - fds <= 12, f"worker {pid}: {fds} -> {fds_after} open fds over {what}"
        assert rss_after - rss <= 16 * 1024, f"worker {pid}: RSS {rss} -> {rss_after} KiB over {what}"


def test_descriptors_and_memory_stay_flat_against_a_dead_broker(tmp_path):
    dead = [free_port() for _ in range(3)]  # closed ports: every connect is refused at once
    ids = "".join(f"RMQ_CONN_STR,dead{i},guest:guest@127.0.0.1:{port}/\n" for i, port in enumerate(dead))
    gw = GatewayProcess(tmp_path, FAST + "NO_OF_CONNECTIOS,3\n" + ids, workers=2)
    gw.start(wait_ready=False)
    try:
        gevent.sleep(3)  # imports done, every pool in its reconnect loop
        before = resources(gw)
        gevent.sleep(20)
        after = resources(gw)
        assert_flat(before, after, "20 s of a dead broker")
    finally:
        gw.stop()


def test_descriptors_and_memory_stay_flat_over_hundreds_of_recycles(tmp_path, rabbit):
    # 2 workers x 8 connections (+ a health connection each), each recycled
    # about every second: a few dozen connections at once, at most.
    gw = GatewayProcess(tmp_path, FAST + "NO_OF_CONNECTIOS,8\nPOOL_MAX_OVERFLOW,0\nCONNECTION_MAX_AGE,1\n"
                        "KEEPALIVE_INTERVAL,0.1\nRMQ_CONN_STR,r,guest:guest@127.0.0.1:5672/\n", workers=2)
    gw.start()
    queue = rabbit.queue("recycle")
    try:
        gevent.sleep(3)
        before, count_before = resources(gw), recycled(gw.port)
        deadline = time.monotonic() + 40
        while recycled(gw.port) - count_before < 300 and time.monotonic() < deadline:
            status, _, _ = request(gw.port, "POST", "/publish", b"r|%s|x" % queue.encode())
            assert status == 200
            gevent.sleep(0.2)
        count = recycled(gw.port) - count_before
        assert count >= 300, f"only {count} recycles"
        gevent.sleep(1.5)  # the last recycled connections finish closing
        after = resources(gw)
        assert_flat(before, after, f"{count:.0f} recycles")
    finally:
        gw.stop()


def _keepalive_publisher(port: int, body: bytes, statuses: list[int], stop: list[bool]) -> None:
    """Publish over one keep-alive connection until the server closes it."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        while not stop[0]:
            conn.request("POST", "/publish", body=body)
            resp = conn.getresponse()
            resp.read()
            statuses.append(resp.status)
            if resp.status == 503:
                assert resp.getheader("Retry-After"), "a 503 without Retry-After"
            if resp.getheader("Connection", "").lower() == "close":
                return
    except (OSError, http.client.HTTPException):
        return  # the worker closed the connection: done
    finally:
        conn.close()


def test_a_configured_id_is_never_unknown_while_workers_shut_down(tmp_path, rabbit):
    import signal

    queue = rabbit.queue("orphans")
    gw = GatewayProcess(tmp_path, FAST + "NO_OF_CONNECTIOS,2\nRMQ_CONN_STR,k,guest:guest@127.0.0.1:5672/\n",
                        workers=2)
    gw.start()
    workers = gw.worker_pids()
    statuses: list[int] = []
    stop = [False]
    try:
        jobs = [gevent.spawn(_keepalive_publisher, gw.port, b"k|%s|m" % queue.encode(), statuses, stop)
                for _ in range(6)]
        gevent.sleep(1)
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGKILL)  # the master is gone: the workers shut down on their own
        gevent.joinall(jobs, timeout=40)
        stop[0] = True
        gevent.joinall(jobs, timeout=15)
    finally:
        gw.stop()
        deadline = time.monotonic() + 30
        while any(os.path.exists(f"/proc/{pid}") for pid in workers) and time.monotonic() < deadline:
            gevent.sleep(0.2)
        for pid in workers:  # ours, if they outlived the deadline
            if os.path.exists(f"/proc/{pid}"):
                os.kill(pid, signal.SIGKILL)
    assert statuses.count(200) > 50, statuses[:20]
    assert 404 not in statuses, f"{statuses.count(404)} publishes to a configured id answered 404"
    assert set(statuses) <= {200, 503}, sorted(set(statuses))
