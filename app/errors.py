"""Every error the gateway answers with, each carrying its HTTP status and code.

::

    GatewayError                 500 internal
    ├── BadRequest               400 bad_request
    │   ├── MalformedBody        400 malformed_body
    │   ├── InvalidConnectionId  400 invalid_connection_id
    │   ├── InvalidQueue         400 invalid_queue
    │   └── MalformedFrames      400 malformed_frames   (ZeroMQ: wrong number of frames)
    ├── Unauthorized             401 unauthorized       (+ WWW-Authenticate)
    ├── Forbidden                403 forbidden
    ├── NotFound                 404 not_found          (no such route)
    ├── UnknownConnection        404 unknown_connection_id
    ├── MethodNotAllowed         405 method_not_allowed
    ├── PayloadTooLarge          413 body_too_large
    ├── Unroutable               422 unroutable
    └── Unavailable              503 unavailable        (+ Retry-After)
        ├── PoolTimeout          503 pool_timeout
        ├── BrokerUnavailable    503 broker_unavailable
        ├── BrokerBlocked        503 broker_blocked
        ├── PublishNacked        503 nacked
        ├── ConfirmTimeout       503 confirm_timeout
        ├── ConnectionLost       503 connection_lost
        ├── ShuttingDown         503 shutting_down      (the worker is closing its connections)
        └── WorkerLost           503 worker_lost        (ZeroMQ: the worker died holding it)

``ConnectionLost`` is also what the AMQP layer raises inside the gateway when a
connection dies under a publish; the router retries it (at-least-once) and
only answers it when every attempt failed. The same ``status`` and ``code``
make the ZeroMQ reply ``ERR <status> <code>``.
"""

from __future__ import annotations

import json
from http import HTTPStatus


class GatewayError(Exception):
    """Base of all errors answered to a producer."""

    status = 500
    code = "internal"

    def __init__(self, detail: str = ""):
        super().__init__(detail or self.code)
        self.detail = detail or self.code

    def to_json(self) -> dict[str, str]:
        """The JSON body of the error answer."""
        return {"error": self.code, "detail": self.detail}


class BadRequest(GatewayError):
    status = 400
    code = "bad_request"


class MalformedBody(BadRequest):
    code = "malformed_body"


class InvalidConnectionId(BadRequest):
    code = "invalid_connection_id"


class InvalidQueue(BadRequest):
    code = "invalid_queue"


class MalformedFrames(BadRequest):
    code = "malformed_frames"


class Unauthorized(GatewayError):
    """No valid bearer token; ``challenge`` is the ``WWW-Authenticate`` header (RFC 6750)."""

    status = 401
    code = "unauthorized"

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


class MethodNotAllowed(GatewayError):
    status = 405
    code = "method_not_allowed"

    def __init__(self, detail: str = "", allow: tuple[str, ...] = ()):
        super().__init__(detail)
        self.allow = allow


class PayloadTooLarge(GatewayError):
    status = 413
    code = "body_too_large"


class Unroutable(GatewayError):
    status = 422
    code = "unroutable"


class Unavailable(GatewayError):
    status = 503
    code = "unavailable"
    retry_after = 1


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


class ConnectionLost(Unavailable):
    code = "connection_lost"


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
    if exc.status in (401, 413):
        headers.append(("Connection", "close"))  # the unread body is not worth draining
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
