"""One pool per broker endpoint, shared by every connection id that names it.

An *endpoint* is what a connection is made to, and as whom: a role's server
list with each server's vhost, user, password and TLS options. Connection
ids whose primary (or backup) names the same endpoint share its pool, its
health check and its connections, as kombu's and amqproxy's pools share
connections by credentials; ``NO_OF_CONNECTIOS`` is then connections per
endpoint and worker, as in the seed ("per rmqserver").

A pool is kept full while some id publishes to it (its primary, or a backup
after a failover) and *warm* otherwise: a backup nobody uses keeps its
health check and ``BACKUP_WARM_SIZE`` connections, and grows as soon as an
id fails over to it (a publish that finds no idle connection opens one at
once, up to the pool size). A pool is closed when no id uses it any more.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any, Protocol

from app.amqp.pool import ConnectionPool
from app.config import Servers, Settings

log = logging.getLogger(__name__)

LOGGED_IDS = 10  # ids named in a pool's log lines


class User(Protocol):
    """What uses a pool: one connection id's route (hashed by identity)."""

    conn_id: str


class EndpointPools:
    """The worker's pools by endpoint, each with the ids that use it."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._pools: dict[Servers, ConnectionPool] = {}
        # pool -> {user: publishes to it now}; a user is one route of an id (an id whose
        # config changed has two for a moment: the new one attached before the old detaches).
        self._users: dict[ConnectionPool, dict[User, bool]] = {}
        self._opened = 0

    def attach(self, servers: Servers, user: User, active: bool) -> ConnectionPool:
        """The endpoint's pool (made and started if new), now used by ``user``."""
        pool = self._pools.get(servers)
        if pool is None:
            self._opened += 1
            # The label names its connections (RabbitMQ shows it) and producers' errors: no address, no id.
            pool = ConnectionPool(self._name_for(servers), servers, self.settings,
                                  label=f"{os.getpid()}/endpoint{self._opened}")
            self._pools[servers] = pool
            self._users[pool] = {}
            pool.start()
            log.info("pool opened for %s", pool.name, extra={"event": "endpoint_opened", "endpoint": pool.name})
        self._users[pool][user] = self._users[pool].get(user, False) or active
        pool.conn_ids = self._named_in_logs(pool)
        self._size(pool)
        return pool

    def set_active(self, pool: ConnectionPool, user: User, active: bool) -> None:
        """``user`` starts or stops publishing to ``pool`` (a failover, a failback)."""
        users = self._users.get(pool)
        if users is not None and user in users and users[user] != active:
            users[user] = active
            self._size(pool)

    def detach(self, pool: ConnectionPool, user: User, timeout: float = 2.0) -> None:
        """``user`` no longer uses ``pool``; the pool is closed once nobody does."""
        users = self._users.get(pool)
        if users is None:
            return
        users.pop(user, None)
        pool.conn_ids = self._named_in_logs(pool)
        if users:
            self._size(pool)
            return
        del self._users[pool]
        self._pools.pop(pool.servers.servers, None)
        log.info("pool closed for %s: no connection id uses it", pool.name,
                 extra={"event": "endpoint_closed", "endpoint": pool.name})
        pool.close(timeout)

    def users(self, pool: ConnectionPool) -> list[str]:
        """The connection ids using ``pool``, sorted."""
        return sorted({user.conn_id for user in self._users.get(pool, ())})

    def _named_in_logs(self, pool: ConnectionPool) -> list[str]:
        # A log line names a few of the ids an event touches, not a thousand.
        ids = self.users(pool)
        return ids if len(ids) <= LOGGED_IDS else [*ids[:LOGGED_IDS], f"... {len(ids) - LOGGED_IDS} more"]

    def __iter__(self) -> Iterator[ConnectionPool]:
        return iter(list(self._pools.values()))

    def __len__(self) -> int:
        return len(self._pools)

    def snapshot(self) -> dict[str, Any]:
        """Every endpoint's pool and the ids using it, for /pools and /readyz (no secrets)."""
        return {pool.name: {**pool.snapshot(), "label": pool.label, "ids": self.users(pool)}
                for pool in sorted(self._pools.values(), key=lambda p: p.name)}

    def _size(self, pool: ConnectionPool) -> None:
        # Full while some id publishes to it; warm otherwise.
        in_use = any(self._users[pool].values())
        pool.set_min_size(self.settings.min_size if in_use else min(self.settings.backup_warm_size,
                                                                    self.settings.min_size))

    def _name_for(self, servers: Servers) -> str:
        # The servers as safe to show; endpoints differing only in what is not
        # shown (a password, TLS files) get a number after the first.
        base = ";".join(server.display for server in servers)
        taken = {pool.name for pool in self._pools.values()}
        name, number = base, 2
        while name in taken:
            name, number = f"{base}#{number}", number + 1
        return name
