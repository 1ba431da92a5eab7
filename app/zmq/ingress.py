"""A worker's ZeroMQ side: messages from the relay, published through the worker's own pools.

Added to the worker's services by gunicorn's ``post_worker_init``, after
gevent's patching, with a green ZeroMQ context of the worker's own. Its
DEALER connects to the relay's private back end (:mod:`app.zmq.relay`);
wire formats are in :mod:`app.zmq.frames`. Two greenlets and a heartbeat:

* the *reader* takes batches from the relay, at most ``ZMQ_MAX_IN_FLIGHT``
  messages unanswered (the relay's credits keep it there; past it the reader
  stops reading), parses each body with :func:`app.core.envelope.parse_record` (the
  seed's form or the envelope form; a bad one gets the same 400 as over HTTP) and hands the good ones to
  :meth:`Gateway.publish_many`, which splits them by connection id into each
  id's group commit (:mod:`app.core.group_commit`, which HTTP shares: one
  confirm round trip per batch, not per message); each answer is queued as
  a reply;
* the *writer* is the socket's only sender: batched replies and heartbeats.

Draining (SIGTERM, ``max_requests``): the worker tells the relay, which sends
nothing new and then ``BYE``; everything taken before it is published and
answered, then the socket closes with a bounded linger.
"""

from __future__ import annotations

import contextlib
import logging
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import gevent
import zmq.green as zmq
from gevent.event import Event

from app.amqp.connection import Outcome
from app.core.envelope import parse_record
from app.core.errors import GatewayError
from app.core.gateway import Addressed, Gateway
from app.core.lifecycle import Status
from app.ops import metrics
from app.zmq.frames import BYE, HELLO, MESSAGES, OK, REPLIES, error_reply, pack, unpack

log = logging.getLogger(__name__)

HEARTBEAT = 0.5  # seconds between HELLOs: how soon a restarted relay knows us
POLL_MS = 200
REPLY_BATCH = 1000  # replies per message to the relay
BYE_WAIT = 2.0  # relay silent while we drain: stop waiting for its BYE after this
LINGER_MS = 1000
SNDHWM = 1000  # reply batches and heartbeats queued while the relay is away


