"""Connection ids: an id with its primary and optional backup servers (``RMQ_CONN_STR``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from app.config.uris import SEED_HINT, BrokerAddress, check_tls_files, parse_broker

CONN_ID_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")  # use fullmatch: "$" matches before a final newline

Servers = tuple[BrokerAddress, ...]


@dataclass(frozen=True)
class ConnectionSpec:
    """A connection id with its primary servers and optional backup servers.

    Each role is one server or several (``a;b;c`` in the config): the pool of
    that role spreads its connections over them.
    """

    conn_id: str
    primary: Servers
    backup: Servers = ()

    def brokers(self) -> list[tuple[str, Servers]]:
        """The (role, servers) pairs, primary first."""
        pairs = [("primary", self.primary)]
        if self.backup:
            pairs.append(("backup", self.backup))
        return pairs


def parse_servers(text: str) -> Servers:
    """One server, or several separated by ``;``."""
    parts = [part.strip() for part in text.split(";")]
    if any(not part for part in parts):
        raise ValueError(f"empty server in a ';' list; {SEED_HINT}")
    return tuple(parse_broker(part) for part in parts)


def parse_connection(conn_id: str, values: list[str], check_files: bool = True) -> ConnectionSpec:
    """Build a :class:`ConnectionSpec` from ``id`` and ``primary[,backup]``.

    Errors name neither the id nor any part of the brokers (the caller says
    where: a line number, a variable, a database row): a password cut short
    by a delimiter can land in the id's field as well as in any other.
    """
    if not CONN_ID_RE.fullmatch(conn_id):
        raise ValueError("invalid connection id (1-64 of A-Z a-z 0-9 _ . -)")
    values = [v.strip() for v in values]
    if not values or not values[0]:
        raise ValueError("no primary broker")
    if len(values) > 2:
        raise ValueError(f"expected primary[,backup], got {len(values)} fields; {SEED_HINT}")
    try:
        primary = parse_servers(values[0])
    except ValueError as exc:
        raise ValueError(f"primary: {exc}") from None
    backup: Servers = ()
    if len(values) == 2 and values[1]:
        try:
            backup = parse_servers(values[1])
        except ValueError as exc:
            raise ValueError(f"backup: {exc}") from None
    seed = [part for value in values for part in value.split(";") if part and "://" not in part]
    if len({"@" in part for part in seed}) > 1:
        # "u:ab,cd:ef@h/" reads as a server "u" on port "ab"... and another
        # with user "cd": a password's "," or ";" is the likelier story.
        raise ValueError(f"some servers are written with user:password@ and some without; {SEED_HINT}")
    spec = ConnectionSpec(conn_id, primary, backup)
    for role, servers in spec.brokers() if check_files else ():
        for address in servers:
            if address.tls:
                try:
                    check_tls_files(address)
                except ValueError as exc:
                    # The line parsed: the id is an id, the path a path (neither a password's piece).
                    raise ValueError(f"connection id {conn_id!r}: {role}: {exc}") from None
    return spec
