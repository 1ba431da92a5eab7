"""How an option is declared (:class:`Option`, :meth:`Topic.option`), and the parsers of its values.

A parser takes the text of a file line or a ``GATEWAY_<KEY>`` variable and
returns the typed value, or raises ``ValueError`` with a message that quotes
no secret (the loader adds where it was).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote

from app.config.connections import CONN_ID_RE

T = TypeVar("T")
N = TypeVar("N", int, float)

_OPTION = "option"  # the key of a field's metadata that holds its Option


@dataclass(frozen=True)
class Option:
    """One scalar setting: its key in the file, default (as written there), parser, doc, topic and field name."""

    key: str
    default: str
    parse: Callable[[str], Any]
    doc: str
    topic: str
    aliases: tuple[str, ...] = ()
    secret: bool = False
    name: str = ""  # the field of Settings that holds it (set by declared_options)


@dataclass(frozen=True)
class Topic:
    """What a group of options is about: the README's table has one sub-table per topic."""

    title: str

    def option(self, key: str, default: str, parse: Callable[[str], T], doc: str, *,
               aliases: tuple[str, ...] = (), secret: bool = False) -> T:
        """A dataclass field for the option ``key``, whose default is ``parse(default)``.

        Typed as the parser's result, so mypy checks the parser against the
        field's annotation; a secret is left out of the dataclass's repr.
        """
        spec = Option(key, default, parse, doc, self.title, aliases, secret)
        return dataclasses.field(default=parse(default), repr=not secret, metadata={_OPTION: spec})


def declared_options(cls: type) -> tuple[Option, ...]:
    """The options declared as fields of the dataclass ``cls`` (with :meth:`Topic.option`), in field order."""
    return tuple(dataclasses.replace(f.metadata[_OPTION], name=f.name)
                 for f in dataclasses.fields(cls) if _OPTION in f.metadata)


def parse_bool(text: str) -> bool:
    """``true/false``, ``yes/no``, ``on/off``, ``1/0``, any case."""
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "on", "1"):
        return True
    if lowered in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def number(kind: type[N], low: float, high: float | None = None) -> Callable[[str], N]:
    """A parser of ``kind`` (int or float) from ``low`` up to ``high`` (or no limit)."""

    def parse(text: str) -> N:
        try:
            value = kind(text.strip())
        except ValueError:
            raise ValueError(f"expected a {kind.__name__}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ValueError(f"must be {bound}, got {text!r}")
        return value

    return parse


def parse_text(text: str) -> str:
    """The text, stripped."""
    return text.strip()


def choice(*allowed: str) -> Callable[[str], str]:
    """A parser of one of the ``allowed`` words, any case."""

    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}, got {text!r}")
        return value

    return parse


# libzmq's limit for an ipc:// path (sockaddr_un.sun_path, less the NUL).
_IPC_PATH_MAX = 107
_Z85 = re.compile(r"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")


def parse_zmq_address(text: str) -> str:
    """``ipc://<path>`` or ``tcp://<host>:<port>``; empty turns ZeroMQ off."""
    text = text.strip()
    if not text:
        return ""
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in ("ipc", "tcp") or not rest:
        raise ValueError(f"expected ipc://<path> or tcp://<host>:<port>, got {text!r}")
    if scheme == "ipc":
        if not (rest.startswith("/") or rest.startswith("@")):
            raise ValueError(f"an ipc:// path must be absolute (ipc:///dir/name), got {text!r}")
        if len(rest.encode()) > _IPC_PATH_MAX:
            raise ValueError(f"the ipc:// path is longer than {_IPC_PATH_MAX} bytes")
        return text
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected tcp://<host>:<port> with a port number, got {text!r}")
    return text


def parse_z85_keys(text: str) -> tuple[str, ...]:
    """Space-separated 40-character Z85 CURVE public keys."""
    keys = tuple(text.split())
    for key in keys:
        if not _Z85.fullmatch(key):
            raise ValueError(f"not a 40-character Z85 public key: {key[:12]!r}...")
    return keys


MIN_TOKEN_LENGTH = 16  # bearer tokens, publish and operator alike
TOKEN_RE = re.compile(r"[\x21-\x7e]+")  # use fullmatch; printable ASCII, no spaces (RFC 6750 b64token and more)


def parse_ops_token(text: str) -> str:
    """Empty (no token), or a bearer token as long and as printable as a publish token."""
    token = text.strip()
    if token and (len(token) < MIN_TOKEN_LENGTH or not TOKEN_RE.fullmatch(token)):
        # Not quoted: it is a secret, however weak.
        raise ValueError(f"must be at least {MIN_TOKEN_LENGTH} printable characters without spaces "
                         "(e.g. `openssl rand -hex 24`), like a publish token")
    return token


def parse_log_level(text: str) -> str:
    """A logging level name, upper-cased."""
    level = text.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError(f"expected DEBUG, INFO, WARNING or ERROR, got {text!r}")
    return level


def parse_vhost_map(text: str) -> tuple[tuple[str, str], ...]:
    """Space-separated ``vhost=connection_id`` pairs (a vhost percent-encoded if it holds a space or ``=``)."""
    pairs: dict[str, str] = {}
    for item in text.split():
        vhost, sep, conn_id = item.rpartition("=")
        if not sep or not vhost or not CONN_ID_RE.fullmatch(conn_id):
            raise ValueError(f"expected vhost=connection_id pairs, got {item[:40]!r}")
        vhost = unquote(vhost)
        if vhost in pairs:
            raise ValueError(f"vhost {vhost!r} is mapped twice")
        pairs[vhost] = conn_id
    return tuple(pairs.items())
