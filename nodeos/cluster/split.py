"""Split racks: which of two groups of one cluster dissolves into the other, pure.

Two halves of a rack that were cut apart when they booted can each reach
`bootstrap_expect` and form a Raft group with the same cluster id. When they
see each other (member beacons carry the group, signed with the cluster key),
a group that holds nothing a merge would lose dissolves: its members leave
their group and join the other one as new members, with no operator step.
A group that holds something stays; then nothing is merged automatically and
both report the split (issue 11, item 4).

What a group holds (`holdings`): Ceph bootstrapped (its fsid, keys and mon
data belong to that group), a service volume made, a one-time cloud job done
or keystone's keys made (a database that has data), or a catalog an operator
applied (the image's own catalog is applied by either group alike).

Which group dissolves (`group_to_join`): every group ranks the groups it
sees the same way, from their beacons: holding something first, then more
members, then the smaller group id. A group that holds nothing joins the
best-ranked group if that one ranks before it, so of two groups that see
each other at most one dissolves, and a group that holds something never does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

OPERATOR_CATALOG = "operator"  # ClusterState.catalog_source of a catalog applied by `nodeos catalog apply`


@dataclass(frozen=True)
class GroupView:
    group_id: str
    members: int
    holds: tuple[str, ...] = ()  # what a merge would lose; empty: nothing


def holdings(state: Any) -> tuple[str, ...]:
    """What this group's replicated state holds that a merge would lose (ClusterState, read only)."""
    held = []
    storage = state.storage or {}
    if storage.get("fsid"):
        held.append("ceph")
    if any((v or {}).get("created") for v in (storage.get("volumes") or {}).values()):
        held.append("volumes")
    cloud = state.cloud or {}
    if cloud.get("keys") or any(job.get("state") == "done" for job in (cloud.get("jobs") or {}).values()):
        held.append("cloud")
    if getattr(state, "catalog_source", None) == OPERATOR_CATALOG:
        held.append("operator catalog")
    return tuple(held)


def _rank(group: GroupView) -> tuple[int, int, str]:
    return (0 if group.holds else 1, -group.members, group.group_id)


def group_to_join(ours: GroupView, others: list[GroupView]) -> GroupView | None:
    """The group ours dissolves into, or None (it holds something, or it ranks first)."""
    if ours.holds or not others:
        return None
    best = min(others, key=_rank)
    return best if _rank(best) < _rank(ours) else None
