"""One process per role and state dir: an exclusive flock, held for the process's life.

A second agent (or guard) started on the same state dir would unlink the
first one's control socket and fight it over the node's ports; it refuses
instead, naming the holder. The kernel drops the lock when the process dies,
however it dies, so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO


class AlreadyRunning(RuntimeError):
    pass


_held: list[IO[str]] = []  # keep the files open: closing one releases its lock


def hold(state_dir: Path, role: str) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / f"{role}.lock"
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise AlreadyRunning(f"another {role} (pid {holder}) already runs on {state_dir}; stop it first") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _held.append(handle)
