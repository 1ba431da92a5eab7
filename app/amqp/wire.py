"""The publish path's own AMQP frames: ``basic.publish`` out, ``basic.ack``/``nack`` in.

pika builds and parses every frame through general machinery: a publish
(method, content header and body frames) goes through frame objects and a
``send()`` scheduled through the hub, and each incoming ack through frame
objects and pika's callback manager, which cost more than the rest of a
publish together (the figures are in the README, Benchmarks). Those two sequences are the whole
hot path, and both are small, fixed parts of AMQP 0-9-1, so they are done
here with :mod:`struct`; pika keeps everything else (the handshake, TLS,
heartbeats, ``basic.return``, flow control, closing). The tests check every
byte against pika's own encoder.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any

FRAME_METHOD, FRAME_HEADER, FRAME_BODY = 1, 2, 3
FRAME_END = 0xCE

_FRAME = struct.Struct(">BHI")
_BASIC = 60
_PUBLISH_HEAD = struct.pack(">HHH", _BASIC, 40, 0) + b"\x00"  # basic.publish, ticket 0, exchange ""
_ACK = struct.pack(">HH", _BASIC, 80)
_NACK = struct.pack(">HH", _BASIC, 120)
_CONFIRM = struct.Struct(">QB")  # delivery tag, bits (multiple first)
# Content header: class, weight, body size, property flags, delivery mode;
# then message_id (short string) and timestamp, in the spec's property order.
_HEADER_HEAD = struct.Struct(">HHQHB")
_PROPERTY_FLAGS = 0x1000 | 0x0080 | 0x0040  # delivery_mode, message_id, timestamp
_TIMESTAMP = struct.Struct(">Q")
_END = bytes((FRAME_END,))
_PUBLISH_HEAD_NO_EXCHANGE = struct.pack(">HHH", _BASIC, 40, 0)
_HEADER_SIZE = struct.Struct(">HHQ")  # class, weight, body size; then the flags and the properties

# The basic properties a producer may set, in the spec's order (the order of
# their flag bits, highest first, and of their values in the header).
PROPERTIES: tuple[tuple[str, int, str], ...] = (
    ("content_type", 0x8000, "shortstr"),
    ("content_encoding", 0x4000, "shortstr"),
    ("headers", 0x2000, "table"),
    ("delivery_mode", 0x1000, "octet"),
    ("priority", 0x0800, "octet"),
    ("correlation_id", 0x0400, "shortstr"),
    ("reply_to", 0x0200, "shortstr"),
    ("expiration", 0x0100, "shortstr"),
    ("message_id", 0x0080, "shortstr"),
    ("timestamp", 0x0040, "timestamp"),
    ("type", 0x0020, "shortstr"),
    ("user_id", 0x0010, "shortstr"),
    ("app_id", 0x0008, "shortstr"),
)
_INT32 = struct.Struct(">ci")
_INT64 = struct.Struct(">cq")
_DOUBLE = struct.Struct(">cd")
_LONG_LEN = struct.Struct(">cI")


def encode_properties(properties: Mapping[str, Any]) -> bytes:
    """The property flags and values of a content header, as pika's ``BasicProperties.encode``.

    ``properties`` maps names of :data:`PROPERTIES` to values (``None`` or
    absent: not set): strings for the short strings, ints for the octets and
    the timestamp, a dict for ``headers`` (see :func:`encode_table`). Raises
    ValueError for a value AMQP cannot carry (a short string over 255 bytes, an
    octet out of 0-255).
    """
    flags = 0
    parts: list[bytes] = []
    for name, flag, kind in PROPERTIES:
        value = properties.get(name)
        if value is None:
            continue
        flags |= flag
        if kind == "shortstr":
            parts.append(_short(value.encode() if isinstance(value, str) else value, name))
        elif kind == "octet":
            if not 0 <= value <= 255:
                raise ValueError(f"{name} must be 0-255")
            parts.append(bytes((value,)))
        elif kind == "timestamp":
            parts.append(_TIMESTAMP.pack(value))
        else:
            parts.append(encode_table(value))
    return struct.pack(">H", flags) + b"".join(parts)


def encode_table(table: Mapping[str, Any]) -> bytes:
    """An AMQP field table, as pika encodes it, plus floats (``d``, a double, which pika cannot send).

    Values: str (``S``), bytes (``x``), bool (``t``), int (``I`` in 32 bits,
    else ``l``), float (``d``), dict (a nested table, ``F``), list (``A``),
    None (``V``).
    """
    body = b"".join(_short(key.encode(), "header name") + _encode_value(value) for key, value in table.items())
    return struct.pack(">I", len(body)) + body


def _encode_value(value: Any) -> bytes:
    if isinstance(value, str):
        data = value.encode()
        return _LONG_LEN.pack(b"S", len(data)) + data
    if isinstance(value, bytes):
        return _LONG_LEN.pack(b"x", len(value)) + value
    if isinstance(value, bool):  # (before int: a bool is an int)
        return b"t\x01" if value else b"t\x00"
    if isinstance(value, int):
        if -2**31 <= value < 2**31:
            return _INT32.pack(b"I", value)
        if -2**63 <= value < 2**63:
            return _INT64.pack(b"l", value)
        raise ValueError("an integer header value must fit in 64 bits")
    if isinstance(value, float):
        return _DOUBLE.pack(b"d", value)
    if isinstance(value, dict):
        return b"F" + encode_table(value)
    if isinstance(value, list):
        items = b"".join(_encode_value(item) for item in value)
        return _LONG_LEN.pack(b"A", len(items)) + items
    if value is None:
        return b"V"
    raise ValueError(f"a header value cannot be a {type(value).__name__}")


def _short(data: bytes, what: str) -> bytes:
    if len(data) > 255:
        raise ValueError(f"{what} is over 255 bytes")
    return bytes((len(data),)) + data


def publish_frames(channel: int, routing_key: bytes, body: bytes, *, mandatory: bool, delivery_mode: int,
                   message_id: bytes, timestamp: int, body_max: int) -> bytes:
    """The frames of one ``basic.publish`` to the default exchange, as pika would write them."""
    method = b"".join((_PUBLISH_HEAD, bytes((len(routing_key),)), routing_key, b"\x01" if mandatory else b"\x00"))
    header = b"".join((_HEADER_HEAD.pack(_BASIC, 0, len(body), _PROPERTY_FLAGS, delivery_mode),
                       bytes((len(message_id),)), message_id, _TIMESTAMP.pack(timestamp)))
    return _frames(channel, method, header, body, body_max)


def publish_frames_to(channel: int, exchange: bytes, routing_key: bytes, body: bytes, *, mandatory: bool,
                      properties: bytes, body_max: int) -> bytes:
    """The frames of one ``basic.publish`` to any exchange, ``properties`` from :func:`encode_properties`.

    The general form, for a message that names an exchange or carries
    properties of its own; the plain case keeps :func:`publish_frames`.
    """
    method = b"".join((_PUBLISH_HEAD_NO_EXCHANGE, _short(exchange, "exchange"), _short(routing_key, "routing key"),
                       b"\x01" if mandatory else b"\x00"))
    header = _HEADER_SIZE.pack(_BASIC, 0, len(body)) + properties
    return _frames(channel, method, header, body, body_max)


def _frames(channel: int, method: bytes, header: bytes, body: bytes, body_max: int) -> bytes:
    parts = [_FRAME.pack(FRAME_METHOD, channel, len(method)), method, _END,
             _FRAME.pack(FRAME_HEADER, channel, len(header)), header, _END]
    for start in range(0, len(body), body_max):
        chunk = body[start:start + body_max]
        parts += (_FRAME.pack(FRAME_BODY, channel, len(chunk)), chunk, _END)
    return b"".join(parts)


class ConfirmReader:
    """Takes the broker's bytes before pika: confirms of one channel here, every other frame to pika, in order.

    ``on_confirm(delivery_tag, multiple, nacked)`` is called for each
    ``basic.ack``/``basic.nack`` of ``channel``. Frames are handed on whole,
    so pika's own buffer never holds a part of one; a frame that does not end
    as AMQP says, and everything after it, goes to pika, whose parser reports
    the error as it always did.
    """

    def __init__(self, channel: int, on_confirm: Callable[[int, bool, bool], None],
                 pass_on: Callable[[bytes], None], count: Callable[[int], None]):
        self.channel = channel
        self.on_confirm = on_confirm
        self.pass_on = pass_on  # pika's own data handler
        self.count = count  # pika's received-bytes counter (its heartbeat checker reads it)
        self._rest = b""
        self._broken = False

    def feed(self, data: bytes) -> None:
        """Handle bytes as they come off the socket."""
        if self._broken:
            self.pass_on(data)
            return
        buf = self._rest + data if self._rest else data
        size = len(buf)
        pos = 0
        others = 0  # start of the frames not yet handed to pika
        while size - pos >= 7:
            kind, channel, length = _FRAME.unpack_from(buf, pos)
            end = pos + 7 + length + 1
            if end > size:
                break
            if buf[end - 1] != FRAME_END:
                self._broken = True
                break
            if kind == FRAME_METHOD and channel == self.channel and length == 13:
                method = buf[pos + 7:pos + 11]
                if method in (_ACK, _NACK):
                    if others < pos:
                        self.pass_on(buf[others:pos])
                    tag, bits = _CONFIRM.unpack_from(buf, pos + 11)
                    self.count(end - pos)
                    self.on_confirm(tag, bool(bits & 1), method == _NACK)
                    others = end
            pos = end
        if self._broken:
            pos = size
        if others < pos:
            self.pass_on(buf[others:pos])
        self._rest = buf[pos:]
