"""A lane: the publishing of every connection id that names the same primary and backup endpoints.

Ids whose primary (and backup) name the same endpoints share their pools
(:mod:`app.amqp.endpoints`), so they share their brokers' health and fail
over together. They share their lane too: one :class:`~app.core.group_commit.GroupCommit`,
so 100 ids that each publish a little fill one batch per round trip rather
than 100 batches of one that queue for the pool's connections; and the state
that is about the brokers and their queues rather than about an id: the
retry budget (a flapping broker cannot multiply the load), the per-queue
circuits and the nack judgement. What stays per id is its name: the errors
its producers get, its metrics and its log lines (:class:`~app.core.gateway.Route`).

A lane publishes to the primary while it is up, to the backup while the
primary is down, and back to the primary once its health has risen again
(see :mod:`app.amqp.health`). A connection lost under a publish is retried
once more on the same broker and then on the other one, within the publish
deadline, and within the retry budget: a message whose connection died
before its confirm may thus be delivered twice (at-least-once), never
silently dropped.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from app.amqp.connection import BrokerConnection, Message, Outcome
from app.amqp.nacks import NackJudge
from app.amqp.pool import ConnectionPool
from app.config import Settings
from app.core.circuit import QueueCircuits
from app.core.errors import (
    BrokerUnavailable,
    ConfirmTimeout,
    ConnectionLost,
    GatewayError,
    PoolTimeout,
    PublishNacked,
    RejectedByBroker,
    Unavailable,
    UnknownExchange,
)
from app.core.group_commit import GroupCommit, Turn, Waiting
from app.core.retry import RetryBudget
from app.ops import metrics

if TYPE_CHECKING:
    from app.core.gateway import Route

log = logging.getLogger(__name__)

ATTEMPTS_PER_BROKER = 2  # a lost connection is retried once more on the same broker
LOGGED_IDS = 5  # ids named in one log line

Brokers = tuple[tuple[str, ConnectionPool], ...]  # (role, pool), primary first


def refusal(closed: ConnectionLost) -> GatewayError:
    """The answer to the message the broker closed its channel or connection over: never retried."""
    said = f": {closed.refused_text}" if closed.refused_text else ""
    if closed.refused_code == 404:  # NOT_FOUND: on a publish, only the exchange can be missing
        return UnknownExchange(f"the broker has no such exchange (404{said})")
    return RejectedByBroker(f"the broker closed the channel or connection over this message (reply code "
                            f"{closed.refused_code}{said}); it is not retried")


class _Held:
    """The connection a batch was taken with, until its first attempt uses it."""

    __slots__ = ("conn", "pool")

    def __init__(self, pool: ConnectionPool, conn: BrokerConnection):
        self.pool = pool
        self.conn: BrokerConnection | None = conn


class Lane:
    """Publishing with failover for the ids of one (primary, backup) pair of pools."""

    def __init__(self, brokers: Brokers, settings: Settings):
        self.brokers = brokers
        self.settings = settings
        self.name = " -> ".join(pool.name for _, pool in brokers)  # safe to show: no password
        self.retry_budget = RetryBudget(settings.retry_budget_ratio, settings.retry_budget_min)
        self.circuits = QueueCircuits(settings.queue_circuit_open, settings.confirm_timeout)
        self.nacks = NackJudge(self.name, settings.nack_retire_after, settings.nack_queue_hold)
        # As many flushers as the primary and backup can hold connections: when
        # a stalled primary holds its flushers until their confirms time out,
        # publishes after the failover still find flushers for the backup.
        width = (settings.pool_size + settings.pool_max_overflow) * len(brokers)
        self.commit = GroupCommit(self.name, self.publish_batch, width)

    def candidates(self) -> Brokers:
        """(role, pool) in the order to try: a healthy primary first, else a healthy backup first."""
        primary, *rest = self.brokers
        if primary[1].health.is_up or not rest:
            return self.brokers
        backup = rest[0]
        if backup[1].health.is_up or primary[1].health.is_down:
            return (backup, primary)
        return self.brokers

    def publish_batch(self, turn: Turn) -> list[Outcome]:
        """Take the turn's batch once a connection is held; publish each message with confirms, outcomes in order."""
        held, failed = self._first_connection(turn)
        try:
            batch = turn.take()
            if not batch:
                return []
            return self._publish(batch, turn.deadline, held, failed)
        finally:
            if held is not None and held.conn is not None:  # not used: every message was answered before it
                held.pool.release(held.conn, self.name)

    def _first_connection(self, turn: Turn) -> tuple[_Held | None, tuple[GatewayError, str | None] | None]:
        """A connection of the first candidate that lends one, tried as ``_publish`` tries them; else the error.

        (None, None): the oldest message's deadline passed first, or nothing waits
        any more; the batch takes what is live, if anything, and goes the ordinary way.
        """
        last: tuple[GatewayError, str | None] = (BrokerUnavailable("no broker is reachable"), None)
        for role, pool in self.candidates():
            remaining = turn.deadline - time.monotonic()
            if remaining <= 0 or remaining == math.inf:  # passed, or nothing waits (another flusher took it)
                return None, None
            try:
                return _Held(pool, pool.acquire(min(self.settings.pool_timeout, remaining), self.name)), None
            except PoolTimeout as exc:
                if pool.health.is_up:
                    return None, (exc, role)  # busy, not down: 503, not the backup (as in _publish)
                last = (exc, role)
            except Unavailable as exc:
                last = (exc, role)
        return None, last

    def _publish(self, batch: list[Waiting], deadline: float, held: _Held | None,
                 failed: tuple[GatewayError, str | None] | None) -> list[Outcome]:
        """Publish each message with confirms, the first attempt on ``held``; one outcome per message, in order."""
        messages: list[Message] = [waiting.message for waiting in batch]
        routes: list[Route] = [waiting.owner for waiting in batch]  # type: ignore[misc]
        outcomes: list[Outcome] = [None] * len(messages)
        todo = [index for index, route in enumerate(routes) if not route.closed]
        if len(todo) < len(routes):
            for index, route in enumerate(routes):
                if route.closed:
                    outcomes[index] = BrokerUnavailable(
                        f"{route.conn_id}: not served here any more (its configuration changed, or the worker "
                        "stops); retry")
        if self.circuits.any_open:
            todo = self._refuse_open_queues(messages, todo, outcomes)
        if failed is not None:  # no candidate lent a connection
            return self._fill(outcomes, todo, failed[0], failed[1], routes, {})
        # Sent, then the connection died before the confirm, or nacked and
        # retried: the broker may have them (RabbitMQ nacks what a dying queue
        # replica may still commit), so their answer stays "cannot know"
        # whatever the retries that follow run into (a refused reconnect is no
        # news about them).
        uncertain: dict[int, Unavailable] = {}
        nack_retried: dict[int, float] = {}  # retried after a nack streak -> when that streak began
        last_error: GatewayError = BrokerUnavailable("no broker is reachable")
        last_role: str | None = None  # whose error it is: a role's pool, None: the id's, "": a connection's
        self.retry_budget.deposit()
        retrying = False
        for role, pool in self.candidates():
            attempts = 0
            while todo and attempts < ATTEMPTS_PER_BROKER:
                attempts += 1
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if retrying:
                    allowed = self.retry_budget.allow()
                    for conn_id in self._ids(routes, todo):
                        metrics.PUBLISH_RETRIES.labels(conn_id, role, "allowed" if allowed else "denied").inc()
                    if not allowed:
                        return self._fill(outcomes, todo, last_error, last_role, routes, uncertain)
                try:
                    if held is not None and held.pool is pool and held.conn is not None:
                        lend = pool.lent(held.conn, self.name)  # the connection the batch was taken with
                        held.conn = None
                    else:
                        lend = pool.connection(min(self.settings.pool_timeout, remaining), self.name)
                    with lend as conn:
                        sent, sent_monotonic = time.perf_counter(), time.monotonic()
                        results = conn.publish_batch(
                            [messages[i] for i in todo],
                            min(self.settings.confirm_timeout, max(deadline - time.monotonic(), 0.001)),
                            mandatory=self.settings.mandatory,
                            persistent=self.settings.persistent,
                        )
                        # The endpoint's round trip, once per batch: the ids of a batch share it (a
                        # per-id label multiplied it by the ids in the batch, and the series by 1,000s).
                        metrics.CONFIRM_SECONDS.labels(pool.name, role).observe(time.perf_counter() - sent)
                        renack = self._judge_nacks(conn, [messages[i][0] for i in todo], results, todo, nack_retried)
                except PoolTimeout as exc:
                    last_error, last_role = exc, role
                    if pool.health.is_up:
                        # A busy healthy broker is not a down one: answer 503
                        # rather than scatter its traffic onto the backup.
                        return self._fill(outcomes, todo, last_error, last_role, routes, uncertain)
                    break
                except Unavailable as exc:
                    # Nothing was sent (broker down, blocked, at the cap): try the next broker.
                    last_error, last_role = exc, role
                    break
                lost_here: list[int] = []  # the connection died under these
                closed_over: ConnectionLost | None = None  # ... because the broker closed it over one of them
                renacked: list[int] = []  # nacked by a connection now retired: once more, elsewhere
                for index, outcome in zip(todo, results, strict=True):
                    if isinstance(outcome, ConnectionLost) and outcome.culprit:
                        outcomes[index] = self._rejected(role, pool, routes[index], outcome)  # its own refusal
                    elif isinstance(outcome, ConnectionLost):
                        lost_here.append(index)
                        uncertain[index] = last_error = outcome
                        last_role = ""  # the connection's own error, not a pool's
                        if closed_over is None and outcome.refused_code is not None:
                            closed_over = outcome
                    elif index in renack and isinstance(outcome, PublishNacked):
                        renacked.append(index)
                        uncertain[index] = outcomes[index] = outcome
                    else:
                        outcomes[index] = outcome
                retry = sorted(lost_here + renacked)  # in the order sent
                if closed_over is not None:
                    # The broker closed the connection over one of these: find
                    # which before retrying the others (a message fails only itself);
                    # nacks of a retired connection are retried once as they are.
                    retry = renacked + self._isolate(role, pool, messages, routes, lost_here, closed_over, deadline,
                                                     outcomes, uncertain)
                    attempts -= 1  # every such round answers one message for good: it ends
                elif retry:
                    retrying = True
                    if lost_here:  # (nack retries were logged as the connection retired)
                        log.warning("connection lost under %d publish(es) of %s on %s (%s); retrying", len(lost_here),
                                    self._named_ids(routes, lost_here), role, conn.address.display,
                                    extra={"event": "publish_retry", "role": role, **conn.log_fields})
                elif any(isinstance(o, ConfirmTimeout) for o in results) and not conn.blocked:
                    if not self._queues_to_blame(messages, todo, results, sent_monotonic):
                        pool.health.record_failure("publish not confirmed in time", began=sent_monotonic)
                else:
                    pool.health.record_ok()
                    if self.circuits.enabled:
                        self.circuits.record((messages[i][0] for i, o in zip(todo, results, strict=True)
                                              if o is None), (), sent_monotonic)
                todo = retry
            if not todo:
                break
        return self._fill(outcomes, todo, last_error, last_role, routes, uncertain)

    @staticmethod
    def _ids(routes: Sequence[Route], indexes: Iterable[int]) -> set[str]:
        """The connection ids of these messages (metrics count each id once)."""
        return {routes[i].conn_id for i in indexes}

    def _named_ids(self, routes: Sequence[Route], indexes: Iterable[int]) -> str:
        ids = sorted(self._ids(routes, indexes))
        if len(ids) <= LOGGED_IDS:
            return ", ".join(ids)
        return f"{', '.join(ids[:LOGGED_IDS])} and {len(ids) - LOGGED_IDS} more"

    def _refuse_open_queues(self, messages: Sequence[Message], todo: list[int], outcomes: list[Outcome]) -> list[int]:
        """Answer at once the messages whose queue's circuit is open; the rest, to publish."""
        now = time.monotonic()
        left = []
        for index in todo:
            refused = self.circuits.refusal(messages[index][0], now)
            if refused is None:
                left.append(index)
            else:
                outcomes[index] = refused
        return left

    def _queues_to_blame(self, messages: Sequence[Message], todo: list[int], results: Sequence[Outcome],
                         sent_at: float) -> bool:
        """Confirms timed out: True if their queues stopped confirming while others did (app.core.circuit)."""
        if not self.circuits.enabled:
            return False
        confirmed = [messages[i][0] for i, o in zip(todo, results, strict=True) if o is None]
        late = {messages[i][0] for i, o in zip(todo, results, strict=True) if isinstance(o, ConfirmTimeout)}
        blamed = self.circuits.record(confirmed, late, sent_at)
        if blamed:
            log.warning("queue(s) %s on %s stopped confirming while others confirm: refused for %gs",
                        ", ".join(sorted(late)), self.name, self.circuits.open_for,
                        extra={"event": "queue_circuit_open", "lane": self.name, "queues": sorted(late)})
        return blamed

    def _isolate(self, role: str, pool: ConnectionPool, messages: Sequence[Message], routes: Sequence[Route],
                 suspects: list[int], closed: ConnectionLost, deadline: float, outcomes: list[Outcome],
                 uncertain: dict[int, Unavailable]) -> list[int]:
        """Find the message the broker closed a connection over; what is left to publish as usual.

        Alone among the unconfirmed, it is the culprit. Otherwise each suspect is
        published alone, in the order sent, on a fresh connection or channel: the
        one whose channel or connection the broker closes again is answered
        (:func:`refusal`) and never sent again; the others are answered by their
        own confirm. The rest go back to the ordinary path once the culprit is
        found, or at any other trouble (a plain connection loss, no connection,
        the deadline).
        """
        if len(suspects) > 1:
            log.warning("the broker closed a connection (%s) under %d publish(es) of %s on %s; publishing them one "
                        "by one", closed.refused_code, len(suspects), self._named_ids(routes, suspects), pool.name,
                        extra={"event": "publish_isolate", "lane": self.name, "role": role})
        for position, index in enumerate(suspects):
            if len(suspects) > 1:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return suspects[position:]
                try:
                    with pool.connection(min(self.settings.pool_timeout, remaining), self.name) as conn:
                        result = conn.publish_batch(
                            [messages[index]], min(self.settings.confirm_timeout, max(remaining, 0.001)),
                            mandatory=self.settings.mandatory, persistent=self.settings.persistent)[0]
                except Unavailable:
                    return suspects[position:]
                if not isinstance(result, ConnectionLost):
                    outcomes[index] = result
                    uncertain.pop(index, None)
                    continue
                uncertain[index] = result
                if result.refused_code is None:
                    return suspects[position:]  # an ordinary connection loss: retry as usual
                closed = result
            uncertain.pop(index, None)
            outcomes[index] = self._rejected(role, pool, routes[index], closed)
            return suspects[position + 1:]
        return []

    @staticmethod
    def _rejected(role: str, pool: ConnectionPool, route: Route, closed: ConnectionLost) -> GatewayError:
        """The answer to a message the broker closed its channel or connection over, counted and logged."""
        conn_id = route.conn_id
        metrics.PUBLISH_RETRIES.labels(conn_id, role, "rejected").inc()
        log.warning("message of %s rejected: the broker closed a connection over it (%s) on %s", conn_id,
                    closed.refused_code, pool.name,
                    extra={"event": "publish_rejected", "conn_id": conn_id, "role": role})
        return refusal(closed)

    def _judge_nacks(self, conn: BrokerConnection, queues: list[str], results: list[Outcome], todo: list[int],
                     nack_retried: dict[int, float]) -> set[int]:
        """Log a batch's nacks; retire ``conn`` if they are its own; the indexes to retry once elsewhere."""
        nacked = [(index, queue) for index, queue, outcome in zip(todo, queues, results, strict=True)
                  if isinstance(outcome, PublishNacked)]
        if not nacked:
            return set()
        self.nacks.note(conn, len(nacked), (queue for _, queue in nacked))
        for index, queue in nacked:
            if index in nack_retried:
                self.nacks.nacked_again(queue, conn, nack_retried[index])
        if not self.nacks.should_retire(conn, (queue for _, queue in nacked)):
            return set()
        streak, since = conn.nack_streak, conn.nack_streak_since
        conn.retired = f"{streak} nacks in a row"
        again = {index for index, queue in nacked if index not in nack_retried and not self.nacks.is_queue_fate(queue)}
        for index in again:
            nack_retried[index] = since
        log.warning("retiring connection %s to %s after %d nacks in a row; retrying %d message(s) once elsewhere",
                    conn.name, conn.address.display, streak, len(again),
                    extra={"event": "connection_nack_retired", **conn.log_fields})
        return again

    @staticmethod
    def _fill(outcomes: list[Outcome], todo: list[int], error: GatewayError, role: str | None,
              routes: Sequence[Route], uncertain: dict[int, Unavailable]) -> list[Outcome]:
        """Answer what is left: its "cannot know" if it was sent, else ``error``, named by each message's id."""
        named: dict[str, GatewayError] = {}
        for index in todo:
            if index in uncertain:
                outcomes[index] = uncertain[index]
                continue
            if role == "":  # a connection's own error: it names its connection already
                outcomes[index] = error
                continue
            conn_id = routes[index].conn_id
            answer = named.get(conn_id)
            if answer is None:
                # The pool's error as this id's producer gets it: named by id and role (the pool is shared).
                where = conn_id if role is None else f"{conn_id}/{role}"
                answer = named[conn_id] = type(error)(f"{where}: {error.detail}")
            outcomes[index] = answer
        return outcomes


class Lanes:
    """The worker's lanes, by their pair of pools, each kept while some route uses it."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._lanes: dict[tuple[tuple[str, int], ...], Lane] = {}
        self._users: dict[Lane, set[Route]] = {}

    @staticmethod
    def _key(brokers: Brokers) -> tuple[tuple[str, int], ...]:
        return tuple((role, id(pool)) for role, pool in brokers)

    def attach(self, brokers: Brokers, route: Route) -> Lane:
        """The lane of these (role, pool) pairs (made if new), now used by ``route``."""
        key = self._key(brokers)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = Lane(brokers, self.settings)
            self._users[lane] = set()
        self._users[lane].add(route)
        return lane

    def detach(self, lane: Lane, route: Route) -> None:
        """``route`` no longer uses ``lane``; the lane is forgotten once nobody does."""
        users = self._users.get(lane)
        if users is None:
            return
        users.discard(route)
        if not users:
            del self._users[lane]
            del self._lanes[self._key(lane.brokers)]

    def __iter__(self) -> Iterator[Lane]:
        return iter(list(self._lanes.values()))

    def __len__(self) -> int:
        return len(self._lanes)
