"""``amqps://`` to a broker: CA, hostname check and client certificates, for real.

A throwaway CA is made per session and a TLS terminator in front of the local
RabbitMQ stands in for RabbitMQ's own TLS listener (see tests/support/tls.py
for why). Every refusal is checked three ways: the pool never opens a
connection, the terminator forwarded nothing to the broker, and the queue
stays empty.
"""

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from app.core.errors import BrokerUnavailable
from tests.support.rabbit import AMQP_PORT
from tests.support.settings import make_settings
from tests.support.tls import SERVER_NAME, Pki, TlsTerminator, make_pki
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def terminators(rabbit_available: None) -> Iterator[list[TlsTerminator]]:
    made: list[TlsTerminator] = []
    yield made
    for terminator in made:
        terminator.close()


def _uri(port: int, ca: Path, server_name: str | None = SERVER_NAME, cert: Path | None = None,
         key: Path | None = None) -> str:
    query = [f"cacertfile={quote(str(ca))}"]
    if server_name:
        query.append(f"server_name_indication={server_name}")
    if cert and key:
        query += [f"certfile={quote(str(cert))}", f"keyfile={quote(str(key))}"]
    return f"amqps://guest:guest@127.0.0.1:{port}/?{'&'.join(query)}"


def test_publish_over_tls_with_the_right_ca(start_gateway, rabbit, pki, terminators):
    tls = TlsTerminator(pki, AMQP_PORT)
    terminators.append(tls)
    queue = rabbit.queue()
    gw = start_gateway(make_settings({"t": _uri(tls.port, pki.ca)}))
    wait_until(lambda: gw.ready, 10, message="TLS pool ready")
    for i in range(20):
        gw.publish("t", queue, b"tls %d" % i)
    assert rabbit.bodies(queue) == [b"tls %d" % i for i in range(20)]
    # The terminator counts a handshake before it has connected upstream: wait for both.
    wait_until(lambda: tls.handshakes_ok >= 3 and tls.forwarded == tls.handshakes_ok, 10,
               message="the pool's connections all over TLS")
    assert not tls.handshake_errors


def _assert_refused(gw, tls: TlsTerminator, rabbit, expected: str) -> None:
    pool = gw.route("t").pools[0]
    wait_until(lambda: pool.health.is_down, 10, message="broker marked down")
    assert pool.open_count == 0
    assert expected in (pool.health.last_error or ""), pool.health.last_error
    queue = rabbit.queue()
    with pytest.raises(BrokerUnavailable):
        gw.publish("t", queue, b"must not arrive")
    assert rabbit.count(queue) == 0
    assert tls.forwarded == 0  # no AMQP byte reached the broker


def test_wrong_ca_is_refused(start_gateway, rabbit, pki, terminators):
    tls = TlsTerminator(pki, AMQP_PORT)
    terminators.append(tls)
    gw = start_gateway(make_settings({"t": _uri(tls.port, pki.other_ca)}))
    _assert_refused(gw, tls, rabbit, "certificate verify failed")


@pytest.mark.parametrize("server_name", ["wrong.gateway.test", None])
def test_hostname_mismatch_is_refused(start_gateway, rabbit, pki, terminators, server_name):
    # None: the name checked is the host in the URI, 127.0.0.1, which the certificate does not carry.
    tls = TlsTerminator(pki, AMQP_PORT)
    terminators.append(tls)
    gw = start_gateway(make_settings({"t": _uri(tls.port, pki.ca, server_name=server_name)}))
    _assert_refused(gw, tls, rabbit, "certificate verify failed")
    assert "mismatch" in (gw.route("t").pools[0].health.last_error or "").lower()


def test_client_certificate_required_and_presented(start_gateway, rabbit, pki, terminators):
    tls = TlsTerminator(pki, AMQP_PORT, require_client_cert=True)
    terminators.append(tls)
    queue = rabbit.queue()
    gw = start_gateway(make_settings({"t": _uri(tls.port, pki.ca, cert=pki.client_cert, key=pki.client_key)}))
    wait_until(lambda: gw.ready, 10, message="TLS pool with client certificate ready")
    gw.publish("t", queue, b"with a client certificate")
    assert rabbit.bodies(queue) == [b"with a client certificate"]
    assert tls.client_subjects and set(tls.client_subjects) == {"gateway-client"}


def test_missing_client_certificate_is_refused(start_gateway, rabbit, pki, terminators):
    tls = TlsTerminator(pki, AMQP_PORT, require_client_cert=True)
    terminators.append(tls)
    gw = start_gateway(make_settings({"t": _uri(tls.port, pki.ca)}))
    pool = gw.route("t").pools[0]
    wait_until(lambda: pool.health.is_down, 10, message="broker marked down")
    assert pool.open_count == 0 and tls.forwarded == 0
    assert tls.handshake_errors and all("certificate" in err.lower() for err in tls.handshake_errors)
    queue = rabbit.queue()
    with pytest.raises(BrokerUnavailable):
        gw.publish("t", queue, b"must not arrive")
    assert rabbit.count(queue) == 0
