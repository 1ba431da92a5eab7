"""Loopback attackers and well-behaved clients for the connection-flood tests.

Every loop here is bounded in count and time and stops by itself.
"""

from __future__ import annotations

import contextlib
import http.client
import resource
import socket
import time
from collections.abc import Callable

import gevent
from gevent.pool import Group


def ensure_fd_limit(needed: int) -> None:
    """Raise this process's soft limit on open files to ``needed`` (fails if the hard limit is lower)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise AssertionError(f"ulimit -n is {hard}; this test needs {needed} file descriptors")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


class Flood:
    """``count`` attacker connections to ``port``, each reopened when the server closes it, until ``stop()``.

    ``idle``: connect and send nothing. ``trickle``: send a POST's headers
    (a 100 kB body announced), then one body byte a second.
    """

    def __init__(self, port: int, count: int, mode: str, queue: str = "q", duration: float = 30):
        self.port = port
        self.count = count
        self.mode = mode
        self.head = (f"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\na|{queue}|").encode()
        self.deadline = time.monotonic() + duration
        self.stopping = False
        self.opened = 0
        self.closed_by_server = 0
        self.connect_failures = 0
        self.held = 0
        self.group = Group()
        for _ in range(count):
            self.group.spawn(self._attacker)

    def _attacker(self) -> None:
        while not self.stopping and time.monotonic() < self.deadline:
            try:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            except OSError:
                self.connect_failures += 1
                gevent.sleep(0.1)
                continue
            self.opened += 1
            self.held += 1
            try:
                self._hold(sock)
            except OSError:
                pass
            finally:
                self.held -= 1
                sock.close()

    def _hold(self, sock: socket.socket) -> None:
        sock.settimeout(1.0)
        if self.mode == "trickle":
            sock.sendall(self.head)
        while not self.stopping and time.monotonic() < self.deadline:
            try:
                if not sock.recv(65536):
                    self.closed_by_server += 1
                    return
            except TimeoutError:
                if self.mode == "trickle":
                    sock.sendall(b"x")

    def stop(self) -> None:
        self.stopping = True
        self.group.join(timeout=10)
        self.group.kill(block=True, timeout=5)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


class Prober:
    """A well-behaved client: ``call()`` every ``interval`` seconds on a new connection; latencies kept."""

    def __init__(self, call: Callable[[], bool], interval: float, timeout: float = 5):
        self.call = call
        self.interval = interval
        self.timeout = timeout
        self.latencies: list[float] = []
        self.ok = 0
        self.failed = 0
        self.started = time.monotonic()
        self.stopping = False
        self.greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        while not self.stopping:
            began = time.monotonic()
            good = False
            with contextlib.suppress(OSError, http.client.HTTPException), gevent.Timeout(self.timeout, False):
                good = self.call()
            self.latencies.append(time.monotonic() - began)
            if good:
                self.ok += 1
            else:
                self.failed += 1
            gevent.sleep(max(0.0, self.interval - (time.monotonic() - began)))

    def stop(self) -> float:
        """Stop; the seconds it ran."""
        self.stopping = True
        self.greenlet.join(timeout=self.timeout + 1)
        return time.monotonic() - self.started


_PROBE_SCRIPT = """
import http.client, sys, time
port, path, interval, limit, out = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
ends = time.monotonic() + limit
with open(out, "w", buffering=1) as log:
    while time.monotonic() < ends:
        began = time.monotonic()
        ok = 0
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", path, headers={"Connection": "close"})
            ok = int(conn.getresponse().status == 200)
            conn.close()
        except (OSError, http.client.HTTPException):
            pass
        log.write(f"{began} {time.monotonic() - began} {ok}\\n")
        time.sleep(max(0.0, interval - (time.monotonic() - began)))
"""


class ProcessProber:
    """A kubelet-like probe in a process of its own (not in the attacker's hub): GET every ``interval``.

    It writes ``<start> <latency> <ok>`` per probe (CLOCK_MONOTONIC is shared by
    the processes of a machine), so a window of the run can be read afterwards.
    """

    def __init__(self, port: int, path: str, interval: float, out: str, limit: float = 120):
        import subprocess
        import sys

        self.out = out
        self.proc = subprocess.Popen([sys.executable, "-c", _PROBE_SCRIPT, str(port), path, str(interval),
                                      str(limit), out])

    def latencies(self, since: float, until: float = float("inf")) -> list[float]:
        """The latencies of the probes started in [since, until)."""
        found = []
        with open(self.out) as log:
            for line in log:
                parts = line.split()
                if len(parts) == 3 and since <= float(parts[0]) < until:
                    found.append(float(parts[1]))
        return found

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def get_status(port: int, method: str, path: str, body: bytes | None = None, timeout: float = 5) -> int:
    """One request on a new connection, closed after; its status."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Connection": "close"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()
