"""A message fails only itself (issue 13 point 4), against the real RabbitMQ.

``amq.rabbitmq.reply-to.x.y`` makes RabbitMQ 3.10 close the whole connection
(541 INTERNAL_ERROR). The ingresses refuse it up front (400, tests/e2e/test_flood.py
counts that under load); here it is handed to the gateway below the parser, as
a message the gateway could not have known about, to check the isolation.
"""

from __future__ import annotations

from collections import Counter

import gevent
import pytest

from app.core.envelope import make_envelope
from app.core.errors import GatewayError, RejectedByBroker, UnknownExchange
from app.core.message import PublishRequest
from tests.support.settings import broker, make_settings
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

POISON = "amq.rabbitmq.reply-to.x.y"


def _found(rabbit, queue: str, expected: int) -> Counter:
    wait_until(lambda: rabbit.count(queue) >= expected, 10, message=f"{expected} messages in {queue}")
    return Counter(rabbit.bodies(queue))


def test_a_poison_message_in_a_batch_fails_only_itself(start_gateway, rabbit):
    gw = start_gateway(make_settings({"a": broker()}))
    wait_until(lambda: gw.routes["a"].ready, 10)
    queue = rabbit.queue()
    messages = [(queue, b"m%d" % i) for i in range(200)]
    for at in (0, 57, 199):
        messages.insert(at, (POISON, b"poison"))
    outcomes = gw.publish_batch("a", messages)
    for (routing_key, body), outcome in zip(messages, outcomes, strict=True):
        if routing_key == POISON:
            assert isinstance(outcome, RejectedByBroker) and outcome.status == 422, outcome
        else:
            assert outcome is None, (body, outcome)
    found = _found(rabbit, queue, 200)
    assert set(found) == {b"m%d" % i for i in range(200)}
    # Re-sent after the broker dropped the connection unconfirmed: the at-least-once edge
    # (only messages sent before a poison in its batch can have been enqueued already).
    print(f"duplicates after isolation: {sum(found.values()) - 200}")


def test_a_poison_message_among_concurrent_publishes_fails_only_itself(start_gateway, rabbit):
    gw = start_gateway(make_settings({"a": broker()}))
    wait_until(lambda: gw.routes["a"].ready, 10)
    queue = rabbit.queue()
    outcomes: dict[bytes, object] = {}

    def send(key: str, body: bytes) -> None:
        try:
            gw.publish("a", key, body)
            outcomes[body] = None
        except GatewayError as exc:
            outcomes[body] = exc

    jobs = []
    for i in range(600):  # group commit puts concurrent publishes into shared batches
        jobs.append(gevent.spawn(send, queue, b"m%d" % i))
        if i % 100 == 50:
            jobs.append(gevent.spawn(send, POISON, b"poison%d" % i))
    gevent.joinall(jobs, timeout=60, raise_error=True)
    poisons = {body: outcome for body, outcome in outcomes.items() if body.startswith(b"poison")}
    innocents = {body: outcome for body, outcome in outcomes.items() if not body.startswith(b"poison")}
    assert len(poisons) == 6 and all(isinstance(o, RejectedByBroker) for o in poisons.values()), poisons
    assert len(innocents) == 600 and all(o is None for o in innocents.values()), \
        [o for o in innocents.values() if o is not None][:5]
    assert set(_found(rabbit, queue, 600)) == set(innocents)


def test_first_uses_go_alone_so_a_missing_exchange_or_refused_user_id_costs_no_innocent_a_duplicate(
        start_gateway, rabbit):
    # A batch of innocents (default exchange and an existing topic exchange, never yet used on
    # the connection) mixed with poison RabbitMQ closes the channel over: a missing exchange
    # (404) and a user_id that is not the connection's user (406). Each poison is answered as
    # itself, each innocent is confirmed and in its queue exactly once: the first uses went
    # alone, after the others, so no innocent was in flight when a channel closed.
    gw = start_gateway(make_settings({"a": broker()}, "NO_OF_CONNECTIOS,1\nPOOL_MAX_OVERFLOW,0"))
    pool = gw.route("a").pools[0]
    wait_until(lambda: gw.routes["a"].ready and pool.open_count == 1, 10)
    queue, topic_queue = rabbit.queue(), rabbit.queue()
    topic = f"test.topic.{topic_queue}"
    rabbit.channel.exchange_declare(topic, "topic", auto_delete=False)
    rabbit.channel.queue_bind(topic_queue, topic, "k.#")
    try:
        requests = []
        for i in range(60):
            requests.append(PublishRequest("a", queue, b"m%d" % i))
            if i % 20 == 5:
                requests.append(_envelope("test.no.such.exchange", "k", b"missing%d" % i))
                requests.append(_envelope("", queue, b"user%d" % i, user_id="someone-else"))
            if i % 10 == 3:
                requests.append(_envelope(topic, "k.x", b"t%d" % i))
        reopens = pool._idle[0].channel_reopens
        outcomes = gw.publish_all(requests)
        for request, outcome in zip(requests, outcomes, strict=True):
            if request.body.startswith(b"missing"):
                assert isinstance(outcome, UnknownExchange), (request.body, outcome)
            elif request.body.startswith(b"user"):
                assert isinstance(outcome, RejectedByBroker) and "user_id" in outcome.detail, (request.body, outcome)
            else:
                assert outcome is None, (request.body, outcome)
        innocents = Counter(rabbit.bodies(queue))
        assert innocents == Counter(b"m%d" % i for i in range(60)), \
            f"{sum(n > 1 for n in innocents.values())} innocents in the queue more than once"
        assert Counter(rabbit.bodies(topic_queue)) == Counter(b"t%d" % i for i in range(60) if i % 10 == 3)
        # One channel closed per kind of poison, however many of it: the rest of a kind were never sent.
        assert pool._idle[0].channel_reopens - reopens == 2
        # The topic exchange is known now: its messages go in the batch, not alone.
        assert gw.publish_all([_envelope(topic, "k.y", b"again"), PublishRequest("a", queue, b"plain")]) == [None] * 2
    finally:
        rabbit.channel.exchange_delete(topic)


def _envelope(exchange: str, routing_key: str, body: bytes, **properties) -> PublishRequest:
    envelope = make_envelope(exchange, routing_key, body, properties)
    return PublishRequest("a", envelope.key, body, envelope)
