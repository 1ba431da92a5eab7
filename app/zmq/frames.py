"""ZeroMQ wire formats: the producers' frames (CONTRACT.md) and the relay's internal protocol.

Producers (DEALER or REQ) reach a ROUTER, which puts their identity first.
After it come an optional empty delimiter (the REQ envelope) and then either
``[body]`` or ``[correlation_id, body]``. The reply repeats everything but the
body (the *head*: identity, envelope, correlation id) and ends with ``OK`` or
``ERR <status> <code>``.

Between the relay and the workers (a DEALER per worker, the relay's ROUTER,
over a private ``ipc://`` path), each multipart message starts with a verb::

    relay  -> worker   b"M", packed (tag, body) pairs     messages to publish
                       b"BYE"                             nothing more follows
    worker -> relay    b"HELLO", capacity, draining (0/1) every heartbeat
                       b"R", packed (tag, reply) pairs    answers

A *tag* (8 bytes) is the relay's name for one message it handed out; the
worker sends it back with the reply, so a worker never sees who the producer
is. A batch travels packed in one frame (tag, 4-byte length, payload, ...):
one ZeroMQ call per batch instead of two per message.
"""

from __future__ import annotations

import struct

from app.core.errors import GatewayError, MalformedFrames, PayloadTooLarge

OK = b"OK"

# Relay <-> worker verbs.
MESSAGES = b"M"
REPLIES = b"R"
HELLO = b"HELLO"
BYE = b"BYE"

HEADER = struct.Struct(">8sI")  # tag, payload length


def split_request(frames: list[bytes], max_body: int) -> tuple[list[bytes], bytes, GatewayError | None]:
    """Split a producer's frames (identity first) into (head, body, error).

    ``head`` is what the reply repeats. On a bad shape or size, ``error`` says
    what to answer and ``body`` is empty.
    """
    head = frames[:1]
    rest = frames[1:]
    if rest and rest[0] == b"":
        head.append(b"")  # the REQ envelope delimiter, kept for the reply
        rest = rest[1:]
    if len(rest) == 1:
        body = rest[0]
    elif len(rest) == 2:
        head.append(rest[0])
        body = rest[1]
    elif not rest:
        return head, b"", MalformedFrames("no message frame after the envelope")
    else:
        # Echo the first frame as the correlation id so a producer can still match it.
        head.append(rest[0])
        return head, b"", MalformedFrames(f"expected 1 or 2 frames after the envelope, got {len(rest)}")
    if len(body) > max_body:
        return head, b"", PayloadTooLarge(f"message of {len(body)} bytes is over the limit of {max_body}")
    return head, body, None


def error_reply(exc: GatewayError) -> bytes:
    """``ERR <status> <code>``: the HTTP status and error code of the same failure."""
    return b"ERR %d %s" % (exc.status, exc.code.encode())


def pack(items: list[tuple[bytes, bytes]]) -> bytes:
    """(tag, payload) pairs in one frame."""
    header = HEADER.pack
    chunks: list[bytes] = []
    for tag, payload in items:
        chunks += (header(tag, len(payload)), payload)
    return b"".join(chunks)


def unpack(data: bytes) -> list[tuple[bytes, bytes]]:
    """The (tag, payload) pairs of a packed frame."""
    items = []
    offset, end, header, size = 0, len(data), HEADER.unpack_from, HEADER.size
    while offset < end:
        tag, length = header(data, offset)
        offset += size
        items.append((tag, data[offset:offset + length]))
        offset += length
    return items
