"""Configuration: the seed's ``KEY,value`` file, ``GATEWAY_<KEY>`` overrides, typed.

Parsed once at start-up into frozen objects (:class:`Settings`,
:class:`BrokerAddress`, :class:`ConnectionSpec`); nothing below this module
reads ``os.environ``. Every option is declared once in :data:`OPTIONS` with its
default, parser and doc; the README's table is :func:`options_table` verbatim
(a test keeps the two in step).

Errors are :class:`ConfigError` and print as one line,
``<file>:<line>: <problem>``, never with a password in it.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import ssl
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_CONFIG_PATH = "config/pool.cfg"
ENV_PREFIX = "GATEWAY_"
# GATEWAY_* variables that are not config keys: read by gunicorn.conf.py or here.
ENV_NOT_KEYS = {"CONFIG", "BIND", "WORKERS", "ACCESS_LOG", "METRICS_TMPDIR", "SECRETS_DIR", "WORKER_CONNECTIONS",
                "KEEPALIVE"}
CONN_ID_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")  # use fullmatch: "$" matches before a final newline
REDACTED = "***"


class ConfigError(ValueError):
    """A bad config file or value; ``str()`` is one line naming where and what."""

    def __init__(self, problem: str, source: str = "", line: int | None = None):
        self.problem = problem
        self.source = source
        self.line = line
        where = f"{source}:{line}" if source and line else source
        super().__init__(f"{where}: {problem}" if where else problem)


# --------------------------------------------------------------------------
# Brokers


@dataclass(frozen=True)
class BrokerAddress:
    """One RabbitMQ server: where it is and how to log in; prints without password."""

    host: str
    port: int
    vhost: str = "/"
    username: str = "guest"
    password: str = field(default="guest", repr=False)
    tls: bool = False
    # TLS options, from the amqps URI query (RabbitMQ's names).
    cacertfile: str | None = None
    certfile: str | None = None
    keyfile: str | None = field(default=None, repr=False)
    verify: bool = True
    server_name: str | None = None
    heartbeat: int | None = None

    @property
    def display(self) -> str:
        """The address as safe to log: scheme, user, host, port, vhost, no password."""
        scheme = "amqps" if self.tls else "amqp"
        vhost = urllib.parse.quote(self.vhost, safe="")
        return f"{scheme}://{self.username}@{self.host}:{self.port}/{vhost}"

    def __str__(self) -> str:
        return self.display


# A broker address holds a password, so no error about one quotes any part of
# it: a character of the password that the parser took for a delimiter (a ","
# or ";" in the seed form, a "/", "?" or "#" in a URI) moves the rest of the
# password into whatever field comes next (a port, a host, an option name, the
# next server). The messages say what is wrong and how to write the password.
SEED_HINT = ("a ',' or ';' in a password splits the line there: write that server as an amqp:// URI "
             "with the character percent-encoded (',' is %2C and ';' is %3B)")
URI_HINT = ("write a '/', '?', '#' or '@' in a user name or password percent-encoded "
            "('/' is %2F, '?' is %3F, '#' is %23 and '@' is %40)")


def tls_context(address: BrokerAddress) -> ssl.SSLContext:
    """The TLS context of an ``amqps`` server: its CA, client certificate and verification."""
    context = ssl.create_default_context(cafile=address.cacertfile)
    if address.certfile:
        context.load_cert_chain(address.certfile, address.keyfile)
    if not address.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def check_tls_files(address: BrokerAddress) -> None:
    """Raise ValueError (naming the option and the file) unless the server's TLS files load."""
    files = [(key, getattr(address, key)) for key in ("cacertfile", "certfile", "keyfile")]
    for key, path in files:
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except FileNotFoundError:
            raise ValueError(f"{key} {path!r}: file not found") from None
        except OSError as exc:
            raise ValueError(f"{key} {path!r}: cannot be read ({exc.__class__.__name__})") from None
    try:
        tls_context(address)
    except (ssl.SSLError, OSError, ValueError) as exc:
        named = ", ".join(f"{key} {path!r}" for key, path in files if path) or "the system CA store"
        reason = getattr(exc, "reason", None) or exc.__class__.__name__
        raise ValueError(f"{named}: not a usable certificate or key ({reason})") from None


