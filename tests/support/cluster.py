"""The suite's own three-node RabbitMQ cluster (``scripts/cluster.sh``), driven from the tests."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections import Counter

import pika

from tests.support.rabbit import unique
from tests.support.server import REPO
from tests.support.settings import FAST

SCRIPT = REPO / "scripts" / "cluster.sh"
CONN_ID = "c"
# The suite's short health timings, a 2 s confirm timeout, a failed node skipped for 1 s.
TIMINGS = FAST + "CONFIRM_TIMEOUT,2\nPUBLISH_TIMEOUT,4\nSERVER_QUARANTINE,1\n"


def cluster_conn_line(cluster: Cluster) -> str:
    """The connection id whose primary lists the three nodes (``a;b;c``)."""
    servers = ";".join(f"guest:guest@127.0.0.1:{port}/{cluster.vhost}" for port in cluster.ports)
    return f"RMQ_CONN_STR,{CONN_ID},{servers}"


class Cluster:
    """Start, break and count a three-node cluster; nodes are numbered 1 to 3."""

    nodes = (1, 2, 3)
    vhost = "gw-cluster"

    def __init__(self) -> None:
        self.ports = [int(p) for p in self._run("ports").split()]

    def _run(self, *args: str, timeout: float = 180) -> str:
        done = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                              env={"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "PYTHON": sys.executable,
                                   "CLUSTER_VHOST": self.vhost})
        if done.returncode != 0:
            raise AssertionError(f"cluster.sh {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def start(self) -> Cluster:
        self._run("start", timeout=300)
        return self

    def stop(self) -> None:
        self._run("stop", timeout=180)

    def kill(self, node: int) -> None:
        self._run("kill", str(node))

    def pause(self, node: int) -> None:
        self._run("pause", str(node))

    def resume(self, node: int) -> None:
        self._run("resume", str(node))

    def revive(self, node: int, wait: bool = True) -> subprocess.Popen | None:
        if wait:
            self._run("revive", str(node), timeout=180)
            return None
        # Nodes of a cluster that went down together wait for each other: start them side by side.
        return subprocess.Popen([str(SCRIPT), "revive", str(node)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env={"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"})

    def wait_all_running(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(AssertionError):
                status = self._run("ctl", "1", "cluster_status", "--formatter", "json", timeout=30)
                if all(f"gwc{n}@localhost" in status.split('"running_nodes"', 1)[1].split("]", 1)[0]
                       for n in self.nodes):
                    return
            time.sleep(1)
        raise AssertionError(f"the cluster's three nodes are not all running within {timeout} s")

    def leader(self, queue: str) -> int:
        return int(self._run("leader", queue).strip())

    def connections_per_node(self) -> dict[int, int]:
        # A connection's server port tells its node (each node listens on its own port).
        out = self._run("ctl", "1", "list_connections", "--quiet", "--no-table-headers", "port", "vhost")
        counts = Counter(int(line.split()[0]) for line in out.splitlines() if line.strip().endswith(self.vhost))
        return {n: counts.get(port, 0) for n, port in zip(self.nodes, self.ports, strict=True)}

    def _channel(self) -> tuple[pika.BlockingConnection, pika.adapters.blocking_connection.BlockingChannel]:
        last: Exception | None = None
        for _ in range(30):
            for port in self.ports:
                try:
                    params = pika.ConnectionParameters("127.0.0.1", port, self.vhost,
                                                       pika.PlainCredentials("guest", "guest"), heartbeat=0)
                    connection = pika.BlockingConnection(params)
                    return connection, connection.channel()
                except pika.exceptions.AMQPError as exc:
                    last = exc
            time.sleep(1)
        raise AssertionError(f"no node of the cluster takes a connection: {last!r}")

    def quorum_queue(self, prefix: str) -> str:
        name = unique(prefix)
        connection, channel = self._channel()
        with connection:
            channel.queue_declare(name, durable=True, arguments={"x-queue-type": "quorum"})
        return name

    def classic_queue(self, prefix: str, node: int) -> str:
        """A classic queue whose home is ``node`` (declared through it)."""
        name = unique(prefix)
        params = pika.ConnectionParameters("127.0.0.1", self.ports[node - 1], self.vhost,
                                           pika.PlainCredentials("guest", "guest"), heartbeat=0)
        with pika.BlockingConnection(params) as connection:
            connection.channel().queue_declare(name, durable=True)
        return name

    def purge(self, queue: str) -> None:
        connection, channel = self._channel()
        with connection:
            channel.queue_purge(queue)

    def bodies(self, queue: str) -> list[bytes]:
        """Every message in the queue, read and acknowledged."""
        connection, channel = self._channel()
        out = []
        with connection:
            while True:
                method, _props, body = channel.basic_get(queue, auto_ack=True)
                if method is None:
                    return out
                out.append(body)
