"""``make bench``: the gateway against its baselines, measured in one invocation.

Everything publishes 100-byte persistent messages with confirms to a durable
queue of the local RabbitMQ. Ratios compare figures taken in the same run on
the same machine, never against a stored number:

1. gateway ``POST /publish`` under wrk (32 connections): requests/s, p50, p99;
2. the peers a user would weigh it against, under the same load and with the
   same guarantee (answered after RabbitMQ's confirm, persistent): mq-bridge's
   HTTP -> AMQP route (``bench/mq_bridge_peer.py``, Rust) and Flask + kombu's
   ProducerPool under the same gunicorn (``bench/kombu_app.py``); and RabbitMQ's
   management HTTP publish endpoint, beside the gateway's endpoint of the same
   path and body (the same wrk load, side by side);
3. a new pika connection per message (two processes);
4. a no-op route of the same gunicorn + gevent + Flask stack (the ceiling),
   and the same no-op as plain WSGI (the floor of gunicorn + gevent alone);
5. ZeroMQ through the gateway against raw pika without confirms
   (``bench/zmq_bench.py``, when present);
6. throughput by pool size and workers, and a worker's memory with
   10 connection ids x 5 connections;
7. cost curves: broker connections, worker RSS, time to ready and latency
   with 1, 10, 100 and 1,000 connection ids (``bench/cost_curves.py``);
8. classic against quorum queues (``bench/queue_types.py``), and N AMQP
   connections x M channels publishing the same window (``bench/channels.py``).

The HTTP figures (1, 2, 4) come from ``BENCH_ROUNDS`` (3) interleaved rounds:
each round runs every contender once, one after the other, and each figure is
the median of its rounds, so a shared machine's slow spell falls on all of
them rather than on one. After each gateway run (the rounds and the scaling
runs) and each peer's run the queue is counted against the 2xx answers; the run
exits non-zero if one is missing.

Results: a table on stdout, ``bench/results/latest.json`` (and a dated copy),
and ``bench/results/latest.png``.
"""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pika

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
SECONDS = float(os.environ.get("BENCH_SECONDS", "8"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "32"))
BODY = "x" * 100
QUEUE = "bench.gateway"
PYTHON = sys.executable