def _port(text: str, default: int) -> int:
    if text == "":
        return default
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError("invalid port (a number from 1 to 65535)")
    return int(text)


def _vhost(path: str) -> str:
    # "", "/" and "%2F" all mean the default vhost "/" (the seed's rule; the
    # URI spec's empty vhost is never what an operator meant).
    name = urllib.parse.unquote(path[1:] if path.startswith("/") else path)
    return name or "/"


_URI_QUERY_KEYS = {
    "heartbeat",
    "cacertfile",
    "certfile",
    "keyfile",
    "verify",
    "server_name_indication",
}


def parse_broker(text: str) -> BrokerAddress:
    """Parse ``user:pass@host:port/vhost`` or an ``amqp://``/``amqps://`` URI."""
    text = text.strip()
    if not text:
        raise ValueError("empty broker address")
    if "://" in text:
        return _parse_uri(text)
    userinfo, sep, hostpart = text.rpartition("@")
    user, password = "guest", "guest"
    if sep:
        user, colon, password = userinfo.partition(":")
        if not colon or not user:
            raise ValueError(f"credentials must be written user:password@host ({SEED_HINT})")
    hostport, slash, path = hostpart.partition("/")
    host, colon, port = hostport.rpartition(":") if ":" in hostport else (hostport, "", "")
    if not host:
        raise ValueError("missing host")
    try:
        port_number = _port(port, 5672)
    except ValueError as exc:
        # Without credentials, "user:pass" of a password cut by a "," reads as host:port.
        raise ValueError(f"{exc}{'' if sep else f'; {SEED_HINT}'}") from None
    return BrokerAddress(
        host=host,
        port=port_number,
        vhost=_vhost(path if slash else ""),
        username=user,
        password=password,
    )


def _parse_uri(text: str) -> BrokerAddress:
    scheme, _, rest = text.partition("://")
    if scheme not in ("amqp", "amqps"):
        raise ValueError("unsupported scheme (use amqp:// or amqps://)")
    if "#" in text:
        # An AMQP URI has no fragment: a "#" is a password's, and would cut
        # the URI there (the host would silently become the user name).
        raise ValueError(f"a '#' has no place in an AMQP URI; {URI_HINT}")
    authority_end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    if "@" in rest[authority_end:]:
        # The user information ended early: a "/" or "?" of the password cut it.
        raise ValueError(f"an '@' after the host; {URI_HINT} (and an '@' in a vhost as %40)")
    try:
        parts = urllib.parse.urlsplit(text)
        hostname = parts.hostname
    except ValueError:
        # urllib's own message quotes the whole authority, password included.
        raise ValueError(f"invalid host; {URI_HINT} ('[' is %5B and ']' is %5D)") from None
    tls = parts.scheme == "amqps"
    try:
        port = parts.port
    except ValueError:
        raise ValueError("invalid port (a number from 1 to 65535)") from None
    if not hostname:
        raise ValueError("missing host")
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    if set(query) - _URI_QUERY_KEYS:
        # Not quoted: with a "?" in a password and no "@" left, a piece of it is here.
        raise ValueError(f"unknown URI option (the options are {', '.join(sorted(_URI_QUERY_KEYS))}); {URI_HINT}")
    if not tls and query.keys() & {"cacertfile", "certfile", "keyfile", "verify"}:
        raise ValueError("TLS options need an amqps:// URI")

    def one(key: str) -> str | None:
        values = query.get(key)
        return values[-1] if values else None

    heartbeat = one("heartbeat")
    if heartbeat is not None and not heartbeat.isdigit():
        raise ValueError("heartbeat must be a whole number of seconds")
    verify = one("verify") or "verify_peer"
    if verify not in ("verify_peer", "verify_none"):
        raise ValueError("verify must be verify_peer or verify_none")
    return BrokerAddress(
        host=hostname,
        port=port or (5671 if tls else 5672),
        vhost=_vhost(parts.path),
        username=urllib.parse.unquote(parts.username) if parts.username else "guest",
        password=urllib.parse.unquote(parts.password) if parts.password is not None else "guest",
        tls=tls,
        cacertfile=one("cacertfile"),
        certfile=one("certfile"),
        keyfile=one("keyfile"),
        verify=verify == "verify_peer",
        server_name=one("server_name_indication"),
        heartbeat=int(heartbeat) if heartbeat is not None else None,
    )


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


