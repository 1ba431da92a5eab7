"""Whether a process is alive: the master and the relay both ask it of workers."""

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
