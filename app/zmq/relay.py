"""The ZeroMQ relay: binds ``ZMQ_SOCK_ADDRESS`` once and shares its messages among the workers.

A process of its own (``python -m app.zmq.relay``), started, watched and
restarted by the gunicorn master (:mod:`app.zmq.supervisor`). Front: a ROUTER
at the public address, with CURVE when configured. Back: a ROUTER at a
private ``ipc://`` path that each worker's DEALER connects to (wire formats in
:mod:`app.zmq.frames`).

Credit-based: each worker says how many messages it may hold unanswered
(``HELLO``), and the relay hands it at most that many, round robin over the
workers with room. With no room anywhere it stops reading the front socket,
so ZeroMQ's high-water marks push back on producers. The relay answers bad
frame shapes and oversized bodies itself, and remembers who sent each
message it handed out. So:

* a draining worker (SIGTERM, ``max_requests``) gets nothing new after it says
  so, answers what it holds, and nothing is lost;
* when a worker dies (the master says so on the control pipe, the relay's
  stdin), what it held unanswered is answered ``ERR 503 worker_lost``: it may
  or may not have been published, as with ``connection_lost``.

Control pipe: ``lost <pid>`` lines; ``stop`` or end of file ends the relay.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import signal
import struct
import sys
import time
from collections import deque
from dataclasses import dataclass, field

import zmq
from zmq.auth.thread import ThreadAuthenticator

from app.core.errors import StartupError, WorkerLost
from app.ops import logs, metrics
from app.ops.processes import is_alive
from app.zmq.frames import BYE, HEADER, HELLO, MESSAGES, REPLIES, error_reply, split_request, unpack
from app.zmq.sockets import CurveError, curve_server, recv_frames, send_frames
from app.zmq.supervisor import ipc_in_use, ipc_path

log = logging.getLogger("app.zmq.relay")  # not __name__: it runs as __main__

READ_BATCH = 1000  # messages taken from one socket before looking at the others
POLL_MS = 100  # longest sleep: how fast a stop request or a lost worker is seen
CHECK_EVERY = 0.25
LOST_GRACE = 0.3  # a dead worker's last replies may still be in the socket buffer
STALE_AFTER = 3.0  # no HELLO for this long: give the worker nothing new
FRONT_SNDHWM = 100_000  # replies queued for one slow producer before they are dropped
LINGER_MS = 1000  # at close, time left to deliver the last replies
WORKER_LOST = error_reply(WorkerLost())
# ZeroMQ's own per-frame limit on the producer side (ZMQ_MAXMSGSIZE): libzmq
# allocates a frame whole as soon as its header has arrived, so without it one
# 512 MiB frame cost the relay 1 GiB before the 413. A frame up to twice
# MAX_BODY_SIZE is still read and answered ERR 413; a larger one is refused
# by libzmq before anything is allocated: it drops that producer's connection,
# with no reply (docs/zmq.md).
FRAME_LIMIT_FACTOR = 2


def frame_limit(max_body: int) -> int:
    """The largest frame a producer may send before libzmq drops its connection."""
    return FRAME_LIMIT_FACTOR * max_body + 4096


class RelayError(StartupError):
    """The relay cannot start: one line saying why (no secrets)."""


@dataclass
class RelayOptions:
    front: str
    back: str
    max_body: int
    curve_server_key: str = ""
    curve_client_keys_dir: str = ""
    curve_client_keys: tuple[str, ...] = ()
    parent_pid: int = 0


@dataclass(eq=False)
class _Worker:
    wid: bytes  # its DEALER's routing id: the worker's pid
    pid: int
    capacity: int
    outstanding: dict[bytes, list[bytes]] = field(default_factory=dict)  # tag -> reply head
    draining: bool = False
    stale: bool = False
    ready: bool = False  # in the relay's rotation
    last_seen: float = 0.0
    lost_at: float | None = None
    handled: int = 0

    def can_take(self) -> bool:
        return (len(self.outstanding) < self.capacity and not self.draining
                and not self.stale and self.lost_at is None)


class Relay:
    """The front and back sockets and the book of who holds what."""

    def __init__(self, options: RelayOptions):
        self.options = options
        self.ctx = zmq.Context()
        self.front = self.ctx.socket(zmq.ROUTER)
        self.back = self.ctx.socket(zmq.ROUTER)
        self.workers: dict[bytes, _Worker] = {}
        self.ready: deque[_Worker] = deque()
        self.stopping = False
        self.orphaned = False  # the master died: nobody else will clean up after us
        self._auth: ThreadAuthenticator | None = None
        self._tag = random.getrandbits(62)  # tags from an earlier relay never match ours
        self._control = b""
        self._bound: list[str] = []

    # -- setting up ----------------------------------------------------------

    def bind(self) -> None:
        """Bind both sockets; RelayError with one clear line if that fails."""
        opts = self.options
        self.front.setsockopt(zmq.ROUTER_MANDATORY, 1)  # failed sends raise, so they are counted
        self.front.setsockopt(zmq.SNDHWM, FRONT_SNDHWM)
        self.front.setsockopt(zmq.MAXMSGSIZE, frame_limit(opts.max_body))
        self.front.setsockopt(zmq.LINGER, LINGER_MS)
        self.back.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.back.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a worker reconnecting keeps its id
        self.back.setsockopt(zmq.SNDHWM, 0)  # credits bound what is queued to a worker
        self.back.setsockopt(zmq.RCVHWM, 0)
        self.back.setsockopt(zmq.LINGER, 0)
        if opts.curve_server_key:
            self._setup_curve()
        path = ipc_path(opts.front)
        if path and ipc_in_use(path):
            # Binding would silently steal the path (libzmq unlinks it first).
            raise RelayError(f"{opts.front} is in use by another process")
        for sock, address in ((self.back, opts.back), (self.front, opts.front)):
            try:
                sock.bind(address)
            except zmq.ZMQError as exc:
                raise RelayError(f"cannot bind {address}: {exc.strerror}") from None
            self._bound.append(address)

    def _setup_curve(self) -> None:
        opts = self.options
        try:
            self._auth = curve_server(self.ctx, self.front, opts.curve_server_key, opts.curve_client_keys,
                                      opts.curve_client_keys_dir)
        except CurveError as exc:
            raise RelayError(str(exc)) from None

    # -- the loop ----------------------------------------------------------------

    def run(self, control_fd: int | None = None) -> None:
        """Relay until told to stop (a signal, ``stop`` or EOF on the control pipe, parent gone)."""
        poller = zmq.Poller()
        poller.register(self.back, zmq.POLLIN)
        if control_fd is not None:
            os.set_blocking(control_fd, False)
            poller.register(control_fd, zmq.POLLIN)
        front_polled = False
        next_check = time.monotonic() + CHECK_EVERY
        while not self.stopping:
            if bool(self.ready) != front_polled:
                # No worker with room: leave producers' messages in their queues.
                front_polled = not front_polled
                if front_polled:
                    poller.register(self.front, zmq.POLLIN)
                else:
                    poller.unregister(self.front)
            events = dict(poller.poll(POLL_MS))
            if self.back in events:
                self._from_workers()
            if front_polled and self.front in events:
                self._from_producers()
            if control_fd is not None and control_fd in events:
                self._read_control(control_fd)
            now = time.monotonic()
            if now >= next_check:
                next_check = now + CHECK_EVERY
                self._check_workers(now)

    def _from_producers(self) -> None:
        front = self.front
        max_body = self.options.max_body
        ready = self.ready
        header = HEADER.pack
        batches: dict[_Worker, list[bytes]] = {}
        received = 0
        for _ in range(READ_BATCH):
            if not ready:
                break
            try:
                frames = recv_frames(front)
            except zmq.Again:
                break
            received += 1
            head, body, error = split_request(frames, max_body)
            if error is not None:
                metrics.PUBLISHES.labels("zmq", metrics.UNKNOWN_ID, error.code).inc()
                self._answer(head, error_reply(error))
                continue
            worker = ready[0]
            self._tag += 1
            tag = self._tag.to_bytes(8, "big")
            worker.outstanding[tag] = head
            chunks = batches.get(worker)
            if chunks is None:
                chunks = batches[worker] = []
            chunks += (header(tag, len(body)), body)
            if len(worker.outstanding) >= worker.capacity:
                ready.popleft()
                worker.ready = False
            else:
                ready.rotate(-1)
        if received:
            metrics.ZMQ_RECEIVED.inc(received)
        for worker, chunks in batches.items():
            try:
                send_frames(self.back, [worker.wid, MESSAGES, b"".join(chunks)])
            except zmq.ZMQError as exc:
                # The worker's pipe is gone (it died): it never saw these.
                log.warning("worker %d unreachable (%s); answering its messages", worker.pid, exc.strerror,
                            extra={"event": "zmq_worker_unreachable", "ingress": "zmq"})
                worker.lost_at = worker.lost_at or time.monotonic()
                self._unready(worker)

    def _answer(self, head: list[bytes], reply: bytes) -> None:
        head.append(reply)
        try:
            send_frames(self.front, head)
        except zmq.ZMQError:
            # The producer went away or lets its replies pile up past FRONT_SNDHWM.
            metrics.ZMQ_RELAY_EVENTS.labels("reply_dropped").inc()

    def _from_workers(self) -> None:
        back = self.back
        for _ in range(READ_BATCH):
            try:
                frames = recv_frames(back)
            except zmq.Again:
                return
            if len(frames) < 2:
                continue
            wid, verb = frames[0], frames[1]
            if verb == REPLIES and len(frames) == 3:
                try:
                    replies = unpack(frames[2])
                except struct.error:
                    log.warning("garbled replies from worker %r", wid[:20], extra={"event": "zmq_protocol"})
                    continue
                self._replies(self.workers.get(wid), replies)
            elif verb == HELLO and len(frames) >= 4:
                self._hello(wid, frames)
            else:
                log.warning("unexpected message from worker %r", wid[:20], extra={"event": "zmq_protocol"})

    def _replies(self, worker: _Worker | None, replies: list[tuple[bytes, bytes]]) -> None:
        if worker is None:
            # From before a relay restart: whom it was for died with the old relay.
            metrics.ZMQ_RELAY_EVENTS.labels("reply_dropped").inc(len(replies))
            return
        outstanding = worker.outstanding
        front = self.front
        dropped = 0
        for tag, reply in replies:
            head = outstanding.pop(tag, None)
            if head is None:
                dropped += 1  # already answered worker_lost: one reply per message
                continue
            head.append(reply)
            try:
                send_frames(front, head)
            except zmq.ZMQError:
                dropped += 1
        if dropped:
            metrics.ZMQ_RELAY_EVENTS.labels("reply_dropped").inc(dropped)
        worker.handled += len(replies)
        worker.last_seen = time.monotonic()
        if not worker.ready and worker.can_take():
            worker.ready = True
            self.ready.append(worker)

    def _hello(self, wid: bytes, frames: list[bytes]) -> None:
        worker = self.workers.get(wid)
        try:
            pid, capacity = int(wid), int(frames[2])
        except ValueError:
            log.warning("bad HELLO from %r", wid[:20], extra={"event": "zmq_protocol"})
            return
        if worker is None:
            if not is_alive(pid):
                return  # a dead worker's last heartbeat, read after we forgot it
            worker = self.workers[wid] = _Worker(wid, pid, capacity)
            metrics.ZMQ_RELAY_EVENTS.labels("worker_joined").inc()
            log.info("worker %d joined (takes %d in flight)", pid, capacity,
                     extra={"event": "zmq_worker_joined", "ingress": "zmq", "worker": pid})
        worker.capacity = max(capacity, 1)
        worker.last_seen = time.monotonic()
        worker.stale = False
        if frames[3] == b"1":
            if not worker.draining:
                log.info("worker %d drains (%d unanswered)", pid, len(worker.outstanding),
                         extra={"event": "zmq_worker_draining", "ingress": "zmq", "worker": pid})
            worker.draining = True
            self._unready(worker)
            # Everything sent to it so far is ahead of this in its pipe.
            with contextlib.suppress(zmq.ZMQError):
                send_frames(self.back, [wid, BYE])
        elif not worker.ready and worker.can_take():
            worker.ready = True
            self.ready.append(worker)

    def _unready(self, worker: _Worker) -> None:
        if worker.ready:
            worker.ready = False
            self.ready.remove(worker)

    # -- workers' lives ------------------------------------------------------------

    def _read_control(self, fd: int) -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        if not data:
            log.warning("control pipe closed: the master is gone; relay stops", extra={"event": "zmq_relay_orphaned"})
            self.stopping = self.orphaned = True
            return
        self._control = (self._control + data)[-65536:]  # lines are short; garbage must not pile up
        *lines, self._control = self._control.split(b"\n")
        for line in lines:
            verb, _, arg = line.strip().partition(b" ")
            if verb == b"lost" and arg.isdigit():
                worker = self.workers.get(arg)
                if worker is not None and worker.lost_at is None:
                    worker.lost_at = time.monotonic()
                    self._unready(worker)
            elif verb == b"stop":
                self.stopping = True

    def _check_workers(self, now: float) -> None:
        if self.options.parent_pid and os.getppid() != self.options.parent_pid and not self.stopping:
            log.warning("the gunicorn master is gone; relay stops", extra={"event": "zmq_relay_orphaned"})
            self.stopping = self.orphaned = True
        for worker in list(self.workers.values()):
            if worker.lost_at is None and now - worker.last_seen > STALE_AFTER:
                if not is_alive(worker.pid):
                    worker.lost_at = now
                elif not worker.stale:
                    worker.stale = True  # busy or stuck: nothing new until it says HELLO again
                    self._unready(worker)
            if worker.lost_at is not None and now - worker.lost_at >= LOST_GRACE:
                self._from_workers()  # its last replies first
                self._forget(worker)

    def _forget(self, worker: _Worker) -> None:
        self._unready(worker)
        self.workers.pop(worker.wid, None)
        unanswered = len(worker.outstanding)
        for head in worker.outstanding.values():
            self._answer(head, WORKER_LOST)
        worker.outstanding.clear()
        if unanswered:
            metrics.PUBLISHES.labels("zmq", metrics.UNKNOWN_ID, WorkerLost.code).inc(unanswered)
            metrics.ZMQ_RELAY_EVENTS.labels("worker_lost").inc()
            log.warning("worker %d died holding %d message(s): answered %s", worker.pid, unanswered,
                        WORKER_LOST.decode(),
                        extra={"event": "zmq_worker_lost", "ingress": "zmq", "worker": worker.pid,
                               "handled": worker.handled, "unanswered": unanswered})
        else:
            metrics.ZMQ_RELAY_EVENTS.labels("worker_left").inc()
            log.info("worker %d left after %d message(s)", worker.pid, worker.handled,
                     extra={"event": "zmq_worker_left", "ingress": "zmq", "worker": worker.pid,
                            "handled": worker.handled})

    def close(self) -> None:
        """Answer what is still unanswered, flush replies (bounded), close, remove our ipc files."""
        for worker in list(self.workers.values()):
            self._forget(worker)
        self.front.close(linger=LINGER_MS)
        self.back.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        self.ctx.term()
        for address in self._bound:  # libzmq leaves the socket files behind
            path = ipc_path(address)
            if path:
                with contextlib.suppress(OSError):
                    os.unlink(path)
        back = ipc_path(self.options.back)
        if self.orphaned and back:
            with contextlib.suppress(OSError):  # the master's private directory, now empty
                os.rmdir(os.path.dirname(back))



def _parse_args(argv: list[str] | None) -> tuple[RelayOptions, str]:
    parser = argparse.ArgumentParser(description="ZeroMQ relay of the AMQP gateway (started by gunicorn)")
    parser.add_argument("--front", required=True)
    parser.add_argument("--back", required=True)
    parser.add_argument("--max-body", type=int, required=True)
    parser.add_argument("--curve-server-key", default="")
    parser.add_argument("--curve-client-keys-dir", default="")
    parser.add_argument("--curve-client-keys", default="")
    parser.add_argument("--parent-pid", type=int, default=0)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    options = RelayOptions(
        front=args.front, back=args.back, max_body=args.max_body,
        curve_server_key=args.curve_server_key, curve_client_keys_dir=args.curve_client_keys_dir,
        curve_client_keys=tuple(args.curve_client_keys.split()), parent_pid=args.parent_pid,
    )
    return options, args.log_level


def main(argv: list[str] | None = None) -> int:
    """Bind, say ``READY`` (or ``ERROR <why>``) on stdout, relay until stopped."""
    options, level = _parse_args(argv)
    # stdout is the master's status pipe, for READY or ERROR alone: keep it
    # aside and send fd 1 (where the JSON logs go) to stderr from the start.
    status = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    logs.configure(level)
    relay = Relay(options)
    try:
        relay.bind()
    except RelayError as exc:
        print(f"ERROR {exc}", file=status, flush=True)
        status.close()
        relay.close()
        return 2
    # The master stops the relay after the workers: a Ctrl-C meant for the
    # whole group must not cut the workers' last replies short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda _sig, _frame: setattr(relay, "stopping", True))
    metrics.ZMQ_RELAY_EVENTS.labels("started").inc()
    log.info("relay bound at %s", options.front,
             extra={"event": "zmq_relay_started", "ingress": "zmq", "curve": bool(options.curve_server_key)})
    print("READY", file=status, flush=True)
    status.close()
    try:
        relay.run(control_fd=sys.stdin.fileno())
    except Exception:
        # The master restarts it; say why first.
        log.exception("relay crashed", extra={"event": "zmq_relay_crashed", "ingress": "zmq"})
        return 1
    finally:
        relay.close()
    log.info("relay stopped", extra={"event": "zmq_relay_stopped", "ingress": "zmq"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
