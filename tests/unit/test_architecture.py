"""The layout's promises: light entry points, and a worker lifecycle that starts and stops in order."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app.core.lifecycle import Lifecycle, Status

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("flask", "werkzeug", "pika", "gevent", "psycopg2")

# What each process imports first, and what it must not load with it.
ENTRY_POINTS = {
    # The gunicorn master: its config module, what its hooks import and the worker
    # class (gunicorn loads it in the master: gevent comes with it, by gunicorn's design).
    "master": ("import runpy; runpy.run_path('gunicorn.conf.py'); "
               "import app.config.check, app.http.master, app.http.worker, app.ops.metrics, app.ops.pool_status, "
               "app.zmq.supervisor", ("flask", "werkzeug", "pika", "psycopg2")),
    # python -m app.zmq.relay: pyzmq only.
    "relay": ("import app.zmq.relay", HEAVY),
    "config check": ("import app.config.check", (*HEAVY, "zmq")),
}


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_entry_points_load_nothing_heavy(name):
    code, forbidden = ENTRY_POINTS[name]
    probe = f"{code}; import sys, json; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin", "PROMETHEUS_MULTIPROC_DIR": "/tmp"})
    loaded = {module.split(".")[0] for module in json.loads(out.stdout.splitlines()[-1])}
    assert not loaded & set(forbidden), f"{name} loads {sorted(loaded & set(forbidden))}"


class _Part:
    def __init__(self, name: str, journal: list[str], ready: bool | None = True, fail_stop: bool = False):
        self.name, self.journal, self.ready, self.fail_stop = name, journal, ready, fail_stop

    def start(self) -> None:
        self.journal.append(f"start {self.name}")

    def stop(self, timeout: float) -> None:
        self.journal.append(f"stop {self.name}")
        if self.fail_stop:
            raise RuntimeError("cannot stop")

    def status(self) -> Status:
        return Status(self.ready, {"ok": self.ready} if self.ready is not None else None)


def test_lifecycle_starts_in_order_and_stops_in_reverse_even_past_a_failure():
    journal: list[str] = []
    life = Lifecycle()
    for part in (_Part("a", journal), _Part("b", journal, fail_stop=True), _Part("c", journal)):
        life.add(part)
    assert journal == [] and life.readiness()["ready"] is False  # built, not started: nothing runs
    life.start()
    life.start()  # idempotent
    assert journal == ["start a", "start b", "start c"]
    life.stop(1.0)
    assert journal[3:] == ["stop c", "stop b", "stop a"]  # b's failure does not keep a running


def test_readiness_walks_the_components_that_have_a_say():
    journal: list[str] = []
    life = Lifecycle()
    life.add(_Part("pools", journal))
    life.add(_Part("quiet", journal, ready=None))
    life.start()
    assert life.readiness() == {"ready": True, "pools": {"ok": True}}
    life.add(_Part("late", journal, ready=False))  # added once running: started at once
    assert journal[-1] == "start late" and life.readiness()["ready"] is False
    life.stop(1.0)
    with pytest.raises(RuntimeError):
        life.add(_Part("after", journal))
