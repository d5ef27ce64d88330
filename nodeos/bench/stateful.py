"""`nodeos bench failover --stateful`: MariaDB on a Ceph volume, its node failed, until it takes writes again.

A lab with the `lab-storage` catalog. Each round: a writer in the client
namespace inserts through MariaDB's VIP with autocommit and records every
acknowledged id; the holder's node is crashed, cut off (link down) or
partitioned; the round ends when inserts are acknowledged again, and every
acknowledged row is read back. Phases come from the replicated event log:
detection (`node.lost`), the fence (`storage.volume_fenced`: Ceph's
blocklist of the old client), the new attachment recorded
(`storage.volume_attached`), MariaDB healthy (`service.recovered`); the
writer gives the end to end time. Figures are printed and written, never
asserted. The Writer is the lab tests' too.
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

from nodeos.lab import netns
from nodeos.lab.lab import Lab, LabError, destroy

from .cluster import summarize, wait_for
from .failover import _events, keep_lab_logs

SERVICE = "mariadb"
FAULTS = ("node-crash", "disconnect", "partition")
# The fence's event carries the time the Monitor ordered it (the blocklist is a mon commit after it).
PHASES = {"detection": "node.lost", "fence ordered": "storage.volume_fenced", "attached": "storage.volume_attached",
          "healthy": "service.recovered"}

WRITER = r'''
import os, sys, time, pymysql
vip, stop, out = sys.argv[1], sys.argv[2], sys.argv[3]
conn, next_id = None, 1
with open(out, "a", buffering=1) as acks:
    while not os.path.exists(stop):
        try:
            if conn is None:
                conn = pymysql.connect(host=vip, user="lab", password="lab", database="lab", autocommit=True,
                                       connect_timeout=1, read_timeout=2, write_timeout=2)
                with conn.cursor() as cur:
                    cur.execute("CREATE TABLE IF NOT EXISTS acks (id BIGINT PRIMARY KEY, at DOUBLE)")
                    cur.execute("SELECT COALESCE(MAX(id), 0) FROM acks")
                    next_id = max(next_id, cur.fetchone()[0] + 1)
            with conn.cursor() as cur:
                cur.execute("INSERT INTO acks VALUES (%s, %s)", (next_id, time.time()))
            acks.write(f"{next_id} {time.monotonic()}\n")  # acknowledged: the commit returned
            next_id += 1
        except Exception as exc:
            acks.write(f"# {time.monotonic()} {type(exc).__name__}\n")
            try:
                conn and conn.close()
            except Exception:
                pass
            conn = None
            time.sleep(0.2)
        time.sleep(0.02)
'''

READ_ALL = r'''
import json, sys, pymysql
conn = pymysql.connect(host=sys.argv[1], user="lab", password="lab", database="lab", connect_timeout=3)
with conn.cursor() as cur:
    cur.execute("SELECT id FROM acks")
    print(json.dumps([row[0] for row in cur.fetchall()]))
'''


class Writer:
    """Inserts through the VIP from the lab's client namespace, recording each acknowledged id."""

    def __init__(self, lab: Lab, vip: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="nodeos-writer-"))
        self.stop_file, self.out = self.dir / "stop", self.dir / "acks"
        self.proc = subprocess.Popen(["ip", "netns", "exec", lab.add_client(), sys.executable, "-c", WRITER, vip,
                                      str(self.stop_file), str(self.out)], start_new_session=True)

    def acks(self) -> list[tuple[int, float]]:
        rows = []
        for line in self.out.read_text().splitlines() if self.out.exists() else []:
            if line and not line.startswith("#"):
                ident, at = line.split()
                rows.append((int(ident), float(at)))
        return rows

    def acked_after(self, t: float) -> int:
        return sum(1 for _, at in self.acks() if at > t)

    def stop(self) -> list[int]:
        self.stop_file.touch()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        acked = [i for i, _ in self.acks()]
        subprocess.run(["rm", "-rf", str(self.dir)], check=False)
        return acked


