"""One AMQP connection to one RabbitMQ server, publishing with confirms.

Built on pika's gevent adapter: the connection's socket is driven by the gevent
hub, so heartbeats are answered even while the connection sits idle in a pool,
and the callbacks below run in the hub (they never block). A caller that holds
the connection publishes a *batch*: every message goes out at once and the
broker's acks (often ``multiple=True``) are mapped back by delivery tag, so a
batch costs one round trip, not one per message.

The publish frames and the broker's acks and nacks, the hot path, are written
and read by :mod:`app.amqp.wire` rather than by pika's general machinery,
which cost more than the work it wrapped (README, "The hot path"). That
needs hooks into pika's internals: :mod:`app.amqp.pika_seam` holds them, the
one module that uses pika's private names.

Outcome of each message: ``None`` (the broker confirmed it), :class:`Unroutable`
(returned, then acked), :class:`PublishNacked`, :class:`ConfirmTimeout`, or
:class:`ConnectionLost` (not confirmed; the caller may retry elsewhere).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import ssl
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import gevent
import pika
import pika.exceptions
from gevent.event import AsyncResult, Event
from pika import spec
from pika.adapters.utils import connection_workflow

from app.amqp.pika_seam import PikaConnection, io_services
from app.amqp.server_cap import CAP
from app.amqp.wire import ConfirmReader, encode_properties, publish_frames, publish_frames_to
from app.config import BrokerAddress, Settings, tls_context
from app.core.errors import (
    BrokerBlocked,
    ConfirmTimeout,
    ConnectionLost,
    GatewayError,
    PoolTimeout,
    PublishNacked,
    Unroutable,
    describe_exception,
)
from app.ops.processes import process_token

log = logging.getLogger(__name__)


class Envelope(NamedTuple):
    """A message to any exchange with properties of its own; the plain message is ``(queue, body)``.

    ``key`` stands where a plain message has its queue, for what judges a
    destination (queue circuits, nack fate): ``<exchange>/<routing key>``.
    ``properties`` are checked (app.core.envelope) and encodable
    (app.amqp.wire.PROPERTIES); the gateway adds delivery mode, message id and
    timestamp where they are not set. ``mandatory`` None: the ``MANDATORY`` setting.
    """

    key: str
    body: bytes
    exchange: str
    routing_key: str
    properties: Mapping[str, Any]
    mandatory: bool | None = None


Message = tuple[str, bytes] | Envelope  # (queue, body) to the default exchange, or an Envelope
Outcome = GatewayError | None

# Message ids are "<process>.<connection>.<delivery tag>": unique across
# workers and restarts, cheap to make, and they lead a basic.return back to
# its pending message without a second index. The process part is drawn in
# each worker (app.ops.processes.process_token).
_connection_seq = itertools.count(1)


# What RabbitMQ answers a publish to an exchange that is missing (NOT_FOUND) or
# that the user may not write to (ACCESS_REFUSED): the same for every message to it.
EXCHANGE_REFUSALS = (404, 403)
DEFAULT_EXCHANGE_ALIAS = "amq.default"
TRIED_KINDS_MAX = 1024  # kinds of first use remembered per connection, the least recently used forgotten


def process_tag() -> str:
    """This process's part of message ids (8 hex digits)."""
    return process_token()[:8]


def connection_parameters(address: BrokerAddress, settings: Settings, name: str) -> pika.ConnectionParameters:
    """pika parameters for one broker, with our timeouts and a readable connection name."""
    ssl_options = None
    if address.tls:
        ssl_options = pika.SSLOptions(tls_context(address), address.server_name or address.host)
    return pika.ConnectionParameters(
        host=address.host,
        port=address.port,
        virtual_host=address.vhost,
        credentials=pika.PlainCredentials(address.username, address.password),
        heartbeat=address.heartbeat if address.heartbeat is not None else settings.heartbeat,
        connection_attempts=1,
        socket_timeout=settings.connect_timeout,
        stack_timeout=settings.connect_timeout,
        ssl_options=ssl_options,
        client_properties={"connection_name": name, "product": "amqp-publish-gateway"},
    )


