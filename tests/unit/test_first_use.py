"""A connection's first uses (app/amqp/connection.py), without a broker: the rounds a batch is sent in.

The connection's one pipelined send is replaced by a recorder, so these check
the order and grouping only; that RabbitMQ really closes the channel over
the first use and nothing else is tests/integration/test_poison.py.
"""

from __future__ import annotations

import pytest

from app.amqp import connection
from app.amqp.connection import BrokerConnection
from app.config import parse_broker
from app.core.envelope import make_envelope
from app.core.errors import ConnectionLost
from tests.support.settings import broker, make_settings


class Recorder:
    """Stands in for BrokerConnection._send: records each round, answers each message from ``answers``."""

    def __init__(self, answers: dict[bytes, object] | None = None):
        self.rounds: list[list[bytes]] = []
        self.answers = answers or {}

    def __call__(self, messages, timeout, mandatory, persistent):
        bodies = [m.body if hasattr(m, "body") else m[1] for m in messages]
        self.rounds.append(bodies)
        return [self.answers.get(body) for body in bodies]


def _conn(recorder: Recorder) -> BrokerConnection:
    conn = BrokerConnection(parse_broker(broker()), make_settings({"a": broker()}), "test")
    conn._send = recorder  # type: ignore[method-assign]
    return conn


def env(exchange: str, body: bytes, **properties):
    return make_envelope(exchange, "k", body, properties)


def test_first_uses_go_after_the_rest_alone_then_the_rest_of_their_kind_together():
    recorder = Recorder()
    conn = _conn(recorder)
    batch = [("q", b"plain1"), env("x", b"x1"), ("q", b"plain2"), env("x", b"x2"), env("", b"bob", user_id="bob"),
             env("", b"own user", user_id="guest"), env("amq.default", b"default"), env("x", b"x3")]
    assert conn.publish_batch(batch, 5) == [None] * len(batch)
    assert recorder.rounds == [[b"plain1", b"plain2", b"own user", b"default"], [b"x1"], [b"x2", b"x3"], [b"bob"]]
    recorder.rounds.clear()
    assert conn.publish_batch([env("x", b"again"), env("", b"bob again", user_id="bob"), ("q", b"p")], 5) == [None] * 3
    assert recorder.rounds == [[b"again", b"bob again", b"p"]]  # known kinds: one round


@pytest.mark.parametrize("code, text", [(404, "NOT_FOUND - no exchange 'x' in vhost '/'"),
                                        (403, "ACCESS_REFUSED - access to exchange 'x' refused")])
def test_a_refused_first_use_answers_the_rest_of_its_kind_without_sending_them(code, text):
    refused = ConnectionLost("channel closed", code, text)
    recorder = Recorder({b"x1": refused})
    conn = _conn(recorder)
    outcomes = conn.publish_batch([env("x", b"x1"), ("q", b"plain"), env("x", b"x2"), env("x", b"x3")], 5)
    assert recorder.rounds == [[b"plain"], [b"x1"]]
    assert outcomes[1] is None
    for outcome in (outcomes[0], outcomes[2], outcomes[3]):
        assert isinstance(outcome, ConnectionLost) and outcome.culprit and outcome.refused_code == code
    assert conn._first_use(env("x", b"later")) == ("x", None)  # not remembered: tried again next time


def test_any_other_refusal_sends_the_rest_of_its_kind_alone_in_turn():
    refused = ConnectionLost("channel closed", 406, "PRECONDITION_FAILED - something of that message")
    recorder = Recorder({b"x1": refused})
    outcomes = _conn(recorder).publish_batch([env("x", b"x1"), env("x", b"x2"), env("x", b"x3")], 5)
    # x2 went alone as the next first use of its kind; once it was through, x3 followed.
    assert recorder.rounds == [[b"x1"], [b"x2"], [b"x3"]]
    assert outcomes[0].culprit and outcomes[1:] == [None, None]


def test_the_least_recently_used_kind_is_forgotten_first(monkeypatch):
    monkeypatch.setattr(connection, "TRIED_KINDS_MAX", 2)
    recorder = Recorder()
    conn = _conn(recorder)
    conn.publish_batch([env("a", b"a")], 5)
    conn.publish_batch([env("b", b"b")], 5)
    conn.publish_batch([env("a", b"a again")], 5)  # a used again: b is now the oldest
    conn.publish_batch([env("c", b"c")], 5)
    assert conn._first_use(env("a", b"")) is None and conn._first_use(env("c", b"")) is None
    assert conn._first_use(env("b", b"")) == ("b", None)
