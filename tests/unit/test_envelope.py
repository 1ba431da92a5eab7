"""The exchange form's address and properties, checked before anything is sent (app/core/envelope.py)."""

import pytest

from app.core.envelope import make_envelope, trace_headers
from app.core.errors import InvalidAddress, InvalidProperty
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
