"""`nodeos bench failover`: per fault, time to detection and to the VIP serving again.

A lab of 3 nodes runs the lab catalog; a client namespace asks memcached for
its version through the VIP every 20 ms. Per round one fault hits the node
(or service) that matters:

* service-kill   SIGKILL memcached's main process
* node-crash     crash the node holding memcached (not the Monitor)
* node-reboot    crash it and start its agent again at once
* disconnect     pull its cable (link down)
* monitor-crash  crash the Monitor while it holds memcached too
* kill-agent     SIGKILL only the holder's agent (memcached, its VIP and the
                 node's guard stay: the guard must fence)
* hang-agent     SIGSTOP the holder's agent for HANG_SECONDS, then SIGCONT

Detection is the time of the first event in the replicated log that shows the
cluster noticed (service failed, node lost, new Monitor); recovery is the
first good answer through the VIP after the outage began. Both are measured
from the moment the fault was injected, on this host's clock.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .cluster import RESULTS_DIR, lease_holder, summarize, wait_for
from nodeos.cluster.control import ControlError, request
from nodeos.lab.lab import Lab, LabError, destroy
from nodeos.lab.services import service_host

PROBE_PERIOD = 0.02
PROBER = r'''
import json, socket, sys, time
vip, period = sys.argv[1], float(sys.argv[2])
while True:
    t = time.time()
    ok = False
    try:
        with socket.create_connection((vip, 11211), timeout=0.1) as s:
            s.settimeout(0.1)
            s.sendall(b"version\r\n")
            ok = s.recv(64).startswith(b"VERSION")
    except OSError:
        pass
    print(json.dumps([t, ok]), flush=True)
    time.sleep(max(0.0, period - (time.time() - t)))
'''
DETECTION_EVENTS = {
    "service-kill": ("service.failed",),
    "node-crash": ("node.lost",),
    "node-reboot": ("node.lost", "service.failed", "service.migrating", "node.back"),
    "disconnect": ("node.lost",),
    "monitor-crash": ("monitor.elected",),
    "kill-agent": ("node.lost",),
    "hang-agent": ("node.lost",),
}
HANG_SECONDS = 5.0


class Prober:
    def __init__(self, lab: Lab, vip: str) -> None:
        ns = lab.add_client()
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", PROBER, vip, str(PROBE_PERIOD)],
                                     stdout=subprocess.PIPE, text=True, start_new_session=True)
        self.samples: list[tuple[float, bool]] = []

    def drain_until(self, deadline: float) -> None:
        import select

        assert self.proc.stdout is not None
        while time.time() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.05)
            if ready:
                line = self.proc.stdout.readline()
                if line:
                    t, ok = json.loads(line)
                    self.samples.append((t, ok))

    def recovery_after(self, fault_at: float) -> float | None:
        """Seconds from the fault to the first good answer after the outage began."""
        after = [(t, ok) for t, ok in self.samples if t >= fault_at]
        outage = next((t for t, ok in after if not ok), None)
        if outage is None:
            return 0.0  # no probe ever failed: no visible outage
        back = next((t for t, ok in after if ok and t > outage), None)
        return None if back is None else back - fault_at

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _events(lab: Lab, since_ts: float) -> list[dict[str, Any]]:
    """Events after `since_ts` from the node with the newest log (a cut-off node lags)."""
    best: list[dict[str, Any]] = []
    for name in sorted(lab.spec.nodes):
        try:
            code, events = request(lab.node_socket(name), "GET", "/events?limit=1000", timeout=1.0)
        except ControlError:
            continue
        if code == 200 and events and (not best or events[-1]["seq"] > best[-1]["seq"]):
            best = events
    return [e for e in best if e["ts"] >= since_ts]


def _healthy(lab: Lab, vip: str) -> bool:
    for name in sorted(lab.spec.nodes):
        status = lab.node_status(name, timeout=1.0)
        if not status or not status["services"]:
            continue
        rows = [r for r in status["services"] if r["placement"] == "singleton"]
        members_up = all(m["status"] == "up" for m in status["members"])
        return members_up and all(r["health"] == "healthy" and not r.get("migration") and (r.get("probe") or {}).get("ok") for r in rows)
    return False


def _unhealthy_summary(lab: Lab) -> str:
    for name in sorted(lab.spec.nodes):
        status = lab.node_status(name, timeout=2.0)
        if status:
            members = ", ".join(f"{m['node_id']}={m['status']}" for m in status["members"])
            rows = "; ".join(f"{r['name']} {r['health']} on {r['node']} migration={r.get('migration')} probe={r.get('probe')}"
                             for r in status["services"] if r["placement"] == "singleton")
            return f"as {name} sees it: members {members}; {rows}"
    return "no node answers"


def keep_lab_logs(lab: Lab) -> Path:
    """Copy every node's logs and status to bench-results/<lab>-logs/ before the lab is torn down."""
    target = RESULTS_DIR / f"{lab.spec.name}-logs"
    for name, node in lab.spec.nodes.items():
        (target / name).mkdir(parents=True, exist_ok=True)
        for log in Path(node.state_dir).glob("*.log"):
            shutil.copy(log, target / name / log.name)
        status = lab.node_status(name, timeout=2.0)
        (target / name / "status.json").write_text(json.dumps(status, indent=2))
    return target


