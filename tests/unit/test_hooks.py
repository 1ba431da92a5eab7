"""gunicorn.conf.py's worker hooks with another WSGI app than the gateway's (make bench runs its peers so)."""

from __future__ import annotations

import subprocess
import sys

from tests.support.server import REPO

SCRIPT = """
import runpy, types
from flask import Flask
hooks = runpy.run_path("gunicorn.conf.py")
worker = types.SimpleNamespace(wsgi=Flask("peer"), pid=1, cfg=types.SimpleNamespace(workers=2))
hooks["post_worker_init"](worker)
hooks["worker_exit"](None, worker)
print("left alone")
"""


def test_the_worker_hooks_leave_a_peer_app_alone(tmp_path):
    # A fresh interpreter: the hooks route logging and read the environment as in a worker.
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("left alone")
