"""The gunicorn master's side of ZeroMQ: start the relay, restart it if it dies, stop it last.

The one place the master deals with ZeroMQ, and it does so without ZeroMQ:
the relay (:mod:`app.zmq.relay`) is a separate ``python -m`` process, so no
ZeroMQ context (and none of libzmq's threads) ever lives in the master or
is inherited by a forked worker. The master only

* makes a private directory for the workers' back-end ``ipc://`` path,
* starts the relay and waits for its ``READY`` line (a bind failure stops
  start-up with one clear line),
* watches it from a thread and restarts it, with backoff, when it dies,
* tells it on its stdin which worker died (gunicorn's ``child_exit``),
* stops it after the workers at shutdown and removes every ipc file and the
  directories it made.

The relay runs in its own session, so a Ctrl-C meant for the whole process
group reaches the workers but not the relay: it keeps passing their last
replies until the master stops it. If the master is killed outright the
relay sees its stdin close (and its parent change) and exits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from app.config import Settings
from app.core.errors import StartupError
from app.core.retry import Backoff

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]  # holds the app package: python -m finds it there
START_TIMEOUT = 10.0
BACKOFF_START, BACKOFF_MAX = 0.1, 5.0
HEALTHY_AFTER = 10.0  # a relay that lived this long resets the backoff


class RelayStartError(StartupError):
    """The relay did not come up; ``str()`` is its one-line reason."""


def ipc_path(address: str) -> str | None:
    """The file behind an ``ipc://`` address (None for tcp or Linux abstract sockets)."""
    if not address.startswith("ipc://"):
        return None
    path = address[len("ipc://"):]
    return None if path.startswith("@") else path


def ipc_in_use(path: str) -> bool:
    """Does a live process accept connections on this unix socket path?"""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(0.5)
        probe.connect(path)
    except OSError:
        return False  # absent, or a stale file from a dead process
    finally:
        probe.close()
    return True


