"""ZeroMQ publishing through the gateway against one raw pika connection, in one run.

    .venv/bin/python bench/zmq_bench.py [--messages 50000] [--rounds 3] [--mode both]

(a) *raw*: one pika ``BlockingConnection`` publishing 100-byte messages in a
    tight loop, **without** confirms, to the local broker;
(b) *gateway*: DEALER producers pipelining two-frame messages through
    ``gunicorn -c gunicorn.conf.py`` (2 workers) at an ``ipc://`` address; each
    ``OK`` is broker-confirmed.

Both publish the same bodies with the same delivery mode to the same kind of
durable queue, once with persistent messages (the gateway's default,
``PERSISTENT,true``) and once with transient ones; every gateway message is
counted in the queue. Raw and gateway rounds alternate and the best round of
each is compared (on a shared machine the best round is the least disturbed;
medians are printed too). A third figure, one pika connection publishing
*with* confirms (pipelined), shows the broker's own ceiling for confirmed
publishing. The multi-id case (``--ids``, 4) does the same with persistent
messages spread over several connection ids, each with its own queue, against
that ceiling over the same queues. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import deque
from pathlib import Path

import pika
import zmq

REPO = Path(__file__).resolve().parent.parent
AMQP = os.environ.get("BENCH_AMQP", "guest:guest@127.0.0.1:5672/")


def params_for(amqp: str = AMQP) -> pika.ConnectionParameters:
    """pika's parameters for ``user:pass@host:port/vhost``."""
    user, _, rest = amqp.partition("@")
    name, _, password = user.partition(":")
    hostport, _, vhost = rest.partition("/")
    host, _, port = hostport.partition(":")
    return pika.ConnectionParameters(host, int(port or 5672), vhost or "/", pika.PlainCredentials(name, password))


def _blocking(amqp: str = AMQP) -> pika.BlockingConnection:
    return pika.BlockingConnection(params_for(amqp))


def raw_round(queue: str, count: int, size: int, persistent: bool) -> float:
    """Messages per second of one BlockingConnection publishing without confirms."""
    conn = _blocking()
    channel = conn.channel()
    body = b"x" * size
    props = pika.BasicProperties(delivery_mode=2 if persistent else 1)
    started = time.perf_counter()
    for _ in range(count):
        channel.basic_publish("", queue, body, props)
    elapsed = time.perf_counter() - started
    conn.close()
    return count / elapsed


def raw_confirmed_round(queue: str | list[str], count: int, size: int, persistent: bool, window: int = 2000,
                        amqp: str = AMQP) -> float:
    """Messages per second of one pika connection publishing WITH confirms, pipelined.

    Not the target's baseline: the broker's own ceiling for confirmed publishing
    on one connection, to show how much of the gap is the broker's.
    """
    params = params_for(amqp)
    queues = [queue] if isinstance(queue, str) else queue  # several: one after the other, in turn
    body = b"x" * size
    props = pika.BasicProperties(delivery_mode=2 if persistent else 1)
    outstanding: deque[int] = deque()
    state = {"sent": 0, "confirmed": 0, "started": 0.0, "ended": 0.0}
    channel_box: list = []

    def publish_more() -> None:
        channel = channel_box[0]
        while state["sent"] < count and len(outstanding) < window:
            channel.basic_publish("", queues[state["sent"] % len(queues)], body, props)
            state["sent"] += 1
            outstanding.append(state["sent"])

    def on_confirm(frame: pika.frame.Method) -> None:
        tag, multiple = frame.method.delivery_tag, frame.method.multiple
        if multiple:
            while outstanding and outstanding[0] <= tag:
                outstanding.popleft()
                state["confirmed"] += 1
        elif tag in outstanding:
            outstanding.remove(tag)
            state["confirmed"] += 1
        if state["confirmed"] >= count:
            state["ended"] = time.perf_counter()
            conn.close()
        else:
            publish_more()

    def on_channel(channel: pika.channel.Channel) -> None:
        channel_box.append(channel)

        def go(_frame: object) -> None:
            state["started"] = time.perf_counter()
            publish_more()

        channel.confirm_delivery(on_confirm, callback=go)

    conn = pika.SelectConnection(params, on_open_callback=lambda c: c.channel(on_open_callback=on_channel),
                                 on_close_callback=lambda _c, _r: conn.ioloop.stop())
    conn.ioloop.start()
    return count / (state["ended"] - state["started"])


