"""Configuration: the seed's ``KEY,value`` file, ``GATEWAY_<KEY>`` overrides, typed.

Parsed once at start-up into frozen objects (:class:`Settings`,
:class:`BrokerAddress`, :class:`ConnectionSpec`); nothing below this package
reads ``os.environ``. One module per job:

- :mod:`~app.config.uris`: broker addresses (seed form and ``amqp(s)://`` URIs), TLS;
- :mod:`~app.config.connections`: connection ids with their primary and backup servers;
- :mod:`~app.config.options`: how an option is declared, and the parsers of values;
- :mod:`~app.config.settings`: :class:`Settings`, each option declared once as a field
  (key, type, default, parser, doc, topic); the README's table is :func:`options_table`
  verbatim (a test keeps the two in step);
- :mod:`~app.config.loader`: the file, the environment and the secret files;
- :mod:`~app.config.check`: ``python -m app.config.check``, the master's check on its own.

Errors are :class:`ConfigError` and print as one line,
``<file>:<line>: <problem>``, never with a password in it.
"""

from app.config.connections import CONN_ID_RE, ConnectionSpec, Servers, parse_connection, parse_servers
from app.config.loader import (
    DEFAULT_CONFIG_PATH,
    ENV_NOT_KEYS,
    ENV_PREFIX,
    ConfigError,
    ConnectionLines,
    ScalarLines,
    adopt,
    check_connection_count,
    current_settings,
    load_settings,
    parse_lines,
    read_text_file,
    secret_files,
    settings_from_text,
)
from app.config.options import MIN_TOKEN_LENGTH, TOKEN_RE, Option, parse_bool
from app.config.settings import OPTIONS, REDACTED, Settings, options_table
from app.config.uris import SEED_HINT, URI_HINT, BrokerAddress, check_tls_files, parse_broker, tls_context

__all__ = [
    "CONN_ID_RE",
    "DEFAULT_CONFIG_PATH",
    "ENV_NOT_KEYS",
    "ENV_PREFIX",
    "MIN_TOKEN_LENGTH",
    "OPTIONS",
    "REDACTED",
    "SEED_HINT",
    "TOKEN_RE",
    "URI_HINT",
    "BrokerAddress",
    "ConfigError",
    "ConnectionLines",
    "ConnectionSpec",
    "Option",
    "ScalarLines",
    "Servers",
    "Settings",
    "adopt",
    "check_connection_count",
    "check_tls_files",
    "current_settings",
    "load_settings",
    "options_table",
    "parse_bool",
    "parse_broker",
    "parse_connection",
    "parse_lines",
    "parse_servers",
    "read_text_file",
    "secret_files",
    "settings_from_text",
    "tls_context",
]
