"""Clean output, from the real gunicorn: every line is one JSON object, whatever happens.

* short secrets (a one-character password) are masked in values, never in
  the finished JSON text, so no line breaks;
* a weak operator token is refused at start-up;
* gevent's and pika's tracebacks (a broker resetting, refusing, stalling)
  arrive as JSON lines too, on stdout and stderr;
* a start-up that fails leaves no metrics directory behind.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import gevent
import pytest

from tests.support.rabbit import AMQP_PORT
from tests.support.server import REPO, GatewayProcess, free_port, publish

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

FAST = "HEALTH_INTERVAL,0.2\nCONNECT_TIMEOUT,1\nRECONNECT_BACKOFF_MAX,0.3\nPOOL_TIMEOUT,1\nPUBLISH_TIMEOUT,4\n"


def not_json(text: str) -> list[str]:
    """The lines of ``text`` that are not one JSON object each."""
    bad = []
    for line in text.splitlines():
        try:
            if not isinstance(json.loads(line), dict):
                bad.append(line)
        except ValueError:
            bad.append(line)
    return bad


def test_short_secrets_keep_every_line_json(tmp_path, rabbit):
    queue = rabbit.queue("short")
    gw = GatewayProcess(tmp_path, FAST + "NO_OF_CONNECTIOS,1\nDB_PASSWORD,7\n"
                        f"RMQ_CONN_STR,ok,guest:guest@127.0.0.1:{AMQP_PORT}/\n"
                        f"RMQ_CONN_STR,dead,app:3@127.0.0.1:{free_port()}/\n",
                        workers=2, env={"GATEWAY_ACCESS_LOG": "true"})
    gw.start(wait_ready=False)
    gw.wait_active("ok")
    try:
        for i in range(20):
            assert publish(gw.port, f"ok|{queue}|m{i}".encode())[0] == 200
        assert publish(gw.port, f"nope|{queue}|x".encode())[0] == 404
    finally:
        gw.stop()
    logs = gw.logs()
    assert len(logs.splitlines()) > 20
    assert not_json(logs) == []
    # Masked where a secret can appear: the broker's display has no password at all.
    records = [json.loads(line) for line in logs.splitlines()]
    assert {r["pid"] for r in records} and all(isinstance(r["pid"], int) for r in records)


def test_a_weak_ops_token_is_refused_at_start(tmp_path):
    cfg = tmp_path / "weak.cfg"
    cfg.write_text(f"OPS_TOKEN,1\nRMQ_CONN_STR,a,guest:guest@127.0.0.1:{AMQP_PORT}/\n")
    done = subprocess.run([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", "127.0.0.1:0"],
                          cwd=REPO, env={"GATEWAY_CONFIG": str(cfg), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if "config error" in line]
    assert len(errors) == 1 and "OPS_TOKEN" in errors[0] and "at least 16" in errors[0], done.stderr
    assert "Traceback" not in done.stderr


def test_every_line_is_json_through_reset_refuse_and_blackhole(tmp_path, rabbit, proxy):
    queue = rabbit.queue("faults")
    gw = GatewayProcess(tmp_path, FAST + "NO_OF_CONNECTIOS,2\nCONFIRM_TIMEOUT,1\nHEARTBEAT,1\n"
                        f"RMQ_CONN_STR,p,guest:guest@{proxy.url_hostport}/\n"
                        # TLS against a plain listener, then reset mid-handshake: ssl's errors too.
                        f"RMQ_CONN_STR,t,amqps://guest:guest@{proxy.url_hostport}/?verify=verify_none\n",
                        workers=2, split_stderr=True)
    gw.start(wait_ready=False)
    try:
        gw.wait_active("p")

        def cut_repeatedly() -> None:  # connections reset while the pools open and use them
            for _ in range(30):
                proxy.cut()
                gevent.sleep(0.1)

        faults = [proxy.reset_on_accept, lambda: proxy.reset_on_accept(after_bytes=8),
                  lambda: gevent.spawn(cut_repeatedly), proxy.refuse, proxy.blackhole]
        for fault in faults:
            fault()
            jobs = [gevent.spawn(publish, gw.port, f"p|{queue}|x".encode(), 10) for _ in range(10)]
            gevent.sleep(3)
            gevent.joinall(jobs, timeout=10)
            proxy.restore()
            gw.wait_active("p")
        assert publish(gw.port, f"p|{queue}|after".encode())[0] == 200
    finally:
        gw.stop()
    out, err = gw.logs(), gw.stderr_text()
    assert not_json(out) == [], "\n".join(not_json(out)[:20])
    assert not_json(err) == [], "\n".join(not_json(err)[:20])


def _failed_start(tmp_path, cfg_text: str, bind: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Start gunicorn, expecting it to fail; also the metrics directories it left in its TMPDIR."""
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    cfg = tmp_path / "start.cfg"
    cfg.write_text(cfg_text)
    done = subprocess.run([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", bind],
                          cwd=REPO, env={"GATEWAY_CONFIG": str(cfg), "PATH": "/usr/bin:/bin", "TMPDIR": str(tmp)},
                          capture_output=True, text=True, timeout=60)
    return done, sorted(p.name for p in tmp.glob("gateway-metrics-*"))


@pytest.mark.parametrize("case", ["bad config", "port in use"])
def test_a_failed_start_leaves_no_metrics_directory(tmp_path, case):
    good = f"RMQ_CONN_STR,a,guest:guest@127.0.0.1:{AMQP_PORT}/\n"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        bind = f"127.0.0.1:{busy.getsockname()[1]}" if case == "port in use" else f"127.0.0.1:{free_port()}"
        text = "RMQ_CONN_STR,a,h:notaport/\n" if case == "bad config" else good
        done, left = _failed_start(tmp_path, text, bind)
    assert done.returncode != 0, done.stdout[-2000:]
    assert left == [], f"{case}: {left} left behind"
