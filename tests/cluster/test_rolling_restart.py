"""Two gateway replicas behind a real load balancer, restarted one at a time under load (make cluster-test).

HAProxy stands in for a Kubernetes Service: it health-checks ``/readyz`` on both
gateways (two gunicorn masters, as two pods would be) and retries a request whose
connection to a replica could not be made on the other one. A steady HTTP load goes
through it while the replicas are rolled as a Deployment rolls them: SIGTERM, wait for
the exit, start again, wait until ready, then the other. Counted at the end: every 200
is in the quorum queue, and the clients' non-200 answers.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import gevent
import pytest

from tests.support import report
from tests.support.burst import Burst, account, over_http
from tests.support.cluster import CONN_ID, TIMINGS, Cluster, cluster_conn_line
from tests.support.server import GatewayProcess, free_port, request

pytestmark = [pytest.mark.cluster, pytest.mark.e2e, pytest.mark.integration]

# HAProxy checks /readyz every 0.5 s and takes a replica out after 2 failures; a
# connection refused by a replica (it stopped listening) is retried on the other.
HAPROXY_CFG = """\
global
    maxconn 4000
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    retries 3
    option redispatch
    retry-on conn-failure
frontend gateway
    bind 127.0.0.1:{port}
    default_backend replicas
backend replicas
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 500ms fall 2 rise 2
{servers}
"""


class HAProxy:
    def __init__(self, tmp_path: Path, backends: list[int]):
        self.port = free_port()
        servers = "\n".join(f"    server r{i} 127.0.0.1:{port} check" for i, port in enumerate(backends))
        self.cfg = tmp_path / "haproxy.cfg"
        self.cfg.write_text(HAPROXY_CFG.format(port=self.port, servers=servers))
        self.log = open(tmp_path / "haproxy.log", "wb")  # noqa: SIM115 - open for the process's lifetime
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", str(self.cfg)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                request(self.port, "GET", "/healthz", timeout=1)
                return
            except OSError:
                gevent.sleep(0.1)
        raise AssertionError(f"HAProxy did not listen: {(tmp_path / 'haproxy.log').read_text()}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


@pytest.fixture
def replicas(cluster: Cluster, tmp_path: Path) -> Iterator[list[GatewayProcess]]:
    cluster.wait_all_running()
    made = []
    for i in range(2):
        (tmp_path / f"r{i}").mkdir()
        gw = GatewayProcess(tmp_path / f"r{i}", TIMINGS + f"NO_OF_CONNECTIOS,2\n{cluster_conn_line(cluster)}\n",
                            workers=2)
        made.append(gw)
    yield made
    for gw in made:
        gw.stop()


def _restart(gw: GatewayProcess) -> dict[str, float]:
    """As a rolling deploy does: SIGTERM, wait for the exit, start again, wait until ready."""
    began = time.monotonic()
    assert gw.stop() == 0, gw.logs()[-2000:]
    stopped = time.monotonic()
    gw.start(timeout=60)
    return {"stop": stopped - began, "ready": time.monotonic() - stopped}


def test_rolling_restart_behind_haproxy_loses_nothing(cluster, replicas, tmp_path):
    queue = cluster.quorum_queue("rolling")
    for gw in replicas:
        gw.start(timeout=60)
    lb = HAProxy(tmp_path, [gw.port for gw in replicas])
    try:
        gevent.sleep(1.5)  # both replicas seen healthy (rise 2 x 0.5 s)
        burst = Burst(over_http(lb.port, CONN_ID, queue, timeout=30), concurrency=8, interval=0.01).start()
        gevent.sleep(2)
        timings = []
        for gw in replicas:
            timings.append(_restart(gw))
            gevent.sleep(1.5)  # the LB sees it healthy again before the next one goes
        gevent.sleep(1)
        burst.stop()
    finally:
        lb.stop()
    counts = account(burst, cluster.bodies(queue))
    slowest = max(t["stop"] + t["ready"] for t in timings)
    report.record(f"rolling restart of 2 replicas behind HAProxy (each down {slowest:.1f} s at most)",
                  {k: counts[k] for k in ("sent", "acknowledged", "found", "lost", "duplicated")},
                  len(burst.errors), None, codes=burst.refused_codes(), gap=burst.longest_gap())
    assert counts["lost"] == 0, counts
    assert counts["refused_but_delivered"] == 0, counts
    assert burst.errors == {}, burst.refused_codes()
