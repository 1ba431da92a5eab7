"""The servers of one broker role: which to connect to next, which are quarantined.

A role (primary or backup) may list several servers (``a;b;c``); its pool
spreads new connections over them, round-robin (each pool from a server of its
own) or at random, and the pool moves connections back to a server that
returns (``REBALANCE_INTERVAL``). A server that
fails to connect is quarantined for ``SERVER_QUARANTINE`` seconds: skipped
while others are available, then tried again. That next try is a full
connection (TCP, AMQP handshake, confirm-mode channel): the server takes
traffic again only once it passed it.
"""

from __future__ import annotations

import random
import time
from typing import Any

from app.config import BrokerAddress, Servers


class ServerSet:
    """Selection and quarantine over the servers of one role."""

    def __init__(self, servers: Servers, selection: str = "round_robin", quarantine: float = 5.0):
        if not servers:
            raise ValueError("a role needs at least one server")
        self.servers = servers
        self.selection = selection
        self.quarantine = quarantine
        # Each pool (each worker, each role) starts its round at a server of its own: otherwise
        # every worker's first connections, health checks included, land on the first server.
        self._next = random.randrange(len(servers))
        self._until: dict[int, float] = {}  # server index -> end of quarantine

    def pick(self) -> BrokerAddress:
        """The server for the next connection."""
        now = time.monotonic()
        count = len(self.servers)
        free = [i for i in range(count) if self._until.get(i, 0.0) <= now]
        if not free:
            index = min(range(count), key=lambda i: self._until[i])  # the one released soonest
        elif self.selection == "random":
            index = random.choice(free)
        else:
            index = next((self._next + k) % count for k in range(count) if (self._next + k) % count in free)
            self._next = index + 1
        return self.servers[index]

    def failed(self, server: BrokerAddress) -> None:
        """Quarantine a server that could not be connected to."""
        self._until[self.servers.index(server)] = time.monotonic() + self.quarantine

    def recovered(self, server: BrokerAddress) -> None:
        """A connection to the server opened: lift its quarantine."""
        self._until.pop(self.servers.index(server), None)

    def available(self) -> list[BrokerAddress]:
        """The servers not in quarantine."""
        now = time.monotonic()
        return [server for i, server in enumerate(self.servers) if self._until.get(i, 0.0) <= now]

    def all_quarantined(self) -> bool:
        """True when no server of the role is free to try."""
        now = time.monotonic()
        return all(self._until.get(i, 0.0) > now for i in range(len(self.servers)))

    @property
    def display(self) -> str:
        """The role's servers, safe to log."""
        return ";".join(server.display for server in self.servers)

    def snapshot(self, connections: dict[BrokerAddress, int]) -> list[dict[str, Any]]:
        """Each server with its pooled connections and remaining quarantine, for /readyz."""
        now = time.monotonic()
        return [
            {"server": server.display, "connections": connections.get(server, 0),
             "quarantined_for": round(max(self._until.get(i, 0.0) - now, 0.0), 1)}
            for i, server in enumerate(self.servers)
        ]
