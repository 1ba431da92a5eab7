"""Connections that have not yet delivered a complete request, oldest first: what a full worker sheds.

A worker holds at most ``worker_connections`` client connections; past that
gevent stops accepting and new ones (a health probe included) wait in the
kernel's backlog behind whoever holds the slots. Like nginx, which closes idle
keep-alive connections when it runs out of connections ("reusable"
connections, ``ngx_drain_connections``), the worker (:mod:`app.http.worker`) sheds
connections to make room, but only those that cost nothing to drop: a
connection waiting for its next request's headers (idle keep-alive, a slow
header) and one whose body is still arriving. Neither has published anything;
a request whose body is in is never shed.

This module imports gevent only: the gunicorn master loads it with the worker class.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import islice

import gevent
from gevent import Greenlet


class Pending:
    """The greenlets waiting on a client, each with the exception that sheds it; oldest first."""

    def __init__(self) -> None:
        self._waiting: OrderedDict[Greenlet, BaseException] = OrderedDict()
        self._doomed: set[Greenlet] = set()  # picked, not yet shed
        self.shed_total = 0

    def __len__(self) -> int:
        return len(self._waiting)

    @contextmanager
    def waiting(self, shed: BaseException) -> Iterator[None]:
        """While inside, this greenlet may be shed: ``shed`` is raised in it."""
        current = gevent.getcurrent()
        if not isinstance(current, Greenlet):  # the hub or a raw greenlet: nothing to shed
            yield
            return
        self._waiting[current] = shed
        try:
            yield
        finally:
            self._waiting.pop(current, None)

    def shed(self, count: int) -> int:
        """Shed the ``count`` oldest waiting greenlets (never the caller); how many were picked."""
        current = gevent.getcurrent()
        picked = list(islice((glet for glet in self._waiting if glet is not current and glet not in self._doomed),
                             count))
        loop = gevent.get_hub().loop
        for glet in picked:
            self._doomed.add(glet)
            loop.run_callback(self._deliver, glet)
        return len(picked)

    def _deliver(self, glet: Greenlet) -> None:
        # In the hub, later: only a greenlet still waiting is shed. One that got
        # its request meanwhile has left ``waiting`` and must not be touched (it
        # may be publishing by now).
        self._doomed.discard(glet)
        exc = self._waiting.pop(glet, None)
        if exc is not None and not glet.dead:
            self.shed_total += 1
            glet.throw(exc)


PENDING = Pending()  # one per worker process
