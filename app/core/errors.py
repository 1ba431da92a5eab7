"""Every error the gateway answers with, each carrying its HTTP status and code.

::

    GatewayError                 500 internal
    ├── HttpError                its own status and code (the web stack's other HTTP errors)
    ├── BadRequest               400 bad_request
    │   ├── MalformedBody        400 malformed_body
    │   ├── InvalidConnectionId  400 invalid_connection_id
    │   ├── InvalidQueue         400 invalid_queue
    │   ├── InvalidAddress       400 invalid_address    (an exchange or routing key AMQP cannot carry)
    │   ├── InvalidProperty      400 invalid_property   (names the property)
    │   ├── MalformedFrames      400 malformed_frames   (ZeroMQ: wrong number of frames)
    │   ├── IncompleteBody       400 incomplete_body    (ended before its length or last chunk)
    │   └── MalformedChunks      400 malformed_chunked_body
    ├── Unauthorized             401 unauthorized       (+ WWW-Authenticate)
    ├── Forbidden                403 forbidden
    ├── NotFound                 404 not_found          (no such route)
    ├── UnknownConnection        404 unknown_connection_id
    ├── UnknownExchange          404 unknown_exchange   (the broker closed the channel: 404 NOT_FOUND)
    ├── MethodNotAllowed         405 method_not_allowed
    ├── RequestTimeout           408 body_timeout       (the body did not arrive in time)
    ├── PayloadTooLarge          413 body_too_large
    ├── Unroutable               422 unroutable
    ├── RejectedByBroker         422 rejected_by_broker (the broker closed the connection over it)
    ├── UnsupportedCoding        501 unsupported_transfer_coding
    └── Unavailable              503 unavailable        (+ Retry-After)
        ├── PoolTimeout          503 pool_timeout
        ├── BrokerUnavailable    503 broker_unavailable
        ├── BrokerBlocked        503 broker_blocked
        ├── ConnectionCapReached 503 connection_cap     (MAX_CONNECTIONS_PER_SERVER: no new connection)
        ├── PublishNacked        503 nacked
        ├── ConfirmTimeout       503 confirm_timeout
        ├── QueueUnavailable     503 queue_unavailable  (that queue stopped confirming; nothing sent)
        ├── ConnectionLost       503 connection_lost
        ├── ShuttingDown         503 shutting_down      (the worker is closing its connections)
        ├── Overloaded           503 overloaded         (shed: too many connections, body incomplete)
        └── WorkerLost           503 worker_lost        (ZeroMQ: the worker died holding it)

``ConnectionLost`` is also what the AMQP layer raises inside the gateway when a
connection dies under a publish; the router retries it (at-least-once) and
only answers it when every attempt failed. The same ``status`` and ``code``
make the ZeroMQ reply ``ERR <status> <code>``.

An error with ``closes`` set is answered with ``Connection: close``: the rest of
the request was not read (or cannot be trusted), so the connection is not reused.

The errors that keep a process or component from starting are never answered
to a producer, so they are not in that tree; they share one base, and each
prints as one line without secrets::

    StartupError
    ├── ConfigError       a bad config file or value (app.config; also a ValueError)
    ├── DatabaseError     PostgreSQL unreachable or refusing a statement (app.db.connection)
    ├── RelayError        the ZeroMQ relay cannot bind or set up CURVE (app.zmq.relay)
    ├── RelayStartError   the relay process did not come up (app.zmq.supervisor)
    ├── CurveError        CURVE keys cannot be loaded (app.zmq.sockets)
    └── PikaIncompatible  pika is not the version the seam was verified with (app.amqp.pika_seam;
                          also a RuntimeError)

This module imports nothing heavy: the config package and the gunicorn master use it.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus


class StartupError(Exception):
    """Base of the errors that keep a process or component from starting; ``str()`` is one safe line."""


class GatewayError(Exception):
    """Base of all errors answered to a producer."""

    status = 500
    code = "internal"
    closes = False  # answered with Connection: close

    def __init__(self, detail: str = ""):
        super().__init__(detail or self.code)
        self.detail = detail or self.code

    def to_json(self) -> dict[str, str]:
        """The JSON body of the error answer."""
        return {"error": self.code, "detail": self.detail}


class HttpError(GatewayError):
    """An HTTP error of the web stack (werkzeug's, other than no route and wrong method), with its status and code."""

    def __init__(self, detail: str, status: int, code: str):
        super().__init__(detail)
        self.status = status
        self.code = code


class BadRequest(GatewayError):
    status = 400
    code = "bad_request"


class MalformedBody(BadRequest):
    code = "malformed_body"


class InvalidConnectionId(BadRequest):
    code = "invalid_connection_id"


class InvalidQueue(BadRequest):
    code = "invalid_queue"


class InvalidAddress(BadRequest):
    code = "invalid_address"


class InvalidProperty(BadRequest):
    code = "invalid_property"


class MalformedFrames(BadRequest):
    code = "malformed_frames"


class IncompleteBody(BadRequest):
    """The body ended (the client half-closed or went away) before its Content-Length or last chunk."""

    code = "incomplete_body"
    closes = True


class MalformedChunks(BadRequest):
    """A chunked body that breaks RFC 9112 section 7.1 (bad chunk size, missing CRLF, ...)."""

    code = "malformed_chunked_body"
    closes = True


class Unauthorized(GatewayError):
    """No valid bearer token; ``challenge`` is the ``WWW-Authenticate`` header (RFC 6750)."""

    status = 401
    code = "unauthorized"
    closes = True  # the unread body is not worth draining

    def __init__(self, detail: str = "", invalid_token: bool = False):
        super().__init__(detail)
        self.challenge = 'Bearer realm="amqp-gateway"' + (', error="invalid_token"' if invalid_token else "")


class Forbidden(GatewayError):
    """A valid token that may not use this connection id or queue."""

    status = 403
    code = "forbidden"


class NotFound(GatewayError):
    status = 404
    code = "not_found"


class UnknownConnection(GatewayError):
    status = 404
    code = "unknown_connection_id"


class UnknownExchange(GatewayError):
    """The broker closed the channel over this message: no such exchange (404 NOT_FOUND)."""

    status = 404
    code = "unknown_exchange"


class MethodNotAllowed(GatewayError):
    status = 405
    code = "method_not_allowed"

    def __init__(self, detail: str = "", allow: tuple[str, ...] = ()):
        super().__init__(detail)
        self.allow = allow


class RequestTimeout(GatewayError):
    """The body did not arrive within ``CLIENT_BODY_TIMEOUT``."""

    status = 408
    code = "body_timeout"
    closes = True


class PayloadTooLarge(GatewayError):
    status = 413
    code = "body_too_large"
    closes = True  # the unread body is not worth draining


class Unroutable(GatewayError):
    status = 422
    code = "unroutable"


class RejectedByBroker(GatewayError):
    """The broker closed a connection over this message, twice: never retried again."""

    status = 422
    code = "rejected_by_broker"


class UnsupportedCoding(GatewayError):
    """A transfer coding other than chunked (RFC 9112 section 6.1: 501)."""

    status = 501
    code = "unsupported_transfer_coding"
    closes = True


class Unavailable(GatewayError):
    status = 503
    code = "unavailable"


class ConnectionCapReached(Unavailable):
    """The worker holds its share of MAX_CONNECTIONS_PER_SERVER to that server: no connection was opened."""

    code = "connection_cap"


class PoolTimeout(Unavailable):
    code = "pool_timeout"


class BrokerUnavailable(Unavailable):
    code = "broker_unavailable"


class BrokerBlocked(Unavailable):
    code = "broker_blocked"


class PublishNacked(Unavailable):
    code = "nacked"


class ConfirmTimeout(Unavailable):
    code = "confirm_timeout"


class QueueUnavailable(Unavailable):
    """The queue stopped confirming while its broker's other queues did (app.core.circuit): refused at once."""

    code = "queue_unavailable"


class ConnectionLost(Unavailable):
    """The connection died under the message; ``refused_code`` is set when the broker closed it (AMQP close).

    A broker that closes the connection or the channel itself (any reply code
    but 320 CONNECTION_FORCED, a shutdown or an operator) did so over something
    it was sent: one of the messages in flight is the culprit (app.core.lane isolates it).
    """

    code = "connection_lost"

    def __init__(self, detail: str = "", refused_code: int | None = None, refused_text: str = "",
                 culprit: bool = False):
        super().__init__(detail)
        self.refused_code = refused_code
        self.refused_text = refused_text  # the broker's words, e.g. "NOT_FOUND - no exchange 'x' in vhost '/'"
        # The broker refused this very message: it was alone in flight on its channel
        # (app.amqp.connection sends a first use alone), or went to the exchange found missing.
        self.culprit = culprit


class Overloaded(Unavailable):
    """Shed while its body was still arriving: the worker was at its connection limit."""

    code = "overloaded"
    closes = True


class ShuttingDown(Unavailable):
    # The worker is stopping: the id is configured, another worker (or this
    # one's successor) will take it. Nothing was sent.
    code = "shutting_down"


class WorkerLost(Unavailable):
    # Published or not, nobody can tell: like connection_lost, "cannot know".
    code = "worker_lost"


def http_answer(exc: GatewayError, retry_after: int) -> tuple[int, list[tuple[str, str]], bytes]:
    """The HTTP answer to ``exc``: status, headers and the one JSON error body (every route's, alike)."""
    body = (json.dumps(exc.to_json(), sort_keys=True) + "\n").encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    if isinstance(exc, Unavailable):
        headers.append(("Retry-After", str(retry_after)))
    if isinstance(exc, MethodNotAllowed) and exc.allow:
        headers.append(("Allow", ", ".join(exc.allow)))
    if isinstance(exc, Unauthorized):
        headers.append(("WWW-Authenticate", exc.challenge))
    if exc.closes:
        headers.append(("Connection", "close"))
    return exc.status, headers, body


def status_line(status: int) -> str:
    """``"503 Service Unavailable"``: the WSGI status line of a status code."""
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Error"


def describe_exception(exc: BaseException) -> str:
    """A short, secret-free text for a lower-level error (class and first line)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    # pika's connection errors can carry the parameters repr; keep them short.
    if len(text) > 200:
        text = text[:200] + "..."
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def internal_error(log: logging.Logger, what: str, **fields: str) -> GatewayError:
    """Log the exception being handled (a bug: traceback, ``internal_error`` event); the answer to give.

    Every ingress and the group commit end their "never a dead worker" guards
    here, so an unexpected error reads the same in the log and to the client.
    """
    log.exception("unexpected error %s", what, extra={"event": "internal_error", **fields})
    return GatewayError("internal error; see the gateway's log")
