"""The OpenAPI 3.1 description of the HTTP API, served at ``GET /openapi.json``.

Written by hand, beside the routes it describes: ``tests/unit/test_openapi.py`` keeps
its paths and methods in step with the app's, and a schemathesis run against the
live gateway checks every answer against it.
"""

from __future__ import annotations

from typing import Any

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict[str, Any], description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        answer["headers"] = headers
    return answer


_REQUEST_ID = {"X-Request-ID": {"description": "The request's id (the client's, if it sent a valid one).",
                                "schema": {"type": "string"}}}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "string"}},
                **_REQUEST_ID}
_CLIENT_ERRORS = _json(_ERROR, "The request was refused: malformed (400), no or a bad token (401), a target the "
                               "token may not publish to (403), an unknown connection id (404), too large (413), "
                               "unroutable (422), a transfer coding the gateway does not implement (501). Nothing "
                               "of it was published.", _REQUEST_ID)
_UNAVAILABLE = _json(_ERROR, "No broker of the id can take it now (`broker_unavailable`, `pool_timeout`, "
                             "`broker_blocked`, `connection_cap`, `nacked`), or the gateway cannot know whether it "
                             "was published "
                             "(`confirm_timeout`, `connection_lost`: retry with the same idempotency key).",
                     _RETRY_AFTER)
_MANAGEMENT_ERROR = {"allOf": [_ERROR, {"type": "object", "properties": {"reason": {"type": "string"}},
                                         "required": ["reason"]}]}
_ONE_MESSAGE_ANSWERS = {
    "200": _json({"type": "object", "properties": {"status": {"const": "ok"}}, "required": ["status"]},
                 "RabbitMQ confirmed the message.", _REQUEST_ID),
    "4XX": _CLIENT_ERRORS,
    "501": _CLIENT_ERRORS,
    "503": _UNAVAILABLE,
}


