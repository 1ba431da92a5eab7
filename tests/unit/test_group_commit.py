"""The group commit on its own, without a broker: batching, width, deadlines, failures."""

from __future__ import annotations

import time

import gevent
import gevent.lock
import pytest
from gevent.event import AsyncResult, Event

from app.core.errors import ConfirmTimeout, GatewayError, PoolTimeout, UnknownConnection
from app.core.gateway import Gateway
from app.core.group_commit import MAX_BATCH, GroupCommit, Waiting
from app.core.message import PublishRequest
from tests.support.settings import broker, make_settings


class FakeBroker:
    """Stands in for Route.publish_batch: records each batch, answers after ``delay``."""

    def __init__(self, delay: float = 0.0, fail: Exception | None = None):
        self.delay = delay
        self.fail = fail
        self.batches: list[list[bytes]] = []
        self.concurrent = 0
        self.most_concurrent = 0
        self.release = Event()
        self.release.set()

    def __call__(self, turn):
        messages = turn.take()  # as the lane takes it: once it holds a connection (here at once)
        if not messages:
            return []
        self.concurrent += 1
        self.most_concurrent = max(self.most_concurrent, self.concurrent)
        try:
            self.batches.append([waiting.body for waiting in messages])
            self.release.wait()
            gevent.sleep(self.delay)
            if self.fail is not None:
                raise self.fail
            return [None] * len(messages)
        finally:
            self.concurrent -= 1


def waiting(body: bytes, deadline: float | None = None) -> tuple[Waiting, AsyncResult]:
    result: AsyncResult = AsyncResult()
    return Waiting("q", body, deadline or time.monotonic() + 5, result.set), result


def test_messages_that_arrive_together_share_one_batch_in_order():
    broker = FakeBroker()
    commit = GroupCommit("a", broker, width=4)
    pairs = [waiting(b"%d" % i) for i in range(50)]
    for message, _ in pairs:
        commit.add(message)
    assert [result.get(timeout=5) for _, result in pairs] == [None] * 50
    assert broker.batches == [[b"%d" % i for i in range(50)]]
    assert not commit.busy


def test_a_batch_holds_at_most_max_batch_messages():
    broker = FakeBroker()
    commit = GroupCommit("a", broker, width=1)
    pairs = [waiting(b"x") for _ in range(MAX_BATCH + 10)]
    commit.add_many([message for message, _ in pairs])
    for _, result in pairs:
        assert result.get(timeout=5) is None
    assert [len(batch) for batch in broker.batches] == [MAX_BATCH, 10]


def test_no_more_flushers_than_the_width_and_the_rest_wait_their_turn():
    broker = FakeBroker(delay=0.05)
    commit = GroupCommit("a", broker, width=2)
    results = []
    for i in range(6):
        message, result = waiting(b"%d" % i)
        commit.add(message)
        results.append(result)
        gevent.sleep(0.01)  # each arrives while the others' batches are out
    assert [result.get(timeout=5) for result in results] == [None] * 6
    assert broker.most_concurrent == 2
    assert sorted(body for batch in broker.batches for body in batch) == [b"%d" % i for i in range(6)]


def test_a_batch_is_taken_only_once_its_flusher_holds_a_connection():
    # One connection, three flushers: a flusher waiting for the connection holds
    # no messages, so what arrives meanwhile rides with the first connection back,
    # in one batch, instead of each waiting behind a batch taken before it.
    connection = gevent.lock.Semaphore(1)
    batches: list[list[bytes]] = []

    def publish_batch(turn):
        with connection:
            messages = turn.take()
            if messages:
                batches.append([m.body for m in messages])
                gevent.sleep(0.05)
            return [None] * len(messages)

    commit = GroupCommit("a", publish_batch, width=3)
    results = []
    for body in (b"a", b"b", b"c"):
        message, result = waiting(body)
        commit.add(message)
        results.append(result)
        gevent.sleep(0.01)
    assert [result.get(timeout=5) for result in results] == [None] * 3
    assert batches == [[b"a"], [b"b", b"c"]]


def test_a_publisher_that_never_takes_its_batch_fails_it_rather_than_leave_it_waiting(caplog):
    commit = GroupCommit("a", lambda turn: [], width=1)
    message, result = waiting(b"x")
    commit.add(message)
    outcome = result.get(timeout=5)
    assert type(outcome) is GatewayError and outcome.status == 500
    assert not commit.busy