# --------------------------------------------------------------------------
# Scalar options


def parse_bool(text: str) -> bool:
    """``true/false``, ``yes/no``, ``on/off``, ``1/0``, any case."""
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "on", "1"):
        return True
    if lowered in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _number(kind: Callable[[str], Any], low: float, high: float | None = None) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text.strip())
        except ValueError:
            raise ValueError(f"expected a {kind.__name__}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ValueError(f"must be {bound}, got {text!r}")
        return value

    return parse


def _text(text: str) -> str:
    return text.strip()


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}, got {text!r}")
        return value

    return parse


# libzmq's limit for an ipc:// path (sockaddr_un.sun_path, less the NUL).
_IPC_PATH_MAX = 107
_Z85 = re.compile(r"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")


def _zmq_address(text: str) -> str:
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


def _z85_keys(text: str) -> tuple[str, ...]:
    """Space-separated 40-character Z85 CURVE public keys."""
    keys = tuple(text.split())
    for key in keys:
        if not _Z85.fullmatch(key):
            raise ValueError(f"not a 40-character Z85 public key: {key[:12]!r}...")
    return keys


MIN_TOKEN_LENGTH = 16  # bearer tokens, publish and operator alike
TOKEN_RE = re.compile(r"[\x21-\x7e]+")  # use fullmatch; printable ASCII, no spaces (RFC 6750 b64token and more)


def _ops_token(text: str) -> str:
    """Empty (no token), or a bearer token as long and as printable as a publish token."""
    token = text.strip()
    if token and (len(token) < MIN_TOKEN_LENGTH or not TOKEN_RE.fullmatch(token)):
        # Not quoted: it is a secret, however weak.
        raise ValueError(f"must be at least {MIN_TOKEN_LENGTH} printable characters without spaces "
                         "(e.g. `openssl rand -hex 24`), like a publish token")
    return token


def _log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError(f"expected DEBUG, INFO, WARNING or ERROR, got {text!r}")
    return level


@dataclass(frozen=True)
class Option:
    """One scalar setting: its key in the file, field name, default, parser and doc."""

    key: str
    name: str
    default: str
    parse: Callable[[str], Any]
    doc: str
    aliases: tuple[str, ...] = ()
    secret: bool = False


