"""`nodeos bench cloud`: how long the OpenStack APIs are unavailable to a client during each fault.

A lab with the `lab-cloud` catalog. A client in the lab's client namespace
asks keystone for a token (password method, a new one each time) and with it
reads keystone's projects and glance's image list through the VIPs every
0.5 s, recording each answer. Per round one fault (a keystone kill, a MariaDB
kill, a crash of the node holding MariaDB, a crash of the Monitor's node, the
node holding MariaDB partitioned off or rebooted, a power cycle of every
node); the unavailability window is the gap from the last answered poll
before the first failed one to the first answered poll after the outage (0
when no poll failed). Between rounds the partition is healed, every node is
booted again and the whole catalog settles. Also the resident memory of the control
plane per node. Figures are printed and written, never asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from nodeos.cloud.config import GLANCE_PORT
from nodeos.cloud.credentials import keystone_auth_url
from nodeos.cloud.secrets import admin_password
from nodeos.cluster.identity import load_identity
from nodeos.lab import netns
from nodeos.lab.lab import Lab, LabError, destroy, fully_healthy
from nodeos.lab.services import kill_service

from .cluster import summarize, wait_for
from .failover import keep_lab_logs

FAULTS = ("keystone-kill", "mariadb-kill", "mariadb-node-crash", "monitor-crash", "mariadb-node-partition",
          "mariadb-node-reboot", "power-cycle")
POLL_INTERVAL = 0.5
CONTROL_PLANE = ("ceph-mon", "ceph-mgr", "ceph-osd", "mariadbd", "memcached", "uwsgi", "uwsgi-core", "beam.smp", "epmd")

POLLER = r'''
import os, sys, time
from nodeos.cloud.probes import keystone_token, authenticated_get
auth_url, images, stop, out, interval = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])
password = sys.stdin.readline().strip()  # never on the command line
with open(out, "a", buffering=1) as record:
    while not os.path.exists(stop):
        started = time.monotonic()
        token, detail = keystone_token(auth_url, "admin", password, "admin", 2.0)
        ok = token is not None and authenticated_get(auth_url.rstrip("/") + "/projects", token, 2.0)[0] \
            and (not images or authenticated_get(images, token, 2.0)[0])
        record.write(f"{started} {1 if ok else 0}\n")
        time.sleep(max(0.0, interval - (time.monotonic() - started)))
'''


class Poller:
    """Token issue + authenticated reads through the VIPs (projects; images when `images` is a URL),
    every POLL_INTERVAL, from the client namespace."""

    def __init__(self, lab: Lab, auth_url: str, password: str, images: str = "") -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="nodeos-poller-"))
        self.stop_file, self.out = self.dir / "stop", self.dir / "polls"
        self.proc = subprocess.Popen(["ip", "netns", "exec", lab.add_client(), sys.executable, "-c", POLLER, auth_url,
                                      images, str(self.stop_file), str(self.out), str(POLL_INTERVAL)],
                                     stdin=subprocess.PIPE, text=True, start_new_session=True)
        assert self.proc.stdin is not None
        self.proc.stdin.write(password + "\n")
        self.proc.stdin.close()

    def polls(self) -> list[tuple[float, bool]]:
        rows = []
        for line in self.out.read_text().splitlines() if self.out.exists() else []:
            at, ok = line.split()
            rows.append((float(at), ok == "1"))
        return rows

    def answered_since(self, t: float, count: int) -> bool:
        recent = [ok for at, ok in self.polls() if at > t]
        return len(recent) >= count and all(recent[-count:])

    def stop(self) -> None:
        self.stop_file.touch()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        subprocess.run(["rm", "-rf", str(self.dir)], check=False)


def unavailability(polls: list[tuple[float, bool]], fault_at: float) -> float:
    """Last answered poll before the first failure after the fault -> first answered poll after it."""
    after = [(at, ok) for at, ok in polls if at >= fault_at]
    first_failure = next((at for at, ok in after if not ok), None)
    if first_failure is None:
        return 0.0
    before = [at for at, ok in polls if ok and at < first_failure]
    back = next((at for at, ok in after if ok and at > first_failure), None)
    if back is None:
        raise LabError("the APIs never answered again")
    return back - (before[-1] if before else fault_at)


def services_view(lab: Lab) -> dict[str, Any]:
    statuses = [s for s in (lab.node_status(n, timeout=1.0) for n in sorted(lab.spec.nodes)) if s and s.get("services")]
    return next((s for s in statuses if s.get("may_act")), statuses[0] if statuses else {})


def settled(lab: Lab) -> bool:
    """Every service of the catalog healthy: each singleton on its node, the others on every node."""
    rows = services_view(lab).get("services", [])
    return bool(rows) and all(fully_healthy(r["health"]) for r in rows)


def restore(lab: Lab) -> None:
    if lab.spec.partitioned:
        lab.heal()
    for name, node in lab.spec.nodes.items():
        if node.pid is None or not psutil.pid_exists(node.pid):
            lab.start_agent(name)
    lab.wait_formed(timeout=90)
    if not wait_for(lambda: settled(lab), 300, interval=1.0):
        raise LabError(f"the cloud did not settle between rounds: {services_view(lab).get('services')}")


def inject(lab: Lab, fault: str) -> str:
    view = services_view(lab)
    rows = {r["name"]: r for r in view.get("services", [])}
    if fault == "keystone-kill":
        return kill_service(lab, "keystone")
    if fault == "mariadb-kill":
        return kill_service(lab, "mariadb")
    if fault == "power-cycle":
        for name in sorted(lab.spec.nodes):
            lab.crash(name)
        lab.start_all()
        return "power-cycled every node"
    node = lab.node_name_of(view["monitor"] if fault == "monitor-crash" else rows["mariadb"]["node"])
    if node is None:
        raise LabError(f"{fault}: no node for it in {view.get('monitor')}, {rows.get('mariadb')}")
    if fault == "mariadb-node-partition":
        lab.partition([node])
        return f"partitioned {node} off"
    if fault == "mariadb-node-reboot":
        lab.reboot(node)
        return f"rebooted {node}"
    lab.crash(node)
    return f"crashed {node}"


def control_plane_rss(lab: Lab) -> dict[str, dict[str, float]]:
    """MiB of resident memory per node and process kind (uWSGI: keystone's master and workers)."""
    out: dict[str, dict[str, float]] = {}
    for name, node in sorted(lab.spec.nodes.items()):
        for pid in netns.namespace_pids(node.ns):
            try:
                proc = psutil.Process(pid)
                kind = proc.name()
                if kind in CONTROL_PLANE:
                    per_node = out.setdefault(name, {})
                    per_node[kind] = round(per_node.get(kind, 0.0) + proc.memory_info().rss / 2**20, 1)
            except psutil.Error:
                continue
        if name in out:
            out[name]["total"] = round(sum(v for k, v in out[name].items() if k != "total"), 1)
    return out


def run_round(lab: Lab, fault: str, poller: Poller) -> float:
    restore(lab)
    if not wait_for(lambda: poller.answered_since(time.monotonic() - 3.0, 3), 60, interval=0.2):
        raise LabError("the client got no token before the fault")
    fault_at = time.monotonic()
    what = inject(lab, fault)
    if not wait_for(lambda: poller.answered_since(fault_at + 1.0, 4), 300, interval=0.2):
        raise LabError(f"the APIs did not answer again 300 s after {fault} ({what})")
    return unavailability(poller.polls(), fault_at)


def bench_cloud(rounds: int, faults: list[str]) -> dict[str, Any]:
    unknown = [f for f in faults if f not in FAULTS]
    if unknown:
        raise LabError(f"unknown fault(s) {unknown}; choose from {', '.join(FAULTS)}")
    destroy("bcloud")
    lab = Lab.create("bcloud", 3, catalog="lab-cloud")
    results: dict[str, Any] = {}
    poller: Poller | None = None
    try:
        lab.start_all()
        restore(lab)
        auth_url = keystone_auth_url(services_view(lab))
        if auth_url is None:
            raise LabError("keystone has no VIP")
        glance = next((r["vip"] for r in services_view(lab).get("services", []) if r["name"] == "glance-api" and r["vip"]), "")
        images = f"http://{glance}:{GLANCE_PORT}/v2/images" if glance else ""
        poller = Poller(lab, auth_url, admin_password(load_identity(lab.identity_path)), images)
        results["control plane RSS MiB at start"] = control_plane_rss(lab)
        for fault in faults:
            samples = []
            for r in range(rounds):
                window = run_round(lab, fault, poller)
                samples.append(window)
                print(f"  {fault} round {r + 1}/{rounds}: unavailable {window:.2f}s", file=sys.stderr, flush=True)
            results[f"{fault}: unavailable s"] = summarize(samples)
        restore(lab)
        results["control plane RSS MiB at end"] = control_plane_rss(lab)
    except LabError as exc:
        where = keep_lab_logs(lab)
        raise LabError(f"{exc} (logs kept in {where}; figures so far: {json.dumps(results)})") from exc
    finally:
        if poller is not None:
            poller.stop()
        destroy("bcloud")
    return results
