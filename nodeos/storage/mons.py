"""Where Ceph monitors run: pure, one change at a time; times are arguments.

Target: a mon on min(3, n) nodes, 5 from 7 nodes, where n counts every node
of the cluster, lost ones included (a lost node may come back; its mon
rejoins by itself).

A mon whose node has been lost for `mon_replace_after` is replaced: first a
mon is added on an up node that has none, then, once that one is in the
monmap, the dead one is removed; two dead mons are replaced one after the
other. Never the other way
round, and never more than one change per decision, so the caller applies a
change, waits until the monmap shows it, and asks again.

Why this order keeps quorum: Ceph needs a strict majority of the monmap in
quorum. A new mon enters the monmap when it joins, alive, so an add is safe
when the live mons plus the new one are a majority of the grown map; this
function refuses an add otherwise. Removing a dead mon shrinks the map and
leaves the live count alone, so it can only help. A live mon is removed only
when there are more mons than the target and none is dead, and only when the
live rest still is a majority.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal, Mapping

MON_REPLACE_AFTER = 120.0  # Rook waits 10 min, MicroCeph never; a node reboot takes about a minute


@dataclass(frozen=True)
class MonChange:
    action: Literal["add", "remove"]
    node: str
    reason: str


def mon_target(nodes: int) -> int:
    """How many mons a cluster of `nodes` nodes runs: 1, 2, 3, or 5 from 7 nodes."""
    if nodes < 1:
        return 0
    return 5 if nodes >= 7 else min(3, nodes)


def initial_mons(nodes: Iterable[str]) -> list[str]:
    """The first monmap when the cluster forms with `nodes` (one mkfs, no growth steps)."""
    ordered = sorted(set(nodes))
    return ordered[:mon_target(len(ordered))]


def _has_quorum(live: int, size: int) -> bool:
    return size > 0 and 2 * live > size


def choose_mons(up_nodes: Iterable[str], current_mons: Iterable[str], lost_since: Mapping[str, float], now: float,
                mon_replace_after: float = MON_REPLACE_AFTER) -> MonChange | None:
    """The next single monmap change, or None when the mons are where they should be.

    `up_nodes`: nodes up now; `lost_since`: lost node -> when it was lost.
    A mon on a node that is neither up nor lost has left the cluster: it is
    replaced at once. Candidates are taken in sorted order (deterministic).
    """
    up = set(up_nodes)
    mons = sorted(set(current_mons))
    members = up | set(lost_since)
    target = mon_target(len(members))
    live = [m for m in mons if m in up]
    dead = [m for m in mons if m not in up]
    overdue = sorted((m for m in dead if _overdue(m, lost_since, now, mon_replace_after)),
                     key=lambda m: (lost_since.get(m, float("-inf")), m))  # the longest gone first
    spare = sorted(up - set(mons))

    if overdue and (len(live) >= target or len(mons) > target):  # its replacement is in
        return MonChange("remove", overdue[0], f"mon on {overdue[0]} {_gone(overdue[0], lost_since, now)}; "
                                               f"{len(live)} live mons")
    if (overdue or len(mons) < target) and spare and _has_quorum(len(live) + 1, len(mons) + 1):
        why = (f"replaces the mon on {overdue[0]} ({_gone(overdue[0], lost_since, now)})" if overdue
               else f"{len(mons)} of {target} mons")
        return MonChange("add", spare[0], why)
    if len(mons) > target and not dead and _has_quorum(len(live) - 1, len(mons) - 1):
        return MonChange("remove", mons[-1], f"{len(mons)} mons for {len(members)} nodes, {target} wanted")
    return None


def _overdue(mon: str, lost_since: Mapping[str, float], now: float, replace_after: float) -> bool:
    since = lost_since.get(mon)
    return since is None or now - since >= replace_after  # None: the node left the cluster


def _gone(mon: str, lost_since: Mapping[str, float], now: float) -> str:
    since = lost_since.get(mon)
    return "left the cluster" if since is None else f"lost for {now - since:.0f}s"