OPTIONS: tuple[Option, ...] = (
    Option("USE_DB", "use_db", "false", parse_bool,
           "Read connection strings from PostgreSQL (table `rmq_connections`).",
           aliases=("UWS_USE_DB",)),
    Option("DB_NAME", "db_name", "postgres", _text, "PostgreSQL database name."),
    Option("DB_USERNAME", "db_username", "postgres", _text, "PostgreSQL user."),
    Option("DB_PASSWORD", "db_password", "", _text, "PostgreSQL password (prefer `GATEWAY_DB_PASSWORD`).",
           secret=True),
    Option("DB_HOST_ADDRESS", "db_host", "127.0.0.1", _text, "PostgreSQL host."),
    Option("DB_PORT", "db_port", "5432", _number(int, 1, 65535), "PostgreSQL port."),
    Option("DB_TIMEOUT", "db_timeout", "5", _number(float, 0.1, 120.0),
           "Seconds allowed to connect to PostgreSQL and for each query."),
    Option("DB_RESYNC_INTERVAL", "db_resync_interval", "10", _number(float, 0.2, 86400.0),
           "Seconds between full re-reads of `rmq_connections`: the safety net for missed notifications "
           "(changes normally arrive at once by LISTEN/NOTIFY); it also notices a silently dead database link."),
    Option("DB_RECONNECT_BACKOFF_MAX", "db_reconnect_backoff_max", "5", _number(float, 0.05, 300.0),
           "Longest pause between attempts to reach PostgreSQL (exponential from 0.1 s)."),
    Option("NO_OF_CONNECTIOS", "pool_size", "5", _number(int, 1, 1000),
           "Connections kept open per RabbitMQ server (seed spelling).",
           aliases=("NO_OF_CONNECTIONS", "POOL_SIZE")),
    Option("ZMQ_SOCK_ADDRESS", "zmq_address", "", _zmq_address,
           "ZeroMQ address producers connect to (`ipc://...` or `tcp://...`); empty: ZeroMQ off."),
    Option("ZMQ_MAX_IN_FLIGHT", "zmq_max_in_flight", "2000", _number(int, 1, 1_000_000),
           "ZeroMQ messages one worker holds unanswered; when every worker is full the relay stops "
           "reading producers and ZeroMQ's high-water marks push back on them."),
    Option("ZMQ_CURVE_SERVER_KEY", "zmq_curve_server_key", "", _text,
           "File with the service's CURVE key pair (a ZeroMQ secret certificate); set, producers "
           "must connect with CURVE and an allowed key. Empty: CURVE off."),
    Option("ZMQ_CURVE_CLIENT_KEYS_DIR", "zmq_curve_client_keys_dir", "", _text,
           "Directory of the allowed producers' public certificates (`*.key`)."),
    Option("ZMQ_CURVE_CLIENT_KEYS", "zmq_curve_client_keys", "", _z85_keys,
           "Allowed producers' CURVE public keys (Z85, 40 characters), separated by spaces."),
    Option("POOL_TIMEOUT", "pool_timeout", "2", _number(float, 0.0, 60.0),
           "Seconds a publish waits for a free pooled connection before `503 pool_timeout`."),
    Option("CONFIRM_TIMEOUT", "confirm_timeout", "5", _number(float, 0.1, 120.0),
           "Seconds to wait for the broker's confirm before `503 confirm_timeout`."),
    Option("QUEUE_CIRCUIT_OPEN", "queue_circuit_open", "5", _number(float, 0.0, 3600.0),
           "Seconds a queue that stopped confirming (while the broker's other queues confirm) is answered "
           "`503 queue_unavailable` at once, before one trial publish; 0: off."),
    Option("PUBLISH_TIMEOUT", "publish_timeout", "8", _number(float, 0.1, 300.0),
           "Overall deadline of one publish, retries and failover included."),
    Option("CONNECT_TIMEOUT", "connect_timeout", "3", _number(float, 0.1, 60.0),
           "Seconds to open one AMQP connection (TCP, TLS, handshake)."),
    Option("HEARTBEAT", "heartbeat", "10", _number(int, 0, 3600),
           "AMQP heartbeat in seconds proposed to the broker (0: off); a URI's `?heartbeat=` wins."),
    Option("KEEPALIVE_INTERVAL", "keepalive_interval", "15", _number(float, 0.1, 3600.0),
           "Seconds between keepalive checks of each idle pooled connection."),
    Option("CONNECTION_MAX_AGE", "max_age", "3600", _number(float, 0.0),
           "Seconds after which an idle connection is closed and replaced (0: never)."),
    Option("RECONNECT_BACKOFF_MAX", "reconnect_backoff_max", "2", _number(float, 0.05, 300.0),
           "Longest pause between reconnect attempts to a failing broker (exponential from 0.05 s)."),
    Option("HEALTH_INTERVAL", "health_interval", "1", _number(float, 0.05, 60.0),
           "Seconds between health probes of each broker."),
    Option("HEALTH_RISE", "health_rise", "3", _number(int, 1, 100),
           "Consecutive good probes before a down broker takes traffic again."),
    Option("HEALTH_FALL", "health_fall", "2", _number(int, 1, 100),
           "Consecutive failures (connects, health probes, confirm timeouts) that mark a broker down."),
    Option("POOL_MIN_SIZE", "pool_min_size", "-1", _number(int, -1, 1000),
           "Connections always kept open per server role; idle ones above it are closed after "
           "`POOL_IDLE_TIMEOUT` (-1: the pool size, no shrinking).", aliases=("MIN_CONNECTIONS",)),
    Option("BACKUP_WARM_SIZE", "backup_warm_size", "1", _number(int, 0, 1000),
           "Connections a pool keeps open per worker while no connection id publishes to it (a backup "
           "whose primaries are healthy), beside its health check; it grows at once on a failover."),
    Option("POOL_MAX_OVERFLOW", "pool_max_overflow", "2", _number(int, 0, 1000),
           "Extra connections opened under peak load beyond the pool size, closed when returned."),
    Option("POOL_OVERFLOW_WAIT", "pool_overflow_wait", "0.1", _number(float, 0.0, 60.0),
           "Seconds a publish waits for a pooled connection before opening an overflow one."),
    Option("POOL_IDLE_TIMEOUT", "pool_idle_timeout", "300", _number(float, 0.0),
           "Seconds an idle connection above `POOL_MIN_SIZE` is kept before it is closed (0: never)."),
    Option("POOL_OPEN_RATE", "pool_open_rate", "10", _number(float, 0.1, 10000.0),
           "Connections a second one pool may open after a burst of pool size + overflow, whatever kills them "
           "(a broker closing them over a message, a flapping network)."),
    Option("SERVER_SELECTION", "server_selection", "round_robin", _choice("round_robin", "random"),
           "How a role with several servers (`a;b;c`) spreads its connections: round_robin or random."),
    Option("SERVER_QUARANTINE", "server_quarantine", "5", _number(float, 0.0, 3600.0),
           "Seconds a server that failed to connect is skipped before it is tried (probed) again."),
    Option("REBALANCE_INTERVAL", "rebalance_interval", "10", _number(float, 0.0, 3600.0),
           "Seconds between steps that move one idle connection from the role's busiest server to one "
           "with at least two fewer (a server back after a failure gets its share again); 0: off."),
    Option("RETRY_BUDGET_RATIO", "retry_budget_ratio", "0.2", _number(float, 0.0, 10.0),
           "Retries allowed per publish attempt on average (one attempt sends one message or one batch, "
           "and one retry resends one); a flapping broker cannot multiply the load."),
    Option("RETRY_BUDGET_MIN", "retry_budget_min", "10", _number(float, 0.0, 100000.0),
           "Retries per second always allowed, whatever the ratio."),
    Option("NACK_RETIRE_AFTER", "nack_retire_after", "5", _number(int, 0, 100000),
           "Nacks in a row, with no ack between, after which a connection is retired and those messages "
           "retried once on another (a channel broken on its own, e.g. after a quorum queue's leader change); "
           "0: never."),
    Option("NACK_QUEUE_HOLD", "nack_queue_hold", "60", _number(float, 0.0, 86400.0),
           "Seconds a queue whose nacks were its own (nacked again on a fresh connection: full, "
           "`reject-publish`) retires no connection and gets no retry."),
    Option("MAX_BODY_SIZE", "max_body_size", "1048576", _number(int, 1, 512 * 1024 * 1024),
           "Largest accepted request body in bytes (`413` above it)."),
    Option("CLIENT_BODY_TIMEOUT", "client_body_timeout", "10", _number(float, 0.1, 3600.0),
           "Seconds a client has to send a request body once its headers are in (each gets 75-100 % of it); then "
           "`408` and the connection is closed, nothing published (headers: gunicorn's `keepalive`, "
           "`GATEWAY_KEEPALIVE`)."),
    Option("BATCH_MAX_MESSAGES", "batch_max_messages", "1000", _number(int, 1, 100000),
           "Most messages in one `POST /publish/batch`."),
    Option("BATCH_MAX_SIZE", "batch_max_size", "16777216", _number(int, 1, 1024 * 1024 * 1024),
           "Largest `POST /publish/batch` body in bytes (each message is still held to `MAX_BODY_SIZE`)."),
    Option("MANDATORY", "mandatory", "true", parse_bool,
           "Publish with mandatory=true so a message to no queue is `422 unroutable`."),
    Option("PERSISTENT", "persistent", "true", parse_bool,
           "Publish with delivery_mode=2 (survives a broker restart in a durable queue)."),
    Option("RETRY_AFTER", "retry_after", "1", _number(int, 0, 3600),
           "Seconds put in the `Retry-After` header of a `503`."),
    Option("LOG_LEVEL", "log_level", "INFO", _log_level, "DEBUG, INFO, WARNING or ERROR."),
    Option("MAX_CONNECTION_IDS", "max_connection_ids", "100", _number(int, 1, 10000),
           "Most connection ids accepted (file, environment or database): each costs connections "
           "and metric series. More fails start-up."),
    Option("MAX_CONNECTIONS_PER_SERVER", "max_connections_per_server", "200", _number(int, 0, 100000),
           "Most AMQP connections the gateway (all its workers, each taking an equal share) opens to one "
           "broker server (host and port, every vhost and user, health checks included). At the cap a "
           "publish that needs a new connection gets `503 connection_cap`; 0: no cap."),
    Option("AUTH_TOKENS_FILE", "auth_tokens_file", "", _text,
           "File of bearer tokens for `/publish`, one per line: `name token ids [queue-patterns]` "
           "(docs/operations.md). Set (or `AUTH_TOKENS`): `/publish` needs a token."),
    Option("AUTH_TOKENS", "auth_tokens", "", _text,
           "The same token lines inline, separated by `;` or newlines; meant for `GATEWAY_AUTH_TOKENS` "
           "from a Kubernetes Secret.", secret=True),
    Option("OPS_TOKEN", "ops_token", "", _ops_token,
           "Bearer token required on `/metrics` and `/pools` (empty: they are open); at least 16 "
           "printable characters, like a publish token.", secret=True),
    Option("OPS_TOKEN_HEALTH", "ops_token_health", "false", parse_bool,
           "Require `OPS_TOKEN` on `/healthz` and `/readyz` too (then the probes must send it)."),
)

