"""Cost curves: what 1, 10, 100 and 1,000 connection ids cost (issue 17), part of ``make bench``.

For each count, a gateway (2 workers, pool size 5) with that many ids, all on
the local RabbitMQ, in two layouts:

* ``one endpoint``: every id publishes to ``/`` with its backup on one other
  vhost (the ids share two pools);
* ``4 vhosts``: the ids spread over four primary vhosts, backups on a fifth;
* ``one endpoint, PostgreSQL``: as the first, the ids read from a
  ``rmq_connections`` table (``USE_DB``) in a database of the run's own.

Measured per run: AMQP connections the broker has from the gateway (asked of
the broker, after the pools settled), the largest worker RSS, the seconds from
starting gunicorn to ``/readyz`` answering 200, and publishing spread over the
ids (each request names the next id in turn, of the ids whose primary is
``/``, where the bench's queue is), every 2xx counted in the queue: p50/p99
at a fixed load (:data:`FIXED_PAUSE_MS` after each answer on each of the 32
connections, about 3,000 req/s, the same for every count; the medians of
:data:`FIXED_RUNS` runs), and the rate
under the other gateway runs' load (as much as it takes).

Run alone: ``.venv/bin/python bench/cost_curves.py`` (prints the table, writes
``bench/results/cost_curves.json`` and ``.png``); ``bench/run.py`` runs it too.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench  # bench/run.py: Server, wrk, counted runs

COUNTS = (1, 10, 100, 1000)
LAYOUTS = ("one endpoint", "4 vhosts", "one endpoint, PostgreSQL")
PG_ADMIN = {"host": "127.0.0.1", "port": 5432, "user": os.environ.get("BENCH_PG_USER", "postgres"),
            "password": os.environ.get("BENCH_PG_PASSWORD", "postgres"), "dbname": "postgres"}
PG_DB = "bench_cost_curves"
VHOSTS = [f"bench-cost-{n}" for n in range(5)]  # four primaries, one backup
SETTLE_SECONDS = 3.0
FIXED_PAUSE_MS = 10  # per connection after each answer: ~3,000 req/s offered, below what one id saturates
FIXED_RUNS = 3  # fixed-load runs per count, their medians reported


def rabbitmqctl(*args: str) -> str:
    return subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, check=True, timeout=60).stdout


def make_vhosts() -> None:
    for vhost in VHOSTS:
        rabbitmqctl("add_vhost", vhost)
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")


def delete_vhosts() -> None:
    for vhost in VHOSTS:
        subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True, timeout=60)


def gateway_connections() -> int:
    """Connections the broker has from a gateway (its client properties name the product)."""
    listing = rabbitmqctl("list_connections", "client_properties", "--no-table-headers", "--quiet")
    return sum(1 for line in listing.splitlines() if "amqp-publish-gateway" in line)


def connection_rows(ids: int, layout: str) -> list[tuple[str, str, str]]:
    """(id, primary, backup) of each id; the measured one, "bench", publishes to "/" (bench/run.py's queue)."""
    backup = f"guest:guest@127.0.0.1:5672/{quote(VHOSTS[4], safe='')}"
    rows = []
    for i in range(ids):
        vhost = "" if layout != "4 vhosts" or i % 4 == 0 else quote(VHOSTS[i % 4], safe="")
        rows.append(("bench" if i == 0 else f"bench{i}", f"guest:guest@127.0.0.1:5672/{vhost}", backup))
    return rows


def config(ids: int, layout: str) -> str:
    lines = ["NO_OF_CONNECTIOS,5", "LOG_LEVEL,WARNING", f"MAX_CONNECTION_IDS,{max(ids, 100)}"]
    if layout.endswith("PostgreSQL"):
        load_table(connection_rows(ids, layout))
        lines += ["USE_DB,true", f"DB_NAME,{PG_DB}", f"DB_USERNAME,{PG_ADMIN['user']}", "DB_HOST_ADDRESS,127.0.0.1",
                  "DB_PORT,5432"]
    else:
        lines += [f"RMQ_CONN_STR,{conn_id},{primary},{backup}" for conn_id, primary, backup in
                  connection_rows(ids, layout)]
    return "\n".join(lines) + "\n"


def _pg(dbname: str = "postgres") -> Any:
    import psycopg2

    conn = psycopg2.connect(**{**PG_ADMIN, "dbname": dbname}, connect_timeout=5)
    conn.autocommit = True
    return conn


def make_database() -> None:
    drop_database()
    conn = _pg()
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {PG_DB} TEMPLATE template0")
    conn.close()
    conn = _pg(PG_DB)
    with conn.cursor() as cur:
        cur.execute((bench.REPO / "config" / "schema.sql").read_text())
    conn.close()


def drop_database() -> None:
    conn = _pg()
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {PG_DB}")
    conn.close()


def load_table(rows: list[tuple[str, str, str]]) -> None:
    conn = _pg(PG_DB)
    with conn.cursor() as cur:
        cur.execute("DELETE FROM rmq_connections")
        cur.executemany("INSERT INTO rmq_connections (connection_id, primary_url, backup_url) VALUES (%s, %s, %s)",
                        rows)
    conn.close()


def one_run(ids: int, layout: str) -> dict[str, Any]:
    cfg = config(ids, layout)
    started = time.monotonic()
    with bench.Server(cfg, workers=2) as server:
        ready_s = time.monotonic() - started
        time.sleep(SETTLE_SECONDS)  # fillers and health checks reach their steady state
        connections = gateway_connections()
        spread = [conn_id for conn_id, primary, _backup in connection_rows(ids, layout) if primary.endswith(":5672/")]
        # A short run first, not measured: each id's first publishes make its metric children (a
        # one-time cost per id, which a running gateway has long paid), at every count alike.
        bench.wrk(f"http://127.0.0.1:{server.port}/publish", f"{bench.QUEUE}|{bench.BODY}", seconds=2, spread=spread)
        url, body, pids = (f"http://127.0.0.1:{server.port}/publish", f"{bench.QUEUE}|{bench.BODY}",
                           [server.proc.pid, *server.worker_pids()])
        seconds = max(bench.SECONDS / 2, 4)
        # The latency at a fixed load three times over: one run's p50 moved by +-30 % between
        # identical setups on this machine, more than the differences between counts it is to show.
        fixed = [bench.counted_run(url, body, seconds, pids=pids, spread=spread, pause_ms=FIXED_PAUSE_MS)
                 for _ in range(FIXED_RUNS)]
        run = {"rps": statistics.median(r["rps"] for r in fixed),
               "p50_ms": statistics.median(r["p50_ms"] for r in fixed),
               "p99_ms": statistics.median(r["p99_ms"] for r in fixed),
               "counted": all(r["counted"] for r in fixed)}
        most = bench.counted_run(url, body, seconds, pids=pids, spread=spread)
        rss = max(bench.rss_kib(pid) for pid in server.worker_pids()) / 1024
    row = {"ids": ids, "layout": layout, "connections": connections, "ready_s": round(ready_s, 2),
           "worker_rss_mib": round(rss, 1), "rps": round(run["rps"]), "p50_ms": run["p50_ms"],
           "p99_ms": run["p99_ms"], "counted": run["counted"] and most["counted"], "load_ids": len(spread),
           "max_rps": round(most["rps"]), "max_p50_ms": most["p50_ms"]}
    bench.log(f"cost curve: {ids} ids, {layout}: {connections} connections, ready in {ready_s:.1f}s, "
              f"{rss:.0f} MiB, p50 {run['p50_ms']:.1f} ms")
    return row


def bench_cost_curves() -> list[dict[str, Any]]:
    """Every (layout, count) run, the vhosts and the database made before and removed after."""
    delete_vhosts()
    make_vhosts()
    make_database()
    os.environ["GATEWAY_DB_PASSWORD"] = PG_ADMIN["password"]  # bench.Server passes the environment on
    try:
        return [one_run(ids, layout) for layout in LAYOUTS for ids in COUNTS]
    finally:
        del os.environ["GATEWAY_DB_PASSWORD"]
        delete_vhosts()
        drop_database()


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| ids | layout | broker connections | ready (s) | worker RSS (MiB) | load over ids "
             "| fixed load req/s | p50 ms | p99 ms | most req/s |", "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['ids']} | {r['layout']} | {r['connections']} | {r['ready_s']:.1f} | {r['worker_rss_mib']:.0f} "
              f"| {r.get('load_ids', 1)} | {r['rps']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
              f"| {r.get('max_rps', '-')} |" for r in rows]
    return "\n".join(lines)


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    for (key, title), ax in zip((("connections", "broker connections"), ("worker_rss_mib", "worker RSS (MiB)"),
                                 ("ready_s", "start to ready (s)"), ("p50_ms", "publish p50 at a fixed load (ms)")),
                                axes, strict=True):
        for layout in LAYOUTS:
            series = [r for r in rows if r["layout"] == layout]
            ax.plot([r["ids"] for r in series], [r[key] for r in series], marker="o", label=layout)
        ax.set_xscale("log")
        ax.set_xlabel("connection ids")
        ax.set_title(title)
        ax.set_ylim(bottom=0)
        ax.legend()
    fig.suptitle("Cost of connection ids (2 workers, pool size 5, one broker)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    rows = bench_cost_curves()
    bench.RESULTS.mkdir(parents=True, exist_ok=True)
    (bench.RESULTS / "cost_curves.json").write_text(json.dumps(rows, indent=2) + "\n")
    chart(rows, bench.RESULTS / "cost_curves.png")
    print(table(rows))
    if not all(r["counted"] for r in rows):
        sys.exit("bench: an acknowledged publish is missing from the queue")


if __name__ == "__main__":
    main()
