"""Where a stuck thread is: the agent says it before systemd's watchdog restarts it.

A pass that never returns (a CLI call that waits on an unreachable Ceph, a unit
that takes minutes to start) stops the watchdog's feeding; systemd then kills
the agent and the journal says only "watchdog timeout". The agent logs the
stuck thread's innermost frames first, so the event log names the call.
"""

from __future__ import annotations

import sys
import threading
import traceback
from dataclasses import dataclass

FRAMES = 8  # innermost frames kept: enough to name the call and who made it


@dataclass(frozen=True)
class Stall:
    thread: str
    seconds: float  # since the thread last finished a pass
    where: list[str]  # innermost last, "path:line function"


def where_is(thread: threading.Thread, frames: int = FRAMES) -> list[str]:
    """The thread's current innermost frames; [] once it has ended."""
    frame = sys._current_frames().get(thread.ident or -1)
    if frame is None:
        return []
    return [f"{_short(entry.filename)}:{entry.lineno} {entry.name}" for entry in traceback.extract_stack(frame)[-frames:]]


def _short(path: str) -> str:
    """From the package down (nodeos/..., pysyncobj/..., subprocess.py): the rest is the venv's."""
    for marker in ("/site-packages/", "/python3.11/", "/lib/python3/"):
        if marker in path:
            return path.rsplit(marker, 1)[1]
    if "/nodeos/" in path:  # a source checkout (the lab)
        return "nodeos/" + path.rsplit("/nodeos/", 1)[1]
    return path
