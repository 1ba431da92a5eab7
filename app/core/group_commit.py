"""Group commit: the one batching engine behind every ingress.

A round trip to the broker costs far more than a message in it (the confirm
waits for the broker's fsync; each round trip costs the worker and the
broker CPU of their own): publishing one message per round trip caps a
worker at (connections / round trip). So every message, whether it came as
an HTTP ``POST /publish``, a record of a batch or a ZeroMQ frame, waits in
the :class:`GroupCommit` of its connection id's lane (the ids that share a
primary and a backup endpoint share one: :mod:`app.core.lane`), and up to
``width`` flushers each take what is waiting (up to :data:`MAX_BATCH`) and
publish it as one pipelined batch on one pooled connection, mapping the
confirms back to each message's answer.

Messages wait in one queue per *owner* (a connection id's route). While
several owners wait, a batch takes from each in turn, an equal share of
:data:`MAX_BATCH` each (what one leaves goes to the others), so a flood on
one id does not queue another id's messages behind all of it.

A new flusher starts only when none is collecting, and it first lets the
hub run what is ready (at most :data:`COLLECT_MAX_WAIT`), so requests that
arrived together share its batch instead of each starting a flusher of its
own. Alone, a message goes out at once: an idle hub is idle at once.

A flusher takes its batch only once it holds a connection to publish it on
(:class:`Turn`): a flusher waiting for the pool holds no messages, so a
message that arrives while every connection is busy rides with the first
connection that comes back, not behind a batch already taken that waits for
the one after. A message still waiting at its deadline (every connection
held by a stalled broker) is answered ``503 pool_timeout`` and never sent; no
timer runs per message.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence

import gevent

from app.amqp.connection import Envelope, Message, Outcome
from app.core.errors import ConfirmTimeout, PoolTimeout, internal_error
from app.ops import metrics

log = logging.getLogger(__name__)

MAX_BATCH = 1000  # messages one flusher publishes in one go (and most in one HTTP batch)
COLLECT_MAX_WAIT = 0.002  # seconds a new flusher waits at most for the hub to go idle

Answer = Callable[[Outcome], None]


class Waiting:
    """One message waiting for a flusher, and where its outcome goes."""

    __slots__ = ("answer", "body", "deadline", "envelope", "owner", "queue")

    def __init__(self, queue: str, body: bytes, deadline: float, answer: Answer, envelope: Envelope | None = None,
                 owner: Hashable = None):
        self.queue = queue
        self.body = body
        self.deadline = deadline
        self.answer = answer
        self.envelope = envelope  # a message to an exchange, with properties; None: (queue, body)
        self.owner = owner  # whose message it is (a route): batches share out among owners

    @property
    def message(self) -> Message:
        """What the connection publishes."""
        return self.envelope or (self.queue, self.body)


class Turn:
    """A flusher's next batch: taken (:meth:`take`) once the flusher holds a connection to publish it on."""

    __slots__ = ("_commit", "batch", "taken")

    def __init__(self, commit: GroupCommit):
        self._commit = commit
        self.batch: list[Waiting] = []
        self.taken = False

    @property
    def deadline(self) -> float:
        """The earliest deadline of the batch once taken; before, of the oldest messages waiting."""
        if self.taken:
            return min((message.deadline for message in self.batch), default=math.inf)
        return self._commit.earliest_deadline()

    def take(self) -> list[Waiting]:
        """The batch (taken at the first call): what is waiting now, up to MAX_BATCH, shared out among owners."""
        if not self.taken:
            self.taken = True
            self.batch = self._commit._take_turn()
        return self.batch


# Publishes a turn's batch, taking it once it holds a connection; one outcome per message of it, in order.
PublishBatch = Callable[[Turn], list[Outcome]]


