"""The at-least-once recipe of the README, run for real: producer retries with its key, consumer deduplicates.

Producers publish keyed messages (``Idempotency-Key``, the message's
``message_id``) through a TCP proxy in front of the broker; the proxy resets
every connection several times mid-burst. A producer retries each "cannot
know" or "not now" answer (every 503) with the same key until it is
confirmed. Then the consumer's side: the queue holds every key, some more
than once (a message sent, the connection lost before its confirm, sent again
by the gateway or by its producer), and after dropping repeated ids each key
is there exactly once.
"""

from __future__ import annotations

from collections import Counter

import gevent
import pytest

from app.core.envelope import make_envelope
from app.core.errors import Unavailable
from tests.support.settings import broker, make_settings
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

PRODUCERS = 8
EACH = 150


def test_retry_with_the_same_key_then_dedup_gives_each_message_exactly_once(start_gateway, rabbit, proxy):
    queue = rabbit.queue()
    gw = start_gateway(make_settings({"a": broker(proxy.port)}))
    wait_until(lambda: gw.route("a").ready, 10)
    attempts: Counter[str] = Counter()
    confirmed: set[str] = set()

    def produce(producer: int) -> None:
        for n in range(EACH):
            key = f"p{producer}-m{n}"
            while True:
                attempts[key] += 1
                assert attempts[key] < 200, f"{key} never confirmed"
                try:
                    gw.publish_to("a", make_envelope("", queue, key.encode(), {"message_id": key}))
                except Unavailable:  # cannot know, or not now: the same key again
                    gevent.sleep(0.05)
                    continue
                confirmed.add(key)
                break

    producers = [gevent.spawn(produce, p) for p in range(PRODUCERS)]
    total = PRODUCERS * EACH
    for share in (0.15, 0.35, 0.55, 0.75):  # cut while the burst runs, wherever it is
        wait_until(lambda share=share: len(confirmed) >= share * total, 60)
        proxy.cut()  # every connection reset under whatever is in flight
    gevent.joinall(producers, raise_error=True, timeout=120)
    keys = {f"p{p}-m{n}" for p in range(PRODUCERS) for n in range(EACH)}
    assert confirmed == keys
    delivered = rabbit.drain(queue)
    ids = Counter(props.message_id for _body, props in delivered)
    assert all(body.decode() == props.message_id for body, props in delivered)
    assert set(ids) == keys  # at least once: every key is in the queue
    deduplicated = list(dict.fromkeys(props.message_id for _body, props in delivered))
    assert sorted(deduplicated) == sorted(keys)  # after the consumer drops repeats: each exactly once
    retried = sum(1 for n in attempts.values() if n > 1)
    copies = sum(ids.values()) - len(keys)
    print(f"\n{len(keys)} keys, {retried} retried by their producer, {copies} copies dropped by the consumer")
    # The cuts must have hit messages in flight: retried by the producer after a
    # 503, or by the gateway itself (a copy in the queue), or both.
    assert retried + copies > 0, "the cuts hit nothing in flight: the recipe was not exercised"
