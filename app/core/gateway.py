"""The gateway: one route per connection id, publishing with failover through its lane.

A :class:`Route` is a connection id: a name and a pair of endpoints. It uses
the pools of its primary's and its backup's endpoints (shared with every id
naming the same endpoint: :mod:`app.amqp.endpoints`) and publishes through
the lane of that pair (shared with every id naming the same pair:
:mod:`app.core.lane`: the group commit, failover, retries, queue circuits
and nack judgement). What is its own is its name: its producers' errors,
its metrics and log lines, and its view in ``/readyz``.

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

from app.amqp.connection import Envelope, Outcome
from app.amqp.endpoints import EndpointPools
from app.amqp.health import BrokerHealth
from app.amqp.pool import ConnectionPool
from app.amqp.server_cap import CAP
from app.config import ConnectionSpec, Settings, check_connection_count
from app.core.errors import GatewayError, ShuttingDown, UnknownConnection
from app.core.group_commit import Waiting
from app.core.lane import Lane, Lanes
from app.core.lifecycle import Status
from app.core.message import PublishRequest
from app.ops import metrics

log = logging.getLogger(__name__)

Addressed = PublishRequest  # (connection id, queue, body[, envelope])


class Route:
    """One connection id: its name, its primary and backup pools, and the lane it publishes through."""

    def __init__(self, spec: ConnectionSpec, settings: Settings, endpoints: EndpointPools, lanes: Lanes):
        self.spec = spec
        self.conn_id = spec.conn_id
        self.settings = settings
        self.endpoints = endpoints
        self.lanes = lanes
        # (role, pool) pairs, primary first; the pools are the endpoints' (shared), attached on start.
        self.brokers: list[tuple[str, ConnectionPool]] = []
        self.lane: Lane | None = None  # attached on start
        self.active_role: str | None = None
        self.closed = False  # detached from its pools: publishes are answered 503

    @property
    def pools(self) -> list[ConnectionPool]:
        """The pools of the primary and the backup, in that order."""
        return [pool for _, pool in self.brokers]

    def publish(self, queue: str, body: bytes, deadline: float, envelope: Envelope | None = None) -> Outcome:
        """Publish one message (``envelope``, if given, else ``(queue, body)``) through the lane's group commit."""
        assert self.lane is not None, "a route publishes once started"
        result: AsyncResult = AsyncResult()
        self.lane.commit.add(Waiting(queue, body, deadline, result.set, envelope, self))
        # The group commit answers every message it takes (one past its deadline
        # unsent): no timer per message here.
        outcome: Outcome = result.get()
        return outcome

    @property
    def busy(self) -> bool:
        """Publishes of this id are queued or being flushed."""
        return self.lane is not None and self.lane.commit.busy_for(self)

    def start(self) -> None:
        """Attach to the endpoints' pools (opened and filled if new) and to their lane."""
        if self.brokers:
            return
        for role, servers in self.spec.brokers():
            pool = self.endpoints.attach(servers, self, active=role == "primary")
            self.brokers.append((role, pool))
            pool.health.subscribe(self._on_health_change)
        self.lane = self.lanes.attach(tuple(self.brokers), self)

    def close(self, timeout: float = 2.0) -> None:
        """Detach from the lane and the pools; a pool no other id uses is closed cleanly."""
        if self.closed:
            return
        self.closed = True
        if self.lane is not None:
            self.lanes.detach(self.lane, self)
        for _, pool in self.brokers:
            pool.health.unsubscribe(self._on_health_change)
        gevent.joinall([gevent.spawn(self.endpoints.detach, pool, self, timeout) for pool in self._distinct_pools()],
                       timeout=timeout + 1)

    def _distinct_pools(self) -> list[ConnectionPool]:
        """Each pool once (a primary and a backup naming the same endpoint share one)."""
        return list({id(pool): pool for _, pool in self.brokers}.values())

    def candidates(self) -> list[tuple[str, ConnectionPool]]:
        """(role, pool) in the order the lane tries them now."""
        return list(self.lane.candidates()) if self.lane is not None else self.brokers

    @property
    def ready(self) -> bool:
        """Some broker of this id is up with a connection open."""
        return any(pool.health.is_up and pool.open_count > 0 for pool in self.pools)

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
        if self.lane is not None and self.lane.circuits.any_open:
            view["queues_refused"] = self.lane.circuits.open_queues()
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
        self.lanes = Lanes(settings)  # the group commits, shared by the ids naming the same pair of endpoints
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
            fresh[conn_id] = route = Route(spec, self.settings, self.endpoints, self.lanes)
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

        Here the messages are split by connection id: each id's join its lane's
        group commit, in order. A message of an unknown id (or one sent while the
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
            found[1].append(Waiting(queue, body, deadline, partial(answer, index), envelope, found[0]))
        for route, waiting in by_id.values():
            assert route.lane is not None, "a configured id's route is started"
            route.lane.commit.add_many(waiting)

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
