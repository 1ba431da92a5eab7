"""Shared fixtures. The test process runs under gevent, like the gateway's workers."""

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import socket  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402

from app.config import Settings  # noqa: E402
from app.core.gateway import Gateway  # noqa: E402
from tests.support.proxy import TcpProxy  # noqa: E402
from tests.support.rabbit import AMQP_HOST, AMQP_PORT, Rabbit, Vhost  # noqa: E402


def _require_rabbitmq() -> None:
    try:
        socket.create_connection((AMQP_HOST, AMQP_PORT), timeout=3).close()
    except OSError as exc:
        # Loud, never a skip: the suite means nothing without the real broker.
        pytest.exit(f"RabbitMQ is not reachable on {AMQP_HOST}:{AMQP_PORT} ({exc}); "
                    "run `make services` (or `make test`, which does)", returncode=3)


@pytest.fixture(scope="session")
def rabbit_available() -> None:
    _require_rabbitmq()


@pytest.fixture
def rabbit(rabbit_available: None) -> Iterator[Rabbit]:
    r = Rabbit()
    yield r
    r.close()


@pytest.fixture
def proxies() -> Iterator[list[TcpProxy]]:
    """Make proxies with ``proxies.append(TcpProxy(5672))``; all closed afterwards."""
    made: list[TcpProxy] = []
    yield made
    for proxy in made:
        proxy.close()


def _broker_proxy(proxies: list[TcpProxy], rabbit_available: None) -> TcpProxy:
    """A TCP proxy of the test's own in front of the broker: cut it to cut that broker."""
    p = TcpProxy(AMQP_PORT)
    proxies.append(p)
    return p


# Two names for one fixture: a test that fails over needs a primary's and a backup's.
proxy = pytest.fixture(_broker_proxy, name="proxy")
backup_proxy = pytest.fixture(_broker_proxy, name="backup_proxy")


@pytest.fixture
def gateways() -> Iterator[list[Gateway]]:
    made: list[Gateway] = []
    yield made
    for gw in made:
        gw.close()


@pytest.fixture
def start_gateway(gateways: list[Gateway]):
    """start_gateway(settings) -> a started Gateway, closed after the test."""

    def start(settings: Settings) -> Gateway:
        gw = Gateway(settings)
        gw.start()
        gateways.append(gw)
        return gw

    return start


def pytest_report_header() -> str:
    return f"RabbitMQ under test: {AMQP_HOST}:{AMQP_PORT}; CI={os.environ.get('CI', '')}"


@pytest.fixture(scope="session")
def vhosts(rabbit_available: None) -> Iterator[dict[str, Vhost]]:
    """Two vhosts of this session's own: 'primary' and 'backup' stand for two brokers."""
    from tests.support.rabbit import Vhost

    made = {"primary": Vhost("primary"), "backup": Vhost("backup")}
    yield made
    for vhost in made.values():
        vhost.delete()


@pytest.fixture
def two_brokers(vhosts, proxies: list[TcpProxy]):
    """(primary proxy, backup proxy, primary Rabbit, backup Rabbit): one queue name declared in both."""
    from tests.support.rabbit import Rabbit, unique

    primary, backup = TcpProxy(AMQP_PORT), TcpProxy(AMQP_PORT)
    proxies.extend([primary, backup])
    rp, rb = Rabbit(vhost=vhosts["primary"].name), Rabbit(vhost=vhosts["backup"].name)
    queue = unique("fo")
    for r in (rp, rb):
        r.channel.queue_declare(queue, durable=True)
        r.queues.append(queue)
    yield primary, backup, rp, rb, queue
    rp.close()
    rb.close()


def pytest_terminal_summary(terminalreporter) -> None:
    """Print the fault-injection table when fault scenarios ran."""
    from tests.support import report

    if report.ROWS:
        terminalreporter.write_sep("=", "fault injection summary")
        terminalreporter.write_line(report.markdown())
    for line in report.NOTES:
        terminalreporter.write_line(line)
