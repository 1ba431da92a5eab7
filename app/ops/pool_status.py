"""``GET /pools``: every pool of every worker, like pgbouncer's ``SHOW POOLS``.

Two views: ``endpoints``, each broker endpoint's pool (shared by the ids
naming it) with the ids using it, and ``connections``, each id with the
pools of its primary and backup.

Each gunicorn worker has its own pools, and a request reaches one worker, so
a view of only the answering worker's pools would show half the truth. Each
worker therefore writes its snapshot (``Route.snapshot()`` of every id) to
``pools_<pid>.json`` in the directory the workers already share for metrics
(``PROMETHEUS_MULTIPROC_DIR``, made and cleaned by the gunicorn hooks), once
a second and on each ``/pools`` request; ``/pools`` merges the files of the
live workers. Without that directory (one process, tests) it shows its own.

The same greenlet refreshes the pool gauges each second, so the longest
current wait in ``/metrics`` keeps growing while a caller waits.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any

import gevent

from app.core.lifecycle import Status
from app.ops import metrics
from app.ops.processes import is_alive

if TYPE_CHECKING:  # the master imports this module for child_exit: keep pika out of it
    from app.core.gateway import Gateway

log = logging.getLogger(__name__)

INTERVAL = 1.0
_COUNTS = ("open", "idle", "in_use", "connecting", "waiting", "size")
_PREFIX, _SUFFIX = "pools_", ".json"


def snapshot_path(directory: str, pid: int) -> str:
    """Where worker ``pid`` writes its snapshot."""
    return os.path.join(directory, f"{_PREFIX}{pid}{_SUFFIX}")


def worker_snapshot(gateway: Gateway) -> dict[str, Any]:
    """This worker's pools, JSON-able, no secrets."""
    for pool in gateway.endpoints:
        pool.refresh_gauges()
    return {
        "pid": os.getpid(),
        "time": time.time(),
        "endpoints": gateway.endpoints.snapshot(),
        # Each id names its pools; their views are in "endpoints", once (written every second:
        # with 1,000 ids a view per id was ~800 KiB and ~30 ms of a worker's hub each time).
        "connections": {conn_id: route.summary() for conn_id, route in sorted(gateway.routes.items())},
    }



def _same_or_mixed(values: list[Any]) -> Any:
    distinct = set(values)
    return values[0] if len(distinct) == 1 else "mixed"


def merge(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """One view from the workers' snapshots: counts summed, states agreed or ``mixed``, per-worker detail kept.

    ``workers`` maps each worker's pid to the age of its snapshot in seconds.
    """
    ids = sorted({conn_id for snap in snapshots for conn_id in snap["connections"]})
    connections: dict[str, Any] = {}
    names = sorted({name for snap in snapshots for name in snap["endpoints"]})
    endpoints: dict[str, Any] = {}
    pools: dict[str, dict[str, Any]] = {}  # each endpoint's merged pool view, without its ids
    for name in names:
        views = [(snap["pid"], snap["endpoints"][name]) for snap in snapshots if name in snap["endpoints"]]
        pools[name] = _merge_pool(views)
        endpoints[name] = {**pools[name], "ids": sorted({i for _, view in views for i in view["ids"]})}
    for conn_id in ids:
        present = [(snap["pid"], snap["connections"][conn_id]) for snap in snapshots
                   if conn_id in snap["connections"]]
        roles = sorted({role for _, route in present for role in route["brokers"]}, key=("primary", "backup").index)
        brokers: dict[str, Any] = {}
        for role in roles:
            name = next(route["brokers"][role] for _, route in present if role in route["brokers"])
            brokers[role] = {**pools[name], "endpoint": name}
        connections[conn_id] = {
            "ready": all(route["ready"] for _, route in present),
            "active": _same_or_mixed([route["active"] for _, route in present]),
            "brokers": brokers,
        }
    now = time.time()
    # Each worker's snapshot age: the others' are up to INTERVAL old.
    workers = {str(snap["pid"]): round(max(now - snap["time"], 0.0), 3) for snap in sorted(snapshots, key=_pid)}
    return {"workers": workers, "endpoints": endpoints, "connections": connections}


def _merge_pool(views: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """One pool's snapshots from several workers: counts summed, states agreed or ``mixed``."""
    return {
        "broker": views[0][1]["broker"],
        "state": _same_or_mixed([view["state"] for _, view in views]),
        **{count: sum(view[count] for _, view in views) for count in _COUNTS},
        "longest_wait": max(view["longest_wait"] for _, view in views),
        "last_error": next((view["last_error"] for _, view in views if view["last_error"]), None),
        "workers": {str(pid): {key: view[key] for key in ("state", "open", "in_use", "idle", "waiting",
                                                          "longest_wait", "last_error")}
                    for pid, view in views},
    }


def _pid(snap: dict[str, Any]) -> int:
    return int(snap["pid"])


def read_all(directory: str, own: dict[str, Any]) -> list[dict[str, Any]]:
    """``own`` plus the live other workers' snapshots found in ``directory``."""
    found = [own]
    for name in sorted(os.listdir(directory)):
        if not (name.startswith(_PREFIX) and name.endswith(_SUFFIX)):
            continue
        pid_text = name[len(_PREFIX):-len(_SUFFIX)]
        if not pid_text.isdigit() or int(pid_text) == own["pid"] or not is_alive(int(pid_text)):
            continue
        try:
            with open(os.path.join(directory, name), encoding="utf-8") as handle:
                found.append(json.load(handle))
        except (OSError, ValueError):
            continue  # being replaced or removed right now: that worker is left out of this view
    return found


class PoolStatus:
    """The worker's side: writes its snapshot each second, answers /pools."""

    name = "pool_status"

    def __init__(self, gateway: Gateway, directory: str | None = None):
        self.gateway = gateway
        self.directory = directory if directory is not None else metrics.multiprocess_dir()
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        """Start the writer greenlet (in the worker)."""
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._loop)

    def _loop(self) -> None:
        while True:
            try:
                self.write(worker_snapshot(self.gateway))
            except OSError as exc:
                log.warning("cannot write the pool snapshot: %s", exc, extra={"event": "pool_status_error"})
            gevent.sleep(INTERVAL)

    def write(self, snap: dict[str, Any]) -> None:
        """Replace this worker's snapshot file atomically (a reader never sees half of it)."""
        if not self.directory:
            return
        path = snapshot_path(self.directory, snap["pid"])
        with open(path + ".tmp", "w", encoding="utf-8") as handle:
            # dumps, not dump: json.dump encodes in Python, chunk by chunk (with 1,000 ids ~4x
            # the C encoder's time, in the worker's hub each second).
            handle.write(json.dumps(snap))
        os.replace(path + ".tmp", path)

    def view(self) -> dict[str, Any]:
        """The merged view of every live worker (this one's fresh)."""
        own = worker_snapshot(self.gateway)
        if not self.directory:
            return merge([own])
        with contextlib.suppress(OSError):
            self.write(own)
        return merge(read_all(self.directory, own))

    def status(self) -> Status:
        """No part in /readyz (its view is /pools)."""
        return Status()

    def stop(self, timeout: float = 0.0) -> None:
        """Stop writing and remove this worker's file."""
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None
        if self.directory:
            with contextlib.suppress(OSError):
                os.remove(snapshot_path(self.directory, os.getpid()))


def remove_worker(directory: str | None, pid: int) -> None:
    """Forget a dead worker's snapshot (gunicorn's child_exit, in the master)."""
    if directory:
        with contextlib.suppress(OSError):
            os.remove(snapshot_path(directory, pid))
