"""The management-API-compatible publish (issue 16, point 7): the management API's own request bodies.

``POST /api/exchanges/{vhost}/{exchange}/publish`` under gunicorn as shipped,
against the real broker; a consumer reads each message back. The expected
answers beside each body are what RabbitMQ 3.10's management API answered to
the same request (probed on this machine), where the gateway answers alike;
where it differs (its own statuses for what the management API calls a
``400``, a priority over 255), the difference is the README's table.
"""

from __future__ import annotations

import base64
import json
import uuid

import pytest

from tests.support.server import GatewayProcess, request
from tests.support.settings import FAST, broker

pytestmark = pytest.mark.e2e

TOKEN = "script-token-0123456789abcdef"
NARROW = "narrow-token-0123456789abcdef"
BASIC = "Basic " + base64.b64encode(f"script:{TOKEN}".encode()).decode()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, rabbit_available):
    cfg = (FAST + f"NO_OF_CONNECTIOS,1\nPOOL_MAX_OVERFLOW,0\nRMQ_CONN_STR,a,{broker()}\nRMQ_CONN_STR,b,{broker()}\n"
           "MANAGEMENT_VHOSTS,/=a orders=b\n")
    gw = GatewayProcess(tmp_path_factory.mktemp("mgmt"), cfg, workers=1,
                        env={"GATEWAY_AUTH_TOKENS": f"script {TOKEN} *; narrow {NARROW} a only.this"})
    gw.start()
    yield gw
    gw.stop()


def publish(gateway, vhost: str, exchange: str, body: dict | bytes, auth: str | None = BASIC) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": auth} if auth else {})}
    status, _headers, answer = request(gateway.port, "POST", f"/api/exchanges/{vhost}/{exchange}/publish", data,
                                       headers=headers)
    return status, json.loads(answer)


def test_the_management_apis_request_bodies_are_published_and_answered_alike(gateway, rabbit):
    queue = rabbit.queue()
    # The management API's documented example, then one with every property and typed headers.
    assert publish(gateway, "%2F", "amq.default", {
        "properties": {}, "routing_key": queue, "payload": "my body", "payload_encoding": "string",
    }) == (200, {"routed": True})
    headers = {"tenant": "acme", "attempt": 2, "urgent": True, "tags": ["a", 1], "nested": {"level": 1}}
    assert publish(gateway, "%2F", "amq.default", {
        "properties": {"delivery_mode": 2, "headers": headers, "content_type": "text/plain",
                       "correlation_id": "c1", "message_id": "m1", "timestamp": 1700000000, "expiration": "60000",
                       "priority": 3, "type": "t", "app_id": "a", "reply_to": "r", "user_id": "guest",
                       "content_encoding": "utf-8", "not_a_property": 1},  # ignored, as there
        "routing_key": queue, "payload": "full", "payload_encoding": "string",
        "extra": "fields are ignored, as there",
    }) == (200, {"routed": True})
    binary = bytes(range(256))
    assert publish(gateway, "%2F", "amq.default", {
        "properties": {"delivery_mode": 2}, "routing_key": queue,
        "payload": base64.b64encode(binary).decode(), "payload_encoding": "base64",
    }) == (200, {"routed": True})
    [(first, plain), (second, full), (third, persistent)] = rabbit.drain(queue)
    assert (first, plain.delivery_mode) == (b"my body", 1)  # no delivery_mode: transient, as there
    assert plain.message_id  # the gateway's own id, as on every route
    assert second == b"full" and third == binary and persistent.delivery_mode == 2
    assert (full.delivery_mode, full.content_type, full.correlation_id, full.message_id, full.timestamp) == (
        2, "text/plain", "c1", "m1", 1700000000)
    assert (full.expiration, full.priority, full.type, full.app_id, full.reply_to, full.user_id,
            full.content_encoding) == ("60000", 3, "t", "a", "r", "guest", "utf-8")
    assert {k: (v.decode() if isinstance(v, bytes) else v) for k, v in full.headers.items()} == headers


def test_unroutable_is_routed_false_and_any_exchange_and_vhost_serve(gateway, rabbit):
    queue = rabbit.queue()
    name = f"test.x.mgmt.{uuid.uuid4().hex[:8]}"
    rabbit.channel.exchange_declare(name, "topic")
    try:
        rabbit.channel.queue_bind(queue, name, "order.*")
        body = {"properties": {}, "routing_key": "order.paid", "payload": "to the topic", "payload_encoding": "string"}
        assert publish(gateway, "%2F", name, body) == (200, {"routed": True})
        assert publish(gateway, "orders", name, body) == (200, {"routed": True})  # vhost "orders" -> id b
        assert publish(gateway, "%2F", name, {**body, "routing_key": "invoice.x"}) == (200, {"routed": False})
        assert publish(gateway, "%2F", "amq.default", {**body, "routing_key": "test.no.such.queue"}) == (
            200, {"routed": False})
        assert rabbit.bodies(queue) == [b"to the topic", b"to the topic"]
    finally:
        rabbit.channel.exchange_delete(name)


GOOD = {"properties": {}, "routing_key": "q", "payload": "x", "payload_encoding": "string"}