def _producer(address: str, targets: list[tuple[str, str]], count: int, size: int, window: int, start_at: float,
              results: multiprocessing.Queue) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.connect(address)
    # One body per (id, queue), sent in turn.
    bodies = [f"{conn_id}|{queue}|".encode() + b"x" * size for conn_id, queue in targets]
    ok = errors = sent = received = 0
    time.sleep(max(start_at - time.time(), 0))
    started = time.perf_counter()
    while received < count:
        while sent < count and sent - received < window:
            sock.send_multipart([b"%d" % sent, bodies[sent % len(bodies)]])
            sent += 1
        frames = sock.recv_multipart()
        while True:
            received += 1
            if frames[-1] == b"OK":
                ok += 1
            else:
                errors += 1
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
    results.put((started, time.perf_counter(), ok, errors))
    sock.close(linger=0)
    ctx.term()


def gateway_round(address: str, queue: str | list[tuple[str, str]], count: int, size: int, producers: int,
                  window: int) -> dict:
    """Messages per second through the gateway (to ``bench|queue``, or to each (id, queue) in turn), all confirmed."""
    targets = [("bench", queue)] if isinstance(queue, str) else queue
    results: multiprocessing.Queue = multiprocessing.Queue()
    share = count // producers
    start_at = time.time() + 0.5  # all connected before the clock starts
    procs = [multiprocessing.Process(target=_producer, args=(address, targets, share, size, window, start_at,
                                                             results))
             for _ in range(producers)]
    for proc in procs:
        proc.start()
    done = [results.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join()
    begin = min(d[0] for d in done)
    end = max(d[1] for d in done)
    ok = sum(d[2] for d in done)
    return {"rate": share * producers / (end - begin), "ok": ok, "errors": sum(d[3] for d in done)}


class Gateway:
    """gunicorn with the gateway, 2 workers, ZeroMQ at an ipc:// address in a temp dir."""

    def __init__(self, workers: int, in_flight: int, persistent: bool, ids: tuple[str, ...] = ("bench",)):
        self.dir = tempfile.mkdtemp(prefix="zmq-bench-")
        self.address = f"ipc://{self.dir}/feed"
        self.cfg = Path(self.dir) / "pool.cfg"
        self.cfg.write_text("".join(f"RMQ_CONN_STR,{conn_id},{AMQP}\n" for conn_id in ids) +
                            f"ZMQ_SOCK_ADDRESS,{self.address}\n"
                            f"ZMQ_MAX_IN_FLIGHT,{in_flight}\nPERSISTENT,{str(persistent).lower()}\n"
                            "LOG_LEVEL,WARNING\n")
        with __import__("socket").socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = open(Path(self.dir) / "gunicorn.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{self.port}",
             "--workers", str(workers)],
            cwd=REPO, env={**os.environ, "GATEWAY_CONFIG": str(self.cfg)}, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise SystemExit("the gateway did not become ready; log in " + str(self.log.name))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def compare(args: argparse.Namespace, channel: object, queue: str, persistent: bool) -> dict:
    """Alternate raw and gateway rounds in one delivery mode; the figures of both."""
    gateway = Gateway(args.workers, args.in_flight, persistent)
    raw: list[float] = []
    via: list[float] = []
    confirmed: list[float] = []
    try:
        gateway_round(gateway.address, queue, 10_000, args.size, args.producers, args.window)  # warm-up
        channel.queue_purge(queue)
        for number in range(1, args.rounds + 1):
            raw.append(raw_round(queue, args.messages, args.size, persistent))
            channel.queue_purge(queue)
            result = gateway_round(gateway.address, queue, args.messages, args.size, args.producers, args.window)
            in_queue = channel.queue_declare(queue, passive=True).method.message_count
            channel.queue_purge(queue)
            if result["ok"] != args.messages or in_queue != args.messages:
                raise SystemExit(f"round {number}: {result['ok']} OK, {result['errors']} ERR, "
                                 f"{in_queue} in the queue; expected {args.messages}")
            via.append(result["rate"])
            confirmed.append(raw_confirmed_round(queue, args.messages, args.size, persistent))
            channel.queue_purge(queue)
            print(f"{'persistent' if persistent else 'transient'} round {number}: raw {raw[-1]:,.0f} msg/s   "
                  f"gateway {via[-1]:,.0f} msg/s   (raw with confirms {confirmed[-1]:,.0f} msg/s)", file=sys.stderr)
    finally:
        gateway.stop()
    return {
        "raw_best": round(max(raw)), "gateway_best": round(max(via)),
        "raw_median": round(statistics.median(raw)), "gateway_median": round(statistics.median(via)),
        "ratio_best": round(max(via) / max(raw), 3),
        "ratio_median": round(statistics.median(via) / statistics.median(raw), 3),
        "raw_confirmed_best": round(max(confirmed)),
        "ratio_to_raw_confirmed": round(max(via) / max(confirmed), 3),
    }


def compare_ids(args: argparse.Namespace, channel: object, queues: list[str]) -> dict:
    """Persistent messages spread over ``len(queues)`` ids, one queue each, against the confirmed ceiling."""
    ids = tuple(f"bench{i}" for i in range(len(queues)))
    targets = list(zip(ids, queues, strict=True))
    gateway = Gateway(args.workers, args.in_flight, True, ids)
    via: list[float] = []
    confirmed: list[float] = []

    def purge() -> None:
        for queue in queues:
            channel.queue_purge(queue)  # type: ignore[attr-defined]

    try:
        gateway_round(gateway.address, targets, 10_000, args.size, args.producers, args.window)  # warm-up
        purge()
        for number in range(1, args.rounds + 1):
            result = gateway_round(gateway.address, targets, args.messages, args.size, args.producers, args.window)
            in_queues = sum(channel.queue_declare(q, passive=True).method.message_count  # type: ignore[attr-defined]
                            for q in queues)
            purge()
            if result["ok"] != args.messages or in_queues != args.messages:
                raise SystemExit(f"{len(ids)} ids, round {number}: {result['ok']} OK, {result['errors']} ERR, "
                                 f"{in_queues} in the queues; expected {args.messages}")
            via.append(result["rate"])
            confirmed.append(raw_confirmed_round(queues, args.messages, args.size, True))
            purge()
            print(f"{len(ids)} ids round {number}: gateway {via[-1]:,.0f} msg/s   (raw with confirms, the same "
                  f"{len(queues)} queues, {confirmed[-1]:,.0f} msg/s)", file=sys.stderr)
    finally:
        gateway.stop()
    return {"ids": len(ids), "gateway_best": round(max(via)), "gateway_median": round(statistics.median(via)),
            "raw_confirmed_best": round(max(confirmed)),
            "ratio_to_raw_confirmed": round(max(via) / max(confirmed), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--producers", type=int, default=2)
    parser.add_argument("--window", type=int, default=5000, help="unanswered messages per producer")
    parser.add_argument("--in-flight", type=int, default=2000, help="ZMQ_MAX_IN_FLIGHT")
    parser.add_argument("--mode", choices=("persistent", "transient", "both"), default="both")
    parser.add_argument("--ids", type=int, default=4, help="ids (a queue each) of the multi-id case; 0: none")
    args = parser.parse_args()

    admin = _blocking()
    channel = admin.channel()
    queue = f"bench.zmq.{uuid.uuid4().hex[:8]}"
    channel.queue_declare(queue, durable=True)
    modes = ("persistent", "transient") if args.mode == "both" else (args.mode,)
    figures: dict = {"messages": args.messages, "size": args.size, "workers": args.workers,
                     "producers": args.producers}
    queues = [f"{queue}.{i}" for i in range(args.ids)]
    for name in queues:
        channel.queue_declare(name, durable=True)
    try:
        for mode in modes:
            figures[mode] = compare(args, channel, queue, mode == "persistent")
        if queues:
            figures["multi_id"] = compare_ids(args, channel, queues)
    finally:
        for name in (queue, *queues):
            channel.queue_delete(name)
        admin.close()
    for mode in modes:
        f = figures[mode]
        print(f"{mode:>10}: raw pika, no confirms {f['raw_best']:>7,} msg/s | gateway, ZeroMQ + confirms "
              f"{f['gateway_best']:>7,} msg/s | {f['ratio_best']:.2f}x (medians {f['ratio_median']:.2f}x; "
              f"target 0.8x) | raw pika WITH confirms {f['raw_confirmed_best']:>7,} msg/s")
    if "multi_id" in figures:
        f = figures["multi_id"]
        print(f"{f['ids']} ids, {f['ids']} queues, persistent: gateway, ZeroMQ + confirms {f['gateway_best']:>7,} "
              f"msg/s | raw pika WITH confirms, the same queues {f['raw_confirmed_best']:>7,} msg/s | "
              f"{f['ratio_to_raw_confirmed']:.2f}x")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
