"""Connections or channels: N AMQP connections x M confirm-mode channels, publishing together (issue 17).

    .venv/bin/python bench/channels.py [--messages 30000] [--rounds 2]

Every layout publishes the same messages (100 bytes, persistent) to the same ten
classic queues (each channel round-robin over all ten), with the same number of
unconfirmed messages in flight in all (2,000, split evenly over the channels),
all of its connections on one pika ioloop. Layouts alternate round by round and
the best round of each is kept; every round's messages are counted in the
queues. What it answers: does spreading the in-flight window over more
channels, or over more connections, buy throughput from the broker, and is a
channel as good as a connection for it? ``docs/capacity.md`` quotes the result
and the pool's defaults follow it. Prints one JSON line; ``bench/run.py`` runs it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections import deque
from pathlib import Path

import pika
import pika.channel
import pika.frame
from pika.adapters.select_connection import IOLoop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zmq_bench import AMQP, _blocking, params_for

LAYOUTS = ((1, 1), (1, 5), (5, 1), (2, 5), (10, 1), (1, 10))  # (connections, channels each)
WINDOW = 2000  # unconfirmed messages in flight, in all
QUEUES = 10
BODY = b"x" * 100


class _Publisher:
    """One confirm-mode channel publishing its share, at most ``window`` unconfirmed."""

    def __init__(self, queues: list[str], count: int, window: int, done: callable):
        self.queues, self.count, self.window, self.done = queues, count, window, done
        self.sent = self.confirmed = 0
        self.outstanding: deque[int] = deque()
        self.channel: pika.channel.Channel | None = None
        self.props = pika.BasicProperties(delivery_mode=2)

    def start(self, channel: pika.channel.Channel, ready: callable) -> None:
        self.channel = channel
        channel.confirm_delivery(self.on_confirm, callback=lambda _frame: ready())

    def publish_more(self) -> None:
        channel, queues = self.channel, self.queues
        while self.sent < self.count and len(self.outstanding) < self.window:
            channel.basic_publish("", queues[self.sent % len(queues)], BODY, self.props)
            self.sent += 1
            self.outstanding.append(self.sent)

    def on_confirm(self, frame: pika.frame.Method) -> None:
        tag, multiple = frame.method.delivery_tag, frame.method.multiple
        if isinstance(frame.method, pika.spec.Basic.Nack):
            raise RuntimeError("nacked: the round does not count")
        if multiple:
            while self.outstanding and self.outstanding[0] <= tag:
                self.outstanding.popleft()
                self.confirmed += 1
        else:
            self.outstanding.remove(tag)
            self.confirmed += 1
        if self.confirmed >= self.count:
            self.done()
        else:
            self.publish_more()


def layout_round(connections: int, channels: int, queues: list[str], messages: int, amqp: str = AMQP) -> float:
    """Confirmed messages per second of one layout, from the first publish to the last confirm."""
    ioloop = IOLoop()
    n = connections * channels
    share, window = messages // n, max(1, WINDOW // n)
    state = {"ready": 0, "finished": 0, "started": 0.0, "ended": 0.0}
    conns: list[pika.SelectConnection] = []
    publishers = []

    def finished() -> None:
        state["finished"] += 1
        if state["finished"] == n:
            state["ended"] = time.perf_counter()
            for conn in conns:
                conn.close()

    def ready() -> None:
        state["ready"] += 1
        if state["ready"] == n:  # every channel in confirm mode: go together
            state["started"] = time.perf_counter()
            for publisher in publishers:
                publisher.publish_more()

    closed = {"count": 0}

    def on_closed(_conn: object, _reason: object) -> None:
        closed["count"] += 1
        if closed["count"] == connections:
            ioloop.stop()

    def on_open(conn: pika.SelectConnection) -> None:
        for _ in range(channels):
            publisher = _Publisher(queues, share, window, finished)
            publishers.append(publisher)
            conn.channel(on_open_callback=lambda ch, p=publisher: p.start(ch, ready))

    for _ in range(connections):
        conns.append(pika.SelectConnection(params_for(amqp), on_open_callback=on_open,
                                           on_close_callback=on_closed, custom_ioloop=ioloop))
    ioloop.start()
    return share * n / (state["ended"] - state["started"])


def compare(messages: int, rounds: int, amqp: str = AMQP) -> dict[str, float]:
    """Best confirmed msg/s of each layout, keyed ``"<N> x <M>"``; every round counted in the queues."""
    admin = _blocking(amqp)
    channel = admin.channel()
    tag = uuid.uuid4().hex[:8]
    queues = [f"bench.channels.{tag}.{i}" for i in range(QUEUES)]
    for queue in queues:
        channel.queue_declare(queue, durable=True)
    best: dict[str, float] = {}
    try:
        for _ in range(rounds):
            for connections, channels in LAYOUTS:
                rate = layout_round(connections, channels, queues, messages, amqp)
                share = messages // (connections * channels) * connections * channels
                counted = sum(channel.queue_declare(q, passive=True).method.message_count for q in queues)
                if counted != share:
                    raise SystemExit(f"{connections} x {channels}: {share} confirmed, {counted} in the queues")
                for queue in queues:
                    channel.queue_purge(queue)
                key = f"{connections} x {channels}"
                best[key] = max(best.get(key, 0.0), rate)
    finally:
        for queue in queues:
            channel.queue_delete(queue)
        admin.close()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=30000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(json.dumps({"messages": args.messages, "rounds": args.rounds, "window": WINDOW, "queues": QUEUES,
                      "msg_per_s": compare(args.messages, args.rounds)}))


if __name__ == "__main__":
    main()
