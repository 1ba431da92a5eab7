"""The publish path's own frames, byte for byte against pika's encoder and decoder."""

import itertools
import struct

import pika.data
import pika.frame
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pika import spec

from app.amqp.wire import ConfirmReader, encode_properties, encode_table, publish_frames, publish_frames_to

queues = st.text(min_size=1, max_size=60).filter(lambda q: len(q.encode()) <= 255)


def pika_publish(channel, queue, body, mandatory, delivery_mode, message_id, timestamp, frame_max):
    """The bytes pika writes for the same basic.publish (its own _send_message)."""
    props = spec.BasicProperties(message_id=message_id, delivery_mode=delivery_mode, timestamp=timestamp)
    publish = spec.Basic.Publish(exchange="", routing_key=queue, mandatory=mandatory)
    out = [pika.frame.Method(channel, publish).marshal(), pika.frame.Header(channel, len(body), props).marshal()]
    body_max = frame_max - 8
    out += [pika.frame.Body(channel, body[i:i + body_max]).marshal() for i in range(0, len(body), body_max)]
    return b"".join(out)


@settings(max_examples=300, deadline=None)
@given(channel=st.integers(1, 65535), queue=queues, body=st.binary(max_size=3000), mandatory=st.booleans(),
       delivery_mode=st.sampled_from([1, 2]), tag=st.integers(1, 2**63), timestamp=st.integers(0, 2**40),
       frame_max=st.sampled_from([4096, 131072, 1000]))
def test_publish_frames_are_pikas_bytes(channel, queue, body, mandatory, delivery_mode, tag, timestamp, frame_max):
    message_id = f"0a1b2c3d.7.{tag}"
    ours = publish_frames(channel, queue.encode(), body, mandatory=mandatory, delivery_mode=delivery_mode,
                          message_id=message_id.encode(), timestamp=timestamp, body_max=frame_max - 8)
    assert ours == pika_publish(channel, queue, body, mandatory, delivery_mode, message_id, timestamp, frame_max)


short = st.text(max_size=40).filter(lambda t: len(t.encode()) <= 255)
scalars = (st.text(max_size=30) | st.binary(max_size=30) | st.booleans() | st.integers(-2**63, 2**63 - 1)
           | st.none())
header_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                             | st.dictionaries(short, inner, max_size=4), max_leaves=12)
properties = st.fixed_dictionaries({}, optional={
    "content_type": short, "content_encoding": short, "headers": st.dictionaries(short, header_values, max_size=6),
    "delivery_mode": st.sampled_from([1, 2]), "priority": st.integers(0, 255), "correlation_id": short,
    "reply_to": short, "expiration": short, "message_id": short, "timestamp": st.integers(0, 2**63),
    "type": short, "user_id": short, "app_id": short,
})


@settings(max_examples=300, deadline=None)
@given(channel=st.integers(1, 65535), exchange=short, routing_key=queues, body=st.binary(max_size=3000),
       mandatory=st.booleans(), props=properties, frame_max=st.sampled_from([4096, 1000]))
def test_publish_frames_to_any_exchange_with_any_properties_are_pikas_bytes(channel, exchange, routing_key, body,
                                                                           mandatory, props, frame_max):
    ours = publish_frames_to(channel, exchange.encode(), routing_key.encode(), body, mandatory=mandatory,
                             properties=encode_properties(props), body_max=frame_max - 8)
    publish = spec.Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=mandatory)
    theirs = [pika.frame.Method(channel, publish).marshal(),
              pika.frame.Header(channel, len(body), spec.BasicProperties(**props)).marshal()]
    body_max = frame_max - 8
    theirs += [pika.frame.Body(channel, body[i:i + body_max]).marshal() for i in range(0, len(body), body_max)]
    assert ours == b"".join(theirs)


@given(tag=st.integers(1, 2**63), timestamp=st.integers(0, 2**40), mandatory=st.booleans())
def test_the_plain_path_is_the_general_one_with_the_gateways_own_properties(tag, timestamp, mandatory):
    message_id = b"0a1b2c3d.7.%d" % tag
    plain = publish_frames(3, b"q", b"body", mandatory=mandatory, delivery_mode=2, message_id=message_id,
                           timestamp=timestamp, body_max=4088)
    general = publish_frames_to(3, b"", b"q", b"body", mandatory=mandatory, body_max=4088, properties=encode_properties(
        {"delivery_mode": 2, "message_id": message_id.decode(), "timestamp": timestamp}))
    assert plain == general


