"""Formation: convergence, late joiners, and a randomized safety simulation."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from nodeos.cluster.formation import FormationParams, FormationState, Group, Member, Offer, PeerView, step

PARAMS = FormationParams(bootstrap_expect=3, settle=0.5, offer_timeout=6.0, peer_timeout=2.0)


def view_of(state: FormationState, now: float) -> PeerView:
    group = state.group if state.phase == "member" else None
    offer = state.offer if state.phase in ("offering", "accepted") else None
    return PeerView(state.node_id, state.addr, state.phase, now, offer, group)


def run_lockstep(ids: list[str], params: FormationParams, steps: int = 200, dt: float = 0.1) -> dict[str, FormationState]:
    states = {n: FormationState(n, f"10.0.0.{i + 1}:7371") for i, n in enumerate(ids)}
    counter = 0
    for k in range(steps):
        now = k * dt
        views = {n: view_of(s, now) for n, s in states.items()}
        for n in ids:
            counter += 1
            peers = {p: v for p, v in views.items() if p != n}
            states[n] = step(states[n], peers, now, params, f"offer{counter}").state
        if all(s.phase == "member" for s in states.values()):
            break
    return states


def test_three_fresh_nodes_form_one_group_with_all_of_them():
    states = run_lockstep(["c", "a", "b"], PARAMS)
    assert {s.phase for s in states.values()} == {"member"}
    groups = {s.group for s in states.values()}
    assert len(groups) == 1
    (group,) = groups
    assert group.node_ids() == {"a", "b", "c"}


def test_five_nodes_with_expect_three_form_one_group_of_five():
    states = run_lockstep(["e", "d", "c", "b", "a"], PARAMS)
    groups = {s.group.group_id for s in states.values() if s.group}
    assert len(groups) == 1
    assert all(len(s.group.members) == 5 for s in states.values())


def test_too_few_nodes_never_commit():
    states = run_lockstep(["a", "b"], PARAMS, steps=300)
    assert all(s.phase != "member" for s in states.values())


def test_single_node_cloud_commits_alone_after_settling():
    params = replace(PARAMS, bootstrap_expect=1)
    state = FormationState("solo", "10.0.0.1:7371")
    decision = step(state, {}, 0.0, params, "x")
    assert decision.state.phase == "waiting"  # view just changed: settle first
    decision = step(decision.state, {}, 1.0, params, "x")
    assert decision.state.phase == "member"
    assert decision.start_raft == Group("x", (Member("solo", "10.0.0.1:7371"),))


def test_late_node_asks_the_existing_group_to_join():
    group = Group("g1", (Member("a", "10.0.0.1:7371"), Member("b", "10.0.0.2:7371"), Member("c", "10.0.0.3:7371")))
    peers = {n: PeerView(n, f"10.0.0.{i + 1}:7371", "member", 10.0, group=group) for i, n in enumerate("abc")}
    late = FormationState("d", "10.0.0.4:7371")
    decision = step(late, peers, 10.0, PARAMS, "o")
    assert decision.state.phase == "joining"
    assert decision.join == group
    # Once the group lists it, the late node commits to the group (starts Raft).
    grown = Group("g1", group.members + (Member("d", "10.0.0.4:7371"),))
    peers = {n: replace(v, group=grown, seen_at=11.0) for n, v in peers.items()}
    decision = step(decision.state, peers, 11.0, PARAMS, "o")
    assert decision.state.phase == "member" and decision.start_raft == grown


def test_a_reimaged_node_at_a_members_address_joins_as_a_new_member():
    """Its address is listed under its old id: committing would make it that member with an empty journal."""
    group = Group("g1", (Member("a", "10.0.0.1:7371"), Member("b", "10.0.0.2:7371"), Member("old-c", "10.0.0.3:7371")))
    peers = {n: PeerView(n, f"10.0.0.{i + 1}:7371", "member", 10.0, group=group) for i, n in enumerate("ab")}
    reimaged = FormationState("new-c", "10.0.0.3:7371")
    decision = step(reimaged, peers, 10.0, PARAMS, "o")
    assert decision.state.phase == "joining" and decision.join == group and decision.start_raft is None
    # Listed under its new id (the leader replaced the old member): it commits.
    replaced = Group("g1", group.members[:2] + (Member("new-c", "10.0.0.3:7371"),))
    peers = {n: replace(v, group=replaced, seen_at=11.0) for n, v in peers.items()}
    assert step(decision.state, peers, 11.0, PARAMS, "o").start_raft == replaced
    # Listed by address only (the members do not know its id yet): it commits too.
    by_address = Group("g1", group.members[:2] + (Member("10.0.0.3:7371", "10.0.0.3:7371"),))
    peers = {n: replace(v, group=by_address, seen_at=12.0) for n, v in peers.items()}
    assert step(decision.state, peers, 12.0, PARAMS, "o").start_raft == by_address


def test_duplicate_and_stale_beacons_change_nothing():
    state = FormationState("b", "10.0.0.2:7371")
    peer = PeerView("a", "10.0.0.1:7371", "waiting", 0.0)
    first = step(state, {"a": peer}, 0.0, PARAMS, "o").state
    again = step(first, {"a": peer}, 0.1, PARAMS, "o").state
    assert again == first  # the same beacon twice is the same view
    stale = step(again, {"a": peer}, 0.0 + PARAMS.peer_timeout + 1, PARAMS, "o").state
    assert stale.view == frozenset({"b"})  # a peer silent for too long is no candidate


def test_member_releases_an_offer_the_coordinator_withdrew():
    offer = Offer("o1", "a", (Member("a", "x:1"), Member("b", "y:1"), Member("c", "z:1")))
    state = FormationState("b", "y:1", phase="accepted", offer=offer, offer_started=0.0)
    peers = {"a": PeerView("a", "x:1", "waiting", 1.0)}
    decision = step(state, peers, 1.0, PARAMS, "o")
    assert decision.state.phase == "waiting" and decision.note == "formation.released"


def test_member_keeps_its_offer_while_the_coordinator_is_silent():
    offer = Offer("o1", "a", (Member("a", "x:1"), Member("b", "y:1"), Member("c", "z:1")))
    state = FormationState("b", "y:1", phase="accepted", offer=offer, offer_started=0.0)
    decision = step(state, {}, PARAMS.offer_timeout - 0.1, PARAMS, "o")
    assert decision.state.phase == "accepted"
    decision = step(state, {}, PARAMS.offer_timeout + 0.1, PARAMS, "o")
    assert decision.state.phase == "waiting"


def test_coordinator_does_not_commit_an_old_offer():
    offer = Offer("o1", "a", (Member("a", "x:1"), Member("b", "y:1")))
    state = FormationState("a", "x:1", phase="offering", offer=offer, offer_started=0.0)
    accepted = {"b": PeerView("b", "y:1", "accepted", PARAMS.offer_timeout / 2, offer=offer)}
    decision = step(state, accepted, PARAMS.offer_timeout / 2 + 0.01, PARAMS, "o")
    assert decision.state.phase == "waiting" and decision.start_raft is None


@pytest.mark.parametrize("seed", range(150))
def test_random_delays_and_losses_never_form_two_groups(seed: int):
    """Beacons arrive late, out of step, or not at all; nodes boot at random times."""
    rng = random.Random(seed)
    ids = [f"n{rng.randrange(1000):03d}{i}" for i in range(rng.choice([3, 4, 5, 6]))]
    params = FormationParams(bootstrap_expect=rng.choice([2, 3]), settle=rng.choice([0.0, 0.3]), offer_timeout=3.0, peer_timeout=1.5)
    boot = {n: rng.uniform(0, 2.0) for n in ids}
    states = {n: FormationState(n, f"{n}:1") for n in ids}
    history: dict[str, list[tuple[float, FormationState]]] = {n: [] for n in ids}
    delivered: dict[tuple[str, str], int] = {}
    loss = rng.choice([0.0, 0.3, 0.6])
    committed: dict[str, str] = {}
    for k in range(400):
        now = k * 0.05
        for n in ids:
            if now >= boot[n]:
                history[n].append((now, states[n]))
        for n in rng.sample(ids, len(ids)):
            if now < boot[n]:
                continue
            peers = {}
            for p in ids:
                if p == n or not history[p]:
                    continue
                last = delivered.get((n, p), -1)
                if rng.random() >= loss:  # deliver a newer (possibly still old) beacon
                    last = rng.randint(max(last, len(history[p]) - 4), len(history[p]) - 1)
                    delivered[(n, p)] = last
                if last >= 0:
                    when, peer_state = history[p][last]
                    seen = now if delivered.get((n, p)) == last else when
                    peers[p] = view_of(peer_state, seen)
            decision = step(states[n], peers, now, params, f"{n}-{k}")
            states[n] = decision.state
            if decision.start_raft is not None:
                committed[n] = decision.start_raft.group_id
    # Safety: all nodes that committed agree on one group, and that group contains them.
    assert len(set(committed.values())) <= 1, committed
    for n, gid in committed.items():
        assert n in states[n].group.node_ids()
