"""SIGHUP, the nginx way: a bad config is refused in the master, a good one applies with nothing lost.

Also the check on its own, ``python -m app.config.check [file]`` (``make
check-config``): the same one-line error and a non-zero exit.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import gevent
import pytest

from tests.support.rabbit import AMQP_PORT
from tests.support.server import REPO, GatewayProcess, publish

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

FAST = "HEALTH_INTERVAL,0.2\nCONNECT_TIMEOUT,1\nRECONNECT_BACKOFF_MAX,0.3\nPOOL_TIMEOUT,1\nPUBLISH_TIMEOUT,4\n"
GOOD = FAST + f"NO_OF_CONNECTIOS,2\nRMQ_CONN_STR,a,guest:guest@127.0.0.1:{AMQP_PORT}/\n"
BAD = FAST + f"RMQ_CONN_STR,a,guest:SuperSecret99@127.0.0.1:{AMQP_PORT}/\nRMQ_CONN_STR,b,h:notaport/\n"


class Publisher:
    """Publishes to ``conn_id`` in a loop; counts every answer."""

    def __init__(self, port: int, conn_id: str, queue: str):
        self.answers: dict[int, int] = {}
        self.acked: list[bytes] = []
        self._stop = False
        self._jobs = [gevent.spawn(self._run, port, conn_id, queue, n) for n in range(4)]

    def _run(self, port: int, conn_id: str, queue: str, n: int) -> None:
        i = 0
        while not self._stop:
            body = f"{n}-{i}".encode()
            try:
                status = publish(port, f"{conn_id}|{queue}|".encode() + body, timeout=10)[0]
            except OSError:
                status = 0  # connection refused or reset: counted, never acknowledged
            self.answers[status] = self.answers.get(status, 0) + 1
            if status == 200:
                self.acked.append(body)
            i += 1
            gevent.sleep(0.01)

    def stop(self) -> None:
        self._stop = True
        gevent.joinall(self._jobs, timeout=15)


def test_sighup_with_a_bad_file_is_refused_and_a_good_one_applies(tmp_path, rabbit):
    queue = rabbit.queue("reload")
    gw = GatewayProcess(tmp_path, GOOD, workers=2)
    gw.start()
    try:
        publisher = Publisher(gw.port, "a", queue)
        gevent.sleep(1)
        gw.cfg.write_text(BAD)
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGHUP)
        gevent.sleep(4)
        assert gw.proc.poll() is None, gw.logs()[-3000:]
        refused = gw.events("config_reload_refused")
        assert len(refused) == 1, refused
        assert "notaport" not in refused[0]["message"] and "invalid port" in refused[0]["message"]
        assert publish(gw.port, f"a|{queue}|still".encode())[0] == 200
        publisher.acked.append(b"still")
        # A good file: applied, the new id served, nothing lost on the way.
        gw.cfg.write_text(GOOD + f"RMQ_CONN_STR,c,guest:guest@127.0.0.1:{AMQP_PORT}/\n")
        gw.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while publish(gw.port, f"c|{queue}|new".encode())[0] != 200:
            assert time.monotonic() < deadline, "the good config was not applied"
            gevent.sleep(0.2)
        publisher.acked.append(b"new")
        gevent.sleep(1)
        publisher.stop()
    finally:
        gw.stop()
    logs = gw.logs()
    assert "Traceback" not in logs, [line[:3000] for line in logs.splitlines() if "Traceback" in line][:2]
    assert "SuperSecret99" not in logs
    assert [line for line in logs.splitlines() if not line.startswith("{")] == []
    assert set(publisher.answers) <= {200}, publisher.answers
    found = set(rabbit.bodies(queue))
    assert set(publisher.acked) <= found, f"lost {len(set(publisher.acked) - found)}"
    assert len(gw.events("config_reloaded")) == 1


def _check(path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.config.check", str(path)], cwd=REPO,
                          env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60)


def test_check_config_command(tmp_path):
    good, bad = tmp_path / "good.cfg", tmp_path / "bad.cfg"
    good.write_text(GOOD)
    bad.write_text(BAD)
    ok = _check(good)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines() == [f"gateway: config ok: {good} (1 connection ids)"]
    failed = _check(bad)
    assert failed.returncode != 0
    lines = failed.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"gateway: config error: {bad}:7: RMQ_CONN_STR: primary: invalid port")
    assert "SuperSecret99" not in failed.stdout + failed.stderr
    made = subprocess.run(["make", "-s", "check-config", f"CONFIG={bad}"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert made.returncode != 0 and "invalid port" in made.stderr


def test_check_config_names_the_id_and_a_missing_tls_file(tmp_path):
    cfg = tmp_path / "tls.cfg"
    cfg.write_text("RMQ_CONN_STR,orders,amqps://app:Secret99x@rabbit:5671/?cacertfile=/nonexistent/ca.pem\n")
    done = _check(cfg)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [f"gateway: config error: {cfg}:1: RMQ_CONN_STR: connection id 'orders': "
                                        "primary: cacertfile '/nonexistent/ca.pem': file not found"]
