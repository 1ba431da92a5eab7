"""Logging: one JSON object per line on stdout, with every configured secret masked.

Hand-written rather than a dependency: it is a dozen lines. Secrets are
masked in the values before they are serialized (the message, the text
fields passed in ``extra``, an exception's text): masking the finished JSON
text would break it as soon as a secret is short (a password ``7`` turned
``"pid": 17367`` into ``"pid": 1***367``). Numbers, booleans and the
formatter's own fields hold no secret. gunicorn's own logs use the same
formatter (see ``gunicorn.conf.py`` and :mod:`app.http.accesslog`).

Fields known for the whole of a request (its id, the connection id) are bound
once with :func:`bind` and added to every line logged while it is handled:
the context is a :mod:`contextvars` one, and each greenlet has its own, so
concurrent requests in one gevent worker never see each other's fields.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any

# Attributes every LogRecord has; anything else was passed in ``extra``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_secrets: list[str] = []
_context: ContextVar[dict[str, Any] | None] = ContextVar("gateway_log_context", default=None)


def bind(**fields: Any) -> None:
    """Add fields to every log line of the current greenlet (request) from now on."""
    _context.set({**(_context.get() or {}), **fields})


def unbind() -> None:
    """Forget the fields bound in the current greenlet (end of a request)."""
    _context.set(None)


def bound(name: str) -> Any:
    """A field bound in the current greenlet, or None."""
    return (_context.get() or {}).get(name)


def register_secrets(secrets: Iterable[str]) -> None:
    """Mask these strings in every log line from now on."""
    for secret in secrets:
        if secret and secret not in _secrets:
            _secrets.append(secret)
    _secrets.sort(key=len, reverse=True)


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


def _masked(value: Any) -> Any:
    # Text anywhere in a value may quote a secret; other JSON types cannot.
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: _masked(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_masked(item) for item in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return redact(str(value))  # what json.dumps(default=str) would have printed


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line: time, level, event, pid, message, extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": os.getpid(),
            "event": _masked(getattr(record, "event", None) or "log"),
            "message": redact(record.getMessage()),
        }
        entry.update(_masked(_context.get() or {}))
        for key, value in vars(record).items():
            if key not in _STANDARD and key != "event":
                entry[key] = _masked(value)
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        elif record.stack_info:
            entry["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(entry, default=str, ensure_ascii=False)


class HubErrorLog:
    """The gevent hub's ``handle_error``, writing JSON log lines instead of raw tracebacks.

    gevent prints an error raised in a hub callback or a greenlet to its
    ``exception_stream`` (stderr) as a bare traceback: pika raises in its I/O
    callbacks when a broker resets a TLS handshake, for one. gevent documents
    setting ``handle_error`` on the hub instance as the way to take this
    over; system errors (``SystemExit``, ``KeyboardInterrupt``) still go on to
    gevent's ``handle_system_error``, which ends the worker as before.
    """

    def __init__(self, hub: Any):
        self._hub = hub
        self._gevent_default = hub.handle_error

    def __call__(self, context: Any, kind: Any, value: Any, tb: Any) -> None:
        hub = self._hub
        if not isinstance(kind, type) or not isinstance(value, BaseException) or kind.__name__ == "HubDestroyed":
            self._gevent_default(context, kind, value, tb)  # gevent's odd cases (string errors, hub teardown)
            return
        if not issubclass(kind, hub.NOT_ERROR):  # logging itself never raises (gevent's rule for this hook)
            where = context if isinstance(context, str) else type(context).__name__
            logging.getLogger("app.hub").error("%s failed with %s", where, kind.__name__,
                                               exc_info=(kind, value, tb), extra={"event": "greenlet_error"})
        if context is None or issubclass(kind, hub.SYSTEM_ERROR):
            hub.handle_system_error(kind, value, tb)


def route_process_errors() -> None:
    """In a worker: the hub's errors, warnings and unraisable exceptions as JSON lines (not raw stderr)."""
    import gevent

    hub = gevent.get_hub()
    if not isinstance(hub.handle_error, HubErrorLog):
        hub.handle_error = HubErrorLog(hub)
    logging.captureWarnings(True)  # the "py.warnings" logger: root's JSON handler

    def unraisable(info: Any) -> None:
        logging.getLogger("app.hub").error(
            "exception ignored in %r", info.object,
            exc_info=(info.exc_type, info.exc_value, info.exc_traceback) if info.exc_value else None,
            extra={"event": "unraisable_exception"})

    sys.unraisablehook = unraisable

    def uncaught(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        logging.getLogger("app.hub").critical("uncaught exception", exc_info=(kind, value, tb),
                                              extra={"event": "uncaught_exception"})

    sys.excepthook = uncaught


def configure(level: str = "INFO") -> None:
    """Send the ``app`` loggers to stdout as JSON (idempotent)."""
    logger = logging.getLogger("app")
    logger.setLevel(level)
    if not any(getattr(h, "_gateway", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(JsonFormatter())
        handler._gateway = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    # pika logs each connection at INFO and each refused connect at ERROR; the
    # pools log those events themselves, once per change, with the broker named.
    logging.getLogger("pika").setLevel(logging.CRITICAL)
