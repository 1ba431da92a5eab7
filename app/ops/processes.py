"""Processes: whether one is alive (the master and the relay ask it of workers), and this one's token."""

from __future__ import annotations

import os


def is_alive(pid: int) -> bool:
    """True while a process with this pid exists (signal 0 sends nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


_token: tuple[int, str] = (0, "")  # (pid, token)


def process_token() -> str:
    """16 random hex digits drawn once in each process, again after a fork.

    Ids that must differ between workers (message ids, request ids) start with
    it: the app is first imported in the gunicorn master, and anything drawn
    at import would be every worker's.
    """
    global _token
    if _token[0] != os.getpid():
        _token = (os.getpid(), os.urandom(8).hex())
    return _token[1]
