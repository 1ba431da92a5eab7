"""Logging: one JSON object per line on stdout, with every configured secret masked.

Hand-written rather than a dependency: it is a dozen lines. Secrets are
masked in the values before they are serialized (the message, the text
fields passed in ``extra``, an exception's text): masking the finished JSON
text would break it as soon as a secret is short (a password ``7`` turned
``"pid": 17367`` into ``"pid": 1***367``). Numbers, booleans and the
formatter's own fields hold no secret. gunicorn's own logs use the same
formatter (see ``gunicorn.conf.py`` and :mod:`app.accesslog`).

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
