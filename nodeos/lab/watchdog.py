"""The lab's stand-in for a node's watchdog device: it resets the node's namespace.

A real node's guard feeds /dev/watchdog; when the feed stops the hardware (or
softdog) resets the machine. In the lab, each node gets this small process,
in the host namespace (a hung node must not take its watchdog with it),
listening on `<state_dir>/watchdog.sock` for the guard's datagrams:
`arm SECONDS`, `feed`, `disarm`. When an armed timer runs out it logs
`watchdog.reset` and reboots the node as `nodeos lab fault reboot` does
(then `watchdog.rebooted`, with the new pids):
everything in the namespace is SIGKILLed and the node boots again. It exits
by itself once the lab is gone.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path

from nodeos import log
from nodeos.fencing.watchdog import LAB_SOCKET


def serve(lab_name: str, node: str, state_dir: Path) -> int:
    log.configure(component="lab-watchdog", node=node)
    path = state_dir / LAB_SOCKET
    if path.exists():
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.05)
    timeout, deadline = 0.0, None
    log.event("watchdog.started", socket=str(path), pid=os.getpid())
    while state_dir.exists():
        try:
            message = sock.recv(256).decode(errors="replace").split()
        except socket.timeout:
            message = []
        now = time.monotonic()
        if message[:1] == ["arm"] and len(message) == 2:
            timeout, deadline = float(message[1]), now + float(message[1])
        elif message == ["feed"] and deadline is not None:
            deadline = now + timeout
        elif message == ["disarm"]:
            deadline = None
        if deadline is not None and now > deadline:
            log.event("watchdog.reset", level="error", overdue=round(now - deadline, 3), mono=round(now, 4))
            deadline = None
            _reset(lab_name, node)
    sock.close()
    return 0


def _reset(lab_name: str, node: str) -> None:
    from .lab import Lab, LabError

    try:
        lab = Lab.load(lab_name)
        pid = lab.reboot(node)
    except (LabError, OSError) as exc:
        log.event("watchdog.reset_failed", level="error", error=str(exc))
        return
    log.event("watchdog.rebooted", agent_pid=pid, guard_pid=lab.node(node).guard_pid)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lab", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--state-dir", required=True)
    args = parser.parse_args(argv)
    return serve(args.lab, args.node, Path(args.state_dir))


if __name__ == "__main__":
    sys.exit(main())
