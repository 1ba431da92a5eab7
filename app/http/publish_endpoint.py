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

It also answers the exchange form, ``POST /publish/<id>/<exchange>/<routing key>``
(``amq.default`` names the default exchange; each part percent-encoded, the
routing key may be empty and may hold ``/``), whose body is the message, raw,
and whose AMQP properties come from ``X-AMQP-<Property>`` headers
(:data:`PROPERTY_HEADERS`), ``Idempotency-Key`` (the message id) and the W3C
``traceparent``/``tracestate`` (copied into the message's headers); and the
management API's publish, ``POST /api/exchanges/<vhost>/<exchange>/publish``
(:mod:`app.http.management_api`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any
from urllib.parse import unquote, urlsplit

from app.amqp.connection import Envelope
from app.core.envelope import headers_from_json, make_envelope, trace_headers
from app.core.errors import (
    GatewayError,
    InvalidAddress,
    InvalidProperty,
    MethodNotAllowed,
    Unroutable,
    http_answer,
    internal_error,
    status_line,
)
from app.core.gateway import Gateway
from app.core.message import check_conn_id, parse_body
from app.http import management_api, request_id
from app.http.accesslog import CONN_ID_KEY
from app.http.auth import Access, basic_as_bearer
from app.http.request_body import read_body
from app.ops import logs, metrics

log = logging.getLogger(__name__)

PATH = "/publish"
PREFIX = PATH + "/"  # the exchange form: /publish/<id>/<exchange>/<routing key>
# X-AMQP-<Property> request headers (WSGI names) -> AMQP property names.
PROPERTY_HEADERS = {
    "HTTP_X_AMQP_" + name.upper(): name
    for name in ("content_type", "content_encoding", "correlation_id", "reply_to", "type", "app_id", "user_id",
                 "message_id", "expiration", "priority", "timestamp", "delivery_mode")
}
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_OK_BODY = b'{"status":"ok"}\n'
_OK_HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(_OK_BODY)))]


class PublishEndpoint:
    """WSGI middleware: answers ``/publish`` and its exchange form itself, passes everything else to ``app``."""

    def __init__(self, app: WSGIApp, gateway: Gateway, access: Access):
        self.app = app
        self.gateway = gateway
        self.access = access
        self.vhosts = dict(gateway.settings.management_vhosts)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        publish: Callable[[dict[str, Any]], bytes | None]  # the answer's body; None: the usual {"status": "ok"}
        management = False
        if path == PATH:
            publish = self._publish
        elif path.startswith(PREFIX) and (parts := _address(environ)) is not None:
            publish = partial(self._publish_to, parts=parts)
        elif path.startswith(management_api.PREFIX) and (pair := _management_address(environ)) is not None:
            publish, management = partial(self._publish_management, vhost_exchange=pair), True
        else:
            return self.app(environ, start_response)
        rid = request_id.start(environ)
        try:
            body = self._counted(environ, publish)
        except GatewayError as exc:
            return self._answer(start_response, exc, rid, management)
        except Exception:
            return self._answer(start_response, internal_error(log, "while answering a request"), rid, management)
        finally:
            request_id.finish()
        if body is None:
            start_response("200 OK", [*_OK_HEADERS, (request_id.HEADER, rid)])
            return [_OK_BODY]
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                                  (request_id.HEADER, rid)])
        return [body]

    def _counted(self, environ: dict[str, Any], publish: Callable[[dict[str, Any]], bytes | None]) -> bytes | None:
        """POST only; ``publish(environ)`` timed and counted by its outcome, under its id once configured."""
        if environ.get("REQUEST_METHOD") != "POST":
            raise MethodNotAllowed("method not allowed for this route", allow=("POST",))
        started = time.perf_counter()
        try:
            body = publish(environ)
        except GatewayError as exc:
            metrics.publish_done("http", environ.get(CONN_ID_KEY, metrics.UNKNOWN_ID), exc.code,
                                 time.perf_counter() - started)
            raise
        outcome = "ok" if body is not management_api.NOT_ROUTED else Unroutable.code
        metrics.publish_done("http", environ.get(CONN_ID_KEY, metrics.UNKNOWN_ID), outcome,
                             time.perf_counter() - started)
        return body

    def _name(self, environ: dict[str, Any], conn_id: str) -> None:
        # Only a configured id goes into logs and labels, never what a client made up.
        if conn_id in self.gateway.routes:
            logs.bind(conn_id=conn_id)
            environ[CONN_ID_KEY] = conn_id

    def _publish(self, environ: dict[str, Any]) -> bytes | None:
        gw = self.gateway
        publisher = self.access.check_publisher(environ.get("HTTP_AUTHORIZATION"))  # 401 before the body
        req = parse_body(read_body(environ, gw.settings.max_body_size, gw.settings.client_body_timeout))
        self._name(environ, req.conn_id)
        self.access.check_target(publisher, req.conn_id, req.queue)  # 403 before 404: ids stay private
        gw.publish(req.conn_id, req.queue, req.body)
        return None

    def _publish_to(self, environ: dict[str, Any], parts: tuple[str, str, str]) -> bytes | None:
        gw = self.gateway
        conn_id, exchange, routing_key = _decoded(parts)
        publisher = self.access.check_publisher(environ.get("HTTP_AUTHORIZATION"))  # 401 before the body
        check_conn_id(conn_id)
        envelope = _envelope(environ, exchange, routing_key, b"")  # 400 before the body is read
        self._name(environ, conn_id)
        self.access.check_exchange(publisher, conn_id, envelope.exchange, routing_key)  # 403 before 404
        body = read_body(environ, gw.settings.max_body_size, gw.settings.client_body_timeout)
        gw.publish_to(conn_id, envelope._replace(body=body))
        return None

    def _publish_management(self, environ: dict[str, Any], vhost_exchange: tuple[str, str]) -> bytes:
        gw = self.gateway
        vhost, exchange = _decoded(vhost_exchange)
        # The management API's Basic credentials: the password is the publish token.
        publisher = self.access.check_publisher(basic_as_bearer(environ.get("HTTP_AUTHORIZATION")))
        conn_id = management_api.connection_for(self.vhosts, vhost)
        self._name(environ, conn_id)
        data = read_body(environ, management_api.body_limit(gw.settings.max_body_size),
                         gw.settings.client_body_timeout)
        envelope = management_api.parse_publish(data, exchange, gw.settings.max_body_size)
        self.access.check_exchange(publisher, conn_id, envelope.exchange, envelope.routing_key)
        try:
            gw.publish_to(conn_id, envelope)
        except Unroutable:
            return management_api.NOT_ROUTED  # confirmed, and returned: the management API's 200
        return management_api.ROUTED

    def _answer(self, start_response: Callable[..., Any], exc: GatewayError, rid: str,
                management: bool = False) -> list[bytes]:
        status, headers, body = http_answer(exc, self.gateway.settings.retry_after)
        if management:
            body = management_api.error_body(exc)
            headers = [(k, str(len(body)) if k == "Content-Length" else v) for k, v in headers]
        start_response(status_line(status), [*headers, (request_id.HEADER, rid)])
        return [body]


