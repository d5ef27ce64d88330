"""Which Raft member leaves the configuration, and when. Pure: liveness is an argument.

A dead node stays a Raft member forever unless someone removes it, and it
counts toward the quorum: with 5 members and 2 dead, one more failure stops
the cluster. The lease holder removes a member whose node has been lost for
`member_remove_after` (its singletons and Ceph roles moved long before),
one member at a time, never below MIN_MEMBERS, and only when the members
left still have a majority that answers. A join request from a new node id
at a member's address means that machine was re-imaged: the old member goes
at once, and the join adds the new one (same address, new identity, empty
journal: never the old member's votes).
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_MEMBERS = 3  # automatic removal never shrinks a cluster of 3 or more below this


@dataclass(frozen=True)
class MemberView:
    addr: str  # Raft address
    node_id: str | None
    answering: bool  # heard by the leader (or, on a follower, its node record is "up")
    lost_for: float = 0.0  # seconds its node record has been "lost"


def quorum_after_removal(members: list[MemberView], addr: str) -> bool:
    rest = [m for m in members if m.addr != addr]
    return bool(rest) and sum(m.answering for m in rest) > len(rest) / 2


def member_to_remove(members: list[MemberView], remove_after: float) -> MemberView | None:
    """The member the lease holder removes now, if any: lost longest first."""
    if len(members) <= MIN_MEMBERS:
        return None
    dead = [m for m in members if not m.answering and m.lost_for >= remove_after]
    for member in sorted(dead, key=lambda m: (-m.lost_for, m.addr)):
        if quorum_after_removal(members, member.addr):
            return member
    return None


def replaced_member(members: list[MemberView], join_addr: str, join_id: str) -> MemberView | None:
    """The member a join request replaces: another node id at the joiner's address, silent."""
    member = next((m for m in members if m.addr == join_addr), None)
    if member is None or member.node_id == join_id or member.answering:
        return None
    return member if quorum_after_removal(members, member.addr) else None


def removal_refusal(members: list[MemberView], addr: str) -> str | None:
    """Why an operator's `nodeos node remove` must not happen now (None: it may)."""
    target = next((m for m in members if m.addr == addr), None)
    if target is None:
        return f"{addr} is not a Raft member (already removed?)"
    name = target.node_id or addr
    if len(members) == 1:
        return f"{name} is the only member"
    if target.answering:
        return (f"{name} is up and answering: stop its agent or power it off first "
                f"(a running node would only join again)")
    if not quorum_after_removal(members, addr):
        rest = [m for m in members if m.addr != addr]
        return (f"removing {name} would leave {sum(m.answering for m in rest)} of {len(rest)} members answering: "
                f"no majority, the cluster would stop")
    return None
