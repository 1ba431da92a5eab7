"""RabbitMQ's management API publish, at its own path: a script moves to the gateway by changing its base URL.

``POST /api/exchanges/{vhost}/{exchange}/publish`` with the management API's
JSON body::

    {"properties": {...}, "routing_key": "...", "payload": "...", "payload_encoding": "string" | "base64"}

is answered as the management API answers it, ``200 {"routed": true}`` or
``200 {"routed": false}`` (published as mandatory: unroutable is not an
error there), but through the pools, with publisher confirms and failover.
``MANAGEMENT_VHOSTS`` says which connection id serves which vhost. The four
fields are required, as there; properties take the management API's names
(the AMQP ones) and, as there, a property it does not know is ignored.
Errors keep the gateway's statuses and codes (``404 unknown_exchange``,
``503`` to retry), with the management API's ``reason`` beside ``detail``.

The management API authenticates with HTTP Basic. Here the password of a
Basic header is taken as a publish token (the user name is free, e.g. the
token's name), so ``curl -u name:<token>`` keeps working; with tokens off,
publishing is open, as on every publish route.

The endpoint is answered before Flask by :mod:`app.http.publish_endpoint`
(its path holds an encoded ``/``, ``%2F`` for the default vhost, which
Flask's router would decode and merge away).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from app.amqp.connection import Envelope
from app.core.envelope import PROPERTY_NAMES, load_json, make_envelope
from app.core.errors import GatewayError, InvalidAddress, InvalidProperty, MalformedBody, NotFound, PayloadTooLarge

PREFIX = "/api/exchanges/"
SUFFIX = "/publish"
FIELDS = ("properties", "routing_key", "payload", "payload_encoding")
ROUTED = b'{"routed":true}\n'
NOT_ROUTED = b'{"routed":false}\n'


class UnknownVhost(NotFound):
    code = "unknown_vhost"


def connection_for(vhosts: Mapping[str, str], vhost: str) -> str:
    """The connection id serving ``vhost`` (``MANAGEMENT_VHOSTS``), else :class:`UnknownVhost` (404)."""
    conn_id = vhosts.get(vhost)
    if conn_id is None:
        raise UnknownVhost(f"no connection id serves vhost {vhost!r} here (MANAGEMENT_VHOSTS)")
    return conn_id


def body_limit(max_body_size: int) -> int:
    """The largest JSON body to read: a base64 payload of ``max_body_size`` bytes, escaped, and its properties."""
    return max_body_size * 2 + 64 * 1024


def parse_publish(data: bytes, exchange: str, max_body_size: int) -> Envelope:
    """The management API's publish body as an Envelope (mandatory, as there); 400 or 413 naming what is wrong."""
    try:
        request = load_json(data.decode("utf-8"), "the body", MalformedBody)
    except UnicodeDecodeError:
        raise MalformedBody("the body is not valid UTF-8 JSON") from None
    if not isinstance(request, dict):
        raise MalformedBody("the body must be a JSON object with properties, routing_key, payload and "
                            "payload_encoding")
    missing = [name for name in FIELDS if name not in request]
    if missing:
        raise MalformedBody(f"the body has no {', '.join(missing)} (the management API needs "
                            f"{', '.join(FIELDS)})")
    properties, routing_key = request["properties"], request["routing_key"]
    if not isinstance(properties, dict):
        raise InvalidProperty("properties must be an object (AMQP property name: value)")
    if not isinstance(routing_key, str):
        raise InvalidAddress("routing_key must be a string")
    payload = _payload(request["payload"], request["payload_encoding"])
    if len(payload) > max_body_size:
        raise PayloadTooLarge(f"the payload is {len(payload)} bytes; the limit is {max_body_size}")
    known = {name: value for name, value in properties.items() if name in PROPERTY_NAMES}
    # As the management API: no delivery_mode is a transient message.
    known.setdefault("delivery_mode", 1)
    return make_envelope(exchange, routing_key, payload, known, mandatory=True)


def error_body(exc: GatewayError) -> bytes:
    """The gateway's error body, with the management API's ``reason`` beside ``detail``."""
    return (json.dumps({**exc.to_json(), "reason": exc.detail}, sort_keys=True) + "\n").encode()


def _payload(payload: Any, encoding: Any) -> bytes:
    if not isinstance(payload, str):
        raise MalformedBody("payload must be a string")
    if encoding == "string":
        return payload.encode("utf-8", "surrogatepass")
    if encoding == "base64":
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise MalformedBody("payload is not valid base64") from None
    raise MalformedBody(f"payload_encoding must be \"string\" or \"base64\", got {str(encoding)[:20]!r}")
