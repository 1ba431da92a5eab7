"""A real three-node RabbitMQ cluster with quorum queues, broken for real under a burst (make cluster-test).

``scripts/cluster.sh`` starts three nodes of the suite's own (ports 5801-5803, beside the
machine's RabbitMQ, which it never touches) and stops them at the end. One gateway
(gunicorn, two workers) has one connection id whose primary lists all three nodes. Each
scenario declares a quorum queue of its own (replicated on the three nodes), runs a
bounded burst of HTTP publishes (one also over ZeroMQ), breaks the cluster, and ends by
counting the queue: every 200 must be in it. The rows join the fault-injection table
printed at the end of the run (README, "Running against a cluster").
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import gevent
import pytest

from tests.support import report
from tests.support.burst import CANNOT_KNOW, Burst, account, over_http, over_zmq
from tests.support.cluster import CONN_ID, TIMINGS, Cluster, cluster_conn_line
from tests.support.server import GatewayProcess, free_port, publish

pytestmark = [pytest.mark.cluster, pytest.mark.e2e, pytest.mark.integration]


@pytest.fixture(scope="module")
def gateway(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    zmq_address = f"tcp://127.0.0.1:{free_port()}"
    gw = GatewayProcess(tmp_path_factory.mktemp("cluster-gw"),
                        TIMINGS + f"NO_OF_CONNECTIOS,3\nREBALANCE_INTERVAL,2\nZMQ_SOCK_ADDRESS,{zmq_address}\n"
                        f"{cluster_conn_line(cluster)}\n", workers=2)
    gw.zmq_address = zmq_address  # type: ignore[attr-defined]
    gw.start(timeout=60)
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def queue(cluster: Cluster, gateway: GatewayProcess) -> str:
    """A fresh quorum queue on all three nodes, and the gateway publishing to it."""
    cluster.wait_all_running()
    name = cluster.quorum_queue("scenario")
    deadline = time.monotonic() + 60
    while publish(gateway.port, f"{CONN_ID}|{name}|warm-up".encode())[0] != 200:
        assert time.monotonic() < deadline, "the gateway does not publish to the cluster"
        gevent.sleep(0.2)
    cluster.purge(name)
    return name


# A replica killed under a publish can leave RabbitMQ nacking a message that its
# quorum log still commits (its nack says "not taken responsibility for", not
# "not enqueued"): here a 503 nacked is a "cannot know" answer, as the README's
# cluster section says. On one node (tests/integration/test_nacks.py) it is not.
CLUSTER_CANNOT_KNOW = CANNOT_KNOW | {"nacked"}


def finish(name: str, burst: Burst, cluster: Cluster, queue: str) -> dict:
    counts = account(burst, cluster.bodies(queue), cannot_know=CLUSTER_CANNOT_KNOW)
    report.record(name, {k: counts[k] for k in ("sent", "acknowledged", "found", "lost", "duplicated")},
                  len(burst.errors), None, codes=burst.refused_codes(), gap=burst.longest_gap())
    assert counts["lost"] == 0, counts
    assert counts["refused_but_delivered"] == 0, (counts, burst.refused_codes())
    return counts


def _burst(gateway: GatewayProcess, queue: str) -> Burst:
    return Burst(over_http(gateway.port, CONN_ID, queue, timeout=30), concurrency=8, interval=0.01).start()


def test_queue_leader_killed_mid_burst_and_revived(cluster, gateway, queue):
    burst = _burst(gateway, queue)
    zmq_burst = Burst(over_zmq(gateway.zmq_address, CONN_ID, queue, tag=b"z"), concurrency=2, interval=0.01).start()
    gevent.sleep(2)
    leader = cluster.leader(queue)
    cluster.kill(leader)
    gevent.sleep(4)
    cluster.revive(leader)
    gevent.sleep(2)
    burst.stop()
    zmq_burst.stop()
    counts = account_both(burst, zmq_burst, cluster, queue)
    report.record("cluster: queue leader kill -9, revived (HTTP)", counts["http"], len(burst.errors), None,
                  codes=burst.refused_codes(), gap=burst.longest_gap())
    report.record("cluster: queue leader kill -9, revived (ZeroMQ)", counts["zmq"], len(zmq_burst.errors), None,
                  codes=zmq_burst.refused_codes(), gap=zmq_burst.longest_gap())
    assert counts["http"]["lost"] == counts["zmq"]["lost"] == 0, counts
    assert counts["http"]["acknowledged"] > 0.5 * counts["http"]["sent"], counts


def account_both(http: Burst, zmq: Burst, cluster: Cluster, queue: str) -> dict[str, dict[str, int]]:
    """The queue holds both bursts' bodies: b"<seq>" over HTTP, b"z<seq>" over ZeroMQ."""
    bodies = cluster.bodies(queue)
    ours = {"http": [b for b in bodies if not b.startswith(b"z")], "zmq": [b[1:] for b in bodies if b.startswith(b"z")]}
    out = {}
    for name, burst in (("http", http), ("zmq", zmq)):
        counts = account(burst, ours[name])
        out[name] = {k: counts[k] for k in ("sent", "acknowledged", "found", "lost", "duplicated")}
    return out


