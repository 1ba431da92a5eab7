"""The gateway's settings: each option declared once, as a field of :class:`Settings`.

A field is ``name: type = TOPIC.option(KEY, default, parser, doc)``: the key
in the file (and in ``GATEWAY_<KEY>``), the field's name and type, the default
as it is written in the file, its parser and the README's text, in one place.
The field's default is the parser's value of that text, so the documented
default and the real one cannot differ; :data:`OPTIONS` (what the loader
reads) and :func:`options_table` (the README's table, one sub-table per
topic) are derived from the fields.

Why fields that carry their option, rather than a list of options from which
the class is generated (``dataclasses.make_dataclass``): mypy cannot see the
fields of a generated class, so every ``settings.x`` would be ``Any`` unless
a stub repeated each name and type, a second copy to keep in step. Declared
as fields, each attribute keeps its type, and since :meth:`Topic.option
<app.config.options.Topic.option>` returns what its parser returns, mypy also
checks each parser against its field's annotation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from app.config.connections import ConnectionSpec
from app.config.options import (
    Topic,
    choice,
    declared_options,
    number,
    parse_bool,
    parse_log_level,
    parse_ops_token,
    parse_text,
    parse_vhost_map,
    parse_z85_keys,
    parse_zmq_address,
)

REDACTED = "***"

# The README's sub-tables, in this order (the fields below follow it).
POOLS = Topic("Connections and pools")
HEALTH = Topic("Health and failover")
PUBLISHING = Topic("Publishing")
HTTP = Topic("HTTP")
ZEROMQ = Topic("ZeroMQ")
POSTGRESQL = Topic("PostgreSQL")
SECURITY = Topic("Security")
LOGGING = Topic("Logging")


@dataclass(frozen=True)
class Settings:
    """Everything the gateway is configured with; built by :func:`~app.config.loader.load_settings`."""

    connections: tuple[ConnectionSpec, ...] = ()
    source: str = "<defaults>"

    pool_size: int = POOLS.option("NO_OF_CONNECTIOS", "5", number(int, 1, 1000),
        "Connections kept open per RabbitMQ server (seed spelling).", aliases=("NO_OF_CONNECTIONS", "POOL_SIZE"))
    pool_min_size: int = POOLS.option("POOL_MIN_SIZE", "-1", number(int, -1, 1000),
        "Connections always kept open per server role; idle ones above it are closed after "
        "`POOL_IDLE_TIMEOUT` (-1: the pool size, no shrinking).", aliases=("MIN_CONNECTIONS",))
    backup_warm_size: int = POOLS.option("BACKUP_WARM_SIZE", "1", number(int, 0, 1000),
        "Connections a pool keeps open per worker while no connection id publishes to it (a backup whose "
        "primaries are healthy), beside its health check; it grows at once on a failover.")
    pool_max_overflow: int = POOLS.option("POOL_MAX_OVERFLOW", "2", number(int, 0, 1000),
        "Extra connections opened under peak load beyond the pool size, closed when returned.")
    pool_overflow_wait: float = POOLS.option("POOL_OVERFLOW_WAIT", "0.1", number(float, 0.0, 60.0),
        "Seconds a publish waits for a pooled connection before opening an overflow one.")
    pool_timeout: float = POOLS.option("POOL_TIMEOUT", "2", number(float, 0.0, 60.0),
        "Seconds a publish waits for a free pooled connection before `503 pool_timeout`.")
    pool_idle_timeout: float = POOLS.option("POOL_IDLE_TIMEOUT", "300", number(float, 0.0),
        "Seconds an idle connection above `POOL_MIN_SIZE` is kept before it is closed (0: never).")
    pool_open_rate: float = POOLS.option("POOL_OPEN_RATE", "10", number(float, 0.1, 10000.0),
        "Connections a second one pool may open after a burst of pool size + overflow, whatever kills them (a "
        "broker closing them over a message, a flapping network).")
    connect_timeout: float = POOLS.option("CONNECT_TIMEOUT", "3", number(float, 0.1, 60.0),
        "Seconds to open one AMQP connection (TCP, TLS, handshake).")
    heartbeat: int = POOLS.option("HEARTBEAT", "10", number(int, 0, 3600),
        "AMQP heartbeat in seconds proposed to the broker (0: off); a URI's `?heartbeat=` wins.")
    keepalive_interval: float = POOLS.option("KEEPALIVE_INTERVAL", "15", number(float, 0.1, 3600.0),
        "Seconds between keepalive checks of each idle pooled connection.")
    max_age: float = POOLS.option("CONNECTION_MAX_AGE", "3600", number(float, 0.0),
        "Seconds after which an idle connection is closed and replaced (0: never).")
    reconnect_backoff_max: float = POOLS.option("RECONNECT_BACKOFF_MAX", "2", number(float, 0.05, 300.0),
        "Longest pause between reconnect attempts to a failing broker (exponential from 0.05 s).")
    server_selection: str = POOLS.option("SERVER_SELECTION", "round_robin", choice("round_robin", "random"),
        "How a role with several servers (`a;b;c`) spreads its connections: round_robin or random.")
    server_quarantine: float = POOLS.option("SERVER_QUARANTINE", "5", number(float, 0.0, 3600.0),
        "Seconds a server that failed to connect is skipped before it is tried (probed) again.")
    rebalance_interval: float = POOLS.option("REBALANCE_INTERVAL", "10", number(float, 0.0, 3600.0),
        "Seconds between steps that move one idle connection from the role's busiest server to one with at "
        "least two fewer (a server back after a failure gets its share again); 0: off.")
    max_connection_ids: int = POOLS.option("MAX_CONNECTION_IDS", "100", number(int, 1, 10000),
        "Most connection ids accepted (file, environment or database): each costs connections and metric "
        "series. More fails start-up.")
    max_connections_per_server: int = POOLS.option("MAX_CONNECTIONS_PER_SERVER", "200", number(int, 0, 100000),
        "Most AMQP connections the gateway (all its workers, each taking an equal share) opens to one broker "
        "server (host and port, every vhost and user, health checks included). At the cap a publish that needs "
        "a new connection gets `503 connection_cap`; 0: no cap.")

    health_interval: float = HEALTH.option("HEALTH_INTERVAL", "1", number(float, 0.05, 60.0),
        "Seconds between health probes of each broker.")
    health_rise: int = HEALTH.option("HEALTH_RISE", "3", number(int, 1, 100),
        "Consecutive good probes before a down broker takes traffic again.")
    health_fall: int = HEALTH.option("HEALTH_FALL", "2", number(int, 1, 100),
        "Consecutive failures (connects, health probes, confirm timeouts) that mark a broker down.")

    mandatory: bool = PUBLISHING.option("MANDATORY", "true", parse_bool,
        "Publish with mandatory=true so a message to no queue is `422 unroutable`.")
    persistent: bool = PUBLISHING.option("PERSISTENT", "true", parse_bool,
        "Publish with delivery_mode=2 (survives a broker restart in a durable queue).")
    confirm_timeout: float = PUBLISHING.option("CONFIRM_TIMEOUT", "5", number(float, 0.1, 120.0),
        "Seconds to wait for the broker's confirm before `503 confirm_timeout`.")
    publish_timeout: float = PUBLISHING.option("PUBLISH_TIMEOUT", "8", number(float, 0.1, 300.0),
        "Overall deadline of one publish, retries and failover included.")
    queue_circuit_open: float = PUBLISHING.option("QUEUE_CIRCUIT_OPEN", "5", number(float, 0.0, 3600.0),
        "Seconds a queue that stopped confirming (while the broker's other queues confirm) is answered `503 "
        "queue_unavailable` at once, before one trial publish; 0: off.")
    retry_budget_ratio: float = PUBLISHING.option("RETRY_BUDGET_RATIO", "0.2", number(float, 0.0, 10.0),
        "Retries allowed per publish attempt on average (one attempt sends one message or one batch, and one "
        "retry resends one); a flapping broker cannot multiply the load.")
    retry_budget_min: float = PUBLISHING.option("RETRY_BUDGET_MIN", "10", number(float, 0.0, 100000.0),
        "Retries per second always allowed, whatever the ratio.")
    nack_retire_after: int = PUBLISHING.option("NACK_RETIRE_AFTER", "5", number(int, 0, 100000),
        "Nacks in a row, with no ack between, after which a connection is retired and those messages retried "
        "once on another (a channel broken on its own, e.g. after a quorum queue's leader change); 0: never.")
    nack_queue_hold: float = PUBLISHING.option("NACK_QUEUE_HOLD", "60", number(float, 0.0, 86400.0),
        "Seconds a queue whose nacks were its own (nacked again on a fresh connection: full, "
        "`reject-publish`) retires no connection and gets no retry.")

    max_body_size: int = HTTP.option("MAX_BODY_SIZE", "1048576", number(int, 1, 512 * 1024 * 1024),
        "Largest accepted request body in bytes (`413` above it).")
    client_body_timeout: float = HTTP.option("CLIENT_BODY_TIMEOUT", "10", number(float, 0.1, 3600.0),
        "Seconds a client has to send a request body once its headers are in (each gets 75-100 % of it); then "
        "`408` and the connection is closed, nothing published (headers: gunicorn's `keepalive`, "
        "`GATEWAY_KEEPALIVE`).")
    batch_max_messages: int = HTTP.option("BATCH_MAX_MESSAGES", "1000", number(int, 1, 100000),
        "Most messages in one `POST /publish/batch`.")
    batch_max_size: int = HTTP.option("BATCH_MAX_SIZE", "16777216", number(int, 1, 1024 * 1024 * 1024),
        "Largest `POST /publish/batch` body in bytes (each message is still held to `MAX_BODY_SIZE`).")
    management_vhosts: tuple[tuple[str, str], ...] = HTTP.option("MANAGEMENT_VHOSTS", "", parse_vhost_map,
        "The management-API-compatible `POST /api/exchanges/{vhost}/{exchange}/publish`: which connection id "
        "serves each vhost, as space-separated `vhost=connection_id` pairs (`/=local orders=shop`; a vhost "
        "percent-encoded if it holds a space or `=`). Empty: every vhost is `404 unknown_vhost`.")
    retry_after: int = HTTP.option("RETRY_AFTER", "1", number(int, 0, 3600),
        "Seconds put in the `Retry-After` header of a `503`.")

    zmq_address: str = ZEROMQ.option("ZMQ_SOCK_ADDRESS", "", parse_zmq_address,
        "ZeroMQ address producers connect to (`ipc://...` or `tcp://...`); empty: ZeroMQ off.")
    zmq_max_in_flight: int = ZEROMQ.option("ZMQ_MAX_IN_FLIGHT", "2000", number(int, 1, 1_000_000),
        "ZeroMQ messages one worker holds unanswered; when every worker is full the relay stops reading "
        "producers and ZeroMQ's high-water marks push back on them.")
    zmq_curve_server_key: str = ZEROMQ.option("ZMQ_CURVE_SERVER_KEY", "", parse_text,
        "File with the service's CURVE key pair (a ZeroMQ secret certificate); set, producers must connect "
        "with CURVE and an allowed key. Empty: CURVE off.")
    zmq_curve_client_keys_dir: str = ZEROMQ.option("ZMQ_CURVE_CLIENT_KEYS_DIR", "", parse_text,
        "Directory of the allowed producers' public certificates (`*.key`).")
    zmq_curve_client_keys: tuple[str, ...] = ZEROMQ.option("ZMQ_CURVE_CLIENT_KEYS", "", parse_z85_keys,
        "Allowed producers' CURVE public keys (Z85, 40 characters), separated by spaces.")

    use_db: bool = POSTGRESQL.option("USE_DB", "false", parse_bool,
        "Read connection strings from PostgreSQL (table `rmq_connections`).", aliases=("UWS_USE_DB",))
    db_name: str = POSTGRESQL.option("DB_NAME", "postgres", parse_text, "PostgreSQL database name.")
    db_username: str = POSTGRESQL.option("DB_USERNAME", "postgres", parse_text, "PostgreSQL user.")
    db_password: str = POSTGRESQL.option("DB_PASSWORD", "", parse_text,
        "PostgreSQL password (prefer `GATEWAY_DB_PASSWORD`).", secret=True)
    db_host: str = POSTGRESQL.option("DB_HOST_ADDRESS", "127.0.0.1", parse_text, "PostgreSQL host.")
    db_port: int = POSTGRESQL.option("DB_PORT", "5432", number(int, 1, 65535), "PostgreSQL port.")
    db_timeout: float = POSTGRESQL.option("DB_TIMEOUT", "5", number(float, 0.1, 120.0),
        "Seconds allowed to connect to PostgreSQL and for each query.")
    db_resync_interval: float = POSTGRESQL.option("DB_RESYNC_INTERVAL", "10", number(float, 0.2, 86400.0),
        "Seconds between full re-reads of `rmq_connections`: the safety net for missed notifications (changes "
        "normally arrive at once by LISTEN/NOTIFY); it also notices a silently dead database link.")
    db_reconnect_backoff_max: float = POSTGRESQL.option("DB_RECONNECT_BACKOFF_MAX", "5", number(float, 0.05, 300.0),
        "Longest pause between attempts to reach PostgreSQL (exponential from 0.1 s).")

    auth_tokens_file: str = SECURITY.option("AUTH_TOKENS_FILE", "", parse_text,
        "File of bearer tokens for `/publish`, one per line: `name token ids [queue-patterns]` "
        "(docs/operations.md). Set (or `AUTH_TOKENS`): `/publish` needs a token.")
    auth_tokens: str = SECURITY.option("AUTH_TOKENS", "", parse_text,
        "The same token lines inline, separated by `;` or newlines; meant for `GATEWAY_AUTH_TOKENS` from a "
        "Kubernetes Secret.", secret=True)
    ops_token: str = SECURITY.option("OPS_TOKEN", "", parse_ops_token,
        "Bearer token required on `/metrics` and `/pools` (empty: they are open); at least 16 printable "
        "characters, like a publish token.", secret=True)
    ops_token_health: bool = SECURITY.option("OPS_TOKEN_HEALTH", "false", parse_bool,
        "Require `OPS_TOKEN` on `/healthz` and `/readyz` too (then the probes must send it).")

    log_level: str = LOGGING.option("LOG_LEVEL", "INFO", parse_log_level, "DEBUG, INFO, WARNING or ERROR.")

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


OPTIONS = declared_options(Settings)


def options_table() -> str:
    """The README's Markdown tables of options, one per topic, in the order of the fields."""
    topics: dict[str, list[str]] = {}
    for opt in OPTIONS:
        names = " / ".join(f"`{k}`" for k in (opt.key, *opt.aliases))
        rows = topics.setdefault(opt.topic, [f"**{opt.topic}**", "", "| key | default | meaning |", "|---|---|---|"])
        rows.append(f"| {names} | `{opt.default or '(empty)'}` | {opt.doc} |")
    return "\n\n".join("\n".join(rows) for rows in topics.values())