def log(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


# -- set-up ---------------------------------------------------------------------


def ensure_tools() -> None:
    """wrk from the distribution, and RabbitMQ's management plugin."""
    if not shutil.which("wrk"):
        if os.geteuid() == 0 and shutil.which("apt-get"):
            log("installing wrk")
            subprocess.run(["apt-get", "update", "-qq"], check=True)
            subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, env={**os.environ,
                           "DEBIAN_FRONTEND": "noninteractive"})
        else:
            sys.exit("bench: wrk is missing; install it (apt-get install wrk)")
    if not port_open(15672):
        log("enabling rabbitmq_management")
        subprocess.run(["rabbitmq-plugins", "enable", "rabbitmq_management"], check=True,
                       stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not port_open(15672):
            if time.monotonic() > deadline:
                sys.exit("bench: the management plugin did not open port 15672")
            time.sleep(0.5)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def amqp_channel() -> tuple[pika.BlockingConnection, Any]:
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1"))
    return connection, connection.channel()


def reset_queue() -> None:
    connection, channel = amqp_channel()
    channel.queue_declare(QUEUE, durable=True)
    channel.queue_purge(QUEUE)
    connection.close()


def queue_count() -> int:
    connection, channel = amqp_channel()
    count = channel.queue_declare(QUEUE, passive=True).method.message_count
    connection.close()
    return int(count)


class Server:
    """gunicorn with our gunicorn.conf.py on a free port (the gateway, or another app)."""

    def __init__(self, cfg: str, workers: int = 2, app: str | None = None):
        self.dir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
        (self.dir / "pool.cfg").write_text(cfg)
        self.port = free_port()
        self.args = [PYTHON, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{self.port}",
                     "--workers", str(workers)] + ([app] if app else [])
        self.env = {**os.environ, "GATEWAY_CONFIG": str(self.dir / "pool.cfg")}

    def __enter__(self) -> Server:
        self.log = open(self.dir / "gunicorn.log", "wb")
        self.proc = subprocess.Popen(self.args, cwd=REPO, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        path = "/readyz" if "noop" not in " ".join(self.args) else "/publish"
        while time.monotonic() < deadline:
            try:
                method = "GET" if path == "/readyz" else "POST"
                req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method, data=None)
                with urllib.request.urlopen(req, timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"server did not start: {(self.dir / 'gunicorn.log').read_text()[-2000:]}")

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def __exit__(self, *_exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def gateway_cfg(pool: int = 5, ids: int = 1) -> str:
    lines = [f"NO_OF_CONNECTIOS,{pool}", "LOG_LEVEL,WARNING", "MANAGEMENT_VHOSTS,/=bench"]
    lines += [f"RMQ_CONN_STR,{'bench' if i == 0 else f'bench{i}'},guest:guest@127.0.0.1:5672/" for i in range(ids)]
    return "\n".join(lines) + "\n"


# -- load -------------------------------------------------------------------------


def wrk(url: str, body: str, headers: dict[str, str] | None = None, seconds: float = SECONDS,
        spread: list[str] | None = None, pause_ms: int = 0) -> dict[str, Any]:
    """Run wrk with a POST body; requests/s, p50/p99 in ms, and the non-2xx count.

    With ``spread`` (connection ids), each request takes the next id in turn:
    the body ``<id>|<body>``, the same load spread over every id. With
    ``pause_ms``, each connection waits that long after each answer: a load of
    about CONNECTIONS x 1000 / pause_ms requests a second whatever the server's
    speed, rather than as much as it takes.
    """
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(body)}"]
    for key, value in (headers or {}).items():
        lines.append(f"wrk.headers[{json.dumps(key)}] = {json.dumps(value)}")
    if spread:
        lines += ["local ids = {" + ", ".join(json.dumps(conn_id) for conn_id in spread) + "}", "local turn = 0",
                  "request = function()", "  turn = turn % #ids + 1",
                  f"  return wrk.format(nil, nil, nil, ids[turn] .. {json.dumps('|' + body)})", "end"]
    if pause_ms:
        lines += [f"delay = function() return {pause_ms} end"]
    script.write_text("\n".join(lines) + "\n")
    out = subprocess.run(["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{seconds:g}s", "--latency", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout
    script.unlink()

    def ms(label: str) -> float:
        match = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not match:
            return float("nan")
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": ms("50%"),
        "p99_ms": ms("99%"),
        "requests": total,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errors.group(1) if errors else "",
    }


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU the processes have used so far (0 for one that is gone)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


_BROKER_PID: list[int] = []


def broker_pid() -> int:
    """The local RabbitMQ's OS pid (asked once; read-only)."""
    if not _BROKER_PID:
        out = subprocess.run(["rabbitmqctl", "eval", "os:getpid()."], capture_output=True, text=True).stdout
        _BROKER_PID.append(int(out.strip().strip('"')) if out.strip().strip('"').isdigit() else 0)
    return _BROKER_PID[0]


def counted_run(url: str, body: str, seconds: float = SECONDS, pids: list[int] | None = None,
                headers: dict[str, str] | None = None, spread: list[str] | None = None,
                pause_ms: int = 0) -> dict[str, Any]:
    """One wrk run against an empty queue; then every 2xx answer must be in the queue.

    With ``pids`` (the server's processes) it also says where a request's CPU went:
    in the server, in the broker and in wrk, in microseconds per request.
    """
    reset_queue()
    watched = {"server": pids or [], "broker": [broker_pid()]}
    before = {name: cpu_seconds(group) for name, group in watched.items()}
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = wrk(url, body, headers, seconds=seconds, spread=spread, pause_ms=pause_ms)
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    requests = max(result["requests"], 1)
    result["cpu_us_per_request"] = {
        **{name: round((cpu_seconds(group) - before[name]) / requests * 1e6) for name, group in watched.items()},
        "wrk": round((children_after.ru_utime + children_after.ru_stime - children_before.ru_utime
                      - children_before.ru_stime) / requests * 1e6),
    }
    if not pids:
        del result["cpu_us_per_request"]["server"]
    result["in_queue"] = queue_count()
    # wrk may not count the last answers in flight, so the queue may hold more, never fewer.
    result["counted"] = result["in_queue"] >= result["requests"] - result["non_2xx"]
    if not result["counted"]:
        log(f"LOST MESSAGES: {url}: {result}")
    return result


def gateway_run(server: Server, seconds: float = SECONDS) -> dict[str, Any]:
    """One wrk run of POST /publish on a running gateway; every 200 counted in the queue."""
    return counted_run(f"http://127.0.0.1:{server.port}/publish", f"bench|{QUEUE}|{BODY}", seconds,
                       pids=[server.proc.pid, *server.worker_pids()])


class MqBridge:
    """mq-bridge's HTTP -> AMQP route in a process of its own, on a free port."""

    def __enter__(self) -> MqBridge:
        self.port = free_port()
        self.proc = subprocess.Popen([PYTHON, str(REPO / "bench" / "mq_bridge_peer.py"), str(self.port), QUEUE],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while not port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mq-bridge did not start: {self.proc.stderr.read()[-2000:]!r}")  # type: ignore[union-attr]
            time.sleep(0.2)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def bench_gateway(workers: int = 2, pool: int = 5, seconds: float = SECONDS) -> dict[str, Any]:
    with Server(gateway_cfg(pool), workers) as server:
        return gateway_run(server, seconds)


def bench_batch(per_request: int = 100) -> dict[str, Any]:
    """POST /publish/batch with ``per_request`` messages each: messages/s, CPU per message, all counted."""
    record = f"bench|{QUEUE}|{BODY}"
    body = f"{len(record)}\n{record}\n" * per_request
    with Server(gateway_cfg(), 2) as server:
        result = counted_run(f"http://127.0.0.1:{server.port}/publish/batch", body,
                             pids=[server.proc.pid, *server.worker_pids()])
    result["messages_per_request"] = per_request
    result["msgs_per_s"] = result["rps"] * per_request
    result["counted"] = result["in_queue"] >= (result["requests"] - result["non_2xx"]) * per_request
    result["cpu_us_per_message"] = {k: round(v / per_request, 1) for k, v in result["cpu_us_per_request"].items()}
    return result


MANAGEMENT_PATH = "/api/exchanges/%2F/amq.default/publish"
MANAGEMENT_HEADERS = {"Authorization": "Basic Z3Vlc3Q6Z3Vlc3Q=", "Content-Type": "application/json"}
MANAGEMENT_BODY = json.dumps({"properties": {"delivery_mode": 2}, "routing_key": QUEUE, "payload": BODY,
                              "payload_encoding": "string"})


def management_run() -> dict[str, Any]:
    """One wrk run of RabbitMQ's own HTTP publish, same message, same queue, persistent; counted."""
    return counted_run(f"http://127.0.0.1:15672{MANAGEMENT_PATH}", MANAGEMENT_BODY, pids=[],
                       headers=MANAGEMENT_HEADERS)


def gateway_management_run(server: Server) -> dict[str, Any]:
    """The same request and load against the gateway's management-API-compatible endpoint; counted."""
    return counted_run(f"http://127.0.0.1:{server.port}{MANAGEMENT_PATH}", MANAGEMENT_BODY,
                       pids=[server.proc.pid, *server.worker_pids()],
                       headers=MANAGEMENT_HEADERS)


def noop_run(server: Server) -> dict[str, Any]:
    return wrk(f"http://127.0.0.1:{server.port}/publish", f"bench|{QUEUE}|{BODY}")


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median requests/s, with every round's figure beside it."""
    ordered = sorted(runs, key=lambda run: run["rps"])
    middle = dict(ordered[len(ordered) // 2])
    middle["rounds_rps"] = [round(run["rps"]) for run in runs]
    middle["counted"] = all(run.get("counted", True) for run in runs)
    return middle


def bench_http_rounds() -> dict[str, dict[str, Any]]:
    """The gateway, its peers, the management API and both no-op routes, in interleaved rounds."""
    runs: dict[str, list[dict[str, Any]]] = {"gateway": [], "mq_bridge": [], "kombu": [], "management": [],
                                             "gateway_management": [], "noop": [], "noop_bare": []}
    with Server(gateway_cfg(), 2) as gateway, Server(gateway_cfg(), 2, app="bench.noop_app:app") as noop, \
            Server(gateway_cfg(), 2, app="bench.noop_app:bare") as bare, MqBridge() as bridge, \
            Server(gateway_cfg(), 2, app="bench.kombu_app:app") as kombu:
        for round_ in range(1, ROUNDS + 1):
            runs["gateway"].append(gateway_run(gateway))
            runs["mq_bridge"].append(counted_run(f"http://127.0.0.1:{bridge.port}/", BODY, pids=[bridge.proc.pid]))
            runs["kombu"].append(counted_run(f"http://127.0.0.1:{kombu.port}/publish", f"bench|{QUEUE}|{BODY}",
                                             pids=[kombu.proc.pid, *kombu.worker_pids()]))
            runs["management"].append(management_run())
            runs["gateway_management"].append(gateway_management_run(gateway))
            runs["noop"].append(noop_run(noop))
            runs["noop_bare"].append(noop_run(bare))
            log(f"round {round_}/{ROUNDS}: " + ", ".join(f"{k} {v[-1]['rps']:.0f}" for k, v in runs.items()))
    return {name: median_run(rounds) for name, rounds in runs.items()}


def bench_conn_per_message() -> dict[str, Any]:
    reset_queue()
    procs = [subprocess.Popen([PYTHON, str(REPO / "bench" / "conn_per_message.py"), str(SECONDS), QUEUE],
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    runs = [json.loads(proc.communicate()[0]) for proc in procs]
    rate = sum(run["messages"] / run["seconds"] for run in runs)
    return {"rps": rate, "processes": 2, "in_queue": queue_count()}


def bench_zmq() -> dict[str, Any] | None:
    script = REPO / "bench" / "zmq_bench.py"
    if not script.exists():
        return None
    done = subprocess.run([PYTHON, str(script), "--rounds", os.environ.get("BENCH_ZMQ_ROUNDS", "2")],
                          cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        log(f"zmq bench failed: {done.stderr[-1000:]}")
        return {"error": done.stderr[-500:]}
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _script_json(script: str, *args: str) -> dict[str, Any]:
    """Run ``bench/<script>``, which prints one JSON line last; its error instead if it fails."""
    done = subprocess.run([PYTHON, str(REPO / "bench" / script), *args], cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        log(f"{script} failed: {done.stderr[-1000:]}")
        return {"error": done.stderr[-500:]}
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def bench_queue_types() -> dict[str, Any]:
    """Classic against quorum queues, one node and the three-node cluster (bench/queue_types.py)."""
    return _script_json("queue_types.py", "--rounds", "2")


def bench_channels() -> dict[str, Any]:
    """N connections x M channels publishing with confirms, raw pika (bench/channels.py)."""
    return _script_json("channels.py", "--rounds", "2")


def bench_scaling() -> list[dict[str, Any]]:
    rows = []
    for workers in (1, 2):
        for pool in (1, 2, 5, 10):
            result = bench_gateway(workers, pool, seconds=max(SECONDS / 2, 3))
            rows.append({"workers": workers, "pool": pool, "rps": result["rps"], "p99_ms": result["p99_ms"],
                         "counted": result["counted"]})
            log(f"scaling workers={workers} pool={pool}: {result['rps']:.0f} req/s")
    return rows


def bench_memory() -> dict[str, Any]:
    """A worker's RSS with 1 and with 10 connection ids of 5 connections each: the cost of an id."""
    figures: dict[str, Any] = {"connections_per_id": 5}
    for ids in (1, 10):
        reset_queue()
        with Server(gateway_cfg(pool=5, ids=ids), 1) as server:
            time.sleep(2)
            pid = server.worker_pids()[0]
            before = rss_kib(pid)
            wrk(f"http://127.0.0.1:{server.port}/publish", f"bench|{QUEUE}|{BODY}", seconds=3)
            figures[f"rss_mib_{ids}_ids_idle"] = before / 1024
            figures[f"rss_mib_{ids}_ids_after_load"] = rss_kib(pid) / 1024
    figures["rss_mib_per_id"] = (figures["rss_mib_10_ids_idle"] - figures["rss_mib_1_ids_idle"]) / 9
    return figures


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# -- report -------------------------------------------------------------------------


def all_counted(results: dict[str, Any]) -> bool:
    """Every counted run (the gateway's rounds and scaling runs, the peers') found all its 2xx in the queue."""
    return (all(bool(results[name]["counted"])
                for name in ("gateway", "mq_bridge", "kombu", "batch", "management", "gateway_management"))
            and all(row["counted"] for row in results["scaling"])
            and all(row["counted"] for row in results.get("cost_curves", [])))


def table(results: dict[str, Any]) -> str:
    g = results["gateway"]

    def rounds(r: dict[str, Any]) -> str:
        return " / ".join(str(x) for x in r.get("rounds_rps", [])) or "-"

    rows = [
        "| what | req/s (msg/s) | p50 ms | p99 ms | rounds (req/s) | gateway ÷ it |",
        "|---|---|---|---|---|---|",
        f"| gateway POST /publish (2 workers, pool 5) | {g['rps']:.0f} | {g['p50_ms']:.1f} "
        f"| {g['p99_ms']:.1f} | {rounds(g)} | 1.00 |",
    ]
    b = results["batch"]
    rows.append(f"| gateway POST /publish/batch, {b['messages_per_request']} msgs per request "
                f"| {b['msgs_per_s']:.0f} msg/s | {b['p50_ms']:.1f} | {b['p99_ms']:.1f} | - | - |")
    for key, name in (("mq_bridge", "mq-bridge HTTP -> AMQP (Rust), answered after the confirm"),
                      ("kombu", "Flask + kombu ProducerPool (confirm_publish), same gunicorn"),
                      ("management", "RabbitMQ management API publish"),
                      ("gateway_management", "gateway's management-API-compatible publish, same requests"),
                      ("conn_per_message", "new pika connection per message (2 processes)"),
                      ("noop", "no-op route, same gunicorn+gevent+Flask"),
                      ("noop_bare", "no-op route, same gunicorn+gevent, plain WSGI")):
        r = results[key]
        p50 = f"{r['p50_ms']:.1f}" if "p50_ms" in r else "-"
        p99 = f"{r['p99_ms']:.1f}" if "p99_ms" in r else "-"
        rows.append(f"| {name} | {r['rps']:.0f} | {p50} | {p99} | {rounds(r)} | {g['rps'] / r['rps']:.2f} |")
    z = results.get("zmq") or {}
    for mode in ("persistent", "transient"):
        if mode in z:
            f = z[mode]
            rows.append(f"| ZeroMQ through the gateway, {mode}, confirmed | {f['gateway_best']:.0f} msg/s | - | - "
                        f"| - | 1.00 |")
            rows.append(f"| raw pika, {mode}, no confirms, tight loop | {f['raw_best']:.0f} msg/s | - | - "
                        f"| - | {f['ratio_best']:.2f} |")
            rows.append(f"| raw pika, {mode}, with confirms (pipelined) | {f['raw_confirmed_best']:.0f} msg/s "
                        f"| - | - | - | {f['ratio_to_raw_confirmed']:.2f} |")
    if "multi_id" in z:
        f = z["multi_id"]
        rows.append(f"| ZeroMQ through the gateway, {f['ids']} ids x {f['ids']} queues, persistent, confirmed "
                    f"| {f['gateway_best']:.0f} msg/s | - | - | - | 1.00 |")
        rows.append(f"| raw pika, the same {f['ids']} queues, with confirms (pipelined) "
                    f"| {f['raw_confirmed_best']:.0f} msg/s | - | - | - | {f['ratio_to_raw_confirmed']:.2f} |")
    rows += ["", "| workers | pool size | req/s | p99 ms |", "|---|---|---|---|"]
    rows += [f"| {r['workers']} | {r['pool']} | {r['rps']:.0f} | {r['p99_ms']:.1f} |" for r in results["scaling"]]
    counted = "every one" if all_counted(results) else "NOT EVERY ONE: MESSAGES LOST"
    rows += ["", f"Acknowledged publishes (gateway and peers) found in the queue afterwards: {counted}."]
    m = results["memory"]
    rows += ["", f"Worker RSS with 1 id x {m['connections_per_id']} connections: {m['rss_mib_1_ids_idle']:.1f} MiB "
                 f"idle; with 10 ids: {m['rss_mib_10_ids_idle']:.1f} MiB idle, {m['rss_mib_10_ids_after_load']:.1f} "
                 f"MiB after load ({m['rss_mib_per_id']:.2f} MiB per id)."]
    cpu_rows = [(name, results[key]["cpu_us_per_request"]) for key, name in
                (("gateway", "gateway"), ("mq_bridge", "mq-bridge"), ("kombu", "Flask + kombu"),
                 ("gateway_management", "gateway, management API's requests"),
                 ("management", "RabbitMQ management API"))
                if "cpu_us_per_request" in results[key]]
    if cpu_rows:
        rows += ["", "| CPU per request (µs) | server | broker | wrk |", "|---|---|---|---|"]
        rows += [f"| {name} | {c.get('server', '-')} | {c['broker']} | {c['wrk']} |" for name, c in cpu_rows]
        c = results["batch"]["cpu_us_per_message"]
        rows += [f"| gateway batch, per message | {c['server']} | {c['broker']} | {c['wrk']} |"]
    q = results.get("queue_types") or {}
    for where in ("one_node", "cluster"):
        if "classic" in q.get(where, {}):
            f = q[where]
            rows += [f"Confirmed publishing, one pika connection, {where.replace('_', ' ')}: classic "
                     f"{f['classic']} msg/s, quorum {f['quorum']} msg/s ({f['quorum_over_classic']:.2f}x)."]
    layouts = (results.get("channels") or {}).get("msg_per_s")
    if layouts:
        rows += ["", "| connections x channels (raw pika, 2,000 in flight in all) | msg/s |", "|---|---|"]
        rows += [f"| {layout} | {rate:,.0f} |" for layout, rate in layouts.items()]
    return "\n".join(rows)


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = ["gateway", "mq-bridge (Rust)", "Flask + kombu", "gateway batch (msgs)", "management API",
             "gateway, management API's requests", "conn/message", "no-op route (Flask)",
             "no-op route (plain WSGI)"]
    values = [results["gateway"]["rps"], results["mq_bridge"]["rps"], results["kombu"]["rps"],
              results["batch"]["msgs_per_s"]]
    values += [results[k]["rps"] for k in ("management", "gateway_management", "conn_per_message", "noop",
                                           "noop_bare")]
    z = results.get("zmq") or {}
    if "persistent" in z:
        names += ["ZeroMQ gateway (persistent)", "raw pika, no confirms (persistent)"]
        values += [z["persistent"]["gateway_best"], z["persistent"]["raw_best"]]
    left.barh(names[::-1], values[::-1], color="#4878a8")
    left.set_xlabel("messages per second (100 B, confirmed unless said)")
    left.set_title("Publishing, one run")
    for workers in (1, 2):
        rows = [r for r in results["scaling"] if r["workers"] == workers]
        right.plot([r["pool"] for r in rows], [r["rps"] for r in rows], marker="o", label=f"{workers} worker(s)")
    right.set_xlabel("pool size (connections per broker per worker)")
    right.set_ylabel("req/s")
    right.set_ylim(bottom=0)
    right.set_title("Gateway HTTP throughput by pool size (one short run each)")
    right.legend()
    fig.suptitle(results["machine"])
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    ensure_tools()
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.node()} · {os.cpu_count()} cores · {platform.python_version()}",
        "seconds": SECONDS,
        "rounds": ROUNDS,
        "connections": CONNECTIONS,
    }
    log(f"gateway, mq-bridge, Flask + kombu, management API, no-op routes: {ROUNDS} rounds")
    results.update(bench_http_rounds())
    log("gateway batch"); results["batch"] = bench_batch()  # noqa: E702
    log("connection per message"); results["conn_per_message"] = bench_conn_per_message()  # noqa: E702
    log("zeromq"); results["zmq"] = bench_zmq()  # noqa: E702
    results["scaling"] = bench_scaling()
    log("memory"); results["memory"] = bench_memory()  # noqa: E702
    log("classic and quorum queues"); results["queue_types"] = bench_queue_types()  # noqa: E702
    log("connections x channels"); results["channels"] = bench_channels()  # noqa: E702
    import cost_curves  # bench/cost_curves.py (it imports this module for its helpers)

    log("cost curves: 1 to 1,000 connection ids"); results["cost_curves"] = cost_curves.bench_cost_curves()  # noqa: E702
    g = results["gateway"]["rps"]
    results["ratios"] = {
        "gateway_over_mq_bridge": g / results["mq_bridge"]["rps"],
        "gateway_over_kombu": g / results["kombu"]["rps"],
        "gateway_over_management": g / results["management"]["rps"],
        "gateway_management_over_management": results["gateway_management"]["rps"] / results["management"]["rps"],
        "gateway_over_conn_per_message": g / results["conn_per_message"]["rps"],
        "gateway_over_noop": g / results["noop"]["rps"],
        "gateway_over_noop_bare": g / results["noop_bare"]["rps"],
        "batch_msgs_over_noop": results["batch"]["msgs_per_s"] / results["noop"]["rps"],
    }
    for mode in ("persistent", "transient"):
        if mode in (results["zmq"] or {}):
            results["ratios"][f"zmq_over_raw_pika_{mode}"] = results["zmq"][mode]["ratio_best"]
            results["ratios"][f"zmq_over_raw_pika_confirmed_{mode}"] = results["zmq"][mode]["ratio_to_raw_confirmed"]
    if "multi_id" in (results["zmq"] or {}):
        results["ratios"]["zmq_multi_id_over_raw_pika_confirmed"] = results["zmq"]["multi_id"]["ratio_to_raw_confirmed"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2)
    (RESULTS / "latest.json").write_text(text + "\n")
    (RESULTS / f"{results['when'].replace(':', '')}.json").write_text(text + "\n")
    chart(results, RESULTS / "latest.png")
    cost_curves.chart(results["cost_curves"], RESULTS / "cost_curves.png")
    (RESULTS / "cost_curves.json").write_text(json.dumps(results["cost_curves"], indent=2) + "\n")  # as run alone
    print(table(results))
    print("\n" + cost_curves.table(results["cost_curves"]))
    print("\nratios: " + ", ".join(f"{k} {v:.2f}" for k, v in results["ratios"].items()))
    reset_queue()
    if not all_counted(results):
        sys.exit("bench: a publish the gateway acknowledged is missing from the queue")


if __name__ == "__main__":
    main()
