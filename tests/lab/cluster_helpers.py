"""Shared helpers for lab tests: a lab per test, torn down also on failure."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from nodeos.control import ControlError, request
from nodeos.lab import Lab, destroy


def new_lab(nodes: int, expect: int | None = None, catalog: str | None = None, start: bool = True,
            timing: dict[str, float] | None = None) -> Lab:
    name = "t" + secrets.token_hex(2)
    lab = Lab.create(name, nodes, expect, catalog=catalog, timing=timing)
    if start:
        lab.start_all()
    return lab


def teardown(lab: Lab) -> None:
    destroy(lab.spec.name)
    assert not any(ns.startswith(f"nodeos-{lab.spec.name}-") for ns in _namespaces())


def _namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nodeos.cli", *args], capture_output=True, text=True, timeout=60)


def status_json(lab: Lab, node: str) -> dict[str, Any]:
    result = cli("status", "--json", "--lab-node", node, "--lab", lab.spec.name)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def lease(lab: Lab, node: str) -> bool | None:
    try:
        code, body = request(lab.node_socket(node), "GET", "/lease", timeout=0.5)
    except ControlError:
        return None
    return bool(body.get("may_act")) if code == 200 else None


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def lease_holders(lab: Lab, nodes: list[str]) -> list[str]:
    return [n for n in nodes if lease(lab, n)]


def agent_events(lab: Lab, node: str) -> list[dict[str, Any]]:
    path = Path(lab.node(node).state_dir) / "agent.log"
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def lease_intervals(lab: Lab, node: str, end: float) -> list[tuple[float, float]]:
    """(acquired, released) monotonic intervals from one agent's log; open ones end at `end`."""
    intervals, start = [], None
    for event in agent_events(lab, node):
        if event["event"] == "lease.acquired":
            start = event["mono"]
        elif event["event"] == "lease.released" and start is not None:
            intervals.append((start, event["mono"]))
            start = None
    if start is not None:
        intervals.append((start, end))
    return intervals


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def is_root() -> bool:
    return os.geteuid() == 0
