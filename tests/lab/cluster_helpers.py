"""Shared helpers for lab tests: a lab per test, torn down also on failure."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from nodeos.cluster.control import ControlError, request
from nodeos.lab.lab import Lab, destroy


def lab_marks(*needs: str, what: str) -> list[pytest.MarkDecorator]:
    """A lab module's marks: a lab test, run as root, skipped while one of `needs` (a command, or
    a file of `what`'s Debian packages) is missing."""
    missing = [need for need in needs if shutil.which(need) is None and not os.path.exists(need)]
    return [pytest.mark.lab,
            pytest.mark.skipif(not is_root(), reason="needs root for namespaces"),
            pytest.mark.skipif(bool(missing), reason=f"{what} is not installed (scripts/apt-packages.txt)")]


def new_lab(nodes: int, expect: int | None = None, catalog: str | None = None, start: bool = True,
            timing: dict[str, float] | None = None, storage: dict[str, Any] | None = None) -> Lab:
    # NODEOS_TEST_LAB_PREFIX (2 letters): whose labs these are, when several people share a machine.
    name = os.environ.get("NODEOS_TEST_LAB_PREFIX", "t")[:2] + secrets.token_hex(2)
    lab = Lab.create(name, nodes, expect, catalog=catalog, timing=timing, storage=storage)
    if start:
        lab.start_all()
    return lab


def mariadb_storage_lab(settle: float) -> Iterator[Lab]:
    """A 3-node lab-storage lab with a client namespace and MariaDB healthy on its volume behind
    its VIP (a module fixture's body), torn down after."""
    from nodeos.bench.stateful import healthy_on

    lab = new_lab(3, catalog="lab-storage")
    lab.add_client()
    try:
        lab.wait_formed(timeout=60)
        wait_until(lambda: healthy_on(lab), settle, "MariaDB healthy on its volume behind its VIP")
        yield lab
    finally:
        teardown(lab)


def teardown(lab: Lab) -> None:
    keep_logs(lab)
    destroy(lab.spec.name)
    assert not any(ns.startswith(f"nodeos-{lab.spec.name}-") for ns in _namespaces())


def keep_logs(lab: Lab) -> None:
    """Copy the lab's process logs to artifacts/lab-NAME/ (CI keeps them for a failed run)."""
    import shutil

    target = Path("artifacts") / f"lab-{lab.spec.name}"
    for node in lab.spec.nodes.values():
        for log in Path(node.state_dir).glob("*.log"):
            (target / node.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(log, target / node.name / log.name)


def _namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nodeos.cli", *args], capture_output=True, text=True, timeout=300)


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
    """bench.wait_for, failing the test with `what` on time-out."""
    from nodeos.bench.cluster import wait_for

    value = wait_for(predicate, timeout, interval)
    if not value:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")
    return value


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


# -- services: a client namespace on the lab bridge -------------------------------

CLIENT_SCRIPT = r'''
import json, socket, sys, time
from nodeos.services import arp
kind = sys.argv[1]
if kind == "who_has":
    print(json.dumps(sorted(arp.who_has("eth0", sys.argv[2], timeout=float(sys.argv[3])))))
elif kind == "memcached":
    s = socket.create_connection((sys.argv[2], 11211), timeout=2)
    s.sendall(b"version\r\n")
    print(json.dumps(s.recv(100).decode().strip()))
elif kind == "http":
    s = socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=2)
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    print(json.dumps(data.decode(errors="replace").split("\r\n\r\n", 1)[-1].strip()))
elif kind == "sample_arp":
    # One raw socket; an ARP request for the VIP every `period`; each reply is
    # attributed to the window of the latest request (kernel replies take <1 ms).
    import os, select
    vip, stop, period = sys.argv[2], sys.argv[3], float(sys.argv[4])
    mac, me = arp.interface_mac("eth0"), arp.interface_ipv4("eth0")
    sock = arp._open("eth0")
    request = arp.build_arp(arp.ARP_REQUEST, mac, me, arp.ZERO_MAC, vip)
    window, sent = None, 0
    next_send = time.monotonic()
    def take(frame):
        try:
            packet = arp.parse_arp(frame)
        except arp.ArpError:
            return
        if packet.op == arp.ARP_REPLY and packet.sender_ip == vip and packet.sender_mac not in window["macs"]:
            window["macs"].append(packet.sender_mac)

    while True:
        now = time.monotonic()
        if now >= next_send:
            if window is not None:
                # Replies already queued answer the old request: a sampler that did not run for
                # a while (real-time agents on 2 busy cores) must not count them in the next
                # window, next to the new holder's answer (CI saw one such window).
                while select.select([sock], [], [], 0)[0]:
                    frame, address = sock.recvfrom(2048)
                    if address[2] != arp._PACKET_OUTGOING:
                        take(frame)
                print(json.dumps(window), flush=True)
            if sent % 10 == 0 and os.path.exists(stop):
                break
            sock.send(request)
            sent += 1
            window = {"t": now, "vip": vip, "macs": []}
            next_send = max(next_send + period, now + period / 2)
            continue
        ready, _, _ = select.select([sock], [], [], next_send - now)
        if ready:
            frame, address = sock.recvfrom(2048)
            if address[2] != arp._PACKET_OUTGOING:
                take(frame)
'''


def in_client(lab: Lab, *args: str, timeout: float = 10.0) -> Any:
    ns = lab.add_client()
    result = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", CLIENT_SCRIPT, *args],
                            capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        return None
    return json.loads(result.stdout)


def service_row(lab: Lab, node: str, service: str) -> dict[str, Any]:
    for row in status_json(lab, node)["services"]:
        if row["name"] == service:
            return row
    raise AssertionError(f"{service} not in the status of {node}")


def host_of(lab: Lab, service: str) -> str | None:
    """Lab node name whose agent runs `service` now; fails if it runs on two."""
    from nodeos.lab.services import service_hosts

    running = service_hosts(lab, service)
    assert len(running) <= 1, f"{service} runs on {running}"
    return running[0] if running else None


def node_mac(lab: Lab, name: str) -> str:
    from nodeos.lab import netns

    return netns.link_mac(lab.node(name).ns, "eth0")


def wait_services_healthy(lab: Lab, node: str = "n1", timeout: float = 60.0) -> dict[str, dict[str, Any]]:
    def ready() -> dict[str, dict[str, Any]] | None:
        status = lab.node_status(node)
        if not status or not status["services"]:
            return None
        rows = {r["name"]: r for r in status["services"]}
        singles = [r for r in rows.values() if r["placement"] == "singleton"]
        if all(r["health"] == "healthy" and r["vip"] and (r.get("probe") or {}).get("ok") for r in singles):
            return rows
        return None

    return wait_until(ready, timeout, "all singletons healthy with a VIP that answers")
