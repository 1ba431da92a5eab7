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

from app.core.errors import GatewayError, RejectedByBroker
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
