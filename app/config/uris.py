"""Broker addresses: the seed's ``user:pass@host:port/vhost`` and ``amqp(s)://`` URIs, and their TLS.

A broker address holds a password, so no error about one quotes any part of
it (see :data:`SEED_HINT`). Errors are ``ValueError``; the loader says where.
"""

from __future__ import annotations

import ssl
import urllib.parse
from dataclasses import dataclass, field


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