def _raw_path(environ: dict[str, Any]) -> str:
    """The path as sent (``RAW_URI``), before percent-decoding, so that a part may hold an encoded ``/``."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ.get("PATH_INFO", "")
    raw = raw.split("?", 1)[0].split("#", 1)[0]
    if not raw.startswith("/"):  # the absolute form, "POST http://host/publish/...": its path
        raw = urlsplit(raw).path
    return raw


def answers_itself(raw: str) -> bool:
    """Whether a POST to ``raw`` (the path as sent, no query) is this endpoint's, not the Flask app's."""
    return raw == PATH or _exchange_form(raw) is not None or _management_form(raw) is not None


def _address(environ: dict[str, Any]) -> tuple[str, str, str] | None:
    """``(id, exchange, routing key)`` of an exchange-form path, still percent-encoded; None if not that form."""
    return _exchange_form(_raw_path(environ))


def _management_address(environ: dict[str, Any]) -> tuple[str, str] | None:
    """``(vhost, exchange)`` of ``/api/exchanges/<vhost>/<exchange>/publish``, still percent-encoded; else None."""
    return _management_form(_raw_path(environ))


def _exchange_form(raw: str) -> tuple[str, str, str] | None:
    if not raw.startswith(PREFIX):
        return None
    parts = raw[len(PREFIX):].split("/", 2)
    if len(parts) < 3:
        return None  # /publish/batch and the like are the Flask app's
    return parts[0], parts[1], parts[2]


def _management_form(raw: str) -> tuple[str, str] | None:
    if not raw.startswith(management_api.PREFIX) or not raw.endswith(management_api.SUFFIX):
        return None
    parts = raw[len(management_api.PREFIX):-len(management_api.SUFFIX)].split("/")
    if len(parts) != 2:
        return None  # not the publish path: Flask's 404
    # (An empty vhost is an unknown one; an empty exchange, the default one, as in the exchange form.)
    return parts[0], parts[1]


def _decoded(parts: tuple[str, ...]) -> tuple[str, ...]:
    try:
        return tuple(unquote(part, errors="strict") for part in parts)
    except UnicodeDecodeError:
        raise InvalidAddress("the path is not valid UTF-8 once percent-decoded") from None




def _envelope(environ: dict[str, Any], exchange: str, routing_key: str, body: bytes) -> Envelope:
    """The exchange form's message: its properties from the request's headers (400 naming a bad one)."""
    props: dict[str, Any] = {name: _header_text(environ[key], name) for key, name in PROPERTY_HEADERS.items()
                             if key in environ}
    key = environ.get("HTTP_IDEMPOTENCY_KEY")
    if key is not None:
        key = _header_text(key, "Idempotency-Key")
        if props.get("message_id", key) != key:
            raise InvalidProperty("Idempotency-Key and X-AMQP-Message-Id differ: give one message id")
        props["message_id"] = key
    headers = headers_from_json(environ["HTTP_X_AMQP_HEADERS"]) if "HTTP_X_AMQP_HEADERS" in environ else {}
    trace, trace_id = trace_headers(environ.get("HTTP_TRACEPARENT"), environ.get("HTTP_TRACESTATE"))
    if trace_id is not None:
        logs.bind(trace_id=trace_id)
        for name, value in trace.items():
            headers.setdefault(name, value)  # the producer's own headers win
    if headers:
        props["headers"] = headers
    return make_envelope(exchange, routing_key, body, props, environ.get("HTTP_X_AMQP_MANDATORY"))


def _header_text(value: str, name: str) -> str:
    # WSGI hands header values over as latin-1: the bytes as sent, read back as UTF-8.
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise InvalidProperty(f"{name} is not valid UTF-8") from None
