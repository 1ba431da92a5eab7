"""A throwaway PKI and a TLS listener in front of the local RabbitMQ.

The shared RabbitMQ is not ours to reconfigure (other suites run against it
at the same time), so its own TLS listener (``listeners.ssl.default`` with
``ssl_options.cacertfile/certfile/keyfile/verify/fail_if_no_peer_cert``) is
stood in for by :class:`TlsTerminator`: it terminates TLS with a server
certificate from :func:`make_pki`, optionally requires and verifies a
client certificate the way ``verify_peer`` + ``fail_if_no_peer_cert`` do,
and forwards the plaintext AMQP to 127.0.0.1:5672. What the gateway sees on
the wire is what RabbitMQ's listener would show it: the same TLS handshake,
the same certificate checks, then AMQP.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import gevent
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from gevent.server import StreamServer

SERVER_NAME = "broker.gateway.test"  # the name in the broker certificate's subjectAltName


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _ca(common_name: str, directory: Path, stem: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name)).issuer_name(_name(common_name))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    (directory / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def _leaf(common_name: str, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, *, server: bool,
          directory: Path, stem: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name)).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                              else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if server:
        # A DNS name only, no IP: connecting by "127.0.0.1" without naming the server must fail.
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME)]), critical=False)
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    (directory / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, directory / f"{stem}.key")


@dataclass(frozen=True)
class Pki:
    """Paths of a CA, a broker certificate it signed, a client certificate it signed, and an unrelated CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def make_pki(directory: Path) -> Pki:
    """Make the throwaway PKI in ``directory`` (EC P-256 keys: fast to make)."""
    ca_key, ca_cert = _ca("gateway test CA", directory, "ca")
    _leaf(SERVER_NAME, ca_key, ca_cert, server=True, directory=directory, stem="server")
    _leaf("gateway-client", ca_key, ca_cert, server=False, directory=directory, stem="client")
    _ca("some other CA", directory, "other-ca")
    return Pki(directory / "ca.pem", directory / "server.pem", directory / "server.key",
               directory / "client.pem", directory / "client.key", directory / "other-ca.pem")


class TlsTerminator:
    """TLS on a free loopback port, plaintext to the broker; records handshakes and client certificates."""

    def __init__(self, pki: Pki, target_port: int, require_client_cert: bool = False):
        self.target = ("127.0.0.1", target_port)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(pki.server_cert, pki.server_key)
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED  # fail_if_no_peer_cert: no certificate, no connection
            context.load_verify_locations(pki.ca)
        self.context = context
        self.handshakes_ok = 0
        self.handshake_errors: list[str] = []
        self.client_subjects: list[str] = []
        self.forwarded = 0  # connections passed on to the broker
        self._server = StreamServer(("127.0.0.1", 0), self._handle)
        self._server.start()
        self.port = self._server.server_port

    def close(self) -> None:
        self._server.stop()

    def _handle(self, raw: socket.socket, _address: object) -> None:
        try:
            client = self.context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
            client.settimeout(5)
            client.do_handshake()
            client.settimeout(None)
        except (ssl.SSLError, OSError) as exc:
            self.handshake_errors.append(f"{type(exc).__name__}: {exc}")
            raw.close()
            return
        self.handshakes_ok += 1
        peer = client.getpeercert()
        if peer:
            subject = dict(item for rdn in peer["subject"] for item in rdn)
            self.client_subjects.append(subject.get("commonName", ""))
        try:
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
        except OSError:
            client.close()
            return
        self.forwarded += 1
        pumps = [gevent.spawn(_pump, client, upstream), gevent.spawn(_pump, upstream, client)]
        gevent.joinall(pumps, count=1)
        gevent.killall(pumps)
        for sock in (client, upstream):
            with contextlib.suppress(OSError):  # already gone
                sock.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while True:
            data = source.recv(65536)
            if not data:
                return
            sink.sendall(data)
    except (OSError, ssl.SSLError):
        return
