"""Bearer-token access control for ``/publish`` and the operator routes.

Tokens come from ``AUTH_TOKENS_FILE`` (a Kubernetes Secret mounted as a file)
and/or ``AUTH_TOKENS`` (``GATEWAY_AUTH_TOKENS`` from a Secret), one per line::

    # name      token                              connection ids    queue patterns (optional)
    billing     9f8c2e...at-least-16-characters    billing,audit     billing.*,audit.events
    ops-tools   3b1d77...                          *

``ids`` is ``*`` (every id) or a comma list; queue patterns are shell-style
globs (``fnmatch``), none meaning any queue (and any exchange). A pattern
``@<exchange>/<routing key>`` (globs too: ``@events/order.*``, ``@logs/*``)
lets the token publish to a named exchange; without one it may publish only
to queues (the default exchange) its queue patterns match. Either source being set turns
auth on for ``/publish``: no token is ``401``, a token that may not use the
id or queue is ``403`` (checked before ``404``, so a token learns nothing
about ids it may not use). ``OPS_TOKEN`` guards ``/metrics`` and ``/pools``
(and, with ``OPS_TOKEN_HEALTH``, the probes).

Only SHA-256 digests of the tokens are kept for comparison, and every
configured digest is compared with :func:`hmac.compare_digest`, so the time
taken says nothing about how close a guess was or which token matched.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass

from flask import Flask, request

from app.config import CONN_ID_RE, MIN_TOKEN_LENGTH, TOKEN_RE, ConfigError, Settings, read_text_file
from app.core.errors import Forbidden, Unauthorized

_NAME_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")  # use fullmatch: "$" matches before a final newline
OPS_ROUTES = ("/metrics", "/pools")
HEALTH_ROUTES = ("/healthz", "/readyz")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


@dataclass(frozen=True)
class TokenRule:
    """One token: its name (for logs), digest, the ids and queue patterns it may use."""

    name: str
    digest: bytes
    conn_ids: frozenset[str] | None  # None: every id
    queues: tuple[str, ...] = ()  # empty: every queue

    def may_use(self, conn_id: str) -> bool:
        """May this token publish through ``conn_id``?"""
        return self.conn_ids is None or conn_id in self.conn_ids

    def may_publish_to(self, queue: str) -> bool:
        """May this token publish to ``queue`` (through the default exchange)?"""
        return not self.queues or any(fnmatch.fnmatchcase(queue, pattern) for pattern in self.queues
                                      if not pattern.startswith("@"))

    def may_publish_via(self, exchange: str, routing_key: str) -> bool:
        """May this token publish to ``exchange`` with ``routing_key`` ("": the default exchange, a queue)?"""
        if not exchange:
            return self.may_publish_to(routing_key)
        target = f"{exchange}/{routing_key}"
        return not self.queues or any(fnmatch.fnmatchcase(target, pattern[1:]) for pattern in self.queues
                                      if pattern.startswith("@"))


class TokenTable:
    """The configured tokens; answers "who is this?" in constant time."""

    def __init__(self, rules: Iterable[TokenRule]):
        self.rules = tuple(rules)

    def identify(self, token: str | None) -> TokenRule | None:
        """The rule whose token this is, or None; compares against every rule."""
        if token is None:
            return None
        presented = _digest(token)
        found = None
        for rule in self.rules:
            if hmac.compare_digest(presented, rule.digest):
                found = rule  # no early exit: same work whichever rule matches
        return found


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def basic_as_bearer(authorization: str | None) -> str | None:
    """``Basic <user:token>`` as ``Bearer <token>`` (the management API's credentials); anything else as it is."""
    if not authorization:
        return authorization
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return authorization
    try:
        _user, sep, password = base64.b64decode(credentials.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, ValueError):
        return None  # not Basic credentials at all: answered as no token
    return f"Bearer {password}" if sep and password else None


def parse_tokens(text: str, source: str, lines_separated_by_semicolons: bool = False) -> list[tuple[TokenRule, str]]:
    """Parse token lines into (rule, token) pairs; :class:`ConfigError` names the line, never the token."""
    lines = re.split(r"[;\n]", text) if lines_separated_by_semicolons else text.splitlines()
    out: list[tuple[TokenRule, str]] = []
    names: dict[str, int] = {}
    digests: set[bytes] = set()
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) not in (3, 4):
            raise ConfigError("expected `name token ids [queue-patterns]` (whitespace-separated)",
                              source, number)
        name, token, ids = fields[:3]
        if not _NAME_RE.fullmatch(name):
            raise ConfigError(f"invalid token name {name!r} (1-64 of A-Z a-z 0-9 _ . -)", source, number)
        if name in names:
            raise ConfigError(f"token name {name!r} is used twice (first on line {names[name]})", source, number)
        if len(token) < MIN_TOKEN_LENGTH or not TOKEN_RE.fullmatch(token):
            raise ConfigError(f"token {name!r} must be at least {MIN_TOKEN_LENGTH} printable characters "
                              "without spaces (e.g. `openssl rand -hex 24`)", source, number)
        digest = _digest(token)
        if digest in digests:
            raise ConfigError(f"token {name!r} repeats another token's value", source, number)
        conn_ids: frozenset[str] | None = None
        if ids != "*":
            listed = [part for part in ids.split(",") if part]
            bad = [part for part in listed if not CONN_ID_RE.fullmatch(part)]
            if not listed or bad:
                raise ConfigError(f"token {name!r}: ids must be `*` or a comma list of connection ids", source,
                                  number)
            conn_ids = frozenset(listed)
        queues = tuple(part for part in fields[3].split(",") if part) if len(fields) == 4 else ()
        names[name] = number
        digests.add(digest)
        out.append((TokenRule(name, digest, conn_ids, queues), token))
    return out


