"""Talking to RabbitMQ: the wire, one connection, the pool of them, its health and servers."""
