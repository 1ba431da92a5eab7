"""What the gunicorn master keeps between its hooks: the validated settings and the ZeroMQ relay.

Module state, not attributes hung on gunicorn's arbiter: a SIGHUP re-reads
``gunicorn.conf.py`` (its globals start afresh) but not this module, and a
forked worker inherits it. Imports no Flask, pika or gevent: the master runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.config import Settings
    from app.zmq.supervisor import RelaySupervisor


@dataclass
class MasterState:
    """The settings every worker is given, and the relay they connect to (if ZeroMQ is on)."""

    settings: Settings | None = None
    relay: RelaySupervisor | None = None

    @property
    def zmq_backend(self) -> str | None:
        """Where a worker's ingress connects: the relay's private back end."""
        return self.relay.backend if self.relay is not None else None


MASTER = MasterState()
