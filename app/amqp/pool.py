"""A bounded, gevent-aware pool of AMQP connections to one broker endpoint.

One pool per endpoint (a role's servers, with vhost, user and TLS options),
shared by every connection id that names it (:mod:`app.amqp.endpoints`).
Sizes, as operators know them from SQLAlchemy's QueuePool and django_pgpool:

* ``min_size`` connections are always kept open, filled in the background by
  a *filler* greenlet with exponential backoff (``POOL_MIN_SIZE`` while an id
  publishes to the endpoint, ``BACKUP_WARM_SIZE`` while it is only a backup);
* on demand the pool grows to ``size`` (kept, returned to the pool);
* under peak load, after waiting ``overflow_wait`` for a free connection, up
  to ``max_overflow`` extra connections are opened, and closed when returned;
* connections above ``min_size`` idle longer than ``idle_timeout`` are closed.

Each connection is lent to one holder at a time, LIFO, so that extra
connections really go idle. A *keepalive* greenlet, every keepalive
interval, takes each idle connection out in turn (holding it exclusively) to
probe it, shrink the pool, or retire it once past its max age. The role's
health is checked beside the pool, by its :class:`~app.amqp.checker.HealthChecker`.

A connection that failed is discarded, never put back; the filler replaces it.
Acquire waits at most its timeout (:class:`PoolTimeout`) and fails at once
when the role is down and nothing is idle (:class:`BrokerUnavailable`).
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import gevent
from gevent.event import AsyncResult, Event

from app.amqp.checker import HealthChecker
from app.amqp.connection import BrokerConnection
from app.amqp.health import BrokerHealth
from app.amqp.servers import ServerSet
from app.config import BrokerAddress, Servers, Settings
from app.core.errors import (
    BrokerBlocked,
    BrokerUnavailable,
    ConnectionCapReached,
    ConnectionLost,
    GatewayError,
    PoolTimeout,
    describe_exception,
)
from app.core.retry import Backoff, RetryBudget
from app.ops import metrics

log = logging.getLogger(__name__)

FILL_BACKOFF_START = 0.05  # seconds before the filler's first retry


class ConnectionPool:
    """Pooled connections to the server(s) of one endpoint."""

    def __init__(self, name: str, servers: Servers, settings: Settings, label: str = ""):
        self.name = name  # the endpoint as operators see it: servers with user and vhost, no password
        # What connection names and producers' error details say instead: the
        # address stays out of answers, and no id's name reaches another id's producer.
        self.label = label or name
        self.conn_ids: list[str] = []  # the ids using the pool (kept by EndpointPools), for log lines
        self.endpoint = servers
        self.settings = settings
        self.servers = ServerSet(servers, settings.server_selection, settings.server_quarantine)
        self.size = settings.pool_size
        self.min_size = settings.min_size
        self.max_overflow = settings.pool_max_overflow
        fields = {"endpoint": name}
        self.health = BrokerHealth(name, settings.health_rise, settings.health_fall, log_fields=fields)
        self.health.subscribe(self._on_health_change)
        self.checker = HealthChecker(self.label, self.servers, self.health, settings, log_fields=fields)
        self._idle: deque[BrokerConnection] = deque()
        self._waiters: deque[AsyncResult] = deque()
        self._waiting_since: dict[AsyncResult, float] = {}  # for the longest-wait gauge
        self._waiter_holder: dict[AsyncResult, str] = {}  # whom each waiter waits for
        self._held: dict[str, int] = {}  # connections lent out, by holder (a connection id)
        self._expiry: dict[BrokerConnection, float] = {}
        self._members: set[BrokerConnection] = set()  # every pooled connection open, idle or lent
        self._in_use = 0
        self._connecting = 0
        self._opened = 0
        self._wanted = Event()  # wakes the filler
        self._greenlets: list[gevent.Greenlet] = []
        self._closed = False
        self._blocked: set[BrokerConnection] = set()  # connections the broker has blocked
        self.capped: ConnectionCapReached | None = None  # the last open refused by the per-server cap
        burst = self.size + self.max_overflow
        self._open_budget = RetryBudget(0.0, settings.pool_open_rate, window=burst / settings.pool_open_rate)
        self._labels = (name,)
        self._gauges = {
            **{state: metrics.POOL_CONNECTIONS.labels(name, state) for state in ("idle", "in_use", "connecting")},
            "waiting": metrics.POOL_WAITING.labels(name),
            "open": metrics.POOL_OPEN.labels(name),
            "size": metrics.POOL_SIZE.labels(name),
            "longest_wait": metrics.POOL_LONGEST_WAIT.labels(name),
        }
        self._update_gauges()

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Start the filler and keepalive greenlets (in the worker, never the master)."""
        self._wanted.set()
        self._greenlets = [gevent.spawn(self._fill_loop), gevent.spawn(self._keepalive_loop)]
        self.checker.start()

    def set_min_size(self, size: int) -> None:
        """Keep ``size`` connections open from now on (the filler grows to it; idle ones above shrink)."""
        if size != self.min_size:
            self.min_size = size
            self._wanted.set()

    @property
    def greenlets(self) -> list[gevent.Greenlet]:
        """The pool's background greenlets, its health checker's included."""
        return [*self._greenlets, *([self.checker.greenlet] if self.checker.greenlet is not None else [])]

    def close(self, timeout: float = 2.0) -> None:
        """Stop the greenlets and close every idle connection cleanly."""
        self._closed = True
        gevent.killall(self._greenlets, block=True, timeout=timeout)
        while self._waiters:
            self._waiters.popleft().set(None)
        closing = [self._spawn_close(conn, timeout=timeout) for conn in self._idle]
        checker_closing = self.checker.close(timeout)
        if checker_closing is not None:
            closing.append(checker_closing)
        self._idle.clear()
        self._members.clear()
        gevent.joinall(closing, timeout=timeout + 0.5)
        self._update_gauges()

    # -- lending ---------------------------------------------------------------

    @property
    def open_count(self) -> int:
        """Connections open: idle plus lent out."""
        return len(self._idle) + self._in_use

    def acquire(self, timeout: float, holder: str = "") -> BrokerConnection:
        """Lend a connection to one holder (a connection id); raise PoolTimeout or BrokerUnavailable."""
        now = time.monotonic()
        deadline = now + timeout
        overflow_at = now + self.settings.pool_overflow_wait
        while True:
            if self._closed:
                raise BrokerUnavailable("pool is closed")
            while self._idle and not self._blocked:
                conn = self._idle.pop()
                if conn.ready_for_use():
                    self._in_use += 1
                    self._hold(holder, 1)
                    return conn
                self._discard(conn, conn.lost_reason or "found dead in the pool")
            if self.health.is_down:
                raise BrokerUnavailable(f"broker is down ({self.health.last_error})")
            if self._blocked:
                # RabbitMQ blocks each connection only once it publishes: do not
                # feed it more while it has said it is out of resources.
                raise BrokerBlocked("the broker blocked publishing (resource alarm)")
            now = time.monotonic()
            total = self.open_count + self._connecting
            if total < self.size or (total < self.size + self.max_overflow and now >= overflow_at):
                opened = self._open_for_caller(min(self.settings.connect_timeout, max(deadline - now, 0.05)))
                if opened is not None:
                    self._hold(holder, 1)
                    return opened
                if self.capped is not None and self.open_count == 0:
                    raise ConnectionCapReached(self.capped.detail)  # no connection of ours will come back
                now = time.monotonic()
            if now >= deadline:
                raise PoolTimeout(f"no free connection within {timeout:g}s")
            # Wait for a returned connection; wake up for overflow if it may be opened then.
            until = deadline
            if now < overflow_at and total < self.size + self.max_overflow:
                until = min(deadline, overflow_at)
            handed = self._wait(until - now, holder)
            if handed is not None:
                return handed  # handed over by release(), already counted in use and held

    def _wait(self, seconds: float, holder: str) -> BrokerConnection | None:
        waiter: AsyncResult = AsyncResult()
        self._waiters.append(waiter)
        self._waiting_since[waiter] = time.monotonic()
        self._waiter_holder[waiter] = holder
        try:
            handed: BrokerConnection | None = waiter.get(timeout=seconds)
            return handed
        except gevent.Timeout:
            # Handed over in the same instant the timeout fired: keep it.
            return waiter.value if waiter.ready() else None
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            self._waiting_since.pop(waiter, None)
            self._waiter_holder.pop(waiter, None)

    def _may_open(self, timeout: float | None) -> bool:
        # POOL_OPEN_RATE: whatever kills connections (a broker closing them over
        # a message, a flapping network), this pool opens no more than a burst
        # of (size + overflow), then the rate. Waits up to ``timeout`` for it.
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._open_budget.allow():
            if self._closed or (deadline is not None and time.monotonic() >= deadline):
                return False
            gevent.sleep(1.0 / self.settings.pool_open_rate)
        return True

    def _open_for_caller(self, timeout: float) -> BrokerConnection | None:
        # Growth to the pool size, or overflow: the caller opens it and holds it.
        conn = self._open(timeout)
        if conn is None:
            return None
        self._in_use += 1
        self._update_gauges()
        return conn

    def release(self, conn: BrokerConnection, holder: str = "") -> None:
        """Take a connection back: reuse it, or close it if failed, expired or overflow."""
        self._in_use -= 1
        self._hold(holder, -1)
        if self._closed:
            self._spawn_close(conn)
        elif not conn.usable:
            self._discard(conn, conn.lost_reason or conn.retired or "confirm timed out")
        elif time.monotonic() >= self._expiry.get(conn, float("inf")):
            self._retire(conn, "max age reached")
        elif self.open_count + 1 > self.size and not self._waiters:
            self._retire(conn, "overflow connection returned")
        else:
            self._put(conn)

    @contextmanager
    def connection(self, timeout: float, holder: str = "") -> Iterator[BrokerConnection]:
        """``with pool.connection(t, holder) as conn``: acquire, then release or discard."""
        with self.lent(self.acquire(timeout, holder), holder) as conn:
            yield conn

    @contextmanager
    def lent(self, conn: BrokerConnection, holder: str = "") -> Iterator[BrokerConnection]:
        """``with pool.lent(conn, holder)``: use a connection already acquired, then release or discard it."""
        try:
            yield conn
        except GatewayError:
            raise  # an answer we know; the connection's own flags say if it is still good
        except BaseException:
            # An error we did not expect (or the greenlet killed mid-publish):
            # the connection's state is unknown, so it is discarded.
            conn.suspect = True
            raise
        finally:
            self.release(conn, holder)

    def _put(self, conn: BrokerConnection) -> None:
        while self._waiters:
            waiter = self._next_waiter()
            if not waiter.ready():
                self._in_use += 1
                self._hold(self._waiter_holder.get(waiter, ""), 1)
                waiter.set(conn)
                return
        self._idle.append(conn)

    def _hold(self, holder: str, change: int) -> None:
        """Count a connection lent to (1) or returned by (-1) ``holder``."""
        held = self._held.get(holder, 0) + change
        if held > 0:
            self._held[holder] = held
        else:
            self._held.pop(holder, None)

    def _next_waiter(self) -> AsyncResult:
        """The waiter to hand a returned connection to: of the holder that holds fewest now, first come first.

        Fairness on a shared pool: an id flooding the endpoint holds many
        connections and queues many waiters; another id's waiter, holding
        none, gets the next connection that comes back instead of queueing
        behind all of them.
        """
        waiters = self._waiters
        if len(waiters) == 1:
            return waiters.popleft()
        held, holders = self._held, self._waiter_holder
        chosen = min(waiters, key=lambda w: held.get(holders.get(w, ""), 0))
        waiters.remove(chosen)
        return chosen

    def _discard(self, conn: BrokerConnection, reason: str) -> None:
        self._expiry.pop(conn, None)
        self._members.discard(conn)
        self._blocked.discard(conn)
        metrics.CONNECTION_EVENTS.labels(*self._labels, "lost").inc()
        log.info("discarding connection %s to %s: %s", conn.name, conn.address.display, reason,
                 extra={"event": "connection_discarded", **conn.log_fields})
        self._spawn_close(conn, abort=conn.suspect)
        self._wanted.set()

    def _retire(self, conn: BrokerConnection, reason: str) -> None:
        self._expiry.pop(conn, None)
        self._members.discard(conn)
        self._blocked.discard(conn)
        conn.suspect = True  # keep it out of use while it closes
        metrics.CONNECTION_EVENTS.labels(*self._labels, "recycled").inc()
        log.debug("closing connection %s to %s: %s", conn.name, conn.address.display, reason,
                  extra={"event": "connection_recycled", **conn.log_fields})
        self._spawn_close(conn)
        self._wanted.set()

    def _spawn_close(self, conn: BrokerConnection, abort: bool = False, timeout: float = 2.0) -> gevent.Greenlet:
        """Close (or abort) a connection in a greenlet of its own that no error can kill."""
        return gevent.spawn(self._guarded, "closing a connection", conn.abort if abort else conn.close,
                            *(() if abort else (timeout,)))

    def _guarded(self, what: str, call: Callable[..., Any], *args: Any) -> Any:
        """``call(*args)``, logging an error nobody expected instead of dying of it (then None)."""
        try:
            return call(*args)
        except Exception as exc:
            log.error("unexpected error %s on %s: %s", what, self.name, describe_exception(exc), exc_info=True,
                      extra={"event": "pool_internal_error", "endpoint": self.name})
            return None

    # -- opening -----------------------------------------------------------------

    def _open(self, timeout: float | None = None, server: BrokerAddress | None = None) -> BrokerConnection | None:
        """Open one connection to ``server`` or the next one; None (failure recorded) if it fails."""
        server = server or self.servers.pick()
        if not self._may_open(timeout):
            return None
        self._opened += 1
        self._connecting += 1
        self._update_gauges()
        try:
            conn = BrokerConnection.open(server, self.settings, f"gateway {self.label} #{self._opened}", timeout)
        except ConnectionCapReached as exc:
            # Not the server failing: the gateway's own limit (logged by the cap).
            self.capped = exc
            return None
        except Exception as exc:
            # ConnectionLost is the broker's answer; anything else (a TLS file
            # gone since the config was checked, a bug) fails this connect
            # all the same, never the filler or the health check.
            if isinstance(exc, ConnectionLost):
                detail = exc.detail
            else:
                detail = f"{server.display}: unexpected error: {describe_exception(exc)}"
                log.error("unexpected error connecting to %s: %s", self.name, detail, exc_info=True,
                          extra={"event": "pool_internal_error", **self._fields(server)})
            metrics.CONNECTION_EVENTS.labels(*self._labels, "failed").inc()
            self.servers.failed(server)
            was_down = self.health.is_down
            # With other servers still free to try, one refusing is not the role failing.
            if self.servers.all_quarantined():
                self.health.record_failure(detail)
            if server.display not in detail:
                detail = f"{server.display}: {detail}"
            (log.debug if was_down else log.warning)(
                "cannot connect to %s: %s", self.name, detail,
                extra={"event": "connect_failed", **self._fields(server)})
            return None
        finally:
            self._connecting -= 1
            self._update_gauges()
        self.capped = None
        self.servers.recovered(server)
        self._members.add(conn)
        conn.on_lost = self._on_connection_lost
        conn.on_blocked = self._on_connection_blocked
        conn.on_channel_reopen = self._on_channel_reopen
        conn.log_fields = self._fields(server)
        metrics.CONNECTION_EVENTS.labels(*self._labels, "opened").inc()
        if self.settings.max_age > 0:
            # Jitter, so a pool's connections do not all reconnect together.
            self._expiry[conn] = time.monotonic() + self.settings.max_age * random.uniform(0.8, 1.0)
        self.health.record_connected()
        return conn

    def _fields(self, server: BrokerAddress) -> dict[str, Any]:
        """The log fields of an event on one connection: endpoint, its ids and server (as displayed: no password)."""
        return {"endpoint": self.name, "conn_ids": self.conn_ids, "server": server.display}

    def _fill_loop(self) -> None:
        backoff = Backoff(FILL_BACKOFF_START, self.settings.reconnect_backoff_max)
        while not self._closed:
            if self.open_count + self._connecting >= self.min_size:
                self._wanted.clear()
                self._wanted.wait()
                continue
            conn: BrokerConnection | None = self._guarded("filling the pool", self._open)
            if conn is None:
                gevent.sleep(backoff.next())
                continue
            backoff.reset()
            if self._closed:
                self._spawn_close(conn)
                break
            self._put(conn)
            self._update_gauges()

    def _on_connection_lost(self, conn: BrokerConnection, reason: str) -> None:
        # Runs in the gevent hub: only bookkeeping, nothing that blocks.
        # A lost connection is not by itself a failed check: a broker cut
        # fails the filler's reconnects at once, a blip does not.
        self._blocked.discard(conn)
        self._members.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)
            self._expiry.pop(conn, None)
            metrics.CONNECTION_EVENTS.labels(*self._labels, "lost").inc()
            log.info("idle connection %s to %s lost: %s", conn.name, conn.address.display, reason,
                     extra={"event": "connection_lost", **conn.log_fields})
            self._update_gauges()
        self._wanted.set()

    def _on_channel_reopen(self, _conn: BrokerConnection) -> None:
        metrics.CONNECTION_EVENTS.labels(*self._labels, "channel_reopened").inc()

    def _on_connection_blocked(self, conn: BrokerConnection, blocked: bool) -> None:
        # Runs in the gevent hub.
        if blocked:
            self._blocked.add(conn)
        else:
            self._blocked.discard(conn)

    # -- keepalive -------------------------------------------------------------

    def _keepalive_loop(self) -> None:
        sweep_every = self.settings.keepalive_interval
        rebalance_every = self.settings.rebalance_interval if len(self.servers.servers) > 1 else 0.0
        next_sweep = time.monotonic() + sweep_every
        next_rebalance = time.monotonic() + rebalance_every
        while not self._closed:
            due = min(next_sweep, next_rebalance) if rebalance_every else next_sweep
            gevent.sleep(max(due - time.monotonic(), 0))
            if time.monotonic() >= next_sweep:
                self._guarded("sweeping idle connections", self._sweep_idle)
                next_sweep = time.monotonic() + sweep_every
            if rebalance_every and time.monotonic() >= next_rebalance:
                self._rebalance_step()
                next_rebalance = time.monotonic() + rebalance_every

    def _sweep_idle(self) -> None:
        now = time.monotonic()
        idle_timeout = self.settings.pool_idle_timeout
        for conn in list(self._idle):  # coldest first
            if conn not in self._idle:
                continue  # lent out or discarded meanwhile
            self._idle.remove(conn)
            if now >= self._expiry.get(conn, float("inf")):
                self._retire(conn, "max age reached")
                continue
            if idle_timeout > 0 and self.open_count + 1 > self.min_size and now - conn.last_used >= idle_timeout:
                self._retire(conn, f"idle for {idle_timeout:g}s above the minimum size")
                continue
            self._in_use += 1  # held by the keepalive: nobody else gets it
            # A blocked connection is healthy, paused by the broker, which reads
            # nothing from it until the alarm clears: a probe would time out and
            # discard it, and the publish that replaced it would wait out a
            # confirm on a fresh connection instead of being refused at once.
            if now - conn.last_used >= self.settings.keepalive_interval and not conn.blocked:
                try:
                    conn.probe(self.settings.connect_timeout)
                except ConnectionLost as exc:
                    self.health.record_failure(f"keepalive failed: {exc.detail}")
                except Exception:
                    conn.suspect = True  # state unknown: discarded below, never lent again
                    self._give_back_cold(conn)
                    raise  # logged by the keepalive loop's guard
            self._give_back_cold(conn)
        self._update_gauges()

    def connections_per_server(self) -> dict[BrokerAddress, int]:
        """Pooled connections open on each server of the endpoint."""
        counts = dict.fromkeys(self.servers.servers, 0)
        for conn in self._members:
            counts[conn.address] = counts.get(conn.address, 0) + 1
        return counts

    def _rebalance_step(self) -> None:
        """Move one idle connection from the busiest server to one with two fewer, if any.

        Connections move only when opened or recycled, so after a server of the
        role comes back (a node revived, a cluster restarted in turn) it would
        otherwise stay empty for up to CONNECTION_MAX_AGE. The new connection
        opens first and the old one closes idle, so no publish is dropped; one
        step per interval keeps the move gradual. A server that still refuses
        is quarantined by the attempt, as any failed connect is.
        """
        if self._closed or not self.health.is_up:
            return
        counts = self.connections_per_server()
        busiest = max(counts, key=lambda server: counts[server])
        targets = [server for server in self.servers.available() if counts[server] <= counts[busiest] - 2]
        if not targets or not any(conn.address == busiest for conn in self._idle):
            return
        target = min(targets, key=lambda server: counts[server])
        conn = self._open(server=target)
        if conn is None:
            return
        victim = next((idle for idle in self._idle if idle.address == busiest), None)
        self._put(conn)
        if victim is not None:
            self._idle.remove(victim)
            self._retire(victim, f"rebalanced to {target.display}")
        log.info("moved a connection of %s from %s to %s", self.name, busiest.display, target.display,
                 extra={"event": "connection_rebalanced", "endpoint": self.name})
        self._update_gauges()

    def _give_back_cold(self, conn: BrokerConnection) -> None:
        self._in_use -= 1
        if self._closed:
            self._spawn_close(conn)
        elif not conn.usable:
            self._discard(conn, conn.lost_reason or "probe failed")
        elif self._waiters:
            self._put(conn)
        else:
            self._idle.appendleft(conn)  # back at the cold end

    def _on_health_change(self, health: BrokerHealth, _old: str) -> None:
        metrics.BROKER_UP.labels(*self._labels).set(1 if health.is_up else 0)
        if health.is_down:
            # Waiters re-check and fail fast instead of sitting out their timeout.
            for waiter in list(self._waiters):
                if not waiter.ready():
                    waiter.set(None)

    # -- views -----------------------------------------------------------------

    def longest_wait(self) -> float:
        """Seconds the longest-waiting caller has waited so far (0 with nobody waiting)."""
        if not self._waiting_since:
            return 0.0
        return time.monotonic() - min(self._waiting_since.values())

    def refresh_gauges(self) -> None:
        """Bring the pool's gauges up to date (the longest wait grows without any event)."""
        self._update_gauges()

    def _update_gauges(self) -> None:
        # Not called on every acquire and release (that was a measurable share
        # of a publish): PoolStatus refreshes every second, /metrics before it
        # answers, and the slow paths (open, lose, close) as they happen.
        g = self._gauges
        g["idle"].set(len(self._idle))
        g["in_use"].set(self._in_use)
        g["connecting"].set(self._connecting)
        g["waiting"].set(len(self._waiters))
        g["open"].set(self.open_count)
        g["size"].set(0 if self._closed else self.size)
        g["longest_wait"].set(self.longest_wait())

    def snapshot(self) -> dict[str, Any]:
        """State for /readyz and /pools: no secrets."""
        view: dict[str, Any] = {
            "broker": self.servers.display,
            "state": self.health.state,
            "open": self.open_count,
            "idle": len(self._idle),
            "in_use": self._in_use,
            "connecting": self._connecting,
            "waiting": len(self._waiters),
            "blocked": bool(self._blocked),
            "longest_wait": round(self.longest_wait(), 3),
            "size": self.size,
            "min_size": self.min_size,
            "max_overflow": self.max_overflow,
            "last_error": self.health.last_error,
        }
        if self.capped is not None:
            view["connection_cap"] = self.capped.detail
        if len(self.servers.servers) > 1:
            view["servers"] = self.servers.snapshot(self.connections_per_server())
        return view