def fenced_nodes(lab: Lab, since_ts: float, besides: str) -> int:
    """How many nodes other than `besides` fenced themselves after `since_ts` (collateral fences)."""
    count = 0
    for name, node in lab.spec.nodes.items():
        if name == besides:
            continue
        try:
            lines = (Path(node.state_dir) / "agent.log").read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in reversed(lines):
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("ts", 0) < since_ts:
                break
            if entry.get("event") == "fence.local":
                count += 1
                break
    return count


def _restore(lab: Lab, vip: str) -> None:
    for name, node in lab.spec.nodes.items():
        if node.disconnected:
            lab.reconnect(name)
        if node.pid is None:
            lab.start_agent(name)
    lab.wait_formed(timeout=60)
    if not wait_for(lambda: _healthy(lab, vip), 60, interval=0.2):
        raise LabError(f"the lab did not get healthy again between rounds: {_unhealthy_summary(lab)}")
    time.sleep(1.0)


def _move(lab: Lab, to_name: str | None, away_from: str | None = None) -> None:
    """Place memcached on `to_name` (or anywhere but `away_from`) and wait until it serves."""
    host = wait_for(lambda: _service_host_or_none(lab), 30, interval=0.1)
    if (to_name and host == to_name) or (away_from and host != away_from):
        return
    target = to_name or next(n for n in sorted(lab.spec.nodes) if n not in (host, away_from))
    status = lab.node_status(target)
    if status is None:
        raise LabError(f"{target} does not answer")
    node_id = status["node_id"]
    code, payload = request(lab.node_socket(target), "POST", "/service/move", {"name": "memcached", "to": node_id})
    if code != 200:
        raise LabError(f"could not move memcached: {payload}")
    wait_for(lambda: _service_host_or_none(lab) == target, 30, interval=0.1)
    wait_for(lambda: _healthy(lab, ""), 30, interval=0.2)


def _service_host_or_none(lab: Lab) -> str | None:
    try:
        return service_host(lab, "memcached")
    except LabError:
        return None


def run_round(lab: Lab, prober: Prober, fault: str) -> dict[str, Any]:
    names = sorted(lab.spec.nodes)
    monitor = wait_for(lambda: lease_holder(lab, names), 20)
    if fault == "monitor-crash":
        _move(lab, monitor)
    elif fault != "service-kill":
        _move(lab, None, away_from=monitor)
    time.sleep(0.5)
    host = service_host(lab, "memcached")
    fault_at = time.time()
    if fault == "service-kill":
        from nodeos.lab.services import kill_service

        kill_service(lab, "memcached")
    elif fault in ("node-crash", "monitor-crash"):
        lab.crash(host)
    elif fault == "node-reboot":
        lab.reboot(host)
    elif fault == "disconnect":
        lab.disconnect(host)
    elif fault == "kill-agent":
        lab.kill_agent(host)
    hang = None
    if fault == "hang-agent":
        import threading

        hang = threading.Thread(target=lab.hang_agent, args=(host, HANG_SECONDS))
        hang.start()
    prober.drain_until(time.time() + 6.0)
    if hang is not None:
        hang.join()
    recovery = prober.recovery_after(fault_at)
    wanted = DETECTION_EVENTS[fault]
    detected = next((e["ts"] - fault_at for e in _events(lab, fault_at) if e["kind"] in wanted), None)
    return {"detection": detected, "recovery": recovery, "others_fenced": fenced_nodes(lab, fault_at, host)}


def bench_failover(rounds: int, faults: list[str]) -> dict[str, Any]:
    unknown = [f for f in faults if f not in DETECTION_EVENTS]
    if unknown:
        raise LabError(f"unknown fault(s) {unknown}; choose from {sorted(DETECTION_EVENTS)}")
    destroy("bench")
    lab = Lab.create("bench", 3, catalog="lab")
    prober = None
    results: dict[str, Any] = {}
    try:
        lab.start_all()
        lab.wait_formed(timeout=60)
        if not wait_for(lambda: _healthy(lab, ""), 60, interval=0.2):
            raise LabError("services did not become healthy")
        vip = next(r["vip"] for r in lab.wait_services(60) if r["name"] == "memcached")
        prober = Prober(lab, vip)
        for fault in faults:
            detections, recoveries, fenced = [], [], 0
            for r in range(rounds):
                _restore(lab, vip)
                prober.samples.clear()
                outcome = run_round(lab, prober, fault)
                print(f"  {fault} round {r + 1}/{rounds}: detection {outcome['detection']}, VIP serving again {outcome['recovery']}, "
                      f"other nodes fenced {outcome['others_fenced']}", file=sys.stderr, flush=True)
                fenced += int(outcome["others_fenced"] or 0)
                if outcome["detection"] is not None:
                    detections.append(outcome["detection"])
                if outcome["recovery"] is not None:
                    recoveries.append(outcome["recovery"])
            results[f"{fault}: detection"] = summarize(detections)
            results[f"{fault}: VIP serving again"] = summarize(recoveries)
            # A healthy node that fences itself stops its singletons for nothing (a slow election).
            results[f"{fault}: other nodes fenced"] = {"total": fenced, "rounds": rounds}
    except LabError as exc:
        where = keep_lab_logs(lab)
        raise LabError(f"{exc} (after {', '.join(k for k in results if k.endswith('detection')) or 'no complete fault'}; "
                       f"logs kept in {where}; figures so far: {json.dumps(results)})") from exc
    finally:
        if prober is not None:
            prober.stop()
        destroy("bench")
    return results
