"""Nacks: a connection that only nacks is retired, a full queue's nacks are its own.

* A channel broken on its own (seen on a cluster after a quorum queue's
  leader was killed): here one pooled connection turns every confirm into a
  nack at its own seam. After NACK_RETIRE_AFTER nacks in a row it is retired
  and the message retried once on another connection, which confirms it.
* A queue that is full (``x-max-length`` with ``reject-publish``, the real
  broker nacks): after at most a few retirements its nacks are known to be
  the queue's, and no more connections are retired for them.
"""

from __future__ import annotations

import logging

import pytest

from app.amqp.connection import BrokerConnection
from app.core.errors import PublishNacked
from tests.support.settings import broker, make_settings
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def events():
    """The ``event`` of every app log record, in order."""
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(getattr(record, "event", "log"))

    handler, logger = Keep(logging.DEBUG), logging.getLogger("app")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    yield seen
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_a_connection_that_only_nacks_is_retired_and_its_message_retried(start_gateway, rabbit, events):
    queue = rabbit.queue()
    gw = start_gateway(make_settings({"a": broker()}, "NO_OF_CONNECTIOS,1\nPOOL_MAX_OVERFLOW,0\nNACK_RETIRE_AFTER,3"))
    pool = gw.route("a").pools[0]
    wait_until(lambda: pool.open_count == 1, 5)
    broken = pool._idle[0]
    broken._settle = lambda entry, _nacked: BrokerConnection._settle(broken, entry, True)  # every confirm a nack
    answers = []
    for i in range(8):
        try:
            gw.publish("a", queue, b"m%d" % i)
            answers.append("ok")
        except PublishNacked:
            answers.append("nacked")
    # Two nacks are the messages' (as far as anyone can tell); the third retires
    # the connection and its message is confirmed on a fresh one; then all is well.
    assert answers == ["nacked", "nacked"] + ["ok"] * 6, answers
    assert broken.retired and events.count("connection_nack_retired") == 1
    assert pool._idle and broken not in pool._idle
    assert {b"m%d" % i for i in range(2, 8)} <= set(rabbit.bodies(queue))  # (the "nacked" ones were really acked)
    assert 1 <= events.count("nacked") <= 2  # logged, rate-limited


def test_a_full_queue_nacks_without_churning_connections(start_gateway, rabbit, events):
    full = rabbit.queue("full")
    rabbit.channel.queue_delete(full)
    rabbit.channel.queue_declare(full, durable=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    rabbit.channel.basic_publish("", full, b"filler")
    ok = rabbit.queue("ok")
    gw = start_gateway(make_settings({"a": broker()}, "NO_OF_CONNECTIOS,2\nPOOL_MAX_OVERFLOW,0\nNACK_RETIRE_AFTER,3"))
    pool = gw.route("a").pools[0]
    wait_until(lambda: pool.open_count == 2, 5)
    for round_ in range(2):
        for _ in range(30):
            with pytest.raises(PublishNacked):
                gw.publish("a", full, b"x")
        retired = events.count("connection_nack_retired")
        # At most each pooled connection once, plus the fresh one that proves it is the queue.
        assert retired <= 3, (round_, retired)
        if round_ == 0:
            first = retired
    assert events.count("connection_nack_retired") == first, "still retiring connections for a full queue"
    assert events.count("nacks_are_the_queues") == 1
    assert events.count("nacked") <= 2
    gw.publish("a", ok, b"fine")  # the rest of the id is untouched
    assert rabbit.bodies(ok) == [b"fine"]


def test_a_nacked_message_whose_retry_finds_no_broker_keeps_its_nack(start_gateway, rabbit, proxy):
    """Sent and nacked, then no broker for the retry: the answer stays "nacked", never "not sent".

    RabbitMQ can nack a message that a dying quorum replica still commits (seen
    once in a whole-cluster kill): the first attempt may be in the queue, so the
    retry's "no broker" must not become the message's answer.
    """
    queue = rabbit.queue()
    gw = start_gateway(make_settings({"a": broker(proxy.port)},
                                     "NO_OF_CONNECTIOS,1\nPOOL_MAX_OVERFLOW,0\nNACK_RETIRE_AFTER,1"))
    pool = gw.route("a").pools[0]
    wait_until(lambda: pool.open_count == 1, 5)
    broken = pool._idle[0]

    def nack_and_cut(entry, _nacked):
        BrokerConnection._settle(broken, entry, True)  # the broker took it; the answer says nack
        proxy.refuse()  # and no broker for the retry

    broken._settle = nack_and_cut
    with pytest.raises(PublishNacked):
        gw.publish("a", queue, b"sent once")
    assert broken.retired
    assert rabbit.bodies(queue) == [b"sent once"]  # why "nacked" is the honest answer here
