"""Lab faults on services: SIGKILL a catalog service's main process on its node."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from .lab import Lab, LabError


def service_hosts(lab: Lab, service: str) -> list[str]:
    """Lab node names whose agents run `service` now (asks the nodes themselves)."""
    from nodeos.cluster.control import ControlError, request

    hosts = []
    for name in sorted(lab.spec.nodes):
        try:
            code, local = request(lab.node_socket(name), "GET", "/local", timeout=1.0)
        except ControlError:
            continue
        if code == 200 and local["services"].get(service, {}).get("pid"):
            hosts.append(name)
    return hosts


def service_host(lab: Lab, service: str) -> str:
    hosts = service_hosts(lab, service)
    if not hosts:
        raise LabError(f"no node runs {service!r} right now")
    return hosts[0]


def kill_service(lab: Lab, service: str, node: str | None = None) -> str:
    """SIGKILL the service's main process on `node` (default: the first node that runs it)."""
    host = node or service_host(lab, service)
    record = Path(lab.node(host).state_dir) / "services" / service / "pid.json"
    try:
        pid = int(json.loads(record.read_text())["pid"])
    except (OSError, ValueError, KeyError) as exc:
        raise LabError(f"{service} on {host}: no usable pid record ({exc})") from exc
    if pid not in _namespace_pids(lab, host):
        raise LabError(f"{service} on {host}: pid {pid} is not in the node's namespace; not signalling it")
    os.kill(pid, signal.SIGKILL)
    return f"{service} on {host}: SIGKILL sent to pid {pid}"


def _namespace_pids(lab: Lab, host: str) -> list[int]:
    from . import netns

    return netns.namespace_pids(lab.node(host).ns)


def census(lab: Lab) -> dict[str, list[str]]:
    """Which nodes run an instance of each service now, seen from the processes themselves.

    Asks no agent (a dead or hung agent's orphans count too): a process in a
    node's namespace whose working directory is `<state_dir>/services/NAME`
    is an instance of NAME on that node.
    """
    from . import netns

    found: dict[str, set[str]] = {}
    for name, node in lab.spec.nodes.items():
        root = str(Path(node.state_dir) / "services") + "/"
        for pid in netns.namespace_pids(node.ns):
            try:
                cwd = os.readlink(f"/proc/{pid}/cwd")
            except OSError:
                continue
            if cwd.startswith(root):
                found.setdefault(cwd[len(root):].split("/")[0], set()).add(name)
    return {service: sorted(nodes) for service, nodes in found.items()}
