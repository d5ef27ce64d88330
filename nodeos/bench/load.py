"""`nodeos bench load`: does load look like failure? (It must not.)

A 3-node lab with the lab catalog runs idle for `--idle-seconds`, then under
`load all` (a CPU hog per core plus heavy fsync'd disk writes on every node)
for `--seconds`. For each phase it counts, from every agent's and guard's log,
what a false failover would leave behind: fence events (agent `fence.engaged`,
`fence.local`, guard `guard.fenced`), lease changes (`lease.acquired` /
`lease.released`), service stops and restarts, nodes declared lost; and it
reports the agents' scheduling latency (the p99 and max of their main loop's
lag, sampled from `status` every `SAMPLE_EVERY` seconds).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from nodeos.cluster.control import ControlError, request
from nodeos.lab.lab import Lab, destroy

SAMPLE_EVERY = 10.0
AGENT_EVENTS = {"fence.engaged": "fences", "fence.local": "fences", "lease.acquired": "lease_changes",
                "lease.released": "lease_changes", "service.stopped": "service_stops", "service.restarting": "service_stops"}
GUARD_EVENTS = {"guard.fenced": "fences"}


def _log_events(path: Path, start: float, end: float) -> list[dict[str, Any]]:
    events = []
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and start <= event.get("ts", 0) <= end:
            events.append(event)
    return events


def count_false_failovers(lab: Lab, start: float, end: float) -> dict[str, int]:
    """What a false failover leaves in the logs between two wall-clock times."""
    counts = {"fences": 0, "lease_changes": 0, "service_stops": 0, "nodes_lost": 0}
    for node in lab.spec.nodes.values():
        state_dir = Path(node.state_dir)
        for event in _log_events(state_dir / "agent.log", start, end):
            if event["event"] in AGENT_EVENTS:
                counts[AGENT_EVENTS[event["event"]]] += 1
        for event in _log_events(state_dir / "guard.log", start, end):
            if event["event"] in GUARD_EVENTS:
                counts[GUARD_EVENTS[event["event"]]] += 1
    for name in sorted(lab.spec.nodes):  # the replicated log, from the first node that answers
        try:
            code, events = request(lab.node_socket(name), "GET", "/events?limit=1000")
        except ControlError:
            continue
        if code == 200:
            counts["nodes_lost"] = sum(1 for e in events if e["kind"] == "node.lost" and start <= e["ts"] <= end)
            break
    return counts


def _lag_sample(lab: Lab) -> list[dict[str, Any]]:
    samples = []
    for name in sorted(lab.spec.nodes):
        status = lab.node_status(name, timeout=5.0)
        if status and status.get("loop_lag", {}).get("n"):
            samples.append(status["loop_lag"])
    return samples


def run_phase(lab: Lab, seconds: float, loaded: bool, progress: Any = None) -> dict[str, Any]:
    """Idle or loaded for `seconds`: false-failover counts and loop lag."""
    start = time.time()
    if loaded:
        lab.start_load(sorted(lab.spec.nodes), seconds)
    lags: list[dict[str, Any]] = []
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(SAMPLE_EVERY, left))
        lags += _lag_sample(lab)
        if progress is not None:
            progress(f"{'loaded' if loaded else 'idle'}: {max(0.0, end - time.monotonic()):.0f}s left")
    if loaded:
        time.sleep(2.0)  # let the load runners end and their files go
    counts = count_false_failovers(lab, start, time.time())
    p99s = [s["p99_ms"] for s in lags]
    return {"seconds": seconds, **counts,
            "loop_lag_p99_ms_median": round(statistics.median(p99s), 2) if p99s else None,
            "loop_lag_p99_ms_worst": max(p99s) if p99s else None,
            "loop_lag_max_ms": max((s["max_ms"] for s in lags), default=None)}


def bench_load(seconds: float, idle_seconds: float) -> dict[str, Any]:
    destroy("bench")
    lab = Lab.create("bench", 3, catalog="lab")
    try:
        lab.start_all()
        lab.wait_formed(timeout=60)
        lab.wait_services(timeout=90)
        time.sleep(5.0)  # past start-up
        progress = lambda message: print(f"  {message}", file=sys.stderr, flush=True)  # noqa: E731
        return {"idle": run_phase(lab, idle_seconds, False, progress), "loaded": run_phase(lab, seconds, True, progress)}
    finally:
        destroy("bench")


def print_load(results: dict[str, Any]) -> None:
    keys = ["seconds", "fences", "lease_changes", "service_stops", "nodes_lost", "loop_lag_p99_ms_median",
            "loop_lag_p99_ms_worst", "loop_lag_max_ms"]
    print(f"\nLoad: false failovers and agent loop lag\n  {'':<26} {'idle':>10} {'loaded':>10}")
    for key in keys:
        print(f"  {key:<26} {str(results['idle'].get(key)):>10} {str(results['loaded'].get(key)):>10}")
