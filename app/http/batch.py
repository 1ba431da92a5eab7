"""The batch body of ``POST /publish/batch``: many messages in one request.

Each message is framed by its length, so it may hold any bytes::

    <length>\\n<connection_id|queue|message>\\n
    <length>\\n<{"connection_id": ..., "exchange": ..., "routing_key": ...}\\n<message>>\\n
    ...

``length`` is the decimal byte count of the record between the two newlines.
A record is the seed's ``connection_id|queue|message`` or, starting with
``{``, the envelope form that names an exchange, a routing key and
properties (:mod:`app.core.envelope`).
The whole body is parsed and every record validated before anything is
published: a framing error or a bad record (400, with its index) refuses the
whole batch, so nothing a client sent is half-published for a reason the
client could have known. What only the broker can say (422, 503) comes back
per message.
"""

from __future__ import annotations

from app.core.envelope import parse_record
from app.core.errors import BadRequest, MalformedBody, PayloadTooLarge
from app.core.message import PublishRequest

_MAX_LENGTH_DIGITS = 10


def parse_batch(data: bytes, max_messages: int, max_message_size: int) -> list[PublishRequest]:
    """Split and validate a batch body; raise a 400 (or 413) naming the bad record."""
    records: list[PublishRequest] = []
    pos, end = 0, len(data)
    while pos < end:
        index = len(records)
        if index >= max_messages:
            raise PayloadTooLarge(f"more than {max_messages} messages in one batch")
        newline = data.find(b"\n", pos, pos + _MAX_LENGTH_DIGITS + 1)
        digits = data[pos:newline] if newline >= 0 else b""
        if not digits.isdigit():
            raise MalformedBody(f"record {index}: expected '<length>\\n' at byte {pos}")
        length = int(digits)
        if length > max_message_size:
            raise PayloadTooLarge(f"record {index} is {length} bytes; the limit is {max_message_size}")
        start = newline + 1
        stop = start + length
        if stop >= end or data[stop:stop + 1] != b"\n":
            raise MalformedBody(f"record {index}: {length} bytes and a newline expected after byte {start}")
        try:
            records.append(parse_record(data[start:stop]))
        except BadRequest as exc:
            # A new error of the same kind, naming the record (an error is never changed once raised).
            raise type(exc)(f"record {index}: {exc.detail}") from exc
        pos = stop + 1
    if not records:
        raise MalformedBody("the batch is empty")
    return records


def encode_batch(records: list[bytes]) -> bytes:
    """Frame records (either form) as a batch body (for producers and tests)."""
    return b"".join(b"%d\n%s\n" % (len(record), record) for record in records)
