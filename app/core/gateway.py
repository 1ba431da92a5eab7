"""The gateway: one route per connection id, publishing with failover.

A :class:`Route` uses the pools of its primary's and its backup's endpoints
(shared with every id naming the same endpoint: :mod:`app.amqp.endpoints`);
its group commit, retry budget, queue circuits and nack judgement are its
own. It publishes to
the primary while the primary is up, to the backup while the primary is
down, and back to the primary once the primary's health has risen again
(see :mod:`app.amqp.health`). A connection lost under a publish is retried once
more on the same broker and then on the other one, within the publish
deadline, and within a retry budget (so a flapping broker cannot multiply
the load): a message whose connection died before its confirm may thus be
delivered twice (at-least-once), never silently dropped.

:class:`Gateway` holds the routes of one worker, answers ``publish`` for the
HTTP and ZeroMQ ingresses alike, and can swap its routes at run time (the
PostgreSQL source does, on a change).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import gevent
from gevent.event import AsyncResult, Event

from app.amqp.connection import BrokerConnection, Envelope, Message, Outcome
from app.amqp.endpoints import EndpointPools
from app.amqp.health import BrokerHealth
from app.amqp.nacks import NackJudge
from app.amqp.pool import ConnectionPool
from app.amqp.server_cap import CAP
from app.config import ConnectionSpec, Settings, check_connection_count
from app.core.circuit import QueueCircuits
from app.core.errors import (
    BrokerUnavailable,
    ConfirmTimeout,
    ConnectionLost,
    GatewayError,
    PoolTimeout,
    PublishNacked,
    RejectedByBroker,
    ShuttingDown,
    Unavailable,
    UnknownConnection,
    UnknownExchange,
)
from app.core.group_commit import GroupCommit, Waiting
from app.core.lifecycle import Status
from app.core.message import PublishRequest
from app.core.retry import RetryBudget
from app.ops import metrics

log = logging.getLogger(__name__)

Addressed = PublishRequest  # (connection id, queue, body[, envelope])

ATTEMPTS_PER_BROKER = 2  # a lost connection is retried once more on the same broker


def refusal(closed: ConnectionLost) -> GatewayError:
    """The answer to the message the broker closed its channel or connection over: never retried."""
    said = f": {closed.refused_text}" if closed.refused_text else ""
    if closed.refused_code == 404:  # NOT_FOUND: on a publish, only the exchange can be missing
        return UnknownExchange(f"the broker has no such exchange (404{said})")
    return RejectedByBroker(f"the broker closed the channel or connection over this message (reply code "
                            f"{closed.refused_code}{said}); it is not retried")


class Route:
    """Publishing for one connection id over its primary and backup pools."""

    def __init__(self, spec: ConnectionSpec, settings: Settings, endpoints: EndpointPools):
        self.spec = spec
        self.conn_id = spec.conn_id
        self.settings = settings
        self.endpoints = endpoints
        # (role, pool) pairs, primary first; the pools are the endpoints' (shared), attached on start.
        self.brokers: list[tuple[str, ConnectionPool]] = []
        self.retry_budget = RetryBudget(settings.retry_budget_ratio, settings.retry_budget_min)
        self.circuits = QueueCircuits(settings.queue_circuit_open, settings.confirm_timeout)
        self.nacks = NackJudge(spec.conn_id, settings.nack_retire_after, settings.nack_queue_hold)
        # As many flushers as the primary and backup can hold connections: when
        # a stalled primary holds its flushers until their confirms time out,
        # publishes after the failover still find flushers for the backup.
        width = (settings.pool_size + settings.pool_max_overflow) * len(spec.brokers())
        self.commit = GroupCommit(spec.conn_id, self.publish_batch, width)
        self.active_role: str | None = None
        self.closed = False  # detached from its pools: publishes are answered 503

    @property
    def pools(self) -> list[ConnectionPool]:
        """The pools of the primary and the backup, in that order."""
        return [pool for _, pool in self.brokers]

    def publish(self, queue: str, body: bytes, deadline: float, envelope: Envelope | None = None) -> Outcome:
        """Publish one message (``envelope``, if given, else ``(queue, body)``) through the group commit."""
        result: AsyncResult = AsyncResult()
        self.commit.add(Waiting(queue, body, deadline, result.set, envelope))
        # The group commit answers every message it takes (one past its deadline
        # unsent): no timer per message here.
        outcome: Outcome = result.get()
        return outcome

    @property
    def busy(self) -> bool:
        """Publishes are queued or being flushed."""
        return self.commit.busy

    def start(self) -> None:
        """Attach to the endpoints' pools (opened and filled if new)."""
        if self.brokers:
            return
        for role, servers in self.spec.brokers():
            pool = self.endpoints.attach(servers, self, active=role == "primary")
            self.brokers.append((role, pool))
            pool.health.subscribe(self._on_health_change)

    def close(self, timeout: float = 2.0) -> None:
        """Detach from the pools; a pool no other id uses is closed cleanly."""
        if self.closed:
            return
        self.closed = True
        for _, pool in self.brokers:
            pool.health.unsubscribe(self._on_health_change)
        gevent.joinall([gevent.spawn(self.endpoints.detach, pool, self, timeout) for pool in self._distinct_pools()],
                       timeout=timeout + 1)

    def _distinct_pools(self) -> list[ConnectionPool]:
        """Each pool once (a primary and a backup naming the same endpoint share one)."""
        return list({id(pool): pool for _, pool in self.brokers}.values())

    def candidates(self) -> list[tuple[str, ConnectionPool]]:
        """(role, pool) in the order to try: a healthy primary first, else a healthy backup first."""
        primary, *rest = self.brokers
        if primary[1].health.is_up or not rest:
            return self.brokers
        backup = rest[0]
        if backup[1].health.is_up or primary[1].health.is_down:
            return [backup, primary]
        return self.brokers

    @property
    def ready(self) -> bool:
        """Some broker of this id is up with a connection open."""
        return any(pool.health.is_up and pool.open_count > 0 for pool in self.pools)

    def publish_batch(self, messages: Sequence[Message], deadline: float) -> list[Outcome]:
        """Publish each message with confirms; one outcome per message, in order."""
        outcomes: list[Outcome] = [None] * len(messages)
        todo = list(range(len(messages)))
        if self.closed:
            gone = BrokerUnavailable(f"{self.conn_id}: not served here any more (its configuration changed, or the "
                                     "worker stops); retry")
            return self._fill(outcomes, todo, gone, {})
        if self.circuits.any_open:
            todo = self._refuse_open_queues(messages, todo, outcomes)
        # Sent, then the connection died before the confirm, or nacked and
        # retried: the broker may have them (RabbitMQ nacks what a dying queue
        # replica may still commit), so their answer stays "cannot know"
        # whatever the retries that follow run into (a refused reconnect is no
        # news about them).
        uncertain: dict[int, Unavailable] = {}
        nack_retried: dict[int, float] = {}  # retried after a nack streak -> when that streak began
        last_error: GatewayError = BrokerUnavailable(f"no broker of {self.conn_id!r} is reachable")
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
                    if not self.retry_budget.allow():
                        metrics.PUBLISH_RETRIES.labels(self.conn_id, role, "denied").inc()
                        return self._fill(outcomes, todo, last_error, uncertain)
                    metrics.PUBLISH_RETRIES.labels(self.conn_id, role, "allowed").inc()
                try:
                    with pool.connection(min(self.settings.pool_timeout, remaining), self.conn_id) as conn:
                        sent, sent_monotonic = time.perf_counter(), time.monotonic()
                        results = conn.publish_batch(
                            [messages[i] for i in todo],
                            min(self.settings.confirm_timeout, max(deadline - time.monotonic(), 0.001)),
                            mandatory=self.settings.mandatory,
                            persistent=self.settings.persistent,
                        )
                        metrics.CONFIRM_SECONDS.labels(self.conn_id, role).observe(time.perf_counter() - sent)
                        renack = self._judge_nacks(conn, [messages[i][0] for i in todo], results, todo, nack_retried)
                except PoolTimeout as exc:
                    last_error = self._named(exc, role)
                    if pool.health.is_up:
                        # A busy healthy broker is not a down one: answer 503
                        # rather than scatter its traffic onto the backup.
                        return self._fill(outcomes, todo, last_error, uncertain)
                    break
                except Unavailable as exc:
                    # Nothing was sent (broker down, blocked, at the cap): try the next broker.
                    last_error = self._named(exc, role)
                    break
                lost_here: list[int] = []  # the connection died under these
                closed_over: ConnectionLost | None = None  # ... because the broker closed it over one of them
                renacked: list[int] = []  # nacked by a connection now retired: once more, elsewhere
                for index, outcome in zip(todo, results, strict=True):
                    if isinstance(outcome, ConnectionLost):
                        lost_here.append(index)
                        uncertain[index] = last_error = outcome
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
                    retry = renacked + self._isolate(role, pool, messages, lost_here, closed_over, deadline,
                                                     outcomes, uncertain)
                    attempts -= 1  # every such round answers one message for good: it ends
                elif retry:
                    retrying = True
                    if lost_here:  # (nack retries were logged as the connection retired)
                        log.warning("connection lost under %d publish(es) of %s on %s (%s); retrying", len(lost_here),
                                    self.conn_id, role, conn.address.display,
                                    extra={"event": "publish_retry", "conn_id": self.conn_id, "role": role,
                                           **conn.log_fields})
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
        return self._fill(outcomes, todo, last_error, uncertain)

    def _named(self, exc: Unavailable, role: str) -> Unavailable:
        """The pool's error as this id's producer gets it: named by id and role (the pool is shared)."""
        return type(exc)(f"{self.conn_id}/{role}: {exc.detail}")

    def _refuse_open_queues(self, messages: Sequence[Message], todo: list[int], outcomes: list[Outcome]) -> list[int]:
        """Answer at once the messages whose queue's circuit is open; the rest, to publish."""
        now = time.monotonic()
        left = []
        for index in todo:
            refusal = self.circuits.refusal(messages[index][0], now)
            if refusal is None:
                left.append(index)
            else:
                outcomes[index] = refusal
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
            log.warning("queue(s) %s of %s stopped confirming while others confirm: refused for %gs",
                        ", ".join(sorted(late)), self.conn_id, self.circuits.open_for,
                        extra={"event": "queue_circuit_open", "conn_id": self.conn_id, "queues": sorted(late)})
        return blamed

    def _isolate(self, role: str, pool: ConnectionPool, messages: Sequence[Message], suspects: list[int],
                 closed: ConnectionLost, deadline: float, outcomes: list[Outcome],
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
                        "by one", closed.refused_code, len(suspects), self.conn_id, pool.name,
                        extra={"event": "publish_isolate", "conn_id": self.conn_id, "role": role})
        for position, index in enumerate(suspects):
            if len(suspects) > 1:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return suspects[position:]
                try:
                    with pool.connection(min(self.settings.pool_timeout, remaining), self.conn_id) as conn:
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
            outcomes[index] = refusal(closed)
            metrics.PUBLISH_RETRIES.labels(self.conn_id, role, "rejected").inc()
            log.warning("message of %s rejected: the broker closed a connection over it (%s) on %s", self.conn_id,
                        closed.refused_code, pool.name,
                        extra={"event": "publish_rejected", "conn_id": self.conn_id, "role": role})
            return suspects[position + 1:]
        return []

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
    def _fill(outcomes: list[Outcome], todo: list[int], error: GatewayError,
              uncertain: dict[int, Unavailable]) -> list[Outcome]:
        for index in todo:
            outcomes[index] = uncertain.get(index, error)
        return outcomes

    def _on_health_change(self, _health: BrokerHealth, _old: str) -> None:
        usable = [role for role, pool in self.candidates() if pool.health.is_up]
        role = usable[0] if usable else None
        if role == self.active_role:
            return
        previous, self.active_role = self.active_role, role
        # The pool published to is kept full, the other warm (the primary while nothing is up).
        for pool in self._distinct_pools():
            self.endpoints.set_active(pool, self, any(
                p is pool and r == (role or "primary") for r, p in self.brokers))
        if previous is None or role is None:
            log.info("connection id %s now publishes to %s", self.conn_id, role or "nothing",
                     extra={"event": "route_change", "conn_id": self.conn_id, "role": role})
            return
        direction = "failback" if role == "primary" else "failover"
        metrics.FAILOVERS.labels(self.conn_id, direction).inc()
        log.warning("%s: connection id %s moves from %s to %s", direction, self.conn_id, previous, role,
                    extra={"event": direction, "conn_id": self.conn_id, "role": role})

    def snapshot(self, pool_views: dict[ConnectionPool, dict[str, Any]] | None = None) -> dict[str, Any]:
        """Readiness view of this id: state, active broker, each pool (from ``pool_views`` if given); no secrets."""
        views = pool_views or {}
        view = self.summary()
        view["brokers"] = {role: {**(views.get(pool) or pool.snapshot()), "endpoint": pool.name}
                           for role, pool in self.brokers}
        return view

    def summary(self) -> dict[str, Any]:
        """This id's own state, its pools by endpoint name only (a pool's view is shared by its ids)."""
        view: dict[str, Any] = {
            "ready": self.ready,
            "active": self.active_role,
            "brokers": {role: pool.name for role, pool in self.brokers},
        }
        if self.circuits.any_open:
            view["queues_refused"] = self.circuits.open_queues()
        return view


