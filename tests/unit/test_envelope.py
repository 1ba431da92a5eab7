"""The exchange form's address and properties, checked before anything is sent (app/core/envelope.py)."""

import pytest

from app.core.envelope import headers_from_json, make_envelope, parse_record, trace_headers
from app.core.errors import InvalidAddress, InvalidConnectionId, InvalidProperty, MalformedBody
from app.http.auth import TokenRule

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_text_and_typed_values_make_the_same_properties():
    from_text = make_envelope("ex", "rk", b"", {"priority": "5", "expiration": "100", "timestamp": "7",
                                                "delivery_mode": "transient"}, "false")
    typed = make_envelope("ex", "rk", b"", {"priority": 5, "expiration": 100, "timestamp": 7, "delivery_mode": 1},
                          False)
    assert from_text == typed
    assert from_text.properties == {"priority": 5, "expiration": "100", "timestamp": 7, "delivery_mode": 1}
    assert from_text.key == "ex/rk" and from_text.mandatory is False


def test_the_default_exchange_and_the_reserved_reply_to():
    assert make_envelope("amq.default", "q", b"x", {}).exchange == ""
    with pytest.raises(InvalidAddress, match="reply-to"):
        make_envelope("amq.default", "amq.rabbitmq.reply-to.x.y", b"", {})
    assert make_envelope("events", "amq.rabbitmq.reply-to", b"", {}).exchange == "events"  # only the default's


@pytest.mark.parametrize("props, named", [
    ({"priority": True}, "priority"), ({"priority": 1.5}, "priority"), ({"expiration": 2**32}, "expiration"),
    ({"content_type": 5}, "content_type"), ({"cluster_id": "x"}, "cluster_id"), ({"delivery_mode": [2]}, "delivery"),
    ({"headers": {"x": float("inf")}}, "finite"), ({"headers": {"x": {"y": set()}}}, "type"),
    ({"headers": {"d": [[[[[[[[[1]]]]]]]]]}}, "deeper"), ({"headers": {1: "x"}}, "header name"),
])
def test_bad_values_are_refused_by_name(props, named):
    with pytest.raises(InvalidProperty, match=named):
        make_envelope("", "q", b"", props)


def test_trace_context_is_kept_only_when_valid():
    assert trace_headers(TRACEPARENT, "a=1") == ({"traceparent": TRACEPARENT, "tracestate": "a=1"},
                                                 "4bf92f3577b34da6a3ce929d0e0e4736")
    for bad in ("", "00-abc-def-01", TRACEPARENT.replace("00-", "ff-", 1), "00-" + "0" * 32 + "-00f067aa0ba902b7-01",
                TRACEPARENT.upper()):
        assert trace_headers(bad, "a=1") == ({}, None)


def test_token_scopes_cover_exchanges_only_when_they_say_so():
    queues_only = TokenRule("q", b"", None, ("billing.*",))
    assert queues_only.may_publish_via("", "billing.in") and not queues_only.may_publish_via("", "other")
    assert not queues_only.may_publish_via("billing.x", "anything")  # a queue pattern is no exchange
    exchanges = TokenRule("x", b"", None, ("@events/order.*", "audit"))
    assert exchanges.may_publish_via("events", "order.created") and not exchanges.may_publish_via("events", "user.x")
    assert exchanges.may_publish_via("", "audit") and not exchanges.may_publish_to("@events/order.x")
    assert TokenRule("any", b"", None).may_publish_via("whatever", "key")


def test_a_record_in_the_envelope_form_keeps_its_address_properties_and_body():
    head = (b'{"connection_id": "orders", "exchange": "events", "routing_key": "order.created", '
            b'"properties": {"priority": 3, "headers": {"n": 1.5, "deep": {"ok": [true, null]}}}, "mandatory": true}')
    record = parse_record(head + b"\n" + b"line1\nline2|x|y\n")
    assert record.conn_id == "orders" and record.body == b"line1\nline2|x|y\n"
    assert record.envelope.exchange == "events" and record.envelope.routing_key == "order.created"
    assert record.envelope.properties == {"priority": 3, "headers": {"n": 1.5, "deep": {"ok": [True, None]}}}
    assert record.envelope.mandatory is True and record.queue == record.envelope.key == "events/order.created"
    assert parse_record(b'{"connection_id": "a", "exchange": "amq.default"}\n').envelope.exchange == ""


def test_the_seed_form_is_untouched_by_the_envelope_form():
    assert tuple(parse_record(b"a|q|{not json}\n")) == ("a", "q", b"{not json}\n", None)


@pytest.mark.parametrize("record, error, named", [
    (b'{"connection_id": "a", "exchange": "x"}', MalformedBody, "newline"),
    (b'{"connection_id": "a", "exchange": "x"\n', MalformedBody, "JSON"),
    (b'{"connection_id": "a", "exchange": ' + b"[" * 100_000 + b"\n", MalformedBody, "JSON"),  # no RecursionError
    (b'{"connection_id": "a", "exchange": "x", "a": NaN}\n', MalformedBody, "JSON"),
    (b'{"connection_id": "\xff", "exchange": "x"}\n', MalformedBody, "UTF-8"),
    (b'{"connection_id": "a", "exchange": "x", "queue": "q"}\n', MalformedBody, "'queue'"),
    (b'{"exchange": "x"}\n', MalformedBody, "connection_id"),
    (b'{"connection_id": "no spaces", "exchange": "x"}\n', InvalidConnectionId, "connection id"),
    (b'{"connection_id": "a"}\n', InvalidAddress, "exchange"),
    (b'{"connection_id": "a", "exchange": "x", "routing_key": 5}\n', InvalidAddress, "routing_key"),
    (b'{"connection_id": "a", "exchange": "x", "properties": []}\n', InvalidProperty, "properties"),
    (b'{"connection_id": "a", "exchange": "x", "properties": {"priority": 256}}\n', InvalidProperty, "priority"),
    (b'{"connection_id": "a", "exchange": "x", "mandatory": "yes"}\n', InvalidProperty, "mandatory"),
])
def test_a_bad_envelope_is_a_400_naming_what_is_wrong(record, error, named):
    with pytest.raises(error, match=named) as info:
        parse_record(record)
    assert info.value.status == 400


def test_deeply_nested_json_headers_are_a_400_not_a_traceback():
    with pytest.raises(InvalidProperty, match="JSON"):
        headers_from_json('{"a": ' + "[" * 5000 + "]" * 5000 + "}")
