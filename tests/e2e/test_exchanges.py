"""Publishing to any exchange over HTTP (issue 16): gunicorn as shipped, the real broker, a consumer checks.

``POST /publish/<id>/<exchange>/<routing key>``, the body raw, properties from
``X-AMQP-*`` headers, ``Idempotency-Key`` and W3C trace context. Topic, fanout
and headers exchanges and the default one; every property and typed header is
read back by a consumer. Bad properties are ``400`` naming the field, with
nothing published; an unknown exchange is ``404 unknown_exchange`` and costs
the connection a channel, not itself.
"""

from __future__ import annotations

import json
import struct
import uuid
from urllib.parse import quote

import pika
import pika.data
import pytest

from tests.support.server import GatewayProcess, request
from tests.support.settings import FAST, broker

pytestmark = pytest.mark.e2e

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, rabbit_available):
    gw = GatewayProcess(tmp_path_factory.mktemp("exchanges"),
                        FAST + f"\nNO_OF_CONNECTIOS,1\nPOOL_MAX_OVERFLOW,0\nRMQ_CONN_STR,a,{broker()}\n", workers=1)
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture
def exchange(rabbit):
    """exchange(kind, bindings) -> a fresh exchange of that kind, each (queue, routing key, arguments) bound."""
    made = []

    def make(kind: str, bindings: list[tuple[str, str, dict | None]]) -> str:
        name = f"test.x.{kind}.{uuid.uuid4().hex[:8]}"
        rabbit.channel.exchange_declare(name, kind, auto_delete=False)
        made.append(name)
        for queue, key, arguments in bindings:
            rabbit.channel.queue_bind(queue, name, key, arguments=arguments)
        return name

    yield make
    for name in made:
        rabbit.channel.exchange_delete(name)


@pytest.fixture
def doubles(monkeypatch):
    """pika reads an AMQP double back as an int (pika.data.decode_value, "d"): read it as the double it is."""
    original = pika.data.decode_value

    def decode_value(encoded, offset):
        if encoded[offset:offset + 1] == b"d":
            return struct.unpack_from(">d", encoded, offset + 1)[0], offset + 9
        return original(encoded, offset)

    monkeypatch.setattr(pika.data, "decode_value", decode_value)


def post(gateway, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> tuple[int, dict]:
    status, _headers, data = request(gateway.port, "POST", path, body, headers=headers)
    return status, json.loads(data)


def test_a_topic_exchange_gets_every_property_and_typed_header(gateway, rabbit, exchange, doubles):
    queue = rabbit.queue()
    topic = exchange("topic", [(queue, "order.*", None)])
    headers = {"tenant": "acme", "attempt": 3, "big": 2**40, "ratio": 2.5, "urgent": True, "none": None,
               "tags": ["a", 1, False], "nested": {"level": 2, "deeper": {"ok": "yes"}}}
    status, answer = post(gateway, f"/publish/a/{topic}/order.created", b'{"id": 7}', {
        "X-AMQP-Content-Type": "application/json", "X-AMQP-Content-Encoding": "utf-8",
        "X-AMQP-Correlation-Id": "corr-1", "X-AMQP-Reply-To": "replies", "X-AMQP-Expiration": "60000",
        "X-AMQP-Priority": "5", "X-AMQP-Type": "order.created", "X-AMQP-App-Id": "shop", "X-AMQP-User-Id": "guest",
        "X-AMQP-Timestamp": "1700000000", "X-AMQP-Delivery-Mode": "transient",
        "X-AMQP-Headers": json.dumps(headers), "Idempotency-Key": "order-7-created",
        "traceparent": TRACEPARENT, "tracestate": "vendor=1",
    })
    assert (status, answer) == (200, {"status": "ok"})
    [(body, props)] = rabbit.drain(queue)
    assert body == b'{"id": 7}'
    assert (props.content_type, props.content_encoding, props.correlation_id, props.reply_to) == (
        "application/json", "utf-8", "corr-1", "replies")
    assert (props.expiration, props.priority, props.type, props.app_id, props.user_id) == (
        "60000", 5, "order.created", "shop", "guest")
    assert (props.timestamp, props.delivery_mode, props.message_id) == (1700000000, 1, "order-7-created")
    got = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in props.headers.items()}
    assert got == {**headers, "traceparent": TRACEPARENT, "tracestate": "vendor=1"}


def test_fanout_headers_and_default_exchanges(gateway, rabbit, exchange):
    one, two, matched = rabbit.queue(), rabbit.queue(), rabbit.queue()
    fanout = exchange("fanout", [(one, "", None), (two, "", None)])
    by_headers = exchange("headers", [(matched, "", {"x-match": "all", "kind": "invoice"})])
    assert post(gateway, f"/publish/a/{fanout}/", b"to both")[0] == 200  # an empty routing key
    assert post(gateway, f"/publish/a/{by_headers}/", b"invoice",
                {"X-AMQP-Headers": '{"kind": "invoice"}'})[0] == 200
    status, answer = post(gateway, f"/publish/a/{by_headers}/", b"receipt", {"X-AMQP-Headers": '{"kind": "receipt"}'})
    assert (status, answer["error"]) == (422, "unroutable")  # mandatory by default
    assert post(gateway, f"/publish/a/{by_headers}/", b"dropped", {"X-AMQP-Headers": '{"kind": "receipt"}',
                                                                   "X-AMQP-Mandatory": "false"})[0] == 200
    assert post(gateway, f"/publish/a/amq.default/{one}", b"direct to the queue")[0] == 200
    assert rabbit.bodies(one) == [b"to both", b"direct to the queue"]
    assert rabbit.bodies(two) == [b"to both"]
    [(body, props)] = rabbit.drain(matched)
    assert body == b"invoice" and props.delivery_mode == 2 and props.message_id  # the gateway's defaults