_BY_KEY = {alias: opt for opt in OPTIONS for alias in (opt.key, *opt.aliases)}


@dataclass(frozen=True)
class Settings:
    """Everything the gateway is configured with; built by :func:`load_settings`."""

    connections: tuple[ConnectionSpec, ...] = ()
    source: str = "<defaults>"
    use_db: bool = False
    db_name: str = "postgres"
    db_username: str = "postgres"
    db_password: str = field(default="", repr=False)
    db_host: str = "127.0.0.1"
    db_port: int = 5432
    db_timeout: float = 5.0
    db_resync_interval: float = 10.0
    db_reconnect_backoff_max: float = 5.0
    pool_size: int = 5
    zmq_address: str = ""
    zmq_max_in_flight: int = 2000
    zmq_curve_server_key: str = ""
    zmq_curve_client_keys_dir: str = ""
    zmq_curve_client_keys: tuple[str, ...] = ()
    pool_timeout: float = 2.0
    confirm_timeout: float = 5.0
    queue_circuit_open: float = 5.0
    publish_timeout: float = 8.0
    connect_timeout: float = 3.0
    heartbeat: int = 10
    keepalive_interval: float = 15.0
    max_age: float = 3600.0
    reconnect_backoff_max: float = 2.0
    health_interval: float = 1.0
    health_rise: int = 3
    health_fall: int = 2
    pool_min_size: int = -1
    backup_warm_size: int = 1
    pool_max_overflow: int = 2
    pool_overflow_wait: float = 0.1
    pool_idle_timeout: float = 300.0
    pool_open_rate: float = 10.0
    server_selection: str = "round_robin"
    server_quarantine: float = 5.0
    rebalance_interval: float = 10.0
    retry_budget_ratio: float = 0.2
    retry_budget_min: float = 10.0
    nack_retire_after: int = 5
    nack_queue_hold: float = 60.0
    max_body_size: int = 1048576
    client_body_timeout: float = 10.0
    batch_max_messages: int = 1000
    batch_max_size: int = 16777216
    mandatory: bool = True
    persistent: bool = True
    retry_after: int = 1
    log_level: str = "INFO"
    max_connection_ids: int = 100
    max_connections_per_server: int = 200
    auth_tokens_file: str = ""
    auth_tokens: str = field(default="", repr=False)
    ops_token: str = field(default="", repr=False)
    ops_token_health: bool = False
    # AUTH_TOKENS_FILE's text as read when the config was validated (app.config.check):
    # forked workers use it rather than read the file again.
    auth_tokens_file_text: str | None = field(default=None, repr=False)

    @property
    def min_size(self) -> int:
        """Connections kept open per role, whatever the load."""
        return self.pool_size if self.pool_min_size < 0 else self.pool_min_size

    def connection(self, conn_id: str) -> ConnectionSpec | None:
        """The spec of one connection id, or None."""
        for spec in self.connections:
            if spec.conn_id == conn_id:
                return spec
        return None

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (tests use it)."""
        return dataclasses.replace(self, **changes)

    def secrets(self) -> list[str]:
        """Every password and token configured, for the log redactor."""
        found = [getattr(self, opt.name) for opt in OPTIONS if opt.secret and getattr(self, opt.name)]
        for spec in self.connections:
            for _, servers in spec.brokers():
                found.extend(addr.password for addr in servers if addr.password)
        return found

    def describe(self) -> dict[str, Any]:
        """The settings as a dict safe to log: addresses without passwords."""
        out: dict[str, Any] = {}
        for opt in OPTIONS:
            value = getattr(self, opt.name)
            out[opt.key] = (REDACTED if value else "") if opt.secret else value
        out["RMQ_CONN_STR"] = {
            spec.conn_id: [";".join(a.display for a in servers) for _, servers in spec.brokers()]
            for spec in self.connections
        }
        out["source"] = self.source
        return out


# --------------------------------------------------------------------------
# Loading


def _split_line(raw: str) -> list[str] | None:
    line = raw.strip()
    if not line or line.startswith("#"):
        return None
    return [part.strip() for part in line.split(",")]


ScalarLines = dict[str, tuple[str, int]]  # key -> (raw value, line number)
ConnectionLines = dict[str, tuple[list[str], int]]  # id -> (brokers, line number)


def parse_lines(lines: Iterable[str], source: str) -> tuple[ScalarLines, ConnectionLines]:
    """Read ``KEY,value`` lines into scalars and connection strings, with line numbers."""
    scalars: dict[str, tuple[str, int]] = {}
    connections: dict[str, tuple[list[str], int]] = {}
    for number, raw in enumerate(lines, start=1):
        parts = _split_line(raw)
        if parts is None:
            continue
        key = parts[0].upper()
        if key == "RMQ_CONN_STR":
            if len(parts) < 3:
                raise ConfigError("RMQ_CONN_STR needs an id and a primary broker: "
                                  "RMQ_CONN_STR,<id>,<primary>[,<backup>]", source, number)
            conn_id = parts[1]
            if conn_id in connections:
                first = connections[conn_id][1]
                raise ConfigError(f"RMQ_CONN_STR: connection id defined twice (first on line {first})",
                                  source, number)
            connections[conn_id] = (parts[2:], number)
            continue
        option = _BY_KEY.get(key)
        if option is None:
            # Not quoted: a line's first field is a password's tail when a
            # line break cut it; the closest key is shown instead.
            close = difflib.get_close_matches(key, _BY_KEY, n=1)
            raise ConfigError(f"unknown key{f' (did you mean {close[0]}?)' if close else ''}", source, number)
        if len(parts) != 2:
            raise ConfigError(f"{key} takes exactly one value", source, number)
        scalars[option.key] = (parts[1], number)
    return scalars, connections


def read_text_file(path: str, what: str = "config file") -> str:
    """The text of a file the config names; a one-line ConfigError if it cannot be read."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        raise ConfigError(f"{what} not found", path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {what}: {exc.__class__.__name__}", path) from None