def _raw_body(example: str) -> dict[str, Any]:
    """A body read raw: any Content-Type is accepted, these two are the usual ones."""
    return {"text/plain": {"schema": {"type": "string"}, "examples": {"example": {"value": example}}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}


# The exchange form's property headers (app/http/publish_endpoint.py), as documented.
_PROPERTY_HEADERS = (
    ("Content-Type", "AMQP content_type (not the HTTP Content-Type, which is ignored)."),
    ("Content-Encoding", "AMQP content_encoding."),
    ("Correlation-Id", "AMQP correlation_id."),
    ("Reply-To", "AMQP reply_to."),
    ("Expiration", "Per-message TTL in milliseconds, an integer."),
    ("Priority", "0-255."),
    ("Type", "AMQP type."),
    ("App-Id", "AMQP app_id."),
    ("User-Id", "AMQP user_id (RabbitMQ checks it against the connection's user)."),
    ("Message-Id", "AMQP message_id (or Idempotency-Key)."),
    ("Timestamp", "Seconds since the epoch (default: now)."),
    ("Delivery-Mode", "`persistent` (2, the default) or `transient` (1)."),
    ("Mandatory", "`true` (the default, MANDATORY) or `false`: an unroutable message is 422 or dropped."),
    ("Headers", "The application headers, a JSON object: string, integer, float, boolean, null, array and "
                "object values keep their types."),
)

_OPS_SECURITY: list[dict[str, list[str]]] = [{}, {"bearer": []}]  # open, or OPS_TOKEN when configured


def document() -> dict[str, Any]:
    """The OpenAPI document, as a JSON-ready dict."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "AMQP publishing gateway",
            "version": "0.1.0",
            "description": "Publish to RabbitMQ over HTTP through pooled, confirmed connections with failover. "
                           "A 200 means RabbitMQ confirmed the message.",
        },
        "paths": {
            "/publish": {"post": {
                "summary": "Publish one message: the body is `connection_id|queue|message`.",
                "description": "The message is everything after the second `|` (any bytes, may be empty). The "
                               "body is read raw, whatever the Content-Type. Answered only after the broker "
                               "confirmed the message.",
                "security": [{}, {"bearer": []}],
                "requestBody": {"required": True, "content": _raw_body("local|my_queue|hello world")},
                "responses": _ONE_MESSAGE_ANSWERS,
            }},
            "/publish/{connection_id}/{exchange}/{routing_key}": {"post": {
                "summary": "Publish one message to any exchange: the body is the message, raw.",
                "description": "`amq.default` names the default exchange (the routing key is then the queue). "
                               "Each path part is percent-encoded; the routing key may be empty and may hold "
                               "`/`. AMQP properties come from `X-AMQP-*` headers, the message id from "
                               "`Idempotency-Key`, and W3C trace context is copied into the message's headers. "
                               "Answered only after the broker confirmed the message; an exchange the broker "
                               "does not have is `404 unknown_exchange`.",
                "security": [{}, {"bearer": []}],
                "parameters": [
                    {"name": "connection_id", "in": "path", "required": True,
                     "schema": {"type": "string"}, "example": "local"},
                    {"name": "exchange", "in": "path", "required": True,
                     "schema": {"type": "string"}, "example": "amq.default"},
                    {"name": "routing_key", "in": "path", "required": True,
                     "schema": {"type": "string"}, "example": "my_queue"},
                    *[{"name": f"X-AMQP-{name}", "in": "header", "required": False, "schema": {"type": "string"},
                       "description": description} for name, description in _PROPERTY_HEADERS],
                    {"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string"},
                     "description": "The message id (a retry after a \"cannot know\" answer sends the same)."},
                    {"name": "traceparent", "in": "header", "required": False, "schema": {"type": "string"},
                     "description": "W3C trace context, copied into the message's headers."},
                ],
                "requestBody": {"required": True, "content": _raw_body("hello world")},
                "responses": _ONE_MESSAGE_ANSWERS,
            }},
            "/publish/batch": {"post": {
                "summary": "Publish many messages: length-framed records, `<length>\\n<record>\\n` each.",
                "description": "A record is `connection_id|queue|message`, or (starting with `{`) the envelope "
                               "form: a JSON object on one line (connection_id, exchange, routing_key, "
                               "properties, mandatory), a newline, then the message.",
                "security": [{}, {"bearer": []}],
                "requestBody": {"required": True,
                                "content": _raw_body("20\nlocal|my_queue|first\n21\nlocal|my_queue|second\n")},
                "responses": {
                    "200": _json({"type": "object", "properties": {
                        "status": {"const": "ok"}, "published": {"type": "integer", "minimum": 0}},
                        "required": ["status", "published"]}, "Every message was confirmed.", _REQUEST_ID),
                    "207": _json({"type": "object", "properties": {
                        "status": {"const": "partial"},
                        "published": {"type": "integer", "minimum": 0},
                        "failed": {"type": "integer", "minimum": 1},
                        "results": {"type": "array", "items": {"type": "object", "properties": {
                            "status": {"type": "integer"}, "error": {"type": "string"},
                            "detail": {"type": "string"}}, "required": ["status"]}}},
                        "required": ["status", "published", "failed", "results"]},
                        "Some messages failed: one result per record, in order.", _RETRY_AFTER),
                    "4XX": _CLIENT_ERRORS,
                    "501": _CLIENT_ERRORS,
                    "503": _UNAVAILABLE,
                },
            }},
            "/api/exchanges/{vhost}/{exchange}/publish": {"post": {
                "summary": "RabbitMQ's management API publish, answered alike, through the pools with confirms.",
                "description": "The management API's own request body. `MANAGEMENT_VHOSTS` names the connection "
                               "id of each vhost (`%2F` is `/`); `amq.default` is the default exchange. Published "
                               "as mandatory: `200 {\"routed\": false}` once the broker confirmed it unroutable. "
                               "HTTP Basic credentials carry a publish token as the password. Errors have the "
                               "management API's `reason` beside `detail`.",
                "security": [{}, {"bearer": []}, {"basic": []}],
                "parameters": [
                    {"name": "vhost", "in": "path", "required": True, "schema": {"type": "string"},
                     "example": "%2F"},
                    {"name": "exchange", "in": "path", "required": True, "schema": {"type": "string"},
                     "example": "amq.default"},
                ],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"type": "object", "required": ["properties", "routing_key", "payload",
                                                              "payload_encoding"],
                               "properties": {"properties": {"type": "object"},
                                              "routing_key": {"type": "string"},
                                              "payload": {"type": "string"},
                                              "payload_encoding": {"enum": ["string", "base64"]}}},
                    "examples": {"example": {"value": {
                        "properties": {"delivery_mode": 2, "headers": {"tenant": "acme"}},
                        "routing_key": "my_queue", "payload": "hello world", "payload_encoding": "string"}}},
                }}},
                "responses": {
                    "200": _json({"type": "object", "properties": {"routed": {"type": "boolean"}},
                                  "required": ["routed"]},
                                 "RabbitMQ confirmed the message: routed to a queue, or not.", _REQUEST_ID),
                    "4XX": _json(_MANAGEMENT_ERROR, _CLIENT_ERRORS["description"], _REQUEST_ID),
                    "501": _json(_MANAGEMENT_ERROR, _CLIENT_ERRORS["description"], _REQUEST_ID),
                    "503": _json(_MANAGEMENT_ERROR, _UNAVAILABLE["description"], _RETRY_AFTER),
                },
            }},
            "/healthz": {"get": {
                "summary": "Liveness: the worker answers (no I/O).",
                "responses": {"200": _json({"type": "object", "properties": {"status": {"const": "ok"}}},
                                           "Alive."),
                              "401": _json(_ERROR, "OPS_TOKEN_HEALTH is on and no valid token was sent.")},
            }},
            "/readyz": {"get": {
                "summary": "Readiness: every connection id has a reachable broker.",
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/Readiness"}, "Ready."),
                    "503": _json({"$ref": "#/components/schemas/Readiness"}, "Not ready: a connection id has no "
                                 "reachable broker."),
                    "401": _json(_ERROR, "OPS_TOKEN_HEALTH is on and no valid token was sent."),
                },
            }},
            "/metrics": {"get": {
                "summary": "Prometheus metrics, aggregated over the workers.",
                "security": _OPS_SECURITY,
                "responses": {"200": {"description": "Prometheus text format.",
                                      "content": {"text/plain": {"schema": {"type": "string"}}}},
                              "401": _json(_ERROR, "OPS_TOKEN is set and no valid token was sent.")},
            }},
            "/pools": {"get": {
                "summary": "Every pool of every worker: state, counts, active broker, last error (no secrets).",
                "security": _OPS_SECURITY,
                "responses": {"200": _json({"type": "object"}, "The pools."),
                              "401": _json(_ERROR, "OPS_TOKEN is set and no valid token was sent.")},
            }},
            "/openapi.json": {"get": {
                "summary": "This document.",
                "responses": {"200": _json({"type": "object"}, "The OpenAPI document.")},
            }},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "A publish token (AUTH_TOKENS_FILE) or OPS_TOKEN."},
                                "basic": {"type": "http", "scheme": "basic",
                                          "description": "The management API's credentials: the password is a "
                                                         "publish token (the user name is free)."}},
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
                          "required": ["error", "detail"]},
                "Readiness": {"type": "object", "properties": {
                    "ready": {"type": "boolean"}, "connections": {"type": "object"}}, "required": ["ready"]},
            },
        },
    }
