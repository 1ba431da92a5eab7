"""Classic against quorum queues: confirmed publishing on one node and on a three-node cluster.

    .venv/bin/python bench/queue_types.py [--messages 20000] [--rounds 3]

One pika connection publishes 100-byte persistent messages with confirms, pipelined
(2,000 unconfirmed at most: the broker's own ceiling for confirmed publishing on one
connection, ``zmq_bench.raw_confirmed_round``), to a classic and to a quorum queue,
rounds alternating; the best round of each is kept. First on the machine's RabbitMQ
(one node: a quorum queue of one member still writes its Raft log), then on the
three-node cluster of ``scripts/cluster.sh`` (a quorum queue replicated on the three
nodes; needs root), which is started for this and stopped after. Every message is
counted in its queue. Prints one JSON line: ``docs/capacity.md`` quotes it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zmq_bench import _blocking, raw_confirmed_round

REPO = Path(__file__).resolve().parents[1]
LOCAL = "guest:guest@127.0.0.1:5672/"
VHOST = "gw-cluster"


def compare(amqp: str, messages: int, rounds: int) -> dict[str, float]:
    connection = _blocking(amqp)
    channel = connection.channel()
    tag = uuid.uuid4().hex[:8]
    queues = {"classic": f"bench.classic.{tag}", "quorum": f"bench.quorum.{tag}"}
    channel.queue_declare(queues["classic"], durable=True)
    channel.queue_declare(queues["quorum"], durable=True, arguments={"x-queue-type": "quorum"})
    best = {kind: 0.0 for kind in queues}
    try:
        for _ in range(rounds):
            for kind, queue in queues.items():
                rate = raw_confirmed_round(queue, messages, 100, True, amqp=amqp)
                found = channel.queue_declare(queue, passive=True).method.message_count
                if found != messages:
                    raise SystemExit(f"{kind}: {found} messages in the queue, {messages} confirmed")
                channel.queue_purge(queue)
                best[kind] = max(best[kind], rate)
                print(f"{amqp.rpartition('@')[2]} {kind}: {rate:,.0f} msg/s", file=sys.stderr)
    finally:
        for queue in queues.values():
            channel.queue_delete(queue)
        connection.close()
    return {"classic": round(best["classic"]), "quorum": round(best["quorum"]),
            "quorum_over_classic": round(best["quorum"] / best["classic"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-cluster", action="store_true", help="only the local node")
    args = parser.parse_args()
    figures: dict[str, object] = {"one_node": compare(LOCAL, args.messages, args.rounds)}
    if not args.no_cluster:
        script = REPO / "scripts" / "cluster.sh"
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "PYTHON": sys.executable,
               "CLUSTER_VHOST": VHOST, "CLUSTER_QUEUES": "bench.warmup"}
        started = subprocess.run([str(script), "start"], env=env, capture_output=True, text=True)
        if started.returncode != 0:
            figures["cluster"] = {"error": started.stderr.strip()[-300:]}
        else:
            try:
                figures["cluster"] = compare(f"guest:guest@127.0.0.1:5801/{VHOST}", args.messages, args.rounds)
            finally:
                subprocess.run([str(script), "stop"], env=env, capture_output=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
