"""The Flask views: batch publish, health, readiness, metrics, the pool view and the OpenAPI document.

``POST /publish``, the hot path, is answered before Flask by
:mod:`app.http.publish_endpoint`.
"""

from __future__ import annotations

import time

from flask import Blueprint, Response, json, request

from app.core.errors import GatewayError, UnknownConnection
from app.core.gateway import Gateway
from app.http.batch import parse_batch
from app.http.openapi import document
from app.http.request_body import read_body
from app.http.services import services
from app.ops import logs, metrics

bp = Blueprint("gateway", __name__)

_JSON = "application/json"
_OPENAPI = (json.dumps(document(), sort_keys=True) + "\n").encode()


def gateway() -> Gateway:
    """The worker's gateway, set up by the app factory."""
    return services().gateway


@bp.post("/publish/batch")
def publish_batch() -> Response:
    """Publish many length-framed messages (format: app/http/batch.py); one result per message."""
    gw = gateway()
    started = time.perf_counter()
    try:
        checks = services().access
        publisher = checks.check_publisher(request.headers.get("Authorization"))
        body = read_body(request.environ, gw.settings.batch_max_size, gw.settings.client_body_timeout)
        records = parse_batch(body, gw.settings.batch_max_messages, gw.settings.max_body_size)
        for record in records:  # every record's scope first: 403 before 404, so ids stay private
            if record.envelope is None:
                checks.check_target(publisher, record.conn_id, record.queue)
            else:
                checks.check_exchange(publisher, record.conn_id, record.envelope.exchange,
                                      record.envelope.routing_key)
        for index, record in enumerate(records):
            if record.conn_id not in gw.routes:
                raise UnknownConnection(f"record {index}: connection id {record.conn_id!r} is not configured")
    except GatewayError as exc:
        metrics.publish_done("http_batch", metrics.UNKNOWN_ID, exc.code, time.perf_counter() - started)
        raise
    # The gateway splits them by id; an id removed meanwhile (a database change) fails its records only.
    outcomes = gw.publish_all(records)
    elapsed = time.perf_counter() - started
    tally = metrics.PublishTally("http_batch")
    for record, outcome in zip(records, outcomes, strict=True):
        tally.add(record.conn_id if record.conn_id in gw.routes else metrics.UNKNOWN_ID,
                  "ok" if outcome is None else outcome.code)
    tally.flush()
    for conn_id in {record.conn_id for record in records} & gw.routes.keys():
        metrics.PUBLISH_SECONDS.labels("http_batch", conn_id).observe(elapsed)
    failed = sum(1 for outcome in outcomes if outcome is not None)
    if not failed:
        return Response(json.dumps({"status": "ok", "published": len(records)}) + "\n", 200, content_type=_JSON)
    answer = {
        "status": "partial",
        "published": len(records) - failed,
        "failed": failed,
        "results": [{"status": 200} if o is None else {"status": o.status, **o.to_json()} for o in outcomes],
    }
    response = Response(json.dumps(answer) + "\n", 207, content_type=_JSON)
    if any(o is not None and o.status == 503 for o in outcomes):
        response.headers["Retry-After"] = str(gw.settings.retry_after)
    return response


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness: the worker answers; no I/O."""
    return Response(b'{"status":"ok"}\n', 200, content_type=_JSON)


@bp.get("/readyz")
def readyz() -> tuple[dict, int]:
    """Readiness: 200 when every connection id has a reachable broker, else 503."""
    state = services().readiness()
    return state, 200 if state["ready"] else 503


@bp.get("/metrics")
def metrics_page() -> Response:
    """Prometheus text format, aggregated over the workers."""
    for pool in gateway().endpoints:
        pool.refresh_gauges()  # this worker's longest wait, exact now
    body, content_type = metrics.render()
    return Response(body, 200, content_type=content_type)


@bp.get("/pools")
def pools() -> Response:
    """Every pool of every worker: state, counts, active broker, last error (no secrets)."""
    view = services().pool_status.view()
    # Belt and braces: the view holds no password, and the redactor makes sure of it.
    return Response(logs.redact(json.dumps(view)) + "\n", 200, content_type=_JSON)


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3.1 description of the HTTP API (app/http/openapi.py)."""
    return Response(_OPENAPI, 200, content_type=_JSON)