@pytest.mark.parametrize("body, status, error, says", [
    # The management API: 400 bad_request "[{key_missing,payload_encoding}]" and so on.
    ({k: v for k, v in GOOD.items() if k != "payload_encoding"}, 400, "malformed_body", "payload_encoding"),
    ({k: v for k, v in GOOD.items() if k != "properties"}, 400, "malformed_body", "properties"),
    ({k: v for k, v in GOOD.items() if k != "routing_key"}, 400, "malformed_body", "routing_key"),
    ({k: v for k, v in GOOD.items() if k != "payload"}, 400, "malformed_body", "payload"),
    (b"not json", 400, "malformed_body", "JSON"),  # there: "not_json"
    (b"[1, 2]", 400, "malformed_body", "object"),  # there: "not_json"
    (b"{" * 100_000, 400, "malformed_body", "JSON"),  # never a RecursionError
    ({**GOOD, "payload": "!!!", "payload_encoding": "base64"}, 400, "malformed_body", "base64"),  # "not_base64"
    ({**GOOD, "payload_encoding": "hex"}, 400, "malformed_body", "payload_encoding"),  # "unsupported_encoding"
    ({**GOOD, "payload": 5}, 400, "malformed_body", "payload"),  # "payload_not_string"
    ({**GOOD, "properties": {"priority": "x"}}, 400, "invalid_property", "priority"),  # ["not_int","priority"]
    ({**GOOD, "properties": {"delivery_mode": 3}}, 400, "invalid_property", "delivery_mode"),
    ({**GOOD, "properties": {"priority": 300}}, 400, "invalid_property", "priority"),  # there: routed (truncated)
    ({**GOOD, "properties": []}, 400, "invalid_property", "properties"),  # there: a 500
    ({**GOOD, "routing_key": 5}, 400, "invalid_address", "routing_key"),  # there: routed false
])
def test_bad_bodies_are_answered_with_a_reason_and_nothing_is_published(gateway, rabbit, body, status, error, says):
    queue = rabbit.queue()
    if isinstance(body, dict) and "routing_key" in body and body["routing_key"] == "q":
        body = {**body, "routing_key": queue}
    got_status, answer = publish(gateway, "%2F", "amq.default", body)
    assert (got_status, answer["error"]) == (status, error), answer
    assert says in answer["reason"] and answer["reason"] == answer["detail"]
    assert rabbit.count(queue) == 0


def test_a_payload_over_the_limit_is_413_whichever_way_it_is_encoded(gateway, rabbit):
    queue = rabbit.queue()
    over = b"x" * (1024 * 1024 + 1)  # MAX_BODY_SIZE + 1
    for payload, encoding in ((over.decode(), "string"), (base64.b64encode(over).decode(), "base64")):
        status, answer = publish(gateway, "%2F", "amq.default", {**GOOD, "routing_key": queue, "payload": payload,
                                                                  "payload_encoding": encoding})
        assert (status, answer["error"]) == (413, "body_too_large"), answer
    assert rabbit.count(queue) == 0


def test_what_only_the_broker_knows(gateway, rabbit):
    queue = rabbit.queue()
    status, answer = publish(gateway, "%2F", "test.no.such.exchange", GOOD)
    assert (status, answer["error"]) == (404, "unknown_exchange") and "no exchange" in answer["reason"]  # there: 400
    status, answer = publish(gateway, "%2F", "amq.default", {**GOOD, "routing_key": queue,
                                                              "properties": {"user_id": "other"}})
    assert (status, answer["error"]) == (422, "rejected_by_broker") and "user_id" in answer["reason"]  # there: 400
    assert rabbit.count(queue) == 0


def test_credentials_vhosts_and_methods(gateway, rabbit):
    queue = rabbit.queue()
    body = {**GOOD, "routing_key": queue}
    assert publish(gateway, "%2F", "amq.default", body, auth=None)[0] == 401
    assert publish(gateway, "%2F", "amq.default", body, auth="Basic " + base64.b64encode(b"guest:guest").decode()
                   )[0] == 401  # the broker's own credentials are not a gateway token
    assert publish(gateway, "%2F", "amq.default", body, auth="Basic !!!")[0] == 401
    assert publish(gateway, "%2F", "amq.default", body, auth=f"Bearer {TOKEN}") == (200, {"routed": True})
    narrow = "Basic " + base64.b64encode(f"anyone:{NARROW}".encode()).decode()
    assert publish(gateway, "%2F", "amq.default", body, auth=narrow)[1]["error"] == "forbidden"  # queue pattern
    assert publish(gateway, "orders", "amq.default", body, auth=narrow)[1]["error"] == "forbidden"  # id b
    status, answer = publish(gateway, "nosuchvhost", "amq.default", body)
    assert (status, answer["error"]) == (404, "unknown_vhost")  # there: 401 not_authorised
    status, _headers, _data = request(gateway.port, "GET", "/api/exchanges/%2F/amq.default/publish",
                                      headers={"Authorization": BASIC})
    assert status == 405
    status, _headers, _data = request(gateway.port, "POST", "/api/exchanges/%2F/publish", b"{}",
                                      headers={"Authorization": BASIC})
    assert status == 404  # not the publish path
    assert rabbit.bodies(queue) == [b"x"]