class RelaySupervisor:
    """Owns the relay process for the master's lifetime."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.rundir = tempfile.mkdtemp(prefix="gateway-zmq-")
        self.backend = f"ipc://{self.rundir}/workers"
        self._lock = threading.Lock()  # master-side only: guards _proc against the watcher
        self._stopping = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._made_dirs: list[str] = []

    # -- starting --------------------------------------------------------------

    def start(self) -> None:
        """Start the relay and wait until it has bound; RelayStartError if it cannot."""
        try:
            self._make_ipc_dir()
            self._proc = self._spawn()
        except (RelayStartError, OSError) as exc:
            self._cleanup()
            raise RelayStartError(str(exc)) from None
        self._thread = threading.Thread(target=self._watch, name="zmq-relay-watch", daemon=True)
        self._thread.start()

    def _command(self) -> list[str]:
        s = self.settings
        options = {
            "front": s.zmq_address, "back": self.backend, "max-body": str(s.max_body_size),
            "curve-server-key": s.zmq_curve_server_key, "curve-client-keys-dir": s.zmq_curve_client_keys_dir,
            "curve-client-keys": " ".join(s.zmq_curve_client_keys), "parent-pid": str(os.getpid()),
            "log-level": s.log_level,
        }
        # --name=value: a Z85 key may start with "-", which argparse would take for an option.
        return [sys.executable, "-m", "app.zmq.relay", *(f"--{name}={value}" for name, value in options.items())]

    def _spawn(self) -> subprocess.Popen[bytes]:
        # bufsize=0: nothing buffered in stdin that a forked worker could flush twice.
        proc = subprocess.Popen(self._command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
                                cwd=ROOT, start_new_session=True)
        assert proc.stdout is not None and proc.stdin is not None
        try:
            line = self._status_line(proc, START_TIMEOUT)
        finally:
            proc.stdout.close()
        if line != "READY":
            with contextlib.suppress(OSError):
                proc.kill()
            code = proc.wait()
            raise RelayStartError(line.removeprefix("ERROR ") if line else
                                  f"the relay exited with {code} before binding")
        os.set_blocking(proc.stdin.fileno(), False)  # a stuck relay must never block the master
        return proc

    @staticmethod
    def _status_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        if not ready:
            return f"ERROR the relay did not bind within {timeout:g}s"
        return proc.stdout.readline().decode(errors="replace").strip()

    def _make_ipc_dir(self) -> None:
        # The seed's ipc:///tmp/feeds/0 must work on a fresh host: make the
        # directory, and remember what we made so shutdown can remove it.
        path = ipc_path(self.settings.zmq_address)
        if path is None:
            return
        missing = []
        parent = Path(path).parent
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        for directory in reversed(missing):
            directory.mkdir()
            self._made_dirs.append(str(directory))

    # -- watching ----------------------------------------------------------------

    def _watch(self) -> None:
        backoff = Backoff(BACKOFF_START, BACKOFF_MAX, jitter=0.0)  # one relay: nobody to fall in step with
        started = time.monotonic()
        while True:
            with self._lock:
                proc = self._proc
            assert proc is not None
            code = proc.wait()  # gunicorn's reaper may get there first: then 0
            if self._stopping.is_set():
                return
            if time.monotonic() - started > HEALTHY_AFTER:
                backoff.reset()
            log.error("ZeroMQ relay (pid %d) exited with %s; restarting it", proc.pid, code,
                      extra={"event": "zmq_relay_died", "ingress": "zmq"})
            while True:
                if self._stopping.wait(backoff.next()):
                    return
                try:
                    new = self._spawn()
                except (RelayStartError, OSError) as exc:
                    log.error("ZeroMQ relay restart failed: %s", exc,
                              extra={"event": "zmq_relay_restart_failed", "ingress": "zmq"})
                    continue
                with self._lock:
                    if self._stopping.is_set():
                        new.kill()
                        new.wait()
                        return
                    self._proc = new
                started = time.monotonic()
                log.warning("ZeroMQ relay restarted (pid %d)", new.pid,
                            extra={"event": "zmq_relay_restarted", "ingress": "zmq"})
                break

    @property
    def pid(self) -> int | None:
        """The running relay's pid (tests kill it)."""
        with self._lock:
            return self._proc.pid if self._proc is not None else None

    def worker_exited(self, pid: int) -> None:
        """Tell the relay a worker is gone, so what it held gets answered."""
        with self._lock:
            proc = self._proc
        if proc is None or proc.stdin is None:
            return
        with contextlib.suppress(OSError):  # relay dead or its pipe full: it checks pids itself
            proc.stdin.write(b"lost %d\n" % pid)

    def forget_in_worker(self) -> None:
        """In a forked worker: drop the inherited end of the relay's control pipe."""
        proc = self._proc
        if proc is not None and proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()

    # -- stopping ----------------------------------------------------------------

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the relay (after the workers) and remove its files."""
        with self._lock:
            self._stopping.set()
            proc = self._proc
        if proc is not None and proc.poll() is None:
            assert proc.stdin is not None
            with contextlib.suppress(OSError):
                proc.stdin.write(b"stop\n")
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("ZeroMQ relay did not stop within %gs; killing it", timeout,
                            extra={"event": "zmq_relay_killed", "ingress": "zmq"})
                proc.kill()
                proc.wait()
        if proc is not None and proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        self._cleanup()

    def _cleanup(self) -> None:
        shutil.rmtree(self.rundir, ignore_errors=True)
        path = ipc_path(self.settings.zmq_address)
        # The relay removes it when it stops cleanly; a killed relay leaves it.
        if path and _is_socket(path) and not ipc_in_use(path):
            with contextlib.suppress(OSError):
                os.unlink(path)
        for directory in reversed(self._made_dirs):
            with contextlib.suppress(OSError):  # not empty: someone else's files, leave it
                os.rmdir(directory)
        self._made_dirs.clear()


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False