def test_a_message_still_waiting_at_its_deadline_is_answered_503_and_never_sent():
    broker = FakeBroker()
    broker.release.clear()  # the only flusher hangs on a stalled broker
    commit = GroupCommit("a", broker, width=1)
    first, first_result = waiting(b"first")
    commit.add(first)
    gevent.sleep(0.01)
    late, late_result = waiting(b"late", deadline=time.monotonic() + 0.05)
    commit.add(late)
    gevent.sleep(0.1)
    broker.release.set()
    assert first_result.get(timeout=5) is None
    outcome = late_result.get(timeout=5)
    assert isinstance(outcome, PoolTimeout) and outcome.status == 503
    assert broker.batches == [[b"first"]]


def test_an_unexpected_error_fails_its_batch_only_and_the_flusher_goes_on(caplog):
    broker = FakeBroker(fail=RuntimeError("a bug"))
    commit = GroupCommit("a", broker, width=1)
    message, result = waiting(b"x")
    commit.add(message)
    outcome = result.get(timeout=5)
    assert type(outcome) is GatewayError and outcome.status == 500
    assert any(getattr(r, "event", None) == "internal_error" for r in caplog.records)
    broker.fail = None
    message, result = waiting(b"y")
    commit.add(message)
    assert result.get(timeout=5) is None
    assert not commit.busy


def test_a_flusher_killed_mid_batch_answers_every_message_it_held():
    broker = FakeBroker()
    broker.release.clear()
    commit = GroupCommit("a", broker, width=1)
    pairs = [waiting(b"%d" % i) for i in range(3)]
    commit.add_many([message for message, _ in pairs])
    gevent.sleep(0.01)
    (flusher,) = commit.flushers
    flusher.kill()
    for _, result in pairs:
        assert isinstance(result.get(timeout=5), ConfirmTimeout)
    assert not commit.busy


def test_owners_waiting_together_share_each_batch_and_keep_their_order():
    broker = FakeBroker()
    broker.release.clear()  # the one flusher holds a batch while both owners queue up
    commit = GroupCommit("lane", broker, width=1)
    first, _ = waiting(b"first")
    commit.add(first)
    gevent.sleep(0.01)
    flood = [Waiting("q", b"a%d" % i, time.monotonic() + 5, lambda _o: None, owner="A") for i in range(3 * MAX_BATCH)]
    trickle = [Waiting("q", b"b%d" % i, time.monotonic() + 5, lambda _o: None, owner="B") for i in range(10)]
    commit.add_many(flood)
    commit.add_many(trickle)
    assert commit.busy_for("A") and commit.busy_for("B")
    broker.release.set()
    with gevent.Timeout(5):
        while commit.busy:
            gevent.sleep(0.01)
    second = broker.batches[1]
    # B's ten ride in the very next batch, beside A's share, not behind A's 3,000.
    assert len(second) == MAX_BATCH and [b for b in second if b.startswith(b"b")] == [b"b%d" % i for i in range(10)]
    sent_a = [b for batch in broker.batches for b in batch if b.startswith(b"a")]
    assert sent_a == [b"a%d" % i for i in range(3 * MAX_BATCH)]  # each owner's order kept
    assert not commit.busy_for("A") and not commit.busy_for("B")


def test_publish_many_answers_an_unknown_id_at_once_and_in_its_place():
    gw = Gateway(make_settings({"a": broker()}), specs=[])  # no route: every id unknown
    answers: dict[int, object] = {}
    gw.publish_many([PublishRequest("nope", "q", b"1"), PublishRequest("nope", "q", b"2")], answers.__setitem__)
    assert sorted(answers) == [0, 1]
    assert all(isinstance(outcome, UnknownConnection) for outcome in answers.values())
    assert gw.publish_all([]) == []


@pytest.mark.parametrize("count", [1, 3])
def test_publish_all_answers_each_message_in_its_place(count):
    gw = Gateway(make_settings({"a": broker()}), specs=[])  # no route: every id unknown
    outcomes = gw.publish_all([PublishRequest("nope", "q", b"%d" % i) for i in range(count)])
    assert len(outcomes) == count and all(isinstance(o, UnknownConnection) for o in outcomes)
