"""``POST /publish`` as a plain WSGI endpoint in front of Flask: the hot path.

Through Flask's request cycle (request and app contexts, URL map, the
before/after/teardown hooks, a ``Response`` object) a publish cost a worker
more CPU than the publish itself (``make bench``; README, Benchmarks). This endpoint does the same work
without it, in the same order: request id, bearer token (``401`` before the
body is read), body limit (``413``), parse (``400``), token scope (``403``
before ``404``), publish, metrics, and the same JSON answers as every other
route (:func:`app.core.errors.http_answer`). Every other request, and every other
method on ``/publish`` but POST (``405``), goes on to the Flask app. It is
installed by the app factory as Flask's ``wsgi_app`` middleware, so the test
client and gunicorn both go through it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from app.core.errors import GatewayError, MethodNotAllowed, http_answer, internal_error, status_line
from app.core.gateway import Gateway
from app.core.message import parse_body
from app.http import request_id
from app.http.accesslog import CONN_ID_KEY
from app.http.auth import Access
from app.http.request_body import read_body
from app.ops import logs, metrics

log = logging.getLogger(__name__)

PATH = "/publish"
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_OK_BODY = b'{"status":"ok"}\n'
_OK_HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(_OK_BODY)))]


class PublishEndpoint:
    """WSGI middleware: answers ``/publish`` itself and passes everything else to ``app``."""

    def __init__(self, app: WSGIApp, gateway: Gateway, access: Access):
        self.app = app
        self.gateway = gateway
        self.access = access

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH:
            return self.app(environ, start_response)
        rid = request_id.start(environ)
        try:
            self._publish(environ)
        except GatewayError as exc:
            return self._answer(start_response, exc, rid)
        except Exception:
            return self._answer(start_response, internal_error(log, "while answering a request"), rid)
        finally:
            request_id.finish()
        start_response("200 OK", [*_OK_HEADERS, (request_id.HEADER, rid)])
        return [_OK_BODY]

    def _publish(self, environ: dict[str, Any]) -> None:
        if environ.get("REQUEST_METHOD") != "POST":
            raise MethodNotAllowed("method not allowed for this route", allow=("POST",))
        gw = self.gateway
        started = time.perf_counter()
        conn_label = metrics.UNKNOWN_ID
        try:
            publisher = self.access.check_publisher(environ.get("HTTP_AUTHORIZATION"))  # 401 before the body
            req = parse_body(read_body(environ, gw.settings.max_body_size, gw.settings.client_body_timeout))
            if req.conn_id in gw.routes:
                # Only a configured id goes into logs and labels, never what a client made up.
                conn_label = req.conn_id
                logs.bind(conn_id=req.conn_id)
                environ[CONN_ID_KEY] = req.conn_id
            self.access.check_target(publisher, req.conn_id, req.queue)  # 403 before 404: ids stay private
            gw.publish(req.conn_id, req.queue, req.body)
        except GatewayError as exc:
            metrics.publish_done("http", conn_label, exc.code, time.perf_counter() - started)
            raise
        metrics.publish_done("http", conn_label, "ok", time.perf_counter() - started)

    def _answer(self, start_response: Callable[..., Any], exc: GatewayError, rid: str) -> list[bytes]:
        status, headers, body = http_answer(exc, self.gateway.settings.retry_after)
        start_response(status_line(status), [*headers, (request_id.HEADER, rid)])
        return [body]
