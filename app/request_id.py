"""Request ids: taken from ``X-Request-ID`` or made, returned, and in every log line.

A producer's (or a proxy's) id is kept when it is a sane token (1-128 of
``A-Z a-z 0-9 - _ . : / + =``, which covers UUIDs, W3C trace ids and the
ids ingress controllers make); anything else is replaced by a new one rather
than echoed, so a header cannot put arbitrary text into the logs. The id is
bound to the request's greenlet for :mod:`app.logs`, put in the response and
left in the WSGI environ for gunicorn's access log (:mod:`app.accesslog`).
"""

from __future__ import annotations

import re
import uuid

from flask import Flask, Response, request

from app import logs

HEADER = "X-Request-ID"
ENVIRON_KEY = "gateway.request_id"
_VALID = re.compile(r"^[A-Za-z0-9\-_.:/+=]{1,128}$")


def new_id() -> str:
    """A fresh request id (32 hex digits)."""
    return uuid.uuid4().hex


def _start() -> None:
    given = request.headers.get(HEADER, "")
    request_id = given if _VALID.match(given) else new_id()
    request.environ[ENVIRON_KEY] = request_id
    logs.unbind()  # a kept-alive connection's greenlet serves request after request
    logs.bind(request_id=request_id)


def _finish(response: Response) -> Response:
    request_id = request.environ.get(ENVIRON_KEY)
    if request_id:
        response.headers[HEADER] = request_id
    return response


def _teardown(_exc: BaseException | None) -> None:
    logs.unbind()


def init_app(app: Flask) -> None:
    """Give every request an id; register this before any other request hook."""
    app.before_request(_start)
    app.after_request(_finish)
    app.teardown_request(_teardown)
