"""Peer: mq-bridge (Rust, tokio), an HTTP server input routed to an AMQP output.

``fire_and_forget: false`` answers each POST only after the output finished, and the
AMQP output's ``delayed_ack: false`` waits for RabbitMQ's confirm: a ``202 Message
processed`` means the message is in RabbitMQ, the same promise as the gateway's 200.
The whole body is the message, to one fixed queue (no ``id|queue|`` parsing); a refused
message fails its request with 500. Persistent, like the gateway's default.

    python bench/mq_bridge_peer.py PORT QUEUE
"""

import sys

from mq_bridge import Route

port, queue = sys.argv[1], sys.argv[2]
Route.from_config({
    "input": {"http": {"url": f"127.0.0.1:{port}", "fire_and_forget": False}},
    "output": {"amqp": {"url": "amqp://guest:guest@127.0.0.1:5672/%2f", "queue": queue, "delayed_ack": False,
                        "no_declare_queue": True}},
}).run()
