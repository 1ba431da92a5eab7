"""The worker's services: every component it runs, built once, in the order they depend on each other.

The app factory builds a :class:`WorkerServices` and the routes reach it
through :func:`services`; gunicorn's ``post_worker_init`` starts it (and adds
the ZeroMQ ingress first when configured), ``worker_exit`` stops it. Nothing
runs until :meth:`~app.core.lifecycle.Lifecycle.start`: building the app
opens no connection and spawns no greenlet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import current_app

from app.config import Settings
from app.core.gateway import Gateway
from app.core.lifecycle import Lifecycle
from app.http.auth import Access
from app.ops.pool_status import PoolStatus

if TYPE_CHECKING:
    from app.db.live_source import DbSource
    from app.zmq.ingress import ZmqIngress


class WorkerServices(Lifecycle):
    """The gateway, its config source, the pool snapshot writer and the ZeroMQ ingress, by name."""

    def __init__(self, settings: Settings, access: Access):
        super().__init__()
        self.settings = settings
        self.access = access  # no lifecycle: the token tables are read once, here
        # With USE_DB the connection ids arrive from the database, not the file.
        self.gateway = self.add(Gateway(settings, specs=() if settings.use_db else None))
        self.config_source: DbSource | None = None
        if settings.use_db:
            from app.db.live_source import DbSource  # psycopg2 only where it is used

            self.config_source = self.add(DbSource(settings, self.gateway))
        self.pool_status = self.add(PoolStatus(self.gateway))
        self.zmq: ZmqIngress | None = None

    def add_zmq(self, ingress: ZmqIngress) -> ZmqIngress:
        """The ZeroMQ ingress, added last: stopped first, while the connections are still open."""
        self.zmq = self.add(ingress)
        return ingress


def services() -> WorkerServices:
    """The current app's services."""
    return current_app.extensions["services"]