class Gateway:
    """All routes of one worker; the one publish entry point of both ingresses."""

    name = "connections"  # its part of /readyz

    def __init__(self, settings: Settings, specs: Sequence[ConnectionSpec] | None = None):
        self.settings = settings
        # The ids to open on start: the file's, unless given (none: they come from PostgreSQL).
        self._initial_specs = settings.connections if specs is None else specs
        self.routes: dict[str, Route] = {}
        self.endpoints = EndpointPools(settings)  # the pools, shared by the ids naming the same endpoint
        self.started = False
        self.closing = False  # worker exit: routes stay known, publishes are refused with a 503

    def start(self) -> None:
        """Build and start the routes (idempotent); connects in the background."""
        if self.started:
            return
        self.started = True
        CAP.configure(self.settings.max_connections_per_server)
        self.set_connections(self._initial_specs)

    def set_connections(self, specs: Sequence[ConnectionSpec], warmup: float = 0.0) -> None:
        """Make the routes match ``specs``: open new ids, replace changed ones, drop removed ones.

        A changed id gets its new route started first; the old one keeps the
        publishes already under way and is closed once they are done. With
        ``warmup``, new and changed routes get up to that many seconds to open
        a connection before traffic moves to them (the old route serves meanwhile).
        More ids than ``MAX_CONNECTION_IDS`` raise :class:`ConfigError` and change nothing.
        """
        check_connection_count(len(specs), self.settings.max_connection_ids, "connection list")
        wanted = {spec.conn_id: spec for spec in specs}
        fresh: dict[str, Route] = {}
        for conn_id, spec in wanted.items():
            current = self.routes.get(conn_id)
            if current is not None and current.spec == spec:
                continue
            fresh[conn_id] = route = Route(spec, self.settings, self.endpoints)
            route.start()
        if warmup > 0 and fresh:
            try:
                self._warm_up(list(fresh.values()), warmup)
            except BaseException:
                for route in fresh.values():  # killed while warming up: leave nothing running
                    gevent.spawn(route.close)
                raise
        # From here on nothing yields: the swap is atomic for every other greenlet.
        new_routes = dict(self.routes)
        retired: list[Route] = []
        for conn_id, route in fresh.items():
            current = new_routes.get(conn_id)
            if current is not None:
                retired.append(current)
            new_routes[conn_id] = route
        for conn_id in set(self.routes) - set(wanted):
            retired.append(new_routes.pop(conn_id))
        self.routes = new_routes
        for route in retired:
            gevent.spawn(self._retire, route)

    @staticmethod
    def _warm_up(routes: list[Route], timeout: float) -> None:
        # Ready, or settled as down (an unreachable broker fails its first connect at once).
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(
                route.ready or all(pool.health.is_down for pool in route.pools) for route in routes):
            gevent.sleep(0.01)

    def _retire(self, route: Route) -> None:
        # Let the old route's publishes in flight (all in its group commit) finish
        # before it lets go of its pools (a pool no other id uses is closed).
        deadline = time.monotonic() + self.settings.publish_timeout + 1
        while route.busy and time.monotonic() < deadline:
            gevent.sleep(0.05)
        route.close()

    def route(self, conn_id: str) -> Route:
        """The route of a configured id, else :class:`UnknownConnection`."""
        route = self.routes.get(conn_id)
        if route is None:
            raise UnknownConnection(f"connection id {conn_id!r} is not configured")
        if self.closing:
            # Keep-alive requests still arrive while the worker closes: a
            # configured id is never "unknown", only not served here any more.
            raise ShuttingDown("this worker is shutting down; retry (another worker takes it)")
        return route

    def publish(self, conn_id: str, queue: str, body: bytes, envelope: Envelope | None = None) -> None:
        """Publish one message (``envelope``, if given); return once confirmed, else raise its GatewayError."""
        route = self.route(conn_id)
        outcome = route.publish(queue, body, time.monotonic() + self.settings.publish_timeout, envelope)
        if outcome is not None:
            raise outcome

    def publish_to(self, conn_id: str, envelope: Envelope) -> None:
        """Publish one message to any exchange; return once confirmed, else raise its GatewayError."""
        self.publish(conn_id, envelope.key, envelope.body, envelope)

    def publish_many(self, messages: Sequence[Addressed], answer: Callable[[int, Outcome], None]) -> None:
        """Publish messages of any ids; ``answer(index, outcome)`` is called once for each.

        Here the messages are split by connection id: each id's join its group
        commit, in order. A message of an unknown id (or one sent while the
        worker closes) is answered before this returns; the others from the
        flushers, once confirmed or failed. Nothing here blocks.
        """
        deadline = time.monotonic() + self.settings.publish_timeout
        by_id: dict[str, tuple[Route, list[Waiting]]] = {}
        for index, (conn_id, queue, body, envelope) in enumerate(messages):
            found = by_id.get(conn_id)
            if found is None:
                try:
                    found = by_id[conn_id] = (self.route(conn_id), [])
                except GatewayError as exc:
                    answer(index, exc)
                    continue
            found[1].append(Waiting(queue, body, deadline, partial(answer, index), envelope))
        for route, waiting in by_id.values():
            route.commit.add_many(waiting)

    def publish_all(self, messages: Sequence[Addressed]) -> list[Outcome]:
        """Publish messages of any ids and wait for them all; one outcome per message, in order."""
        outcomes: list[Outcome] = [None] * len(messages)
        left = len(messages)
        done = Event()

        def answer(index: int, outcome: Outcome) -> None:
            nonlocal left
            outcomes[index] = outcome
            left -= 1
            if not left:
                done.set()

        if messages:
            self.publish_many(messages, answer)
            done.wait()
        return outcomes

    def publish_batch(self, conn_id: str, messages: Sequence[tuple[str, bytes]]) -> list[Outcome]:
        """Publish many messages of one id and wait for them; one outcome per message."""
        return self.publish_all([PublishRequest(conn_id, queue, body) for queue, body in messages])

    @property
    def ready(self) -> bool:
        """Every connection id has a reachable broker (and the worker is not shutting down)."""
        return not self.closing and bool(self.routes) and all(route.ready for route in self.routes.values())

    def status(self) -> Status:
        """Its part of /readyz: every id's state, without secrets."""
        # Each pool's view once, however many ids share it (1,000 ids, a few pools).
        pool_views = {pool: pool.snapshot() for pool in self.endpoints}
        return Status(self.ready, {conn_id: route.snapshot(pool_views)
                                   for conn_id, route in sorted(self.routes.items())})

    def close(self, timeout: float = 2.0) -> None:
        """Close every route's connections cleanly (worker exit); the ids stay known, answered 503."""
        self.closing = True
        routes = list(self.routes.values())
        gevent.joinall([gevent.spawn(route.close, timeout) for route in routes], timeout=timeout + 1)
        # A pool still held by a route being retired (a live change under way) closes too.
        gevent.joinall([gevent.spawn(pool.close, timeout) for pool in self.endpoints], timeout=timeout + 1)

    stop = close  # as a component of the worker's lifecycle
