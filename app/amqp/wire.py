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
from collections.abc import Callable

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


def publish_frames(channel: int, routing_key: bytes, body: bytes, *, mandatory: bool, delivery_mode: int,
                   message_id: bytes, timestamp: int, body_max: int) -> bytes:
    """The frames of one ``basic.publish`` to the default exchange, as pika would write them."""
    method = b"".join((_PUBLISH_HEAD, bytes((len(routing_key),)), routing_key, b"\x01" if mandatory else b"\x00"))
    header = b"".join((_HEADER_HEAD.pack(_BASIC, 0, len(body), _PROPERTY_FLAGS, delivery_mode),
                       bytes((len(message_id),)), message_id, _TIMESTAMP.pack(timestamp)))
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
