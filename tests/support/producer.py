"""ZeroMQ producers for the tests, and helpers to look inside a running gateway.

The test process runs under gevent, so producers use ``zmq.green``: a blocked
send or receive lets the proxies and other greenlets run.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import gevent
import zmq.green as zmq

from tests.support.server import GatewayProcess


class Producer:
    """A DEALER (or REQ) socket connected to the gateway; closed by ``close()``."""

    def __init__(self, address: str, kind: int = zmq.DEALER, curve: tuple[bytes, bytes, bytes] | None = None):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(kind)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        if curve is not None:
            public, secret, server_public = curve
            self.sock.curve_publickey = public
            self.sock.curve_secretkey = secret
            self.sock.curve_serverkey = server_public
        self.sock.connect(address)

    def send(self, *frames: bytes, timeout: float = 10) -> bool:
        """Send one message; False if ZeroMQ would not take it within ``timeout`` (no peer to send to)."""
        with gevent.Timeout(timeout, False):
            self.sock.send_multipart(list(frames))
            return True
        return False

    def recv(self, timeout: float = 10) -> list[bytes] | None:
        """The next reply, or None after ``timeout`` seconds."""
        if not self.sock.poll(int(timeout * 1000)):
            return None
        return self.sock.recv_multipart()

    def ask(self, *frames: bytes, timeout: float = 10) -> list[bytes] | None:
        """Send one message and wait for its reply."""
        self.send(*frames)
        return self.recv(timeout)

    def burst(self, bodies: dict[bytes, bytes], timeout: float = 60,
              on_reply: object = None) -> dict[bytes, list[bytes]]:
        """Send ``{correlation_id: body}`` as two-frame messages without waiting; collect every reply.

        Returns correlation id -> list of replies (a list, to catch duplicates).
        Stops when each id has a reply or nothing arrives for ``timeout`` seconds.
        """
        replies: dict[bytes, list[bytes]] = {}

        def send_all() -> None:
            for corr, body in bodies.items():
                self.sock.send_multipart([corr, body])

        sender = gevent.spawn(send_all)
        answered = 0
        while answered < len(bodies):
            frames = self.recv(timeout)
            if frames is None:
                break
            corr, reply = frames[0], frames[-1]
            replies.setdefault(corr, []).append(reply)
            answered = len(replies)
            if on_reply is not None:
                on_reply(answered)  # type: ignore[operator]
        sender.kill()  # still blocked on a gateway that stopped reading, if it stopped
        return replies

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


def children(gw: GatewayProcess) -> dict[int, str]:
    """pid -> command line of each child of the gunicorn master."""
    assert gw.proc is not None
    out: dict[int, str] = {}
    for pid in gw.worker_pids():
        try:
            out[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # exited meanwhile
    return out


def relay_pid(gw: GatewayProcess) -> int:
    pids = [pid for pid, cmd in children(gw).items() if "app.zmq.relay" in cmd]
    assert len(pids) == 1, children(gw)
    return pids[0]


def relay_backend_dir(gw: GatewayProcess) -> str:
    """The private directory of the relay's back-end socket (from its command line)."""
    for arg in children(gw)[relay_pid(gw)].split():
        if arg.startswith("--back=ipc://"):
            return os.path.dirname(arg[len("--back=ipc://"):])
    raise AssertionError("no --back in the relay's command line")


def gunicorn_workers(gw: GatewayProcess) -> list[int]:
    return [pid for pid, cmd in children(gw).items() if "app.zmq.relay" not in cmd]


def wait_for_workers(gw: GatewayProcess, count: int, timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = gunicorn_workers(gw)
        if len(pids) == count:
            return pids
        gevent.sleep(0.1)
    raise AssertionError(f"{count} workers not up within {timeout}s: {children(gw)}")


def events(gw: GatewayProcess, name: str) -> list[dict]:
    """The JSON log records of one event."""
    return gw.events(name)


def wait_for_event(gw: GatewayProcess, name: str, count: int = 1, timeout: float = 15) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = events(gw, name)
        if len(found) >= count:
            return found
        gevent.sleep(0.1)
    raise AssertionError(f"{count} {name} log record(s) not seen within {timeout}s:\n{gw.logs()[-3000:]}")
