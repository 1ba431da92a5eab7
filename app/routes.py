"""HTTP routes: publish, health, readiness, metrics and the pool view."""

from __future__ import annotations

import time

from flask import Blueprint, Response, current_app, json, request

from app import logs, metrics
from app.accesslog import CONN_ID_KEY
from app.auth import access
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
        checks = access()
        publisher = checks.check_publisher()  # 401 before the body is even read
        req = parse_body(read_body(gw.settings.max_body_size))
        if req.conn_id in gw.routes:
            conn_label = req.conn_id
            # Only a configured id goes into logs and labels, never what a client made up.
            logs.bind(conn_id=req.conn_id)
            request.environ[CONN_ID_KEY] = req.conn_id
        checks.check_target(publisher, req.conn_id, req.queue)  # 403 before 404: ids stay private
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
    for route in gateway().routes.values():
        for pool in route.pools:
            pool.refresh_gauges()  # this worker's longest wait, exact now
    body, content_type = metrics.render()
    return Response(body, 200, content_type=content_type)


@bp.get("/pools")
def pools() -> Response:
    """Every pool of every worker: state, counts, active broker, last error (no secrets)."""
    view = current_app.extensions["pool_status"].view()
    # Belt and braces: the view holds no password, and the redactor makes sure of it.
    return Response(logs.redact(json.dumps(view)) + "\n", 200, content_type=_JSON)