def _under_burst(gateway: GatewayProcess, queue: str, fault, seconds: float, repair, settle: float = 1) -> Burst:
    """A burst; after 2 s ``fault()``, ``seconds`` later ``repair()``, then ``settle`` s more."""
    burst = _burst(gateway, queue)
    gevent.sleep(2)
    fault()
    gevent.sleep(seconds)
    repair()
    gevent.sleep(settle)
    burst.stop()
    return burst


def _busiest(cluster: Cluster) -> tuple[int, str]:
    per_node = cluster.connections_per_node()
    node = max(per_node, key=per_node.get)
    return node, f"{per_node[node]} of {sum(per_node.values())} connections"


def test_a_follower_killed(cluster, gateway, queue):
    follower = next(n for n in cluster.nodes if n != cluster.leader(queue))
    burst = _under_burst(gateway, queue, lambda: cluster.kill(follower), 4, lambda: cluster.revive(follower))
    counts = finish("cluster: a follower kill -9, revived", burst, cluster, queue)
    assert counts["acknowledged"] > 0.8 * counts["sent"], counts


def test_the_node_holding_most_connections_killed(cluster, gateway, queue):
    node, share = _busiest(cluster)
    burst = _under_burst(gateway, queue, lambda: cluster.kill(node), 4, lambda: cluster.revive(node))
    counts = finish(f"cluster: node with most connections ({share}) kill -9, revived", burst, cluster, queue)
    assert counts["acknowledged"] > 0.5 * counts["sent"], counts


def test_a_node_hung_for_ten_seconds(cluster, gateway, queue):
    node, share = _busiest(cluster)
    burst = _under_burst(gateway, queue, lambda: cluster.pause(node), 10, lambda: cluster.resume(node), settle=2)
    counts = finish(f"cluster: node with most connections ({share}) SIGSTOP 10 s", burst, cluster, queue)
    assert counts["acknowledged"] > 0.3 * counts["sent"], counts


def test_two_of_three_nodes_down_no_quorum(cluster, gateway, queue):
    """The survivor takes publishes but cannot confirm them for the quorum queue; its classic queue can.

    The quorum queue's circuit opens (``503 queue_unavailable`` at once) instead of
    every client waiting out the confirm timeout and the route being marked down:
    the classic queue on the same node keeps publishing throughout.
    """
    leader = cluster.leader(queue)
    classic = cluster.classic_queue("beside", leader)  # its home is the node that stays up
    burst = _burst(gateway, queue)
    beside = Burst(over_http(gateway.port, CONN_ID, classic, timeout=30), concurrency=2, interval=0.01).start()
    gevent.sleep(2)
    down = [n for n in cluster.nodes if n != leader]
    for node in down:
        cluster.kill(node)
    outage = time.monotonic()
    gevent.sleep(8)
    ended = time.monotonic()
    for node in down:
        cluster.revive(node, wait=False)
    cluster.wait_all_running()
    gevent.sleep(2)
    burst.stop()
    beside.stop()
    during = [t for t in beside.ok.values() if outage + 3 <= t <= ended]
    waits = sorted(burst.latencies)
    counts = finish("cluster: two of three nodes kill -9 (no quorum), revived: the quorum queue", burst, cluster,
                    queue)
    beside_counts = finish("cluster: the same outage: a classic queue on the surviving node", beside, cluster,
                           classic)
    report.note(f"cluster, no quorum: quorum-queue clients waited {waits[len(waits) // 2] * 1000:.0f} ms "
                f"(median), {waits[int(len(waits) * 0.99)] * 1000:.0f} ms (p99); the classic queue beside it "
                f"got {len(during)} 200s in the outage's last {ended - outage - 3:.0f} s")
    assert counts["acknowledged"] > 0, counts
    assert beside_counts["lost"] == 0
    # The other queue on the same broker kept publishing while the quorum queue could not confirm.
    assert len(during) > 20, (len(during), beside.refused_codes())


def test_whole_cluster_down_then_up(cluster, gateway, queue):
    burst = _burst(gateway, queue)
    gevent.sleep(2)
    for node in cluster.nodes:
        cluster.kill(node)
    gevent.sleep(3)
    for node in cluster.nodes:
        cluster.revive(node, wait=False)  # quorum queues need their peers: start them together
    cluster.wait_all_running()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not burst.ok or max(burst.ok.values()) < time.monotonic() - 1):
        gevent.sleep(0.5)
    gevent.sleep(2)
    burst.stop()
    counts = finish("cluster: every node kill -9, then all started", burst, cluster, queue)
    assert counts["acknowledged"] > 0, counts


def test_connections_return_to_every_node_after_the_restarts(cluster, gateway):
    """After the kills and the whole-cluster restart, every node gets its share back (REBALANCE_INTERVAL)."""
    cluster.wait_all_running()
    started = time.monotonic()
    per_node: dict[int, int] = {}
    while time.monotonic() - started < 60:
        per_node = cluster.connections_per_node()
        # 2 workers x 3 pooled connections over 3 nodes: 2 each once balanced (health checks come on top).
        if min(per_node.values()) >= 2:
            break
        gevent.sleep(1)
    report.note(f"cluster: connections per node {per_node}, balanced {time.monotonic() - started:.0f} s "
                "after the last scenario's restart")
    assert min(per_node.values()) >= 2, per_node
