"""Zero-config cluster formation: a pure, deterministic state machine.

Fresh nodes agree on the initial Raft member set with a coordinator offer
(a small two-phase commit carried by the signed beacons):

1. When a node has seen at least `bootstrap_expect` fresh nodes (itself
   included), the view has been stable for `settle` seconds, and it has the
   lowest node id among them, it *offers* that set, under a random offer id.
2. A waiting node named in an offer *accepts* it (only one offer at a time) and
   stays bound to it until the coordinator commits, abandons it, or the offer
   times out.
3. The coordinator *commits* only while its offer is young (less than half the
   member-side timeout) and only when every member has accepted; it then
   starts Raft and beacons `member` with group id = offer id. Members seeing
   that start Raft with the same set.

Two groups cannot form from one set of nodes: a node is bound to at most one
offer, a coordinator commits only with all members bound to its offer, and a
member never lets go of an offer before the coordinator's commit window has
closed. Nodes that arrive after a group exists join it by membership change.

Time and the offer id's randomness are arguments; nothing here reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

Phase = Literal["waiting", "offering", "accepted", "member", "joining"]
FRESH_PHASES = ("waiting", "offering", "accepted")


@dataclass(frozen=True)
class Member:
    node_id: str
    addr: str  # "ip:port" of the node's Raft endpoint


@dataclass(frozen=True)
class Offer:
    offer_id: str
    coordinator: str
    members: tuple[Member, ...]

    def node_ids(self) -> set[str]:
        return {m.node_id for m in self.members}

    def to_wire(self) -> dict:
        return {"id": self.offer_id, "coord": self.coordinator, "members": [[m.node_id, m.addr] for m in self.members]}

    @staticmethod
    def from_wire(data: dict) -> "Offer":
        members = tuple(Member(str(n), str(a)) for n, a in data["members"])
        return Offer(str(data["id"]), str(data["coord"]), members)


@dataclass(frozen=True)
class Group:
    group_id: str
    members: tuple[Member, ...]

    def node_ids(self) -> set[str]:
        return {m.node_id for m in self.members}

    def to_wire(self) -> dict:
        return {"id": self.group_id, "members": [[m.node_id, m.addr] for m in self.members]}

    @staticmethod
    def from_wire(data: dict) -> "Group":
        return Group(str(data["id"]), tuple(Member(str(n), str(a)) for n, a in data["members"]))


@dataclass(frozen=True)
class PeerView:
    """What the latest valid beacon of a peer said, and when we received it."""

    node_id: str
    addr: str
    phase: Phase
    seen_at: float
    offer: Offer | None = None
    group: Group | None = None
    holds: tuple[str, ...] = ()  # a member's group: what a merge would lose (split.py)


@dataclass(frozen=True)
class FormationState:
    node_id: str
    addr: str
    phase: Phase = "waiting"
    offer: Offer | None = None
    offer_started: float = 0.0  # coordinator: when it offered; member: when it accepted
    group: Group | None = None
    view: frozenset[str] = frozenset()  # fresh candidate ids seen at view_since
    view_since: float = 0.0
    leaving: str | None = None  # the group id we left (dissolved): never joined again by us


@dataclass(frozen=True)
class FormationParams:
    bootstrap_expect: int = 3
    settle: float = 1.5  # seconds the candidate set must stay unchanged before offering
    offer_timeout: float = 30.0  # member side; the coordinator commits only within half of it
    peer_timeout: float = 3.0  # a peer not heard from for this long is not a candidate


@dataclass(frozen=True)
class Decision:
    """The new state plus what the agent must do about it."""

    state: FormationState
    start_raft: Group | None = None  # commit: start consensus with this group
    join: Group | None = None  # ask this existing group to add us
    note: str | None = None  # an event worth logging (phase changes)
    extra: dict = field(default_factory=dict)


def step(state: FormationState, peers: dict[str, PeerView], now: float, params: FormationParams, new_offer_id: str) -> Decision:
    """Advance formation by one tick. `new_offer_id` is fresh randomness for a possible offer."""
    if state.phase == "member":
        return Decision(state)
    live = {p.node_id: p for p in peers.values() if now - p.seen_at <= params.peer_timeout and p.node_id != state.node_id}

    existing = _existing_group(live, state.leaving)
    if existing is not None and state.phase != "offering":
        return _follow_existing_group(state, existing, live)
    if state.phase == "offering":
        return _step_offering(state, live, now, params, existing)
    if state.phase == "accepted":
        return _step_accepted(state, live, now, params)
    return _step_waiting(state, live, now, params, new_offer_id)


def _existing_group(live: dict[str, PeerView], leaving: str | None = None) -> Group | None:
    """The group that running members announce (the lowest id if several: a split rack, split.py),
    never the one we left: its members that have not left yet still list us."""
    groups = {p.group.group_id: p.group for p in live.values()
              if p.phase == "member" and p.group is not None and p.group.group_id != leaving}
    if not groups:
        return None
    return groups[min(groups)]


def _follow_existing_group(state: FormationState, group: Group, live: dict[str, PeerView]) -> Decision:
    if state.phase == "accepted" and state.offer is not None and group.group_id == state.offer.offer_id:
        return _commit(state, group, "formation.committed")
    listed_as = next((m.node_id for m in group.members if m.addr == state.addr), None)
    if state.node_id in group.node_ids() or listed_as == state.addr:
        # Our own accepted offer was committed, or the group already added us (by id, or by
        # address while the members do not know our id yet). Our address under another id is
        # the member this machine was before a re-image: we must join as a new member.
        if state.phase == "accepted" and state.offer is not None and state.offer.offer_id != group.group_id:
            return Decision(state)  # still bound to another offer: wait for it to end
        return _commit(state, group, "formation.joined")
    if state.phase == "accepted":
        return Decision(state)  # bound to an offer: never leave it for another group early
    new_state = replace(state, phase="joining", group=None)
    note = "formation.joining" if state.phase != "joining" else None
    return Decision(new_state, join=group, note=note)


def _commit(state: FormationState, group: Group, note: str) -> Decision:
    new_state = replace(state, phase="member", group=group, offer=None)
    return Decision(new_state, start_raft=group, note=note)


def _fresh_candidates(state: FormationState, live: dict[str, PeerView]) -> dict[str, str]:
    candidates = {p.node_id: p.addr for p in live.values() if p.phase in FRESH_PHASES}
    candidates[state.node_id] = state.addr
    return candidates


def _step_waiting(state: FormationState, live: dict[str, PeerView], now: float, params: FormationParams, new_offer_id: str) -> Decision:
    offers = [p.offer for p in live.values() if p.phase == "offering" and p.offer is not None and state.node_id in p.offer.node_ids()]
    if offers:
        offer = min(offers, key=lambda o: (o.coordinator, o.offer_id))
        accepted = replace(state, phase="accepted", offer=offer, offer_started=now)
        return Decision(accepted, note="formation.accepted", extra={"offer": offer.offer_id, "coordinator": offer.coordinator})

    candidates = _fresh_candidates(state, live)
    view = frozenset(candidates)
    if view != state.view:
        return Decision(replace(state, view=view, view_since=now))
    stable = now - state.view_since >= params.settle
    lowest = min(candidates) == state.node_id
    # Peers already bound to someone else's offer are not free to join ours.
    free = all(live[n].phase == "waiting" for n in candidates if n != state.node_id)
    if len(candidates) >= params.bootstrap_expect and stable and lowest and free:
        members = tuple(Member(n, candidates[n]) for n in sorted(candidates))
        offer = Offer(new_offer_id, state.node_id, members)
        if len(members) == 1:
            return _commit(state, Group(offer.offer_id, members), "formation.committed")
        offering = replace(state, phase="offering", offer=offer, offer_started=now)
        return Decision(offering, note="formation.offered", extra={"offer": offer.offer_id, "members": sorted(candidates)})
    return Decision(state)


def _step_offering(state: FormationState, live: dict[str, PeerView], now: float, params: FormationParams, existing: Group | None) -> Decision:
    offer = state.offer
    assert offer is not None
    others = offer.node_ids() - {state.node_id}
    all_accepted = all(n in live and live[n].phase == "accepted" and _offer_id(live[n]) == offer.offer_id for n in others)
    young = now - state.offer_started < params.offer_timeout / 2
    if all_accepted and young and existing is None:
        return _commit(state, Group(offer.offer_id, offer.members), "formation.committed")
    bound_elsewhere = any(n in live and live[n].phase in ("accepted", "member") and _offer_id(live[n]) != offer.offer_id for n in others)
    if not young or bound_elsewhere or existing is not None:
        reason = "expired" if not young else ("group exists" if existing is not None else "member bound elsewhere")
        waiting = replace(state, phase="waiting", offer=None, view=frozenset(), view_since=now)
        return Decision(waiting, note="formation.abandoned", extra={"offer": offer.offer_id, "reason": reason})
    return Decision(state)


def _offer_id(peer: PeerView) -> str | None:
    return peer.offer.offer_id if peer.offer is not None else None


def _step_accepted(state: FormationState, live: dict[str, PeerView], now: float, params: FormationParams) -> Decision:
    offer = state.offer
    assert offer is not None
    coordinator = live.get(offer.coordinator)
    if coordinator is not None and coordinator.phase == "member" and coordinator.group is not None:
        if coordinator.group.group_id == offer.offer_id:
            return _commit(state, coordinator.group, "formation.committed")
    withdrawn = coordinator is not None and coordinator.phase in ("waiting", "joining", "accepted")
    # An offer's coordinator commits only within offer_timeout/2 of offering; by
    # offer_timeout after we accepted, that window has surely closed.
    expired = now - state.offer_started > params.offer_timeout
    if withdrawn or expired:
        waiting = replace(state, phase="waiting", offer=None, view=frozenset(), view_since=now)
        return Decision(waiting, note="formation.released", extra={"offer": offer.offer_id, "reason": "withdrawn" if withdrawn else "expired"})
    return Decision(state)
