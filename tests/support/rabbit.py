"""Talking to the real RabbitMQ from tests: declare, count and read queues."""

from __future__ import annotations

import contextlib
import os
import uuid

import pika

AMQP_HOST = os.environ.get("TEST_AMQP_HOST", "127.0.0.1")
AMQP_PORT = int(os.environ.get("TEST_AMQP_PORT", "5672"))


def unique(prefix: str) -> str:
    return f"test.{prefix}.{uuid.uuid4().hex[:10]}"


class Rabbit:
    """A blocking pika connection for the test's own bookkeeping (not the code under test)."""

    def __init__(self, host: str = AMQP_HOST, port: int = AMQP_PORT, vhost: str = "/"):
        self.vhost = vhost
        params = pika.ConnectionParameters(host, port, vhost, pika.PlainCredentials("guest", "guest"),
                                           heartbeat=0, connection_attempts=3, retry_delay=1)
        self.connection = pika.BlockingConnection(params)
        self.channel = self.connection.channel()
        self.queues: list[str] = []

    def queue(self, prefix: str = "q") -> str:
        name = unique(prefix)
        self.channel.queue_declare(name, durable=True, arguments={"x-queue-mode": "default"})
        self.queues.append(name)
        return name

    def count(self, queue: str) -> int:
        return self.channel.queue_declare(queue, passive=True).method.message_count

    def drain(self, queue: str) -> list[tuple[bytes, pika.BasicProperties]]:
        """Every message in the queue (acked), in order."""
        out = []
        while True:
            method, props, body = self.channel.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append((body, props))

    def bodies(self, queue: str) -> list[bytes]:
        return [body for body, _ in self.drain(queue)]

    def close(self) -> None:
        with contextlib.suppress(pika.exceptions.AMQPError):  # best-effort clean-up
            for name in self.queues:
                self.channel.queue_delete(name)
            self.connection.close()


def rabbitmqctl(*args: str) -> str:
    """Run rabbitmqctl (the tests that change the broker need it: root or the rabbitmq user)."""
    import subprocess

    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


class Vhost:
    """A vhost of the test's own, with guest allowed in; deleted by ``delete()``."""

    def __init__(self, prefix: str = "vh"):
        self.name = unique(prefix)
        rabbitmqctl("add_vhost", self.name)
        rabbitmqctl("set_permissions", "-p", self.name, "guest", ".*", ".*", ".*")

    def rabbit(self) -> Rabbit:
        return Rabbit(vhost=self.name)

    def delete(self) -> None:
        rabbitmqctl("delete_vhost", self.name)