def test_encoded_slashes_stay_in_the_routing_key(gateway, rabbit, exchange):
    queue = rabbit.queue()
    direct = exchange("direct", [(queue, "a/b c", None)])
    assert post(gateway, f"/publish/a/{quote(direct, safe='')}/{quote('a/b c', safe='')}", b"slash")[0] == 200
    assert rabbit.bodies(queue) == [b"slash"]


@pytest.mark.parametrize("headers, named", [
    ({"X-AMQP-Priority": "256"}, "priority"),
    ({"X-AMQP-Priority": "high"}, "priority"),
    ({"X-AMQP-Expiration": "-1"}, "expiration"),
    ({"X-AMQP-Expiration": "soon"}, "expiration"),
    ({"X-AMQP-Delivery-Mode": "3"}, "delivery_mode"),
    ({"X-AMQP-Timestamp": "yesterday"}, "timestamp"),
    ({"X-AMQP-Headers": "[1, 2]"}, "headers"),
    ({"X-AMQP-Headers": "{not json"}, "headers"),
    ({"X-AMQP-Headers": '{"x": NaN}'}, "headers"),
    ({"X-AMQP-Headers": json.dumps({"x": 2**64})}, "64 bits"),
    ({"X-AMQP-Correlation-Id": "c" * 256}, "correlation_id"),
    ({"X-AMQP-Mandatory": "maybe"}, "mandatory"),
    ({"Idempotency-Key": "one", "X-AMQP-Message-Id": "two"}, "Idempotency-Key"),
])
def test_a_bad_property_is_400_naming_it_and_nothing_is_published(gateway, rabbit, headers, named):
    queue = rabbit.queue()
    status, answer = post(gateway, f"/publish/a/amq.default/{queue}", b"never", headers)
    assert status == 400 and answer["error"] == "invalid_property" and named in answer["detail"], answer
    assert rabbit.count(queue) == 0


def test_bad_addresses(gateway, rabbit):
    status, answer = post(gateway, f"/publish/a/amq.default/{'q' * 256}", b"x")
    assert (status, answer["error"]) == (400, "invalid_address")
    status, answer = post(gateway, "/publish/no-such-id/amq.default/q", b"x")
    assert (status, answer["error"]) == (404, "unknown_connection_id")
    status, answer = post(gateway, "/publish/bad%20id!/amq.default/q", b"x")
    assert (status, answer["error"]) == (400, "invalid_connection_id")
    status, answer = post(gateway, "/publish/a/%FF%FE/q", b"x")  # not UTF-8 once decoded
    assert (status, answer["error"]) == (400, "invalid_address")
    status, _headers, _data = request(gateway.port, "GET", "/publish/a/amq.default/q")
    assert status == 405


def test_an_unknown_exchange_is_404_and_costs_a_channel_not_the_connection(gateway, rabbit):
    queue = rabbit.queue()
    status, answer = post(gateway, "/publish/a/test.no.such.exchange/key", b"lost")
    assert (status, answer["error"]) == (404, "unknown_exchange") and "no exchange" in answer["detail"], answer
    assert post(gateway, f"/publish/a/amq.default/{queue}", b"after")[0] == 200
    assert rabbit.bodies(queue) == [b"after"]
    _status, _headers, metrics = request(gateway.port, "GET", "/metrics")
    lines = [line for line in metrics.decode().splitlines() if line.startswith("gateway_connection_events_total")]
    assert any('event="channel_reopened"' in line and not line.endswith(" 0.0") for line in lines), lines
    assert not any('event="lost"' in line and not line.endswith(" 0.0") for line in lines), lines


def test_the_seed_form_is_unchanged(gateway, rabbit):
    queue = rabbit.queue()
    status, _headers, _data = request(gateway.port, "POST", "/publish", f"a|{queue}|pipes|stay".encode())
    assert status == 200 and rabbit.bodies(queue) == [b"pipes|stay"]


def test_a_property_the_broker_refuses_fails_only_that_message(gateway, rabbit):
    queue = rabbit.queue()
    status, answer = post(gateway, f"/publish/a/amq.default/{queue}", b"not me", {"X-AMQP-User-Id": "somebody"})
    assert (status, answer["error"]) == (422, "rejected_by_broker") and "user_id" in answer["detail"], answer
    assert post(gateway, f"/publish/a/amq.default/{queue}", b"me", {"X-AMQP-User-Id": "guest"})[0] == 200
    assert rabbit.bodies(queue) == [b"me"]