CONNECTION_FORCED = 320  # the broker shuts down, or an operator closed the connection: nobody's message


def _reply_text(reason: BaseException) -> str:
    """What the broker said when it closed the channel or connection itself ("NOT_FOUND - no exchange ...")."""
    return str(getattr(reason, "reply_text", "") or "")[:300]


def _refused_code(reason: BaseException) -> int | None:
    """The reply code when the broker itself closed the connection or channel over what it was sent."""
    if isinstance(reason, (pika.exceptions.ConnectionClosedByBroker, pika.exceptions.ChannelClosedByBroker)):
        code = int(reason.reply_code)
        return None if code == CONNECTION_FORCED else code
    return None


class _Batch:
    """The outcomes of one publish_batch call and the event that says all are in."""

    __slots__ = ("done", "outcomes", "remaining")

    def __init__(self, size: int):
        self.outcomes: list[Outcome] = [None] * size
        self.remaining = size
        self.done = Event()

    def settle(self, index: int, outcome: Outcome) -> None:
        self.outcomes[index] = outcome
        self.remaining -= 1
        if self.remaining <= 0:
            self.done.set()


class _Pending:
    __slots__ = ("batch", "index", "own_id", "returned")

    def __init__(self, batch: _Batch, index: int, own_id: str | None = None):
        self.batch = batch
        self.index = index
        self.own_id = own_id  # the producer's message id, when it set one
        self.returned = False


