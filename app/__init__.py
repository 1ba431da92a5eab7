"""AMQP publishing gateway. The sub-packages, from the bottom up: config, core, amqp, db, ops, http, zmq.

This module imports nothing: a process loads only the packages it uses
(the gunicorn master and the ZeroMQ relay never load Flask or pika).
"""
