"""Cluster benchmarks (formation, election) and what every benchmark shares.

Benchmarks print figures and write JSON; nothing is asserted.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from nodeos.cluster.control import ControlError, request
from nodeos.lab.lab import Lab, LabError, destroy

from .stats import summarize

RESULTS_DIR = Path("bench-results")


def write_results(name: str, results: dict[str, Any], out: str | None) -> Path:
    path = Path(out) if out else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    return path


def print_table(title: str, rows: dict[str, dict[str, Any]]) -> None:
    print(f"\n{title}")
    print(f"  {'case':<34} {'n':>3} {'median s':>9} {'p95 s':>7} {'min':>6} {'max':>6}")
    for case, s in rows.items():
        if s.get("n"):
            print(f"  {case:<34} {s['n']:>3} {s['median']:>9.3f} {s['p95']:>7.3f} {s['min']:>6.3f} {s['max']:>6.3f}")
        else:
            print(f"  {case:<34} {0:>3}   (no sample)")


def _log(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def bench_formation(rounds: int, sizes: list[int]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for size in sizes:
        samples = []
        for r in range(rounds):
            destroy("bench")
            lab = Lab.create("bench", size, catalog=None)
            try:
                started = time.monotonic()
                lab.start_all()
                lab.wait_formed(timeout=60)
                samples.append(time.monotonic() - started)
                _log(f"formation {size} nodes round {r + 1}/{rounds}: {samples[-1]:.2f}s")
            finally:
                destroy("bench")
        results[f"formation_{size}_nodes"] = summarize(samples)
    return results


def lease_holder(lab: Lab, names: list[str]) -> str | None:
    for name in names:
        try:
            code, lease = request(lab.node_socket(name), "GET", "/lease", timeout=0.5)
        except ControlError:
            continue
        if code == 200 and lease.get("may_act"):
            return name
    return None


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


def bench_election(rounds: int, size: int = 3) -> dict[str, Any]:
    destroy("bench")
    lab = Lab.create("bench", size, catalog=None)
    samples: list[float] = []
    try:
        lab.start_all()
        lab.wait_formed(timeout=60)
        for r in range(rounds):
            names = sorted(lab.spec.nodes)
            holder = wait_for(lambda: lease_holder(lab, names), 15)
            if holder is None:
                raise LabError("no lease holder before the round")
            others = [n for n in names if n != holder]
            started = time.monotonic()
            lab.crash(holder)
            successor = wait_for(lambda: lease_holder(lab, others), 20, interval=0.005)
            if successor is not None:
                samples.append(time.monotonic() - started)
                _log(f"election round {r + 1}/{rounds}: {holder} killed, {successor} holds the lease after {samples[-1]:.3f}s")
            lab.start_agent(holder)
            lab.wait_formed(timeout=60)
    finally:
        destroy("bench")
    return {f"leader_kill_to_new_lease_{size}_nodes": summarize(samples)}
