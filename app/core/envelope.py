"""A message to any exchange: its address and AMQP properties, checked before anything is sent.

Every ingress that names an exchange builds its :class:`~app.amqp.connection.Envelope`
here, so a bad priority or expiration is the same ``400 invalid_property``
(naming the property) wherever it came from.

A batch record or a ZeroMQ message names an exchange in the *envelope form*
(:func:`parse_record`): a JSON object on one line, a newline, then the body::

    {"connection_id": "orders", "exchange": "events", "routing_key": "order.created",
     "properties": {"content_type": "application/json", "headers": {"tenant": 7}}, "mandatory": true}
    <body bytes>

(the object on one line). No connection id starts with ``{``, so the seed's
``connection_id|queue|message`` and this form never meet, and existing
producers are unaffected. Values may come as text (HTTP
headers) or typed (JSON): ``"5"`` and ``5`` are the same priority. What AMQP
itself cannot carry (a short string over 255 bytes, an octet over 255, an
integer over 64 bits) is refused here too, not left to the encoder.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from app.amqp.connection import Envelope
from app.core.errors import InvalidAddress, InvalidProperty, MalformedBody
from app.core.message import RESERVED_QUEUE, PublishRequest, check_conn_id, parse_body

DEFAULT_EXCHANGE = "amq.default"  # how a URL names the default exchange (as RabbitMQ's management API does)
MAX_SHORT = 255
MAX_HEADER_DEPTH = 8  # nested tables and arrays in the headers
# The properties a producer sets as text, as AMQP short strings.
TEXT_PROPERTIES = ("content_type", "content_encoding", "correlation_id", "reply_to", "type", "app_id", "user_id",
                   "message_id")
PROPERTY_NAMES = (*TEXT_PROPERTIES, "expiration", "priority", "timestamp", "delivery_mode", "headers")
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_INT64 = (-2**63, 2**63 - 1)
ENVELOPE_START = b"{"
ENVELOPE_FIELDS = ("connection_id", "exchange", "routing_key", "properties", "mandatory")


def parse_record(data: bytes) -> PublishRequest:
    """A batch record or ZeroMQ message: the envelope form if it starts with ``{``, else the seed's form."""
    if data[:1] == ENVELOPE_START:
        return parse_envelope(data)
    return parse_body(data)


def parse_envelope(data: bytes) -> PublishRequest:
    """``{json}\\n<body>``: the message and its address, checked (400 naming what is wrong)."""
    newline = data.find(b"\n")
    if newline < 0:
        raise MalformedBody("an envelope is a JSON object on one line, a newline, then the body")
    try:  # it starts with "{": valid JSON is an object
        head: dict[str, Any] = load_json(data[:newline].decode("utf-8"), "the envelope", MalformedBody)
    except UnicodeDecodeError:
        raise MalformedBody("the envelope is not valid UTF-8") from None
    unknown = sorted(set(head) - set(ENVELOPE_FIELDS))
    if unknown:
        raise MalformedBody(f"the envelope has unknown field(s) {', '.join(map(repr, unknown))} "
                            f"(it takes {', '.join(ENVELOPE_FIELDS)})")
    conn_id, exchange = head.get("connection_id"), head.get("exchange")
    routing_key, properties = head.get("routing_key", ""), head.get("properties", {})
    if not isinstance(conn_id, str):
        raise MalformedBody("the envelope needs a connection_id (a string)")
    check_conn_id(conn_id)
    if not isinstance(exchange, str) or not isinstance(routing_key, str):
        raise InvalidAddress(f"the envelope needs an exchange (a string; {DEFAULT_EXCHANGE} or \"\" for the "
                             "default one), and its routing_key is a string")
    if not isinstance(properties, dict):
        raise InvalidProperty("properties must be an object (AMQP property name: value)")
    envelope = make_envelope(exchange, routing_key, data[newline + 1:], properties, head.get("mandatory"))
    return PublishRequest(conn_id, envelope.key, envelope.body, envelope)


def load_json(text: str, what: str, error: type[MalformedBody] | type[InvalidProperty]) -> Any:
    """``text`` as JSON, or ``error`` naming ``what``: never a traceback, however deep or odd the input."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # RecursionError: "[[[[..." deeper than the parser goes
        raise error(f"{what} is not valid JSON ({exc.__class__.__name__})") from None


def make_envelope(exchange: str, routing_key: str, body: bytes, properties: Mapping[str, Any],
                  mandatory: Any = None) -> Envelope:
    """Check an address and properties (by their AMQP names); the Envelope to publish.

    ``exchange`` is :data:`DEFAULT_EXCHANGE` or ``""`` for the default one. Raises
    :class:`InvalidAddress` or :class:`InvalidProperty` (400) naming what is wrong.
    """
    if exchange == DEFAULT_EXCHANGE:
        exchange = ""
    _short_text(exchange, "exchange", InvalidAddress)
    _short_text(routing_key, "routing key", InvalidAddress)
    if not exchange and (routing_key == RESERVED_QUEUE or routing_key.startswith(RESERVED_QUEUE + ".")):
        raise InvalidAddress(f"{RESERVED_QUEUE} is reserved by RabbitMQ (direct reply-to), not a queue")
    checked: dict[str, Any] = {}
    for name, value in properties.items():
        if value is None:
            continue
        if name in TEXT_PROPERTIES:
            if not isinstance(value, str):
                raise InvalidProperty(f"{name} must be a string")
            checked[name] = _short_text(value, name, InvalidProperty)
        elif name == "expiration":
            checked[name] = str(_integer(value, name, 0, 2**32 - 1))  # milliseconds, sent as text
        elif name == "priority":
            checked[name] = _integer(value, name, 0, 255)
        elif name == "timestamp":
            checked[name] = _integer(value, name, 0, _INT64[1])
        elif name == "delivery_mode":
            checked[name] = _delivery_mode(value)
        elif name == "headers":
            checked[name] = check_headers(value)
        else:
            raise InvalidProperty(f"{name} is not a message property this gateway sets "
                                  f"(one of {', '.join(PROPERTY_NAMES)})")
    return Envelope(f"{exchange}/{routing_key}", body, exchange, routing_key, checked, _mandatory(mandatory))


def headers_from_json(text: str) -> dict[str, Any]:
    """The headers table given as a JSON object (its values keep their JSON types)."""
    return check_headers(load_json(text, "headers", InvalidProperty))


def check_headers(value: Any, depth: int = 0) -> dict[str, Any]:
    """An application headers table: string keys; string, integer, float, boolean, null, list or table values."""
    if not isinstance(value, dict):
        raise InvalidProperty("headers must be an object (a table of name: value)")
    table: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise InvalidProperty("a header name must be a string")
        table[_short_text(key, "a header name", InvalidProperty)] = _header_value(item, key, depth)
    return table


def trace_headers(traceparent: str | None, tracestate: str | None) -> tuple[dict[str, str], str | None]:
    """W3C trace context for the message's headers, and its trace id; an invalid traceparent is dropped (W3C)."""
    if not traceparent:
        return {}, None
    match = _TRACEPARENT.fullmatch(traceparent.strip())
    if (match is None or match[1] == "ff" or match[2] == "0" * 32 or match[3] == "0" * 16):
        return {}, None
    out = {"traceparent": match[0]}
    if tracestate and len(tracestate) <= 512:
        out["tracestate"] = tracestate.strip()
    return out, match[2]


def _header_value(value: Any, name: str, depth: int) -> Any:
    if depth >= MAX_HEADER_DEPTH:
        raise InvalidProperty(f"header {name!r} nests deeper than {MAX_HEADER_DEPTH}")
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            raise InvalidProperty(f"header {name!r} is an integer over 64 bits")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidProperty(f"header {name!r} is not a finite number")
        return value
    if isinstance(value, list):
        return [_header_value(item, name, depth + 1) for item in value]
    if isinstance(value, dict):
        return check_headers(value, depth + 1)
    raise InvalidProperty(f"header {name!r} has a value of a type AMQP headers cannot carry")


def _short_text(value: str, name: str, error: type[InvalidProperty] | type[InvalidAddress]) -> str:
    if len(value.encode("utf-8", "surrogatepass")) > MAX_SHORT:
        raise error(f"{name} is over {MAX_SHORT} bytes")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise error(f"{name} is not valid UTF-8") from None
    return value


def _integer(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool):
        raise InvalidProperty(f"{name} must be an integer {low}-{high}")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int) or not low <= value <= high:
        raise InvalidProperty(f"{name} must be an integer {low}-{high}")
    return value


def _delivery_mode(value: Any) -> int:
    named: dict[str | int, int] = {"persistent": 2, "transient": 1, "2": 2, "1": 1, 2: 2, 1: 1}
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value not in named:
        raise InvalidProperty("delivery_mode must be persistent (2) or transient (1)")
    return named[value]


def _mandatory(value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise InvalidProperty("mandatory must be true or false")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