@given(st.dictionaries(short, st.floats(allow_nan=False, allow_infinity=False) | header_values, max_size=6))
def test_every_table_decodes_as_pika_reads_it_and_floats_go_as_doubles(table):
    encoded = encode_table(table)
    decoded, end = pika.data.decode_table(encoded, 0)
    assert end == len(encoded) and list(decoded) == list(table)  # framed right, whatever the values
    for key, value in table.items():
        if isinstance(value, float):
            # pika cannot send a float and reads a double back as an int (pika.data.decode_value, "d"):
            # the value is checked as the IEEE double AMQP says it is.
            assert encode_table({key: value}).endswith(b"d" + struct.pack(">d", value))
        else:
            assert decoded[key] == value


@pytest.mark.parametrize("props, word", [
    ({"priority": 256}, "priority"), ({"delivery_mode": -1}, "delivery_mode"),
    ({"correlation_id": "x" * 256}, "correlation_id"), ({"headers": {"k" * 256: 1}}, "header name"),
    ({"headers": {"big": 2**64}}, "64 bits"), ({"headers": {"set": {1, 2}}}, "set"),
])
def test_values_amqp_cannot_carry_are_refused_by_name(props, word):
    with pytest.raises(ValueError, match=word):
        encode_properties(props)


def _method(channel, method):
    return pika.frame.Method(channel, method).marshal()


def _reader():
    confirms, passed, counted = [], [], []
    reader = ConfirmReader(1, lambda tag, multiple, nacked: confirms.append((tag, multiple, nacked)),
                           passed.append, counted.append)
    return reader, confirms, passed, counted


STREAM = [
    _method(1, spec.Basic.Ack(delivery_tag=1)),
    _method(0, spec.Connection.Blocked("low on memory")),
    _method(1, spec.Basic.Return(312, "NO_ROUTE", "", "nowhere")),
    pika.frame.Header(1, 3, spec.BasicProperties(message_id="x.1.2")).marshal(),
    pika.frame.Body(1, b"abc").marshal(),
    _method(1, spec.Basic.Ack(delivery_tag=2)),
    _method(1, spec.Basic.Nack(delivery_tag=4, multiple=True)),
    _method(2, spec.Basic.Ack(delivery_tag=9)),  # another channel: pika's
    pika.frame.Heartbeat().marshal(),
    _method(1, spec.Basic.Ack(delivery_tag=2**64 - 1, multiple=True)),
]
CONFIRMS = [(1, False, False), (2, False, False), (4, True, True), (2**64 - 1, True, False)]


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(0, sum(map(len, STREAM))), max_size=12))
def test_confirms_are_taken_and_every_other_frame_goes_to_pika_in_order_however_the_bytes_arrive(cuts):
    data = b"".join(STREAM)
    reader, confirms, passed, counted = _reader()
    edges = sorted({0, len(data), *cuts})
    for start, end in itertools.pairwise(edges):
        reader.feed(data[start:end])
    assert confirms == CONFIRMS
    others = [frame for frame in STREAM if not any(frame == _method(1, m) for m in (
        spec.Basic.Ack(delivery_tag=1), spec.Basic.Ack(delivery_tag=2), spec.Basic.Nack(delivery_tag=4, multiple=True),
        spec.Basic.Ack(delivery_tag=2**64 - 1, multiple=True)))]
    assert b"".join(passed) == b"".join(others)
    assert all(passed)  # never an empty hand-over
    assert sum(counted) == len(data) - len(b"".join(others))


def test_a_return_and_its_ack_keep_their_order():
    # RabbitMQ sends basic.return before the ack of the same message: pika must
    # have seen the return (and told the connection) before the ack is handled.
    events = []
    reader = ConfirmReader(1, lambda tag, multiple, nacked: events.append(("ack", tag)),
                           lambda data: events.append(("pika", len(data))), lambda size: None)
    reader.feed(b"".join(STREAM[2:6]))
    assert [kind for kind, _ in events] == ["pika", "ack"]


def test_a_broken_frame_and_all_after_it_go_to_pika():
    ack = _method(1, spec.Basic.Ack(delivery_tag=1))
    broken = ack[:-1] + b"\x00"  # wrong frame-end octet
    reader, confirms, passed, _ = _reader()
    reader.feed(ack + broken + ack)
    reader.feed(ack)
    assert confirms == [(1, False, False)]
    assert b"".join(passed) == broken + ack + ack
