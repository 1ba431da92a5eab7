"""HTTP routes: publish, health, readiness and metrics."""

from __future__ import annotations

import time

from flask import Blueprint, Response, current_app, request

from app import metrics
from app.errors import GatewayError, PayloadTooLarge
from app.gateway import Gateway
from app.message import parse_body

bp = Blueprint("gateway", __name__)

_JSON = "application/json"


def gateway() -> Gateway:
    """The worker's gateway, set up by the app factory."""
    return current_app.extensions["gateway"]


def read_body(limit: int) -> bytes:
    """The raw request body, whatever its Content-Type; 413 past ``limit`` bytes."""
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"body of {length} bytes is over the limit of {limit}")
    data = request.stream.read(limit + 1)  # bounded even for chunked bodies
    if len(data) > limit:
        raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
    return data


@bp.post("/publish")
def publish() -> Response:
    """Publish ``connection_id|queue|message``; 200 once the broker confirmed it."""
    gw = gateway()
    started = time.perf_counter()
    conn_label = metrics.UNKNOWN_ID
    try:
        req = parse_body(read_body(gw.settings.max_body_size))
        if req.conn_id in gw.routes:
            conn_label = req.conn_id
        gw.publish(req.conn_id, req.queue, req.body)
    except GatewayError as exc:
        metrics.PUBLISHES.labels("http", conn_label, exc.code).inc()
        metrics.PUBLISH_SECONDS.labels("http", conn_label).observe(time.perf_counter() - started)
        raise
    metrics.PUBLISHES.labels("http", conn_label, "ok").inc()
    metrics.PUBLISH_SECONDS.labels("http", conn_label).observe(time.perf_counter() - started)
    return Response(b'{"status":"ok"}\n', 200, content_type=_JSON)


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness: the worker answers; no I/O."""
    return Response(b'{"status":"ok"}\n', 200, content_type=_JSON)


@bp.get("/readyz")
def readyz() -> tuple[dict, int]:
    """Readiness: 200 when every connection id has a reachable broker, else 503."""
    state = gateway().readiness()
    return state, 200 if state["ready"] else 503


@bp.get("/metrics")
def metrics_page() -> Response:
    """Prometheus text format, aggregated over the workers."""
    body, content_type = metrics.render()
    return Response(body, 200, content_type=content_type)
