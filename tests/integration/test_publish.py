"""Publishing through the gateway into the real broker: confirms, returns, bytes."""

import gevent
import pytest
from prometheus_client import REGISTRY

from app.core.errors import BrokerUnavailable, UnknownConnection, Unroutable
from tests.support.settings import broker, make_settings
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def gw(start_gateway, rabbit_available):
    gateway = start_gateway(make_settings({"a": broker()}))
    wait_until(lambda: gateway.ready, 5)
    return gateway


def test_bodies_arrive_byte_exact(gw, rabbit):
    queue = rabbit.queue()
    bodies = [b"", b"plain", b"pipes|in|it", b"new\nlines\r\n", bytes(range(256)), b"\x00" * 1000,
              "h\u00e9llo \u2603".encode(), b"x" * 500_000]
    for body in bodies:
        gw.publish("a", queue, body)
    received = rabbit.drain(queue)
    assert [body for body, _ in received] == bodies
    ids = {props.message_id for _, props in received}
    assert len(ids) == len(bodies) and all(ids)
    assert all(props.delivery_mode == 2 for _, props in received)


def test_the_hot_path_owns_its_connections_confirms_and_writes(gw):
    # app/amqp/pika_seam.py leans on internals of the pinned pika (and checks them
    # at import): on a live connection, the fast path must be the one in use.
    pool = gw.route("a").pools[0]
    conn = pool.acquire(2)
    try:
        assert conn._conn.writes_direct
        assert conn._conn.reads_first
        assert conn.publish_batch([("test.no.such.queue.ever", b"x")], 5)[0].code == "unroutable"
    finally:
        pool.release(conn)


def test_unroutable_is_422_and_not_in_any_queue(gw, rabbit):
    with pytest.raises(Unroutable) as info:
        gw.publish("a", "test.no.such.queue.ever", b"lost?")
    assert info.value.status == 422
    queue = rabbit.queue()
    gw.publish("a", queue, b"next one fine")  # the connection stays usable
    assert rabbit.bodies(queue) == [b"next one fine"]


def test_unknown_id_is_404(gw):
    with pytest.raises(UnknownConnection) as info:
        gw.publish("nope", "q", b"")
    assert info.value.status == 404


def test_many_concurrent_publishes_are_all_confirmed(gw, rabbit):
    queue = rabbit.queue()
    jobs = [gevent.spawn(gw.publish, "a", queue, b"%d" % i) for i in range(500)]
    gevent.joinall(jobs, timeout=30, raise_error=True)
    assert all(job.successful() for job in jobs)
    assert sorted(int(b) for b in rabbit.bodies(queue)) == list(range(500))


def test_batch_is_pipelined_and_mixed_outcomes_map_back(gw, rabbit):
    queue = rabbit.queue()
    messages = [(queue, b"%d" % i) for i in range(1000)]
    messages[500] = ("test.no.such.queue.ever", b"unroutable")
    outcomes = gw.publish_batch("a", messages)
    assert isinstance(outcomes[500], Unroutable)
    assert [o for i, o in enumerate(outcomes) if i != 500] == [None] * 999
    assert rabbit.count(queue) == 999


def test_no_broker_answers_503_quickly(start_gateway):
    gw = start_gateway(make_settings({"dead": broker(1) + "," + broker(2)}))
    wait_until(lambda: all(p.health.is_down for p in gw.route("dead").pools), 5)
    with pytest.raises(BrokerUnavailable) as info:
        gw.publish("dead", "q", b"x")
    assert info.value.status == 503


def test_message_ids_differ_between_workers_forked_after_import():
    # The gunicorn master imports app.amqp.connection before it forks the workers.
    import os

    from app.amqp.connection import process_tag

    parent = process_tag()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write_end, process_tag().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read_end, 64).decode() not in ("", parent)


def test_a_channel_the_broker_closes_is_reopened_on_the_same_connection(start_gateway, rabbit):
    """A publish the broker closes the channel over (404 no such exchange) costs a channel, not the connection.

    The bad publish goes onto the pooled connection's channel first, the batch
    right behind it: the broker drops the batch with the channel, so each of its
    messages is answered "connection lost, refused 404" (cannot know; the
    gateway isolates such messages, tests/integration/test_poison.py). The
    connection opens a new channel at once and the next batch is confirmed on it.
    """
    gw = start_gateway(make_settings({"a": broker()}, "NO_OF_CONNECTIOS,1\nPOOL_MAX_OVERFLOW,0"))
    pool = gw.route("a").pools[0]
    wait_until(lambda: pool.open_count == 1, 5)
    queue = rabbit.queue()
    conn = pool.acquire(2)
    try:
        pika_conn, old_channel = conn._conn, conn._channel
        old_channel.basic_publish("test.no.such.exchange", queue, b"poison")
        lost = conn.publish_batch([(queue, b"dropped %d" % i) for i in range(10)], 5)
        assert {(o.code, o.refused_code) for o in lost} == {("connection_lost", 404)}, lost
        assert conn.usable and conn.channel_reopens == 1  # publish_batch waited for the new channel
        assert conn._conn is pika_conn and conn._channel is not old_channel
        assert conn.publish_batch([(queue, b"kept %d" % i) for i in range(10)], 5) == [None] * 10
    finally:
        pool.release(conn)
    gw.publish("a", queue, b"through the pool")
    assert pool.open_count == 1
    assert sorted(rabbit.bodies(queue)) == sorted([b"kept %d" % i for i in range(10)] + [b"through the pool"])


def test_a_channel_closed_while_idle_is_reopened_before_it_is_lent(start_gateway, rabbit):
    gw = start_gateway(make_settings({"a": broker()}, "NO_OF_CONNECTIOS,1\nPOOL_MAX_OVERFLOW,0"))
    pool = gw.route("a").pools[0]
    wait_until(lambda: pool.open_count == 1, 5)
    idle = pool._idle[0]
    reopened = {"endpoint": pool._labels[0], "event": "channel_reopened"}
    before = REGISTRY.get_sample_value("gateway_connection_events_total", reopened) or 0
    idle._channel.basic_publish("test.no.such.exchange", "q", b"poison")
    queue = rabbit.queue()
    gw.publish("a", queue, b"after")  # lent once its new channel confirms, or waited for
    assert list(pool._idle) == [idle] and idle.channel_reopens == 1
    assert rabbit.bodies(queue) == [b"after"]
    assert REGISTRY.get_sample_value("gateway_connection_events_total", reopened) == before + 1