class ZmqIngress:
    """One worker's connection to the relay and everything it has taken from it."""

    name = "zmq"

    def __init__(self, gateway: Gateway, backend: str, *, capacity: int, identity: bytes,
                 on_taken: Callable[[int], None] | None = None):
        self.gateway = gateway
        self.backend = backend
        self.capacity = capacity
        self.identity = identity
        self.in_flight = 0
        self.draining = False
        self.stats = {"received": 0, "ok": 0, "errors": 0}
        self.on_taken = on_taken  # told how many messages were taken (the worker's max_requests)
        self._tally = metrics.PublishTally("zmq")  # answers counted, added to the metrics by the writer
        self._replies: deque[tuple[bytes, bytes]] = deque()
        self._control: deque[list[bytes]] = deque()
        self._wake = Event()  # the writer has something to send
        self._room = Event()  # in_flight fell below capacity
        self._idle = Event()  # draining and nothing left unanswered
        self._bye = Event()  # the relay will send nothing more
        self._reading = False  # the reader runs: more may come in
        self._drain_started = 0.0
        self._ctx: Any = None
        self._sock: Any = None
        self._greenlets: list[gevent.Greenlet] = []

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Connect to the relay (ZeroMQ reconnects on its own) and start the greenlets."""
        self._ctx = zmq.Context()
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.ROUTING_ID, self.identity)
        sock.setsockopt(zmq.RCVHWM, 0)  # the relay's credits bound what comes in
        sock.setsockopt(zmq.SNDHWM, SNDHWM)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        sock.connect(self.backend)
        self._sock = sock
        self._reading = True
        self._greenlets = [gevent.spawn(self._read_loop), gevent.spawn(self._write_loop),
                           gevent.spawn(self._heartbeat_loop)]
        log.info("ZeroMQ ingress connected to the relay", extra={"event": "zmq_started", "ingress": "zmq"})

    def drain(self) -> None:
        """Take nothing new: tell the relay, then answer what was taken."""
        if self.draining:
            return
        self.draining = True
        self._drain_started = time.monotonic()
        self._hello()
        self._check_idle()

    def stop(self, timeout: float) -> None:
        """As a component of the worker: close, giving what was taken its publish deadline."""
        self.close(max(timeout, self.gateway.settings.publish_timeout + 2))

    def status(self) -> Status:
        """No part in /readyz: a worker without its relay still serves HTTP."""
        return Status()

    def close(self, timeout: float) -> None:
        """Drain, wait (bounded) until everything taken is answered, then close the socket."""
        self.drain()
        self._idle.wait(timeout)
        if self.in_flight:
            log.warning("closing ZeroMQ with %d message(s) unanswered", self.in_flight,
                        extra={"event": "zmq_close_unanswered", "ingress": "zmq"})
        gevent.killall(self._greenlets, timeout=1.0)
        if self._sock is not None:
            self._sock.close(linger=LINGER_MS)  # bounded: a gone relay cannot hang the exit
            self._ctx.term()
            self._sock = None
        metrics.ZMQ_IN_FLIGHT.set(0)
        log.info("ZeroMQ ingress closed: %d received, %d OK, %d ERR", self.stats["received"], self.stats["ok"],
                 self.stats["errors"], extra={"event": "zmq_closed", "ingress": "zmq", **self.stats})

    # -- reading -----------------------------------------------------------------

    def _read_loop(self) -> None:
        sock = self._sock
        self._reading = True
        try:
            self._read_until_bye(sock)
        finally:
            self._reading = False
            self._check_idle()

    def _read_until_bye(self, sock: Any) -> None:
        while not self._bye.is_set():
            if self.in_flight >= self.capacity:
                self._room.clear()
                self._room.wait(POLL_MS / 1000)
                continue
            if not sock.poll(POLL_MS):
                if self.draining and time.monotonic() - self._drain_started > BYE_WAIT:
                    log.warning("no BYE from the relay; reading no more", extra={"event": "zmq_no_bye"})
                    break
                continue
            while self.in_flight < self.capacity:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if frames[0] == MESSAGES:
                    try:
                        self._take(frames)
                    except Exception:  # a bug must not kill the reader and with it the ingress
                        log.exception("unexpected error taking a ZeroMQ batch", extra={"event": "internal_error"})
                elif frames[0] == BYE and self.draining:
                    self._bye.set()  # all the relay sent us is behind us now
                    break

    def _take(self, frames: list[bytes]) -> None:
        try:
            messages = unpack(frames[1]) if len(frames) == 2 else []
        except struct.error:
            log.error("garbled batch from the relay; dropped", extra={"event": "zmq_protocol"})
            return
        count = len(messages)
        self.in_flight += count
        self.stats["received"] += count
        tags: list[bytes] = []
        parsed: list[Addressed] = []
        for tag, data in messages:
            try:
                message = parse_record(data)
            except GatewayError as exc:
                self._reply(tag, metrics.UNKNOWN_ID, exc)
                continue
            tags.append(tag)
            parsed.append(message)
        routes = self.gateway.routes

        def answer(index: int, outcome: Outcome) -> None:
            conn_id = parsed[index][0]
            self._reply(tags[index], conn_id if conn_id in routes else metrics.UNKNOWN_ID, outcome)

        try:
            self.gateway.publish_many(parsed, answer)
        finally:
            self._wake.set()
            metrics.ZMQ_IN_FLIGHT.set(self.in_flight)
            if self.on_taken is not None:
                self.on_taken(count)

    def _reply(self, tag: bytes, conn_label: str, outcome: Outcome) -> None:
        """Queue the answer to one message (the writer sends it) and count it."""
        if outcome is None:
            self._replies.append((tag, OK))
            self.stats["ok"] += 1
            self._tally.add(conn_label, "ok")
        else:
            self._replies.append((tag, error_reply(outcome)))
            self.stats["errors"] += 1
            self._tally.add(conn_label, outcome.code)
        self._wake.set()

    # -- writing -----------------------------------------------------------------

    def _hello(self) -> None:
        self._control.append([HELLO, b"%d" % self.capacity, b"1" if self.draining else b"0"])
        self._wake.set()

    def _heartbeat_loop(self) -> None:
        while True:
            self._hello()
            gevent.sleep(HEARTBEAT)

    def _write_loop(self) -> None:
        sock = self._sock
        replies, control = self._replies, self._control
        while True:
            self._wake.wait()
            self._wake.clear()
            while control:
                with contextlib.suppress(zmq.ZMQError):  # a heartbeat: the next one follows
                    sock.send_multipart(control.popleft())
            while replies:
                batch = [replies.popleft() for _ in range(min(len(replies), REPLY_BATCH))]
                try:
                    sock.send_multipart([REPLIES, pack(batch)])
                except zmq.ZMQError as exc:  # never a dead writer: these answers are lost, not the next ones
                    log.error("cannot send %d ZeroMQ answer(s): %s", len(batch), exc,
                              extra={"event": "zmq_send_failed"})
                finally:
                    self.in_flight -= len(batch)
            self._tally.flush()
            metrics.ZMQ_IN_FLIGHT.set(self.in_flight)
            if self.in_flight < self.capacity:
                self._room.set()
            self._check_idle()

    def _check_idle(self) -> None:
        if self.draining and not self._reading and self.in_flight == 0 and not self._replies:
            self._idle.set()
