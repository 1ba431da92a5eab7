"""Run the real service, ``gunicorn -c gunicorn.conf.py``, as a subprocess."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import gevent

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def publish(port: int, body: bytes, timeout: float = 30) -> tuple[int, dict]:
    status, _headers, data = request(port, "POST", "/publish", body, timeout=timeout)
    return status, json.loads(data) if data else {}


class GatewayProcess:
    """gunicorn with the gateway, on a free port, its log kept in ``log_path``."""

    def __init__(self, tmp_path: Path, cfg_text: str, workers: int = 2, env: dict[str, str] | None = None,
                 python: str = sys.executable, cwd: Path = REPO, split_stderr: bool = False):
        self.python = python  # another venv's interpreter runs the gateway as installed there
        self.cwd = cwd  # where gunicorn.conf.py is
        self.port = free_port()
        self.cfg = tmp_path / "pool.cfg"
        self.cfg.write_text(cfg_text)
        self.log_path = tmp_path / "gunicorn.log"
        # Apart from stdout (``stderr_text()``), or merged into the log.
        self.stderr_path = tmp_path / "gunicorn.stderr" if split_stderr else None
        self.workers = workers
        self.env = {**os.environ, "GATEWAY_CONFIG": str(self.cfg), **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self, wait_ready: bool = True, timeout: float = 30) -> GatewayProcess:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - open for the process's lifetime
        stderr = open(self.stderr_path, "wb") if self.stderr_path else subprocess.STDOUT  # noqa: SIM115
        self.proc = subprocess.Popen(
            [self.python, "-m", "gunicorn", "-c", "gunicorn.conf.py",
             "--bind", f"127.0.0.1:{self.port}", "--workers", str(self.workers)],
            cwd=self.cwd, env=self.env, stdout=self._log, stderr=stderr,
        )
        if self.stderr_path:
            stderr.close()  # type: ignore[union-attr]  # the child has its own copy
        self.wait_for("/healthz", timeout)
        if wait_ready:
            self.wait_for("/readyz", timeout)
        return self

    def wait_for(self, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"gunicorn exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                if request(self.port, "GET", path, timeout=2)[0] == 200:
                    return
            except OSError:
                pass  # not listening yet
            gevent.sleep(0.1)
        raise AssertionError(f"{path} not 200 within {timeout}s:\n{self.logs()[-3000:]}")

    def wait_active(self, conn_id: str, role: str = "primary", timeout: float = 30) -> None:
        """Wait until every worker publishes ``conn_id`` to ``role`` (/readyz asks only one worker)."""
        deadline = time.monotonic() + timeout
        view: dict = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError, KeyError):
                view = json.loads(request(self.port, "GET", "/pools", timeout=2)[2])
                if len(view["workers"]) == self.workers and view["connections"][conn_id]["active"] == role:
                    return
            gevent.sleep(0.1)
        raise AssertionError(f"{conn_id} not on {role} in every worker within {timeout}s: {view}")

    def worker_pids(self) -> list[int]:
        assert self.proc is not None
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            gevent.sleep(0.05)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stderr_text(self) -> str:
        """What went to stderr (with ``split_stderr``; else it is in ``logs()``)."""
        path = self.stderr_path
        return path.read_text(errors="replace") if path is not None and path.exists() else ""

    def events(self, name: str) -> list[dict]:
        """The JSON log records of one event, in order."""
        found = []
        for line in self.logs().splitlines():
            if f'"{name}"' not in line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue  # not a JSON line (e.g. a child's plain stderr)
            if record.get("event") == name:
                found.append(record)
        return found
