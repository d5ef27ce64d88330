"""A campaign's schedule: which faults, on what, in which round, from a seed alone.

Each round injects one fault, or (with probability `overlap`) two at once when the cluster
can still keep a majority: at most (n - 1) // 2 nodes are taken away at a time, so on three
nodes a second fault overlapping a node fault is one that takes no node away (a service
kill, load). Targets that only the running cluster knows (the Monitor's node, the node
holding a service) are resolved by the runner when the round starts; the schedule names them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# fault -> what it targets: a node (by name), the Monitor's node, or a catalog service.
FAULTS: dict[str, str] = {
    "service-kill": "service",
    "agent-kill": "node",
    "agent-hang": "node",
    "load": "node",
    "node-crash": "node",
    "node-reboot": "node",
    "disconnect": "node",
    "partition": "node",
    "monitor-crash": "monitor",
}
# These take their node out of the majority until they are undone (load and a service kill do not).
TAKES_A_NODE = frozenset({"agent-kill", "agent-hang", "node-crash", "node-reboot", "disconnect", "partition",
                          "monitor-crash"})
MONITOR = "monitor"  # the target of monitor-crash: whichever node holds the lease when the round starts


class ScheduleError(ValueError):
    pass


@dataclass(frozen=True)
class Fault:
    fault: str
    target: str  # a node name, MONITOR, or a service name

    def __str__(self) -> str:
        return f"{self.fault} {self.target}"


@dataclass(frozen=True)
class Round:
    number: int  # from 1
    faults: tuple[Fault, ...]  # one, or two injected together


def parse_faults(text: str) -> list[str]:
    """`service-kill,node-crash` (or `all`) -> the fault names, refusing unknown ones with the list."""
    names = list(FAULTS) if text.strip() == "all" else [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in FAULTS]
    if unknown or not names:
        raise ScheduleError(f"unknown fault(s) {', '.join(unknown) or '(none given)'}; "
                            f"choose from: {', '.join(FAULTS)} (or all)")
    return names


def plan(seed: int, rounds: int, faults: list[str], nodes: list[str], services: list[str],
         overlap: float = 0.25) -> list[Round]:
    """The same arguments give the same schedule."""
    if rounds < 1:
        raise ScheduleError("rounds must be at least 1")
    if not nodes:
        raise ScheduleError("no nodes to inject faults on")
    if "service-kill" in faults and not services:
        raise ScheduleError("service-kill needs a catalog with services")
    rng = random.Random(seed)
    nodes, services = sorted(nodes), sorted(services)
    spare = (len(nodes) - 1) // 2  # nodes the majority can do without
    schedule = []
    for number in range(1, rounds + 1):
        first = _pick(rng, rng.choice(faults), nodes, services)
        chosen = [first]
        if rng.random() < overlap:
            taken = _nodes_taken(chosen)
            candidates = [f for f in faults if f not in TAKES_A_NODE or len(taken) < spare]
            if candidates:
                second = _pick(rng, rng.choice(candidates), [n for n in nodes if n not in taken] or nodes, services)
                if second.target != first.target or second.fault != first.fault:
                    chosen.append(second)
        schedule.append(Round(number, tuple(chosen)))
    return schedule


def _pick(rng: random.Random, fault: str, nodes: list[str], services: list[str]) -> Fault:
    kind = FAULTS[fault]
    if kind == "service":
        return Fault(fault, rng.choice(services))
    if kind == "monitor":
        return Fault(fault, MONITOR)
    return Fault(fault, rng.choice(nodes))


def _nodes_taken(faults: list[Fault]) -> set[str]:
    return {f.target for f in faults if f.fault in TAKES_A_NODE}
