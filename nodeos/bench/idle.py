"""`nodeos bench idle`: what an idle cluster costs, and whether it grows (a soak).

A lab of `--nodes` nodes with the lab catalog (memcached, nginx) runs idle
for `--minutes`. Every `--every` seconds the bench samples, per node, the
CPU its agent and its guard used over the interval (share of one core),
their RSS, and the size of the Raft journal and dump. It reports the
medians and maxima, RSS at the start and at the end with its growth per
hour, and the journal's size: a leak shows as a slope, not in a snapshot.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from nodeos.lab.lab import Lab, destroy

LAB = "idle"
RAFT_FILES = ("raft.journal", "raft.dump")


def _process(pid: int | None) -> psutil.Process | None:
    try:
        return psutil.Process(pid) if pid else None
    except psutil.Error:
        return None


def _cpu_seconds(proc: psutil.Process | None) -> float | None:
    try:
        times = proc.cpu_times() if proc is not None else None
    except psutil.Error:
        return None
    return None if times is None else times.user + times.system


def _rss_mib(proc: psutil.Process | None) -> float | None:
    try:
        return proc.memory_info().rss / 2**20 if proc is not None else None
    except psutil.Error:
        return None


def _raft_bytes(state_dir: str) -> int:
    return sum((Path(state_dir) / name).stat().st_size for name in RAFT_FILES if (Path(state_dir) / name).exists())


class _Sampler:
    """CPU share over each interval, RSS and journal size, per node and process kind."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.procs = {name: {"agent": _process(node.pid), "guard": _process(node.guard_pid)}
                      for name, node in sorted(lab.spec.nodes.items())}
        self.last = {name: {kind: _cpu_seconds(p) for kind, p in kinds.items()} for name, kinds in self.procs.items()}
        self.at = time.monotonic()
        self.samples: list[dict[str, Any]] = []

    def sample(self, elapsed_s: float) -> dict[str, Any]:
        now = time.monotonic()
        interval = now - self.at
        row: dict[str, Any] = {"t_s": round(elapsed_s), "nodes": {}}
        for name, kinds in self.procs.items():
            node: dict[str, Any] = {"raft_bytes": _raft_bytes(self.lab.spec.nodes[name].state_dir)}
            for kind, proc in kinds.items():
                cpu = _cpu_seconds(proc)
                before = self.last[name][kind]
                node[f"{kind}_cpu_pct"] = round(100 * (cpu - before) / interval, 2) if cpu is not None and before is not None else None
                node[f"{kind}_rss_mib"] = round(rss, 1) if (rss := _rss_mib(proc)) is not None else None
                self.last[name][kind] = cpu
            row["nodes"][name] = node
        self.at = now
        self.samples.append(row)
        return row


def summarize(samples: list[dict[str, Any]], minutes: float) -> dict[str, Any]:
    """Per process kind over all nodes and intervals: CPU median/max, RSS start/end/max and growth per hour."""
    out: dict[str, Any] = {"minutes": minutes, "intervals": len(samples)}
    for kind in ("agent", "guard"):
        cpus = [n[f"{kind}_cpu_pct"] for s in samples for n in s["nodes"].values() if n[f"{kind}_cpu_pct"] is not None]
        first, last = samples[0]["nodes"], samples[-1]["nodes"]
        rss_first = [n[f"{kind}_rss_mib"] for n in first.values() if n[f"{kind}_rss_mib"] is not None]
        rss_last = [n[f"{kind}_rss_mib"] for n in last.values() if n[f"{kind}_rss_mib"] is not None]
        hours = max((samples[-1]["t_s"] - samples[0]["t_s"]) / 3600, 1e-9)
        out[kind] = {
            "cpu_pct_median": round(statistics.median(cpus), 2) if cpus else None,
            "cpu_pct_max": max(cpus, default=None),
            "rss_mib_first": max(rss_first, default=None),
            "rss_mib_last": max(rss_last, default=None),
            "rss_mib_max": max((n[f"{kind}_rss_mib"] or 0 for s in samples for n in s["nodes"].values()), default=None),
            "rss_growth_mib_per_h": round((max(rss_last) - max(rss_first)) / hours, 2)
            if rss_first and rss_last and len(samples) > 1 else None,
        }
    out["raft_bytes_first"] = max(n["raft_bytes"] for n in samples[0]["nodes"].values())
    out["raft_bytes_last"] = max(n["raft_bytes"] for n in samples[-1]["nodes"].values())
    return out


def bench_idle(minutes: float, every: float, nodes: int) -> dict[str, Any]:
    destroy(LAB)
    lab = Lab.create(LAB, nodes, catalog="lab")
    try:
        lab.start_all()
        lab.wait_formed(timeout=60)
        lab.wait_services(timeout=90)
        time.sleep(10.0)  # past start-up: services started, first checks done
        sampler = _Sampler(lab)
        started = time.monotonic()
        end = started + minutes * 60
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(every, left))
            row = sampler.sample(time.monotonic() - started)
            agents = [n["agent_cpu_pct"] for n in row["nodes"].values()]
            rss = [n["agent_rss_mib"] for n in row["nodes"].values()]
            print(f"  {row['t_s']:>5}s  agent CPU % {agents}  RSS MiB {rss}  journal "
                  f"{max(n['raft_bytes'] for n in row['nodes'].values()) >> 10} KiB", file=sys.stderr, flush=True)
        return {**summarize(sampler.samples, minutes), "nodes": nodes, "samples": sampler.samples}
    finally:
        destroy(LAB)


def print_idle(results: dict[str, Any]) -> None:
    print(f"\nIdle {results['nodes']}-node lab for {results['minutes']} min ({results['intervals']} intervals)")
    for kind in ("agent", "guard"):
        print(f"  {kind}: {results[kind]}")
    print(f"  Raft journal + dump: {results['raft_bytes_first'] >> 10} KiB -> {results['raft_bytes_last'] >> 10} KiB")
