"""Loading: the config file, ``GATEWAY_<KEY>`` overrides and secret files, into :class:`Settings`.

The file is the seed's: one ``KEY,value[,value...]`` per line, ``#``
comments. Errors are :class:`ConfigError` and print as one line,
``<file>:<line>: <problem>``, never with a password in it.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from typing import Any

from app.config.connections import ConnectionSpec, parse_connection
from app.config.settings import OPTIONS, Settings
from app.core.errors import StartupError

DEFAULT_CONFIG_PATH = "config/pool.cfg"
ENV_PREFIX = "GATEWAY_"
# GATEWAY_* variables that are not config keys: read by gunicorn.conf.py or here.
ENV_NOT_KEYS = {"CONFIG", "BIND", "WORKERS", "ACCESS_LOG", "METRICS_TMPDIR", "SECRETS_DIR", "WORKER_CONNECTIONS",
                "KEEPALIVE"}


class ConfigError(StartupError, ValueError):
    """A bad config file or value; ``str()`` is one line naming where and what."""

    def __init__(self, problem: str, source: str = "", line: int | None = None):
        self.problem = problem
        self.source = source
        self.line = line
        where = f"{source}:{line}" if source and line else source
        super().__init__(f"{where}: {problem}" if where else problem)


_BY_KEY = {alias: opt for opt in OPTIONS for alias in (opt.key, *opt.aliases)}


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