class GroupCommit:
    """Messages of one lane's owners, published in batches by up to ``width`` flushers."""

    def __init__(self, name: str, publish_batch: PublishBatch, width: int):
        self.name = name
        self.publish_batch = publish_batch
        self.width = width
        self._queued: dict[Hashable, deque[Waiting]] = {}  # owner -> its waiting messages, owners in turn
        self._unanswered: dict[Hashable, int] = {}  # owner -> messages taken and not yet answered
        self.flushers: set[gevent.Greenlet] = set()  # running now
        self._collecting = False

    def add(self, message: Waiting) -> None:
        """Queue one message; its ``answer`` is called once, from a flusher."""
        self._enqueue(message)
        self._wake()

    def add_many(self, messages: Sequence[Waiting]) -> None:
        """Queue many messages, in order."""
        for message in messages:
            self._enqueue(message)
        self._wake()

    @property
    def busy(self) -> bool:
        """Messages are waiting or being published."""
        return bool(self._queued) or bool(self.flushers)

    def busy_for(self, owner: Hashable) -> bool:
        """Messages of ``owner`` are waiting or being published."""
        return owner in self._unanswered

    def earliest_deadline(self) -> float:
        """The earliest deadline among each owner's oldest waiting message (inf: none waits)."""
        return min((queue[0].deadline for queue in self._queued.values()), default=math.inf)

    def _enqueue(self, message: Waiting) -> None:
        owner = message.owner
        queue = self._queued.get(owner)
        if queue is None:
            queue = self._queued[owner] = deque()
        queue.append(message)
        self._unanswered[owner] = self._unanswered.get(owner, 0) + 1

    def _take(self) -> list[Waiting]:
        """The next batch: up to MAX_BATCH, an equal share from each owner waiting (the rest to the others)."""
        queued = self._queued
        if len(queued) == 1:  # the usual case: one owner, in order
            owner, queue = next(iter(queued.items()))
            batch = [queue.popleft() for _ in range(min(len(queue), MAX_BATCH))]
            if not queue:
                del queued[owner]
            return batch
        batch = []
        while queued and len(batch) < MAX_BATCH:
            share = max(1, (MAX_BATCH - len(batch)) // len(queued))
            for owner in list(queued):
                queue = queued[owner]
                batch.extend(queue.popleft() for _ in range(min(len(queue), share, MAX_BATCH - len(batch))))
                del queued[owner]
                if queue:
                    queued[owner] = queue  # to the end of the turn
                if len(batch) >= MAX_BATCH:
                    break
        return batch

    def _take_turn(self) -> list[Waiting]:
        """A turn's batch: the messages whose deadline passed are answered, the others returned."""
        self._collecting = False  # what arrives from now on waits for the next flusher
        if not self._queued:
            return []  # another flusher took them while this one waited for its connection
        batch = self._answer_expired(self._take())
        if batch:
            metrics.BATCH_SIZE.observe(len(batch))
        return batch

    def _answer(self, message: Waiting, outcome: Outcome) -> None:
        owner = message.owner
        left = self._unanswered.get(owner, 1) - 1
        if left > 0:
            self._unanswered[owner] = left
        else:
            self._unanswered.pop(owner, None)
        message.answer(outcome)

    def _wake(self) -> None:
        # A collecting flusher takes what was just queued; a busy one takes it
        # after its batch, if every flusher is busy.
        if not self._collecting and len(self.flushers) < self.width:
            self._collecting = True
            self.flushers.add(gevent.spawn(self._flush))

    def _flush(self) -> None:
        turn: Turn | None = None
        answered = 0
        try:
            # Let the hub first handle everything ready now (requests that arrived
            # together join this batch), bounded for a hub that is never idle.
            with gevent.Timeout(COLLECT_MAX_WAIT, False):
                gevent.idle()
            while self._queued:
                turn, answered = Turn(self), 0
                outcomes = self._publish(turn)
                for message, outcome in zip(turn.batch, outcomes, strict=True):
                    answered += 1
                    self._answer(message, outcome)
                turn = None
        finally:
            # Killed mid-batch (never expected): its messages may have gone out.
            for message in turn.batch[answered:] if turn is not None else ():
                self._answer(message, ConfirmTimeout("publisher stopped before the confirm"))
            self._collecting = False
            self.flushers.discard(gevent.getcurrent())
            if self._queued:
                self._wake()

    def _publish(self, turn: Turn) -> list[Outcome]:
        try:
            outcomes = self.publish_batch(turn)
            if not turn.taken:  # its messages would wait for ever
                raise RuntimeError("publish_batch returned without taking its batch")
            return outcomes
        except Exception:
            turn.take()
            return [internal_error(log, "publishing a batch", lane=self.name)] * len(turn.batch)

    def _answer_expired(self, batch: list[Waiting]) -> list[Waiting]:
        """Answer the messages whose deadline passed while every flusher was busy; the others."""
        now = time.monotonic()
        if all(m.deadline > now for m in batch):
            return batch
        live = []
        for message in batch:
            if message.deadline > now:
                live.append(message)
            else:
                self._answer(message, PoolTimeout("every publisher was busy until the deadline; not published"))
        return live
