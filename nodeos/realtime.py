"""Real-time scheduling and locked memory, so load on a node does not look like failure.

Corosync runs this way for the same reason: a membership or lease protocol
whose messages are late because a CPU hog or QEMU guests took the cores
fences nodes that are fine. SCHED_RESET_ON_FORK gives every child (the
services the agent starts, `ip`, `systemctl`) the normal policy back. The
kernel's RT throttling (sched_rt_runtime_us, 95% by default) still leaves
the rest of the node CPU time should one of ours spin.
"""

from __future__ import annotations

import ctypes
import os

from nodeos import log

MCL_CURRENT, MCL_FUTURE = 1, 2


def set_realtime(who: str, priority: int, fifo: bool = False) -> bool:
    """Give the calling thread (and threads it starts later) a real-time policy."""
    policy = (os.SCHED_FIFO if fifo else os.SCHED_RR) | os.SCHED_RESET_ON_FORK
    try:
        os.sched_setscheduler(0, policy, os.sched_param(priority))
    except (OSError, AttributeError) as exc:
        log.event("sched.realtime_unavailable", level="warning", who=who, error=str(exc))
        return False
    log.event("sched.realtime", who=who, policy="fifo" if fifo else "rr", priority=priority)
    return True


def drop_realtime() -> None:
    """Give the calling thread (and threads it starts later) the normal policy back."""
    try:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except (OSError, AttributeError):
        pass  # never real-time in the first place


def lock_memory(who: str) -> bool:
    """mlockall: a page fault under memory pressure must not stall a fence."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mlockall(MCL_CURRENT | MCL_FUTURE) != 0:
        log.event("sched.mlock_unavailable", level="warning", who=who, error=os.strerror(ctypes.get_errno()))
        return False
    return True
