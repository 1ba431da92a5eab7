"""The publish body ``connection_id|queue|message``, parsed and validated.

Shared by the HTTP and ZeroMQ ingresses so both answer bad input alike. The
message is every byte after the second ``|``: it may hold ``|``, newlines and
any bytes, and may be empty.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from app.config import CONN_ID_RE
from app.core.errors import InvalidConnectionId, InvalidQueue, MalformedBody

if TYPE_CHECKING:  # the relay process imports this module, and never pika
    from app.amqp.connection import Envelope

MAX_QUEUE_BYTES = 255  # AMQP short string
# RabbitMQ's direct reply-to pseudo-queue: never a queue on the default
# exchange, and a malformed address after it ("amq.rabbitmq.reply-to.x.y")
# makes RabbitMQ 3.10 close the whole connection (541 INTERNAL_ERROR), with
# every other message in flight on it. Replies to RPC callers are not this
# gateway's job: refused up front.
RESERVED_QUEUE = "amq.rabbitmq.reply-to"


class PublishRequest(NamedTuple):
    """One message for the gateway: the seed's ``(id, queue, body)``, or an envelope to any exchange."""

    conn_id: str
    queue: str  # the queue; for an envelope, its key (exchange/routing key), which circuits and nacks count by
    body: bytes
    envelope: Envelope | None = None


def check_conn_id(conn_id: str) -> str:
    """``conn_id``, if it is a valid connection id; else :class:`InvalidConnectionId` (400)."""
    if not CONN_ID_RE.fullmatch(conn_id):
        raise InvalidConnectionId("a connection id is 1 to 64 of A-Z a-z 0-9 _ . -")
    return conn_id


def parse_body(data: bytes) -> PublishRequest:
    """Split and validate a publish body; raise a 400 error naming what is wrong."""
    first = data.find(b"|")
    second = data.find(b"|", first + 1) if first >= 0 else -1
    if second < 0:
        raise MalformedBody("expected connection_id|queue|message (two '|' separators)")
    raw_id, raw_queue = data[:first], data[first + 1:second]
    if not raw_id:
        raise InvalidConnectionId("the connection id is empty")
    try:
        conn_id = check_conn_id(raw_id.decode("ascii"))
    except UnicodeDecodeError:
        conn_id = check_conn_id("")
    if not raw_queue:
        raise InvalidQueue("the queue name is empty")
    if len(raw_queue) > MAX_QUEUE_BYTES:
        raise InvalidQueue(f"the queue name is {len(raw_queue)} bytes; at most {MAX_QUEUE_BYTES}")
    try:
        queue = raw_queue.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidQueue("the queue name is not valid UTF-8") from None
    if queue == RESERVED_QUEUE or queue.startswith(RESERVED_QUEUE + "."):
        raise InvalidQueue(f"{RESERVED_QUEUE} is reserved by RabbitMQ (direct reply-to), not a queue")
    return PublishRequest(conn_id, queue, data[second + 1:])
