"""Reading a request body whole, or not at all: the one place that knows gunicorn's body readers.

A body that is cut short is not a request: nothing of it may be published.
gunicorn's readers do not all say so themselves (gunicorn 27, ``gunicorn/http/body.py``):

- ``LengthReader`` returns what arrived when the client half-closes before
  ``Content-Length`` bytes, as if the body were shorter: the length is checked here.
- ``ChunkedReader`` raises its parse errors (``InvalidChunkSize``,
  ``ChunkMissingTerminator``, ``NoMoreData``, ...) out of ``wsgi.input.read()``,
  into the application: they are mapped here to 400s of our own (``raise ... from``),
  so a broken client gets one JSON error and one log line, not a 500 and a traceback.
- ``Transfer-Encoding: gzip, chunked`` is accepted and the body handed over still
  compressed: a coding we do not implement is answered 501 (RFC 9112 section 6.1).

Reading is bounded in time (75-100 % of ``CLIENT_BODY_TIMEOUT``: ``408``) and, while the body
is still arriving, the connection may be shed by the worker when it is at its
connection limit (:mod:`app.http.client_guard`: ``503 overloaded``). Every error
raised here closes the connection (the rest of the request cannot be trusted).
"""

from __future__ import annotations

import logging
import random
from typing import Any

import gevent
from gunicorn.http import errors as gunicorn_errors

from app.core.errors import (
    GatewayError,
    IncompleteBody,
    MalformedChunks,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedCoding,
)
from app.core.retry import RetryBudget
from app.http import client_guard

log = logging.getLogger(__name__)

TIMEOUT_JITTER = 0.25  # a body gets 75-100 % of CLIENT_BODY_TIMEOUT

# What gunicorn's chunked reader raises for a body that breaks the framing.
_MALFORMED = (gunicorn_errors.InvalidChunkSize, gunicorn_errors.ChunkMissingTerminator,
              gunicorn_errors.InvalidChunkExtension, gunicorn_errors.InvalidHeader,
              gunicorn_errors.LimitRequestHeaders, gunicorn_errors.ObsoleteFolding)


def read_body(environ: dict[str, Any], limit: int, timeout: float) -> bytes:
    """The raw request body, complete, within ``timeout`` seconds; 413 past ``limit`` bytes."""
    coding = environ.get("HTTP_TRANSFER_ENCODING")
    if coding is not None and coding.strip(" \t").lower() != "chunked":
        # gunicorn refuses every coding it does not know (501) but lets
        # compress, deflate and gzip through before chunked; we decode none.
        raise _logged(UnsupportedCoding(f"transfer coding {coding.strip()!r} is not supported; send chunked or "
                                        "a Content-Length"))
    length_text = environ.get("CONTENT_LENGTH")
    length = int(length_text) if length_text and length_text.isascii() and length_text.isdigit() else None
    if length is not None and length > limit:
        raise PayloadTooLarge(f"body of {length} bytes is over the limit of {limit}")
    stream = environ["wsgi.input"]
    # Jittered, like keepalive (app/http/worker.py): slow bodies that arrived together
    # (a flood's) are not all cut off, and reopened, in one burst.
    timeout *= random.uniform(1.0 - TIMEOUT_JITTER, 1.0)
    shed = Overloaded("the gateway is at its connection limit and the body was still arriving")
    try:
        with client_guard.PENDING.waiting(shed), \
                gevent.Timeout(timeout, RequestTimeout(f"the body did not arrive within {timeout:.1f}s")):
            data: bytes = stream.read(limit + 1 if length is None else length)  # bounded even for chunked bodies
    except GatewayError as exc:
        raise _logged(exc) from None
    except _MALFORMED as exc:
        raise _logged(MalformedChunks(f"malformed chunked body: {type(exc).__name__}")) from exc
    except (gunicorn_errors.NoMoreData, OSError) as exc:
        raise _logged(IncompleteBody("the body ended before its last chunk")) from exc
    if length is not None and len(data) < length:
        raise _logged(IncompleteBody(f"the body ended after {len(data)} of its {length} bytes (Content-Length)"))
    if len(data) > limit:
        raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
    return data


# At most this many "body_refused" lines a second: a flood of slow bodies
# timing out together must not turn into a flood of log lines (each is also
# counted in gateway_publish_total by its code).
LOG_LINES_PER_SECOND = 10
_log_budget = RetryBudget(0.0, LOG_LINES_PER_SECOND, window=1.0)
_suppressed = 0


def _logged(exc: GatewayError) -> GatewayError:
    # One line per refused body, no traceback: the client's fault, not ours.
    global _suppressed
    if not _log_budget.allow():
        _suppressed += 1
        return exc
    log.warning("request body refused: %s", exc.detail,
                extra={"event": "body_refused", "error": exc.code, "suppressed_before": _suppressed})
    _suppressed = 0
    return exc