def stored_ids(lab: Lab, vip: str) -> set[int]:
    out = subprocess.run(["ip", "netns", "exec", lab.add_client(), sys.executable, "-c", READ_ALL, vip],
                         capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise LabError(f"reading the rows back through {vip} failed: {out.stderr.strip()[-300:]}")
    return set(json.loads(out.stdout))


def write_gap(acks: list[tuple[int, float]], started: float) -> float | None:
    """Seconds from the fault to the first acknowledged insert after the outage it caused
    (an insert in flight when the fault hit may still be acknowledged just after it)."""
    times = sorted(at for _, at in acks)
    for before, after in zip(times, times[1:]):
        if after > started and after - before > 0.5:
            return after - started
    return None


def service_row(lab: Lab) -> dict[str, Any] | None:
    """MariaDB's status row as the Monitor (else any node that answers) sees it."""
    statuses = [s for s in (lab.node_status(n, timeout=1.0) for n in sorted(lab.spec.nodes)) if s and s.get("services")]
    chosen = next((s for s in statuses if s.get("may_act")), statuses[0] if statuses else None)
    return next((r for r in (chosen or {}).get("services", []) if r["name"] == SERVICE), None)


def healthy_on(lab: Lab) -> str | None:
    """The lab name of the node where MariaDB is healthy with its VIP answering, else None."""
    row = service_row(lab)
    if row and row["health"] == "healthy" and (row.get("probe") or {}).get("ok") and not row.get("migration"):
        return lab.names_by_id().get(row["node"])
    return None


def inject(lab: Lab, fault: str, node: str) -> None:
    if fault == "node-crash":
        lab.crash(node)
    elif fault == "disconnect":
        lab.disconnect(node)
    elif fault == "partition":
        lab.partition([node])
    else:
        raise LabError(f"unknown stateful fault {fault!r}; choose from {', '.join(FAULTS)}")


def restore(lab: Lab) -> str:
    """Every node up and connected, MariaDB healthy; where it runs."""
    if lab.spec.partitioned:
        lab.heal()
    for name, node in lab.spec.nodes.items():
        if node.disconnected:
            lab.reconnect(name)
        if node.pid is None or not psutil.pid_exists(node.pid):
            lab.start_agent(name)
    lab.wait_formed(timeout=90)
    holder = wait_for(lambda: healthy_on(lab), 180, interval=0.5)
    if not holder:
        raise LabError(f"MariaDB did not get healthy again between rounds: {service_row(lab)}")
    return holder


def run_round(lab: Lab, fault: str) -> dict[str, float | None]:
    holder = restore(lab)
    vip = (service_row(lab) or {})["vip"]
    writer = Writer(lab, vip)
    try:
        if not wait_for(lambda: len(writer.acks()) >= 20, 60, interval=0.2):
            raise LabError("the writer got no acknowledged insert through the VIP before the fault")
        fault_at, fault_mono = time.time(), time.monotonic()
        inject(lab, fault, holder)
        if not wait_for(lambda: writer.acked_after(fault_mono) >= 10, 180, interval=0.2):
            raise LabError(f"no acknowledged insert through the VIP 180 s after {fault} of {holder}")
        outcome: dict[str, float | None] = {"writes again": write_gap(writer.acks(), fault_mono)}
        wait_for(lambda: healthy_on(lab), 30, interval=0.5)  # its recovered event comes after the writes
    finally:
        acked = writer.stop()
    missing = sorted(set(acked) - stored_ids(lab, vip))
    if missing:
        raise LabError(f"{len(missing)} acknowledged rows lost after {fault} of {holder}: {missing[:10]}")
    events = _events(lab, fault_at)
    for phase, kind in PHASES.items():
        outcome[phase] = next((e["ts"] - fault_at for e in events if e["kind"] == kind
                               and (kind != "service.recovered" or e.get("service") == SERVICE)), None)
    outcome["acknowledged rows"] = float(len(acked))
    return outcome


def ceph_rss(lab: Lab) -> dict[str, dict[str, float]]:
    """MiB of resident memory of each Ceph daemon, per node."""
    out: dict[str, dict[str, float]] = {}
    for name, node in sorted(lab.spec.nodes.items()):
        for pid in netns.namespace_pids(node.ns):
            try:
                proc = psutil.Process(pid)
                if proc.name() in ("ceph-mon", "ceph-mgr", "ceph-osd"):
                    out.setdefault(name, {})[proc.name()] = round(proc.memory_info().rss / 2**20, 1)
            except psutil.Error:
                continue
    return out


def bench_stateful(rounds: int, faults: list[str]) -> dict[str, Any]:
    unknown = [f for f in faults if f not in FAULTS]
    if unknown:
        raise LabError(f"unknown stateful fault(s) {unknown}; choose from {', '.join(FAULTS)}")
    destroy("bench")
    lab = Lab.create("bench", 3, catalog="lab-storage")
    results: dict[str, Any] = {}
    try:
        lab.start_all()
        lab.add_client()
        restore(lab)
        results["ceph RSS MiB at start"] = ceph_rss(lab)
        for fault in faults:
            samples: dict[str, list[float]] = {phase: [] for phase in ("detection", *list(PHASES)[1:], "writes again")}
            for r in range(rounds):
                outcome = run_round(lab, fault)
                print(f"  {fault} round {r + 1}/{rounds}: " + ", ".join(
                    f"{k} {v:.2f}" if v is not None else f"{k} -" for k, v in outcome.items()), file=sys.stderr, flush=True)
                for phase, value in outcome.items():
                    if value is not None and phase in samples:
                        samples[phase].append(value)
            for phase, values in samples.items():
                results[f"{fault}: {phase}"] = summarize(values)
        results["ceph RSS MiB at end"] = ceph_rss(lab)
    except LabError as exc:
        where = keep_lab_logs(lab)
        raise LabError(f"{exc} (logs kept in {where}; figures so far: {json.dumps(results)})") from exc
    finally:
        destroy("bench")
    return results
