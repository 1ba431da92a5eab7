"""Request ids: taken from ``X-Request-ID`` or made, returned, and in every log line.

A producer's (or a proxy's) id is kept when it is a sane token (1-128 of
``A-Z a-z 0-9 - _ . : / + =``, which covers UUIDs, W3C trace ids and the
ids ingress controllers make); anything else is replaced by a new one rather
than echoed, so a header cannot put arbitrary text into the logs. The id is
bound to the request's greenlet for :mod:`app.ops.logs`, put in the response and
left in the WSGI environ for gunicorn's access log (:mod:`app.http.accesslog`).
Flask's hooks do it for every route but ``POST /publish``, whose endpoint
(:mod:`app.http.publish_endpoint`) calls :func:`start` and :func:`finish` itself.
"""

from __future__ import annotations

import itertools
import re

from flask import Flask, Response, request

from app.ops import logs
from app.ops.processes import process_token

HEADER = "X-Request-ID"
ENVIRON_KEY = "gateway.request_id"
ENVIRON_HEADER = "HTTP_X_REQUEST_ID"  # the header as WSGI names it
_VALID = re.compile(r"[A-Za-z0-9\-_.:/+=]{1,128}")
_counter = itertools.count(1)


def new_id() -> str:
    """A fresh request id: 32 hex digits, this process's token and a counter (no random draw per id)."""
    return f"{process_token()}{next(_counter) & 0xFFFFFFFFFFFFFFFF:016x}"


def start(environ: dict) -> str:
    """Take the request's id (or make one), keep it in ``environ`` and bind it for the logs."""
    given = environ.get(ENVIRON_HEADER) or ""
    request_id = given if _VALID.fullmatch(given) else new_id()
    environ[ENVIRON_KEY] = request_id
    logs.unbind()  # a kept-alive connection's greenlet serves request after request
    logs.bind(request_id=request_id)
    return request_id


def _start() -> None:
    start(request.environ)


def _finish(response: Response) -> Response:
    request_id = request.environ.get(ENVIRON_KEY)
    if request_id:
        response.headers[HEADER] = request_id
    return response


def finish() -> None:
    """The request is answered: forget its log fields."""
    logs.unbind()


def _teardown(_exc: BaseException | None) -> None:
    finish()


def init_app(app: Flask) -> None:
    """Give every request an id; register this before any other request hook."""
    app.before_request(_start)
    app.after_request(_finish)
    app.teardown_request(_teardown)
