"""What the seeds exist to avoid: a new AMQP connection for every message.

``python bench/conn_per_message.py SECONDS QUEUE`` publishes 100-byte
persistent messages with confirms, opening and closing a pika connection for
each, and prints the count and elapsed seconds as JSON.
"""

import json
import sys
import time

import pika

seconds, queue = float(sys.argv[1]), sys.argv[2]
params = pika.ConnectionParameters("127.0.0.1", 5672, "/", pika.PlainCredentials("guest", "guest"))
body = b"x" * 100
count, started = 0, time.monotonic()
while time.monotonic() - started < seconds:
    connection = pika.BlockingConnection(params)
    channel = connection.channel()
    channel.confirm_delivery()
    channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2), mandatory=True)
    connection.close()
    count += 1
print(json.dumps({"messages": count, "seconds": time.monotonic() - started}))
