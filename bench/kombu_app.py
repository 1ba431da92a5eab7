"""Peer: what a user would write themselves. Flask under gunicorn's gevent workers, kombu's
ProducerPool with publisher confirms (py-amqp waits for each confirm), ``id|queue|message``
parsed as the gateway parses it. Answers 200 only after the broker confirmed the message."""

from __future__ import annotations

import os

import kombu
from flask import Flask, request
from kombu.pools import producers

kombu.pools.set_limit(int(os.environ.get("KOMBU_POOL", "5")))  # connections per worker, as the gateway's pool 5
connection = kombu.Connection("amqp://guest:guest@127.0.0.1:5672//", transport_options={"confirm_publish": True})
app = Flask(__name__)


@app.post("/publish")
def publish():
    parts = request.get_data().split(b"|", 2)
    if len(parts) != 3 or not parts[0] or not parts[1]:
        return {"error": "bad_request"}, 400
    _conn_id, queue, message = parts
    with producers[connection].acquire(block=True, timeout=5) as producer:
        producer.publish(message, routing_key=queue.decode(), exchange="", delivery_mode=2, retry=False,
                         content_type="application/octet-stream", content_encoding="binary")
    return {"status": "ok"}


@app.get("/readyz")
def ready():
    with producers[connection].acquire(block=True, timeout=5) as producer:
        producer.connection.ensure_connection(max_retries=1)
    return {"ready": True}
