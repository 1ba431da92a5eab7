"""The relay on its own: a real ``python -m app.zmq.relay`` process, fake workers speaking its protocol.

Checks what is hard to provoke through gunicorn: the credits that bound what
a worker holds (and stop the relay reading producers), the answer for a dead
worker's messages given exactly once, and the BYE of a draining worker.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import gevent
import pytest
import zmq.green as zmq

from app.config import settings_from_text
from app.zmq.frames import BYE, HELLO, MESSAGES, REPLIES, pack, unpack
from app.zmq.relay import _parse_args
from app.zmq.supervisor import RelaySupervisor
from tests.support.producer import Producer
from tests.support.server import REPO


@pytest.fixture
def relay() -> Iterator[tuple[subprocess.Popen, str, str]]:
    """(process, front address, back address) of a relay in a directory of its own."""
    path = Path(tempfile.mkdtemp(prefix="zr"))
    front, back = f"ipc://{path}/front", f"ipc://{path}/back"
    proc = subprocess.Popen([sys.executable, "-m", "app.zmq.relay", f"--front={front}", f"--back={back}",
                             "--max-body=1000", f"--parent-pid={os.getpid()}"],
                            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    assert proc.stdout is not None and proc.stdout.readline() == b"READY\n"
    yield proc, front, back
    proc.kill()
    proc.wait()
    shutil.rmtree(path, ignore_errors=True)


class FakeWorker:
    """A DEALER that speaks the worker side of the protocol, under a given pid."""

    def __init__(self, back: str, pid: int, capacity: int):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.ROUTING_ID, b"%d" % pid)
        self.sock.connect(back)
        self.capacity = capacity

    def hello(self, draining: bool = False) -> None:
        self.sock.send_multipart([HELLO, b"%d" % self.capacity, b"1" if draining else b"0"])

    def take(self, wanted: int, timeout: float = 3) -> list[tuple[bytes, bytes]]:
        """Messages received until ``wanted`` or ``timeout``."""
        got: list[tuple[bytes, bytes]] = []
        with gevent.Timeout(timeout, False):
            while len(got) < wanted:
                frames = self.sock.recv_multipart()
                assert frames[0] == MESSAGES
                got += unpack(frames[1])
        return got

    def reply(self, items: list[tuple[bytes, bytes]]) -> None:
        self.sock.send_multipart([REPLIES, pack(items)])

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


def replies_of(producer: Producer, count: int, timeout: float = 3) -> list[list[bytes]]:
    got = []
    while len(got) < count:
        frames = producer.recv(timeout)
        if frames is None:
            break
        got.append(frames)
    return got


def test_credits_bound_what_a_worker_holds_and_stop_reading_producers(relay):
    _proc, front, back = relay
    worker = FakeWorker(back, os.getpid(), capacity=3)
    producer = Producer(front)
    try:
        worker.hello()
        for i in range(10):
            producer.send(b"%d" % i, b"a|q|%d" % i)
        first = worker.take(10, timeout=1)
        assert [body for _, body in first] == [b"a|q|0", b"a|q|1", b"a|q|2"]  # no more than its credits
        worker.reply([(first[0][0], b"OK")])
        assert replies_of(producer, 1) == [[b"0", b"OK"]]
        more = worker.take(10, timeout=1)
        assert [body for _, body in more] == [b"a|q|3"]  # one answer, one credit back
        held = first[1:] + more
        answers = []
        while held:  # never more than 3 at a time, until all are answered
            assert len(held) <= 3
            worker.reply([(tag, b"ERR 422 unroutable") for tag, _ in held])
            answers += replies_of(producer, len(held))
            held = worker.take(3, timeout=0.5)
        assert sorted(int(a[0]) for a in answers) == list(range(1, 10))
        assert all(a[1] == b"ERR 422 unroutable" for a in answers)
    finally:
        worker.close()
        producer.close()


def test_a_lost_workers_messages_are_answered_once(relay):
    proc, front, back = relay
    worker = FakeWorker(back, os.getpid(), capacity=5)
    producer = Producer(front)
    try:
        worker.hello()
        for i in range(3):
            producer.send(b"%d" % i, b"a|q|%d" % i)
        taken = worker.take(3)
        worker.reply([(taken[0][0], b"OK")])
        proc.stdin.write(b"lost %d\n" % os.getpid())  # what the master says when it reaps a worker
        answers = replies_of(producer, 3)
        assert sorted(answers) == [[b"0", b"OK"], [b"1", b"ERR 503 worker_lost"], [b"2", b"ERR 503 worker_lost"]]
        worker.reply([(tag, b"OK") for tag, _ in taken[1:]])  # too late: already answered
        assert producer.recv(timeout=1) is None
    finally:
        worker.close()
        producer.close()


def test_a_draining_worker_gets_bye_and_nothing_new(relay):
    _proc, front, back = relay
    sleeper = subprocess.Popen(["sleep", "30"])  # a live pid for the second worker
    first = FakeWorker(back, os.getpid(), capacity=100)
    second = FakeWorker(back, sleeper.pid, capacity=100)
    producer = Producer(front)
    try:
        first.hello()
        producer.send(b"0", b"a|q|0")
        taken = first.take(1)
        first.hello(draining=True)
        assert first.sock.recv_multipart() == [BYE]  # everything sent to it came before this
        for i in range(1, 4):
            producer.send(b"%d" % i, b"a|q|%d" % i)
        assert first.take(1, timeout=0.5) == []  # drained: held for another worker
        second.hello()
        assert [body for _, body in second.take(3)] == [b"a|q|1", b"a|q|2", b"a|q|3"]
        first.reply([(taken[0][0], b"OK")])  # a draining worker still answers what it took
        assert producer.recv() == [b"0", b"OK"]
    finally:
        for sock in (first, second, producer):
            sock.close()
        sleeper.kill()
        sleeper.wait()


def test_relay_command_line_survives_keys_that_start_with_a_dash():
    keys = ("-" + "a" * 39, "b" * 40)
    settings = settings_from_text(
        "RMQ_CONN_STR,a,guest:guest@127.0.0.1:5672/\nZMQ_SOCK_ADDRESS,tcp://127.0.0.1:5555\n"
        f"ZMQ_CURVE_SERVER_KEY,/k\nZMQ_CURVE_CLIENT_KEYS,{' '.join(keys)}\n", "<t>", {})
    supervisor = RelaySupervisor(settings)
    try:
        options, _level = _parse_args(supervisor._command()[3:])
    finally:
        supervisor.stop()
    assert options.curve_client_keys == keys and options.front == "tcp://127.0.0.1:5555"