_adopted: Settings | None = None


def adopt(settings: Settings | None) -> None:
    """Make :func:`current_settings` return these (a worker, given what its master validated)."""
    global _adopted
    _adopted = settings


def current_settings() -> Settings:
    """The settings adopted from the gunicorn master, else read from the file and environment now."""
    return _adopted if _adopted is not None else load_settings()


def load_settings(path: str | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read the file (``GATEWAY_CONFIG`` or the default) and apply ``GATEWAY_*`` overrides.

    The overrides are the environment plus, with ``GATEWAY_SECRETS_DIR``, the
    files in that directory named ``GATEWAY_*`` (a Kubernetes Secret mounted as
    a volume: secrets stay out of the process environment). A variable set in
    the environment wins over a file of the same name.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    path = path or env.get(ENV_PREFIX + "CONFIG") or DEFAULT_CONFIG_PATH
    secrets_dir = env.get(ENV_PREFIX + "SECRETS_DIR")
    if secrets_dir:
        env = {**secret_files(secrets_dir), **env}
    return settings_from_text(read_text_file(path), path, env)


def secret_files(directory: str) -> dict[str, str]:
    """``{name: value}`` for each file named ``GATEWAY_*`` in ``directory`` (one final newline dropped)."""
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        raise ConfigError(f"cannot read the secrets directory: {exc.__class__.__name__}",
                          f"environment {ENV_PREFIX}SECRETS_DIR={directory}") from None
    found = {}
    for name in names:
        file_path = os.path.join(directory, name)
        # Kubernetes mounts keys as symlinks into a hidden ..data directory: follow them, skip the rest.
        if name.startswith(ENV_PREFIX) and os.path.isfile(file_path):
            value = read_text_file(file_path, "secret file")
            found[name] = value[:-1] if value.endswith("\n") else value
    return found


def settings_from_text(text: str, source: str = "<text>", environ: Mapping[str, str] | None = None,
                       check_files: bool = True) -> Settings:
    """Build :class:`Settings` from config text plus ``GATEWAY_*`` overrides.

    ``check_files=False`` skips loading the TLS files it names (a config
    checked on another machine than the one it is meant for).
    """
    scalars, conn_lines = parse_lines(text.splitlines(), source)
    values: dict[str, Any] = {}
    for key, (raw, number) in scalars.items():
        option = _BY_KEY[key]
        try:
            values[option.name] = option.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}", source, number) from None
    specs: dict[str, ConnectionSpec] = {}
    for conn_id, (parts, number) in conn_lines.items():
        try:
            specs[conn_id] = parse_connection(conn_id, parts, check_files)
        except ValueError as exc:
            raise ConfigError(f"RMQ_CONN_STR: {exc}", source, number) from None

    for name, raw in sorted((environ or {}).items()):
        if not name.startswith(ENV_PREFIX) or name[len(ENV_PREFIX):] in ENV_NOT_KEYS:
            continue
        key = name[len(ENV_PREFIX):]
        if key.startswith("RMQ_CONN_STR_"):
            conn_id = key[len("RMQ_CONN_STR_"):]
            try:
                specs[conn_id] = parse_connection(conn_id, raw.split(","), check_files)
            except ValueError as exc:
                raise ConfigError(str(exc), f"environment {name}") from None
            continue
        env_option = _BY_KEY.get(key)
        if env_option is None:
            raise ConfigError(f"unknown key {key!r}", f"environment {name}")
        option = env_option
        try:
            values[option.name] = option.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{option.key}: {exc}", f"environment {name}") from None

    settings = Settings(connections=tuple(specs[k] for k in sorted(specs)), source=source, **values)
    if settings.pool_min_size > settings.pool_size:
        raise ConfigError(f"POOL_MIN_SIZE ({settings.pool_min_size}) is above the pool size "
                          f"NO_OF_CONNECTIOS ({settings.pool_size})", source)
    if not settings.use_db and not settings.connections:
        raise ConfigError("no connection id configured and USE_DB is false: nothing to publish to (add "
                          "RMQ_CONN_STR,<id>,<primary>[,<backup>] lines, or set "
                          "GATEWAY_RMQ_CONN_STR_<id>=<primary>[,<backup>] in the environment)", source)
    check_connection_count(len(settings.connections), settings.max_connection_ids, source)
    if settings.zmq_curve_server_key and not (settings.zmq_curve_client_keys_dir or settings.zmq_curve_client_keys):
        # CURVE with nobody allowed would refuse every producer; say so at start-up.
        raise ConfigError("ZMQ_CURVE_SERVER_KEY needs ZMQ_CURVE_CLIENT_KEYS_DIR or ZMQ_CURVE_CLIENT_KEYS", source)
    return settings


def check_connection_count(count: int, limit: int, source: str) -> None:
    """Refuse more connection ids than ``MAX_CONNECTION_IDS`` with one clear line."""
    if count > limit:
        raise ConfigError(f"{count} connection ids configured, more than MAX_CONNECTION_IDS={limit} "
                          "(raise the limit if they are all meant)", source)


def options_table() -> str:
    """The Markdown table of options for the README."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for opt in OPTIONS:
        names = " / ".join(f"`{k}`" for k in (opt.key, *opt.aliases))
        rows.append(f"| {names} | `{opt.default or '(empty)'}` | {opt.doc} |")
    return "\n".join(rows)


def _check_defaults() -> None:
    # Keep the dataclass defaults and the documented option defaults in step.
    fields = {f.name: f.default for f in dataclasses.fields(Settings)}
    for opt in OPTIONS:
        assert fields[opt.name] == opt.parse(opt.default), opt.key


_check_defaults()
