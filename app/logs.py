"""Logging: one JSON object per line on stderr, with every configured secret masked.

Hand-written rather than a dependency: it is a dozen lines, and the masking
has to run on the final text, whatever a library or an exception put in it.
gunicorn's own logs use the same formatter (see ``gunicorn.conf.py``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterable

# Attributes every LogRecord has; anything else was passed in ``extra``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_secrets: list[str] = []


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


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line: time, level, event, pid, message, extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": os.getpid(),
            "event": getattr(record, "event", None) or "log",
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key != "event":
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, default=str, ensure_ascii=False))


def configure(level: str = "INFO") -> None:
    """Send the ``app`` loggers to stderr as JSON (idempotent)."""
    logger = logging.getLogger("app")
    logger.setLevel(level)
    if not any(getattr(h, "_gateway", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler._gateway = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    # pika logs each connection at INFO and each refused connect at ERROR; the
    # pools log those events themselves, once per change, with the broker named.
    logging.getLogger("pika").setLevel(logging.CRITICAL)
