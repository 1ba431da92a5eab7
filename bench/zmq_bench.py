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
publishing. Prints a table and one JSON line.
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


def raw_confirmed_round(queue: str, count: int, size: int, persistent: bool, window: int = 2000,
                        amqp: str = AMQP) -> float:
    """Messages per second of one pika connection publishing WITH confirms, pipelined.

    Not the target's baseline: the broker's own ceiling for confirmed publishing
    on one connection, to show how much of the gap is the broker's.
    """
    params = params_for(amqp)
    body = b"x" * size
    props = pika.BasicProperties(delivery_mode=2 if persistent else 1)
    outstanding: deque[int] = deque()
    state = {"sent": 0, "confirmed": 0, "started": 0.0, "ended": 0.0}
    channel_box: list = []

    def publish_more() -> None:
        channel = channel_box[0]
        while state["sent"] < count and len(outstanding) < window:
            channel.basic_publish("", queue, body, props)
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


def _producer(address: str, queue: str, count: int, size: int, window: int, start_at: float,
              results: multiprocessing.Queue) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.connect(address)
    body = b"bench|" + queue.encode() + b"|" + b"x" * size
    ok = errors = sent = received = 0
    time.sleep(max(start_at - time.time(), 0))
    started = time.perf_counter()
    while received < count:
        while sent < count and sent - received < window:
            sock.send_multipart([b"%d" % sent, body])
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


def gateway_round(address: str, queue: str, count: int, size: int, producers: int, window: int) -> dict:
    """Messages per second through the gateway, every one confirmed."""
    results: multiprocessing.Queue = multiprocessing.Queue()
    share = count // producers
    start_at = time.time() + 0.5  # all connected before the clock starts
    procs = [multiprocessing.Process(target=_producer, args=(address, queue, share, size, window, start_at, results))
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

    def __init__(self, workers: int, in_flight: int, persistent: bool):
        self.dir = tempfile.mkdtemp(prefix="zmq-bench-")
        self.address = f"ipc://{self.dir}/feed"
        self.cfg = Path(self.dir) / "pool.cfg"
        self.cfg.write_text(f"RMQ_CONN_STR,bench,{AMQP}\nZMQ_SOCK_ADDRESS,{self.address}\n"
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
    args = parser.parse_args()

    admin = _blocking()
    channel = admin.channel()
    queue = f"bench.zmq.{uuid.uuid4().hex[:8]}"
    channel.queue_declare(queue, durable=True)
    modes = ("persistent", "transient") if args.mode == "both" else (args.mode,)
    figures: dict = {"messages": args.messages, "size": args.size, "workers": args.workers,
                     "producers": args.producers}
    try:
        for mode in modes:
            figures[mode] = compare(args, channel, queue, mode == "persistent")
    finally:
        channel.queue_delete(queue)
        admin.close()
    for mode in modes:
        f = figures[mode]
        print(f"{mode:>10}: raw pika, no confirms {f['raw_best']:>7,} msg/s | gateway, ZeroMQ + confirms "
              f"{f['gateway_best']:>7,} msg/s | {f['ratio_best']:.2f}x (medians {f['ratio_median']:.2f}x; "
              f"target 0.8x) | raw pika WITH confirms {f['raw_confirmed_best']:>7,} msg/s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
