"""The per-server connection cap: the gateway never opens more than its share to one broker.

Every AMQP connection the gateway opens (pooled, overflow, health checks) to
one server, a ``host:port`` whatever the vhost or user, takes a slot here
first and gives it back when the connection is closed or lost. A worker's
share is ``MAX_CONNECTIONS_PER_SERVER`` divided by the number of workers, so
the whole gateway (one pod) holds at most ``MAX_CONNECTIONS_PER_SERVER`` to
any one server, however many connection ids, vhosts and users point at it.

Why: each connection costs the broker a file descriptor, memory and a
process. A gateway with many ids on one node once opened connections until
that node ran out of descriptors and stopped serving everyone; a gateway
must never be able to do that. At the cap, opening fails at once with
``503 connection_cap`` (no socket is made), the pool grows no further,
``gateway_connection_cap_refusals_total`` counts it and a warning says
which server and how many are held.
"""

from __future__ import annotations

import logging
import time

from app.config import BrokerAddress
from app.core.errors import ConnectionCapReached
from app.ops import metrics

log = logging.getLogger(__name__)

WARN_EVERY = 30.0  # seconds between warnings about one server at its cap

Server = tuple[str, int]


class ServerCap:
    """Slots for connections per server, for this process."""

    def __init__(self, limit: int = 0):
        self.limit = limit  # 0: no cap (before configure)
        self.workers = 1  # the gunicorn workers sharing the cap (post_worker_init sets it)
        self._held: dict[Server, int] = {}
        self._warned: dict[Server, float] = {}

    def configure(self, per_gateway: int) -> None:
        """Take this worker's share of the gateway's cap (at least one connection; 0: no cap)."""
        self.limit = max(per_gateway // max(self.workers, 1), 1) if per_gateway > 0 else 0

    def held(self, address: BrokerAddress) -> int:
        """Connections this process holds to ``address``'s server."""
        return self._held.get((address.host, address.port), 0)

    def take(self, address: BrokerAddress) -> None:
        """Take a slot for a new connection, else raise :class:`ConnectionCapReached`."""
        server = (address.host, address.port)
        held = self._held.get(server, 0)
        if self.limit and held >= self.limit:
            metrics.CONNECTION_CAP_REFUSALS.labels(_label(server)).inc()
            now = time.monotonic()
            if now - self._warned.get(server, -WARN_EVERY) >= WARN_EVERY:
                self._warned[server] = now
                log.warning("connection cap reached: this worker holds %d connections to %s:%d "
                            "(MAX_CONNECTIONS_PER_SERVER); opening no more", held, address.host, address.port,
                            extra={"event": "connection_cap_reached", "server": _label(server), "held": held})
            # The answer does not name the server (producers never see broker addresses); the log does.
            raise ConnectionCapReached(f"the gateway holds its most connections to this broker server ({held} in "
                                       f"this worker; MAX_CONNECTIONS_PER_SERVER)")
        self._held[server] = held + 1
        metrics.SERVER_CONNECTIONS.labels(_label(server)).set(held + 1)

    def give_back(self, address: BrokerAddress) -> None:
        """A connection that took a slot is closed (or never opened)."""
        server = (address.host, address.port)
        held = self._held.get(server, 0) - 1
        if held > 0:
            self._held[server] = held
        else:
            self._held.pop(server, None)
        metrics.SERVER_CONNECTIONS.labels(_label(server)).set(max(held, 0))


def _label(server: Server) -> str:
    return f"{server[0]}:{server[1]}"


CAP = ServerCap()  # the process's one: connections are a resource of the process