def load_tokens(settings: Settings) -> tuple[TokenTable | None, list[str]]:
    """The publish token table (None: auth off) and the raw tokens, for the log redactor."""
    if not settings.auth_tokens_file and not settings.auth_tokens:
        return None, []
    pairs: list[tuple[TokenRule, str]] = []
    if settings.auth_tokens_file:
        path = settings.auth_tokens_file
        text = settings.auth_tokens_file_text
        pairs += parse_tokens(read_text_file(path, "AUTH_TOKENS_FILE: file") if text is None else text, path)
    if settings.auth_tokens:
        pairs += parse_tokens(settings.auth_tokens, "AUTH_TOKENS", lines_separated_by_semicolons=True)
    names = [rule.name for rule, _ in pairs]
    if len(set(names)) != len(names) or len({rule.digest for rule, _ in pairs}) != len(pairs):
        raise ConfigError("AUTH_TOKENS_FILE and AUTH_TOKENS share a token name or value", settings.source)
    return TokenTable(rule for rule, _ in pairs), [token for _, token in pairs]


class Access:
    """The app's access checks, built once from the settings by :func:`init_app`."""

    def __init__(self, publish_tokens: TokenTable | None, ops_token: str, ops_token_health: bool):
        self.publish_tokens = publish_tokens
        self.ops = TokenTable([TokenRule("ops", _digest(ops_token), None)]) if ops_token else None
        self.guarded = OPS_ROUTES + (HEALTH_ROUTES if ops_token_health else ())

    def check_publisher(self, authorization: str | None) -> TokenRule | None:
        """Who sent this ``Authorization`` header (None with auth off); :class:`Unauthorized` without a valid token."""
        if self.publish_tokens is None:
            return None
        token = bearer_token(authorization)
        if token is None:
            raise Unauthorized("this route needs an `Authorization: Bearer <token>` header")
        rule = self.publish_tokens.identify(token)
        if rule is None:
            raise Unauthorized("the bearer token is not valid", invalid_token=True)
        return rule

    @staticmethod
    def check_target(rule: TokenRule | None, conn_id: str, queue: str) -> None:
        """:class:`Forbidden` when the token may not use this id or queue."""
        if rule is None:
            return
        if not rule.may_use(conn_id):
            raise Forbidden(f"token {rule.name!r} may not use connection id {conn_id!r}")
        if not rule.may_publish_to(queue):
            raise Forbidden(f"token {rule.name!r} may not publish to that queue")

    @staticmethod
    def check_exchange(rule: TokenRule | None, conn_id: str, exchange: str, routing_key: str) -> None:
        """:class:`Forbidden` when the token may not use this id, or this exchange and routing key."""
        if rule is None:
            return
        if not rule.may_use(conn_id):
            raise Forbidden(f"token {rule.name!r} may not use connection id {conn_id!r}")
        if not rule.may_publish_via(exchange, routing_key):
            raise Forbidden(f"token {rule.name!r} may not publish to that exchange and routing key")

    def check_ops(self) -> None:
        """Before each request: the operator routes need ``OPS_TOKEN`` when it is set."""
        if self.ops is None or request.path not in self.guarded:
            return
        token = bearer_token(request.headers.get("Authorization"))
        if token is None:
            raise Unauthorized("this route needs the operator token (`Authorization: Bearer <token>`)")
        if self.ops.identify(token) is None:
            raise Unauthorized("the bearer token is not valid", invalid_token=True)


def init_app(app: Flask, settings: Settings) -> tuple[Access, list[str]]:
    """Install the checks on ``app``; the checks, and the raw tokens so the caller can mask them in logs."""
    table, tokens = load_tokens(settings)
    access = Access(table, settings.ops_token, settings.ops_token_health)
    app.before_request(access.check_ops)
    return access, tokens
