"""Prometheus metrics, correct across gunicorn workers.

With ``PROMETHEUS_MULTIPROC_DIR`` set (gunicorn.conf.py does it in the master
before any worker starts) every worker writes its samples to that directory
and ``/metrics`` aggregates them; without it (tests, a single process) the
default registry is used. Labels are bounded: connection ids come from the
config, never from what a client sent.
"""

from __future__ import annotations

import os
from functools import lru_cache

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess

UNKNOWN_ID = "_unknown"  # label for requests naming no configured id

PUBLISHES = Counter(
    "gateway_publish_total", "Publish requests answered, by ingress, connection id and outcome.",
    ["ingress", "conn_id", "outcome"],
)
PUBLISH_SECONDS = Histogram(
    "gateway_publish_duration_seconds", "Time from request to broker confirm (or error).",
    ["ingress", "conn_id"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


# In multi-process mode the label lookup costs as much as the update itself,
# so the children of the hot path are looked up once.
# Labels are bounded (configured ids, known outcomes), so is the cache.
@lru_cache(maxsize=4096)
def _publish_children(ingress: str, conn_id: str, outcome: str) -> tuple[Counter, Histogram]:
    return PUBLISHES.labels(ingress, conn_id, outcome), PUBLISH_SECONDS.labels(ingress, conn_id)


def publish_done(ingress: str, conn_id: str, outcome: str, seconds: float) -> None:
    """Count one answered publish and observe its request-to-answer time."""
    counter, histogram = _publish_children(ingress, conn_id, outcome)
    counter.inc()
    histogram.observe(seconds)


class PublishTally:
    """Outcomes of many publishes (a batch, a ZeroMQ reply round) counted in memory, added in one go."""

    __slots__ = ("counts", "ingress")

    def __init__(self, ingress: str):
        self.ingress = ingress
        self.counts: dict[tuple[str, str], int] = {}

    def add(self, conn_id: str, outcome: str, count: int = 1) -> None:
        """Count ``count`` publishes of ``conn_id`` answered with ``outcome`` (``ok`` or an error code)."""
        key = (conn_id, outcome)
        self.counts[key] = self.counts.get(key, 0) + count

    def flush(self) -> None:
        """Add what was counted to ``gateway_publish_total``."""
        for (conn_id, outcome), count in self.counts.items():
            _publish_children(self.ingress, conn_id, outcome)[0].inc(count)
        self.counts.clear()


CONNECTION_EVENTS = Counter(
    "gateway_connection_events_total",
    "AMQP connection events: opened, failed (to open), lost, recycled, closed, "
    "channel_reopened (the broker closed its channel over a message).",
    ["endpoint", "event"],
)
PUBLISH_RETRIES = Counter(
    "gateway_publish_retries_total",
    "Publish retries after a connection was lost under them: allowed, or denied by the retry budget; "
    "rejected: a message the broker closed a connection over, answered 422 and not retried.",
    ["conn_id", "role", "decision"],
)
FAILOVERS = Counter(
    "gateway_failovers_total", "Changes of the broker a connection id publishes to.",
    ["conn_id", "direction"],
)
POOL_CONNECTIONS = Gauge(
    "gateway_pool_connections", "Pooled AMQP connections by state (idle, in_use, connecting).",
    ["endpoint", "state"], multiprocess_mode="livesum",
)
POOL_WAITING = Gauge(
    "gateway_pool_waiting", "Callers waiting for a pooled connection.",
    ["endpoint"], multiprocess_mode="livesum",
)
POOL_OPEN = Gauge(
    "gateway_pool_open_connections", "Open pooled connections (idle plus in use), summed over workers.",
    ["endpoint"], multiprocess_mode="livesum",
)
POOL_SIZE = Gauge(
    "gateway_pool_size", "Connections the pools keep open (NO_OF_CONNECTIOS per worker), summed over workers.",
    ["endpoint"], multiprocess_mode="livesum",
)
POOL_LONGEST_WAIT = Gauge(
    "gateway_pool_longest_wait_seconds",
    "How long the longest-waiting caller has been waiting for a connection, now (max over workers).",
    ["endpoint"], multiprocess_mode="livemax",
)
CONFIRM_SECONDS = Histogram(
    "gateway_confirm_duration_seconds",
    "Round trip on one connection of an endpoint's pool, once per batch (concurrent publishes of "
    "its ids share one): from sending the batch to the broker's last confirm (or timeout).",
    ["endpoint", "role"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SERVER_CONNECTIONS = Gauge(
    "gateway_server_connections", "AMQP connections open to each broker server (host:port), every vhost and "
    "user, health checks included, summed over workers (capped by MAX_CONNECTIONS_PER_SERVER).",
    ["server"], multiprocess_mode="livesum",
)
CONNECTION_CAP_REFUSALS = Counter(
    "gateway_connection_cap_refusals_total",
    "Connections not opened because the worker held its share of MAX_CONNECTIONS_PER_SERVER to that server.",
    ["server"],
)
BROKER_UP = Gauge(
    "gateway_broker_up", "1 when the broker is up for this worker, 0 when down or unknown.",
    ["endpoint"], multiprocess_mode="livemin",
)

CONFIG_SYNCS = Counter(
    "gateway_config_syncs_total",
    "Reads of the rmq_connections table, by trigger (connect, notification, periodic).",
    ["trigger"],
)
CONFIG_DB_RETRIES = Counter(
    "gateway_config_db_retries_total", "Failed attempts to reach or read the PostgreSQL config database.",
)
CONFIG_DB_UP = Gauge(
    "gateway_config_db_up", "1 while the worker is connected to the PostgreSQL config database (USE_DB).",
    ["database"], multiprocess_mode="livemin",
)
CONFIG_ROWS_SKIPPED = Gauge(
    "gateway_config_rows_skipped", "Rows of rmq_connections skipped because they do not parse.",
    multiprocess_mode="livemax",
)


def multiprocess_dir() -> str | None:
    """The directory the workers share (metrics, pool snapshots), or None in one process."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def clear_dir(path: str) -> int:
    """Remove a previous run's sample and snapshot files (prometheus_client requires a clean dir)."""
    removed = 0
    for name in os.listdir(path):
        if name.endswith(".db") or (name.startswith("pools_") and name.endswith((".json", ".json.tmp"))):
            os.remove(os.path.join(path, name))
            removed += 1
    return removed


def render() -> tuple[bytes, str]:
    """The metrics page and its content type."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def mark_process_dead(pid: int) -> None:
    """Drop a dead worker's live gauges (called from gunicorn's child_exit)."""
    if multiprocess_dir():
        _multiprocess.mark_process_dead(pid)

# ZeroMQ ingress (outcomes are in gateway_publish_total{ingress="zmq"}).
ZMQ_RECEIVED = Counter(
    "gateway_zmq_received_total", "ZeroMQ messages the relay took from producers.",
)
ZMQ_RELAY_EVENTS = Counter(
    "gateway_zmq_relay_events_total",
    "ZeroMQ relay events: started, worker_joined, worker_left, worker_lost, reply_dropped, auth_denied.",
    ["event"],
)
ZMQ_IN_FLIGHT = Gauge(
    "gateway_zmq_in_flight", "ZeroMQ messages taken by workers and not answered yet.",
    multiprocess_mode="livesum",
)
BATCH_SIZE = Histogram(
    "gateway_batch_size", "Messages published together on one connection (one confirm wait), every ingress.",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