class BrokerConnection:
    """An open connection with one confirm-mode channel; used by one holder at a time."""

    def __init__(self, address: BrokerAddress, settings: Settings, name: str):
        self.address = address
        self.name = name
        self.created_at = time.monotonic()
        self.last_used = self.created_at
        self._settings = settings
        self._seq = next(_connection_seq)
        self._id_prefix = f"{process_tag()}.{self._seq}."
        self._id_prefix_bytes = self._id_prefix.encode()
        self._conn: PikaConnection | None = None
        self._holds_slot = False  # of the per-server cap: given back once closed
        self._channel: pika.channel.Channel | None = None  # in confirm mode; None while (re)opening
        self._reader: ConfirmReader | None = None
        # Set while no channel is being reopened (see _on_channel_closed).
        self._channel_ready = Event()
        self._channel_ready.set()
        self.channel_reopens = 0
        self._pending: OrderedDict[int, _Pending] = OrderedDict()
        # Delivery tags in flight under a producer's own message id, oldest first:
        # a basic.return names only the message id, and RabbitMQ returns in publish order.
        self._own_ids: dict[str, deque[int]] = {}
        # (exchange, user_id) that a message has been through the channel with (publish_batch),
        # least recently used first.
        self._tried: OrderedDict[tuple[str, str | None], None] = OrderedDict()
        self._probing = False  # a first use is in flight alone
        self._tag = 0
        self._closed = Event()
        self.lost_reason: str | None = None
        self.blocked = False
        self.suspect = False  # a confirm timed out: the socket may be dead
        self.closing = False  # we asked for the close: not a failure to report
        self.retired: str | None = None  # why the gateway stopped lending it (it still works: closed cleanly)
        # Nacks in a row with no ack between, and since when (app.amqp.nacks judges them).
        self.nack_streak = 0
        self.nack_streak_since = 0.0
        self.log_fields: dict[str, Any] = {"server": address.display}  # + endpoint and its ids, for its log lines
        # Told (in the hub) when the connection dies under us: on_lost(conn, reason).
        self.on_lost: Callable[[BrokerConnection, str], None] | None = None
        # Told (in the hub) when the broker blocks or unblocks it: on_blocked(conn, blocked).
        self.on_blocked: Callable[[BrokerConnection, bool], None] | None = None
        # Told (in the hub) when the broker closed its channel and a new one is opened.
        self.on_channel_reopen: Callable[[BrokerConnection], None] | None = None

    # -- opening -----------------------------------------------------------

    @classmethod
    def open(cls, address: BrokerAddress, settings: Settings, name: str,
             timeout: float | None = None) -> BrokerConnection:
        """Connect, open a channel and select confirms; raise ConnectionLost on failure.

        Raises :class:`ConnectionCapReached` without connecting when the worker
        holds its share of connections to that server (app.amqp.server_cap).
        """
        CAP.take(address)
        self = cls(address, settings, name)
        self._holds_slot = True
        ready: AsyncResult = AsyncResult()
        timeout = settings.connect_timeout if timeout is None else timeout
        params = connection_parameters(address, settings, name)
        params.socket_timeout = params.stack_timeout = timeout
        try:
            self._conn = PikaConnection(
                params,
                on_open_callback=lambda _conn: self._on_open(ready),
                on_open_error_callback=lambda _conn, err: ready.set_exception(_as_exception(err)),
                on_close_callback=self._on_connection_closed,
                custom_ioloop=io_services(),
            )
            # pika's stack_timeout bounds the handshake; this is a safety net.
            ready.get(timeout=timeout + 1.0)
        except gevent.Timeout:
            self.abort()
            self._give_back_slot()
            raise ConnectionLost(f"{name}: connect timed out") from None
        except (OSError, pika.exceptions.AMQPError, ssl.SSLError, connection_workflow.AMQPConnectorException) as exc:
            # pika passes TLS and handshake failures up as workflow errors
            # (not AMQPError): they must end here too, not kill the caller.
            self.abort()
            self._give_back_slot()
            raise ConnectionLost(f"{name}: {describe_exception(root_cause(exc))}") from exc
        except BaseException:
            self.abort()
            self._give_back_slot()
            raise
        return self

    def _give_back_slot(self) -> None:
        # Once, whichever comes first: the failed open or pika's close callback.
        if self._holds_slot:
            self._holds_slot = False
            CAP.give_back(self.address)

    def _on_open(self, ready: AsyncResult) -> None:
        assert self._conn is not None
        self._conn.add_on_connection_blocked_callback(self._on_blocked)
        self._conn.add_on_connection_unblocked_callback(self._on_unblocked)
        self._open_channel(lambda: ready.set(True))

    def _open_channel(self, on_ready: Callable[[], None]) -> None:
        """Open a channel and select confirms; it becomes the connection's channel once it confirms."""
        assert self._conn is not None

        def on_channel(channel: pika.channel.Channel) -> None:
            channel.add_on_close_callback(self._on_channel_closed)
            channel.add_on_return_callback(self._on_return)

            def on_confirm_mode(_frame: object) -> None:
                self._take_over_confirms(channel.channel_number)
                self._channel = channel
                on_ready()

            channel.confirm_delivery(self._on_confirm, callback=on_confirm_mode)

        self._conn.channel(on_open_callback=on_channel)

    # -- hub callbacks (must not block or raise) ------------------------------

    def _take_over_confirms(self, channel_number: int) -> None:
        # From now on the broker's bytes pass through a ConfirmReader, which
        # handles this channel's acks and nacks itself and hands every other
        # frame to pika. Acks that pika still sees (read with this very frame)
        # arrive through _on_confirm. A reopened channel keeps the reader (it
        # may hold part of a frame): only the channel it watches changes.
        conn = self._conn
        assert conn is not None
        if self._reader is not None:
            self._reader.channel = channel_number
            return
        self._reader = ConfirmReader(channel_number, self._confirmed, conn.pika_feed, conn.count_received)
        conn.read_first(self._reader.feed)

    def _on_confirm(self, frame: pika.frame.Method) -> None:
        method = frame.method
        self._confirmed(method.delivery_tag, method.multiple, isinstance(method, spec.Basic.Nack))

    def _confirmed(self, tag: int, multiple: bool, nacked: bool) -> None:
        if multiple:
            pending = self._pending
            while pending:
                first = next(iter(pending))
                if first > tag:
                    break
                self._settle(pending.popitem(last=False)[1], nacked)
        else:
            entry = self._pending.pop(tag, None)
            if entry is not None:
                self._settle(entry, nacked)

    def _settle(self, entry: _Pending, nacked: bool) -> None:
        if entry.own_id is not None:
            self._forget_own_id(entry)
        if nacked:
            outcome: Outcome = PublishNacked("the broker refused the message (nack)")
            if not self.nack_streak:
                self.nack_streak_since = time.monotonic()
            self.nack_streak += 1
        else:
            self.nack_streak = 0
            outcome = Unroutable("no queue is bound to that routing key") if entry.returned else None
        entry.batch.settle(entry.index, outcome)

    def _forget_own_id(self, entry: _Pending) -> None:
        # Settled tags leave the front (confirms come mostly in order); one
        # settled out of order goes once those before it have.
        own_id = entry.own_id or ""
        tags = self._own_ids.get(own_id)
        if tags is None:
            return
        while tags and tags[0] not in self._pending:
            tags.popleft()
        if not tags:
            del self._own_ids[own_id]

    def _on_return(self, _channel: object, _method: object, properties: spec.BasicProperties, _body: bytes) -> None:
        # RabbitMQ sends basic.return before the ack of the same message.
        message_id = properties.message_id or ""
        if message_id.startswith(self._id_prefix) and message_id[len(self._id_prefix):].isdigit():
            entry = self._pending.get(int(message_id[len(self._id_prefix):]))
            if entry is not None:
                entry.returned = True
            return
        # The producer's own id: the oldest message in flight under it not yet returned.
        for tag in self._own_ids.get(message_id, ()):
            entry = self._pending.get(tag)
            if entry is not None and not entry.returned:
                entry.returned = True
                return

    def _on_blocked(self, _conn: object, _frame: object) -> None:
        self.blocked = True
        log.warning("broker %s blocked the connection (resource alarm)", self.address.display,
                    extra={"event": "connection_blocked", "broker": self.address.display, **self.log_fields})
        if self.on_blocked is not None:
            self.on_blocked(self, True)

    def _on_unblocked(self, _conn: object, _frame: object) -> None:
        self.blocked = False
        log.info("broker %s unblocked the connection", self.address.display,
                 extra={"event": "connection_unblocked", "broker": self.address.display, **self.log_fields})
        if self.on_blocked is not None:
            self.on_blocked(self, False)

    def _on_channel_closed(self, channel: pika.channel.Channel, reason: BaseException) -> None:
        refused = _refused_code(reason)
        conn = self._conn
        if (channel is self._channel and isinstance(reason, pika.exceptions.ChannelClosedByBroker)
                and refused is not None and conn is not None and conn.is_open
                and not self.closing and self.lost_reason is None):
            # The broker closed the channel over something it was sent (an
            # unknown exchange, a refused property): the messages in flight on
            # it are answered, and the connection lives on with a new channel.
            self._reopen_channel(f"channel closed: {describe_exception(reason)}", refused, _reply_text(reason))
            return
        # Closed any other way (or while reopening): the channel is the
        # connection's purpose, so without it the connection is retired.
        self._mark_lost(f"channel closed: {describe_exception(reason)}", refused)
        if conn is not None and conn.is_open:
            conn.close()

    def _reopen_channel(self, reason: str, refused_code: int, refused_text: str) -> None:
        self._channel = None
        self._channel_ready.clear()
        self.channel_reopens += 1
        self._fail_pending(reason, refused_code, refused_text)
        self._tag = 0  # a new channel counts its delivery tags from 1
        self.nack_streak = 0
        if not self._probing:
            # Over something thought safe (an exchange deleted since): try each kind anew.
            self._tried.clear()
        log.warning("%s: %s; reopening the channel", self.name, reason,
                    extra={"event": "channel_reopen", "reply_code": refused_code, **self.log_fields})
        if self.on_channel_reopen is not None:
            self.on_channel_reopen(self)
        self._open_channel(self._channel_ready.set)

    def _on_connection_closed(self, _conn: object, reason: BaseException) -> None:
        self._mark_lost(describe_exception(reason), _refused_code(reason))
        self._closed.set()
        self._give_back_slot()

    def _mark_lost(self, reason: str, refused_code: int | None = None) -> None:
        if self.lost_reason is None:
            self.lost_reason = reason
            if self.on_lost is not None and not self.closing:
                self.on_lost(self, reason)
        self._channel_ready.set()  # no reopen to wait for any more
        self._fail_pending(reason, refused_code)

    def _fail_pending(self, reason: str, refused_code: int | None, refused_text: str = "") -> None:
        # Sent, never confirmed: "cannot know" (the gateway isolates or retries them).
        pending, self._pending = self._pending, OrderedDict()
        self._own_ids.clear()
        for entry in pending.values():
            entry.batch.settle(entry.index, ConnectionLost(f"{self.name}: {reason}", refused_code, refused_text))

    # -- use -----------------------------------------------------------------

    @property
    def usable(self) -> bool:
        """Open, with its channel, not lost, not suspect and not retired."""
        return (
            self.lost_reason is None
            and not self.suspect
            and self.retired is None
            and self._channel is not None
            and self._channel.is_open
        )

    def publish_batch(self, messages: Sequence[Message], timeout: float, *,
                      mandatory: bool = True, persistent: bool = True) -> list[Outcome]:
        """Publish all messages and wait for their confirms; one outcome per message, in order.

        A message that may make the broker close the channel and that nothing
        like it has been through this connection's channel yet (a *first use*:
        an exchange, or a ``user_id`` other than the connection's user) goes
        after the others, alone: RabbitMQ closes the channel over a publish to
        a missing exchange (404), one it refuses to write (403) or a ``user_id``
        not the connection's (406), and every message in flight with it would
        be left unconfirmed ("cannot know"), though the broker had already
        routed those sent before it. Alone, its refusal is its own
        (``ConnectionLost.culprit``), and the others were confirmed first. Once
        one has been through, the rest of its kind go in one round. The kinds
        seen are remembered per connection (a deleted exchange is the case left
        to the gateway's isolation: app.core.lane).

        Raises :class:`BrokerBlocked` or :class:`ConnectionLost` when nothing was sent.
        """
        firsts: dict[tuple[str, str | None], list[int]] | None = None
        for index, message in enumerate(messages):
            if type(message) is Envelope:
                kind = self._first_use(message)
                if kind is not None:
                    if firsts is None:
                        firsts = {}
                    firsts.setdefault(kind, []).append(index)
        if firsts is None:
            return self._send(messages, timeout, mandatory, persistent)
        return self._send_first_uses(messages, firsts, timeout, mandatory, persistent)

    def _first_use(self, message: Envelope) -> tuple[str, str | None] | None:
        """The kind of a message that may close the channel, if none of its kind has been through yet."""
        exchange = "" if message.exchange == DEFAULT_EXCHANGE_ALIAS else message.exchange
        user_id = message.properties.get("user_id")
        if user_id == self.address.username:
            user_id = None  # always the broker's to accept
        if not exchange and user_id is None:
            return None  # the default exchange always exists and is written to by every user
        kind = (exchange, user_id)
        if kind in self._tried:
            self._tried.move_to_end(kind)
            return None
        return kind

    def _send_first_uses(self, messages: Sequence[Message], firsts: dict[tuple[str, str | None], list[int]],
                         timeout: float, mandatory: bool, persistent: bool) -> list[Outcome]:
        deadline = time.monotonic() + timeout
        outcomes: list[Outcome] = [None] * len(messages)
        held = {index for indexes in firsts.values() for index in indexes}
        rounds = 0

        def send(indexes: list[int], probe: bool = False) -> None:
            nonlocal rounds
            remaining = deadline - time.monotonic()
            self._probing = probe
            try:
                if remaining <= 0:
                    raise PoolTimeout(f"{self.name}: not published: the deadline passed while the messages before "
                                      "it were confirmed")
                results = self._send([messages[i] for i in indexes], remaining, mandatory, persistent)
            except (ConnectionLost, BrokerBlocked, PoolTimeout) as exc:
                if rounds == 0:
                    raise  # nothing was sent: the caller's to handle as before
                results = [exc] * len(indexes)  # not sent: the connection is lost, blocked or out of time
            finally:
                self._probing = False
            rounds += 1
            for index, result in zip(indexes, results, strict=True):
                outcomes[index] = result

        safe = [index for index in range(len(messages)) if index not in held]
        if safe:
            send(safe)
        for kind, indexes in firsts.items():
            while indexes:
                probe, indexes = indexes[0], indexes[1:]
                send([probe], probe=True)
                result = outcomes[probe]
                if result is None or isinstance(result, (Unroutable, PublishNacked)):  # through, channel open
                    self._tried[kind] = None
                    if len(self._tried) > TRIED_KINDS_MAX:
                        self._tried.popitem(last=False)
                    if indexes:
                        send(indexes)
                    break
                if not isinstance(result, ConnectionLost) or result.refused_code is None:
                    continue  # no news of its kind (lost, blocked, timed out): the rest go alone too
                culprit = outcomes[probe] = ConnectionLost(result.detail, result.refused_code, result.refused_text,
                                                           culprit=True)
                user_refused = kind[1] is not None and "user_id" in result.refused_text
                if result.refused_code in EXCHANGE_REFUSALS or user_refused:
                    # The exchange is missing or not ours to write, or the user id is refused:
                    # so for every message of its kind (never sent).
                    for index in indexes:
                        outcomes[index] = culprit
                    break
                # Anything else may be that message's own: each of the rest goes alone in turn.
        return outcomes

    def _send(self, messages: Sequence[Message], timeout: float, mandatory: bool,
              persistent: bool) -> list[Outcome]:
        """Publish the messages as one pipelined batch and wait for their confirms."""
        if not self.usable:
            raise ConnectionLost(f"{self.name}: {self.lost_reason or 'connection not usable'}")
        if self.blocked:
            raise BrokerBlocked(f"{self.name} is blocked (resource alarm)")
        self.last_used = time.monotonic()
        batch = _Batch(len(messages))
        conn = self._conn
        assert conn is not None and self._channel is not None
        channel, body_max = self._channel.channel_number, conn.body_max
        delivery_mode = 2 if persistent else 1
        timestamp = int(time.time())
        prefix = self._id_prefix_bytes
        frames = []
        for index, message in enumerate(messages):
            self._tag += 1
            if isinstance(message, Envelope):
                frames.append(self._envelope_frames(channel, batch, index, message, mandatory, delivery_mode,
                                                    timestamp, body_max))
            else:  # the plain message: the fixed header, fastest
                queue, body = message
                self._pending[self._tag] = _Pending(batch, index)
                frames.append(publish_frames(channel, queue.encode(), body, mandatory=mandatory,
                                             delivery_mode=delivery_mode, message_id=b"%s%d" % (prefix, self._tag),
                                             timestamp=timestamp, body_max=body_max))
        try:
            self._write(b"".join(frames))
        except (pika.exceptions.AMQPError, OSError, ConnectionLost) as exc:
            # Whatever reached the socket is unconfirmed: all of it is "lost"
            # (the caller may retry it: at-least-once).
            self._mark_lost(describe_exception(exc))
        if not batch.done.wait(timeout):
            # A blocked connection is healthy, only paused by the broker: keep it
            # (the pool refuses publishes while it is blocked). Otherwise the
            # socket may be dead.
            self.suspect = not self.blocked
            for tag_, entry in list(self._pending.items()):
                if entry.batch is batch:
                    del self._pending[tag_]
                    batch.settle(entry.index, ConfirmTimeout(
                        f"{self.name} did not confirm within {timeout:g}s"))
        elif not self._channel_ready.is_set():
            # The broker closed the channel under this batch: hold the
            # connection until its new channel is ready (a round trip), so the
            # pool gets it back usable rather than dropping it.
            self._await_channel()
        return batch.outcomes

    def ready_for_use(self) -> bool:
        """Usable, once a channel the broker closed is reopened (a round trip; the pool lends through this)."""
        if not self._channel_ready.is_set():
            self._await_channel()
        return self.usable

    def _await_channel(self) -> None:
        if not self._channel_ready.wait(self._settings.connect_timeout) and self.lost_reason is None:
            self._mark_lost(f"channel not reopened within {self._settings.connect_timeout:g}s")
            self.abort()

    def _envelope_frames(self, channel: int, batch: _Batch, index: int, message: Envelope, mandatory: bool,
                         delivery_mode: int, timestamp: int, body_max: int) -> bytes:
        props = dict(message.properties)
        own_id = props.get("message_id")
        if own_id is None:
            props["message_id"] = f"{self._id_prefix}{self._tag}"
        else:
            self._own_ids.setdefault(own_id, deque()).append(self._tag)
        props.setdefault("delivery_mode", delivery_mode)
        props.setdefault("timestamp", timestamp)
        self._pending[self._tag] = _Pending(batch, index, own_id)
        return publish_frames_to(channel, message.exchange.encode(), message.routing_key.encode(), message.body,
                                 mandatory=mandatory if message.mandatory is None else message.mandatory,
                                 properties=encode_properties(props), body_max=body_max)

    def _write(self, data: bytes) -> None:
        conn = self._conn
        assert conn is not None
        if not conn.write_now(data):
            raise ConnectionLost(f"{self.name}: connection closed")

    def probe(self, timeout: float) -> None:
        """One round trip on the channel (basic.qos); raise ConnectionLost if it fails."""
        if not self.usable:
            raise ConnectionLost(self.lost_reason or "connection not usable")
        answer: AsyncResult = AsyncResult()
        assert self._channel is not None
        try:
            self._channel.basic_qos(prefetch_count=0, callback=answer.set)
            answer.get(timeout=timeout)
        except gevent.Timeout:
            self.suspect = True
            raise ConnectionLost(f"{self.name}: probe timed out after {timeout:g}s") from None
        except (pika.exceptions.AMQPError, OSError) as exc:
            self._mark_lost(describe_exception(exc))
            raise ConnectionLost(f"{self.name}: {describe_exception(exc)}") from exc
        if not self.usable:
            raise ConnectionLost(self.lost_reason or "connection lost during probe")

    # -- closing ---------------------------------------------------------------

    def close(self, timeout: float = 2.0) -> None:
        """Close cleanly (AMQP close handshake), waiting at most ``timeout``."""
        conn = self._conn
        self.closing = True
        if conn is None or self._closed.is_set():
            return
        if conn.is_open:
            # Already closing is fine: the close callback fires either way.
            with contextlib.suppress(pika.exceptions.AMQPError):
                conn.close(reply_text="gateway closing connection")
        if not self._closed.wait(timeout):
            self.abort()

    def abort(self) -> None:
        """Drop the socket without the close handshake (a dead or hung peer)."""
        conn = self._conn
        self.closing = True
        if conn is None or self._closed.is_set():
            return
        if conn.is_open or conn.is_closing:
            conn.abort_stream(pika.exceptions.StreamLostError("aborted by the gateway: peer not answering"))
        elif not conn.is_closed:
            # Still opening: closing aborts the connection workflow.
            with contextlib.suppress(pika.exceptions.AMQPError):
                conn.close()


def root_cause(exc: BaseException) -> BaseException:
    """The innermost error under pika's connection-workflow wrappers (what actually went wrong)."""
    for _ in range(10):  # the wrapping is a few levels deep; bounded all the same
        if isinstance(exc, connection_workflow.AMQPConnectionWorkflowFailed) and exc.exceptions:
            exc = exc.exceptions[-1]
        elif isinstance(exc, connection_workflow.AMQPConnectorPhaseErrorBase):
            exc = exc.exception
        elif isinstance(exc, pika.exceptions.AMQPConnectionError) and exc.args \
                and isinstance(exc.args[0], BaseException):
            exc = exc.args[0]
        else:
            break
    return exc


def _as_exception(err: object) -> BaseException:
    return err if isinstance(err, BaseException) else ConnectionLost(str(err))
