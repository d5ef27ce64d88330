"""Dead members leave the Raft configuration, and come back as new members (issue 11, item 3).

Real agents in network namespaces. member_remove_after is shortened to a few
seconds (default 10 min); the rules themselves are unit-tested in
tests/unit/test_membership.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nodeos.lab.lab import Lab
from nodeos.services.catalog import packaged_catalog

from .cluster_helpers import cli, is_root, status_json, wait_until

pytestmark = [pytest.mark.lab, pytest.mark.skipif(not is_root(), reason="needs root for namespaces")]

REMOVE_AFTER = 6.0


def members(lab: Lab, node: str) -> list[dict]:
    return status_json(lab, node)["members"]


def events(lab: Lab, node: str) -> list[dict]:
    out = cli("events", "--json", "--lab-node", node, "--lab", lab.spec.name).stdout
    return [json.loads(line) for line in out.splitlines()]


def a_follower(lab: Lab) -> str:
    view = lab.wait_formed(timeout=60)
    leader = lab.node_name_of(view["leader"])
    return next(n for n in sorted(lab.spec.nodes, reverse=True) if n != leader)


def test_a_lost_member_is_removed_then_joins_again_when_it_comes_back(lab_factory):
    lab = lab_factory(4, timing={"member_remove_after": REMOVE_AFTER})
    victim = a_follower(lab)
    victim_id = status_json(lab, victim)["node_id"]
    others = [n for n in sorted(lab.spec.nodes) if n != victim]
    lab.crash(victim)

    wait_until(lambda: len(members(lab, others[0])) == 3, 30, "the lost member removed")
    assert all(len(members(lab, n)) == 3 for n in others)
    removed = [e for e in events(lab, others[0]) if e["kind"] == "node.removed"]
    assert [e["node"] for e in removed] == [victim_id] and "member_remove_after" in removed[0]["detail"]
    # Never below three: the others stay members however long the victim is away.
    assert {m["node_id"] for m in members(lab, others[0])} == {status_json(lab, n)["node_id"] for n in others}

    lab.start_agent(victim)  # powered on again with its old state dir: no operator step
    wait_until(lambda: len(members(lab, others[0])) == 4, 60, "the removed node back as a member")
    view = lab.wait_formed(timeout=30)
    back = view["statuses"][victim]
    assert back["node_id"] == victim_id and len(back["members"]) == 4
    assert any(p.name.startswith("raft.journal.removed-") for p in Path(lab.node(victim).state_dir).iterdir())
    log = (Path(lab.node(victim).state_dir) / "agent.log").read_text()
    assert '"raft.removed_from_group"' in log


def test_a_reimaged_node_replaces_its_old_member(lab_factory):
    lab = lab_factory(3)
    victim = a_follower(lab)
    old_id = status_json(lab, victim)["node_id"]
    others = [n for n in sorted(lab.spec.nodes) if n != victim]
    lab.crash(victim)
    state_dir = Path(lab.node(victim).state_dir)
    for path in state_dir.iterdir():  # a new disk image: no node id, no journal, no membership
        if path.name == "node_id" or path.name.startswith(("raft.", "membership")):
            path.unlink()
    lab.start_agent(victim)

    def replaced() -> bool:
        ids = {m["node_id"] for m in members(lab, others[0])}
        return len(ids) == 3 and old_id not in ids
    wait_until(replaced, 60, "the re-imaged node a member in place of its old self")
    view = lab.wait_formed(timeout=30)
    new_id = view["statuses"][victim]["node_id"]
    assert new_id != old_id and len(view["statuses"][victim]["members"]) == 3
    kinds = [(e["kind"], e.get("node")) for e in events(lab, others[0])]
    assert ("node.replaced", old_id) in kinds


def test_operator_removal_refuses_a_live_node_and_takes_out_a_dead_one(lab_factory):
    lab = lab_factory(4)  # member_remove_after stays 10 min: only the operator removes here
    victim = a_follower(lab)
    victim_id = status_json(lab, victim)["node_id"]
    others = [n for n in sorted(lab.spec.nodes) if n != victim]

    refused = cli("node", "remove", victim_id, "--lab-node", others[0], "--lab", lab.spec.name)
    assert refused.returncode == 2 and "up and answering" in refused.stderr
    unknown = cli("node", "remove", "zzzz", "--lab-node", others[0], "--lab", lab.spec.name)
    assert unknown.returncode == 2 and "no member node id" in unknown.stderr

    lab.crash(victim)
    wait_until(lambda: any(m["node_id"] == victim_id and m["status"] == "lost" for m in members(lab, others[0])), 20,
               "the victim seen lost")
    done = cli("node", "remove", victim_id[:6], "--lab-node", others[-1], "--lab", lab.spec.name)  # from any node
    assert done.returncode == 0, done.stderr
    assert "3 members now" in done.stdout
    wait_until(lambda: all(len(members(lab, n)) == 3 for n in others), 10, "every member seeing three")
    assert any(e["kind"] == "node.removed" and e["node"] == victim_id and "operator" in e["detail"]
               for e in events(lab, others[0]))


def split_rack(lab_factory) -> tuple[Lab, tuple[list[str], list[str]], list[str]]:
    """4 nodes with bootstrap_expect 2 started while cut in two: two groups of one cluster."""
    lab = lab_factory(4, expect=2, start=False)
    lab.partition(["n1", "n2"])
    lab.start_all()
    halves = (["n1", "n2"], ["n3", "n4"])
    views = [lab.wait_formed(timeout=60, names=half) for half in halves]
    groups = [status_json(lab, half[0])["group_id"] for half in halves]
    assert groups[0] != groups[1] and all(v["formed"] for v in views)
    assert all(status_json(lab, n)["other_groups"] == {} for n in sorted(lab.spec.nodes))  # cut apart: nobody knows
    return lab, halves, groups


def apply_operator_catalog(lab: Lab, node: str) -> None:
    """A catalog an operator applied: something a merge would lose (nodeos/cluster/split.py)."""
    result = cli("catalog", "apply", str(packaged_catalog("lab")), "--lab", lab.spec.name, "--lab-node", node)
    assert result.returncode == 0, result.stderr


def test_a_rack_formed_in_two_halves_reports_the_split_on_every_node(lab_factory):
    """Issue 11, item 4: two groups of one cluster that both hold something stay apart and report it."""
    lab, halves, groups = split_rack(lab_factory)
    for half in halves:
        apply_operator_catalog(lab, half[0])

    lab.heal()

    def everyone_reports() -> bool:
        return all(list(status_json(lab, n)["other_groups"]) == [groups[1] if n in halves[0] else groups[0]]
                   for n in sorted(lab.spec.nodes))
    wait_until(everyone_reports, 20, "every node of both groups reporting the other")
    ids = {n: status_json(lab, n)["node_id"] for n in sorted(lab.spec.nodes)}
    assert sorted(status_json(lab, "n1")["other_groups"][groups[1]]) == sorted([ids["n3"], ids["n4"]])
    for half, other in ((halves[0], groups[1]), (halves[1], groups[0])):
        wait_until(lambda: any(e["kind"] == "cluster.split" and other in e["detail"] and "operator catalog" in e["detail"]
                               for e in events(lab, half[0])), 20, f"the split recorded in the event log of {half}")
        assert "SPLIT" in cli("status", "--lab-node", half[0], "--lab", lab.spec.name).stdout
    # Nothing is merged: each half keeps its own group and members.
    assert [status_json(lab, half[0])["group_id"] for half in halves] == groups
    assert all(len(status_json(lab, n)["members"]) == 2 for n in sorted(lab.spec.nodes))


def test_a_half_that_holds_nothing_dissolves_into_the_other(lab_factory):
    """Issue 11, item 4: the group without data joins the one with data, no operator step."""
    lab, halves, groups = split_rack(lab_factory)
    apply_operator_catalog(lab, halves[0][0])  # the first half holds something, the second nothing

    lab.heal()

    def merged() -> bool:
        views = [status_json(lab, n) for n in sorted(lab.spec.nodes)]
        return all(v["group_id"] == groups[0] and len(v["members"]) == 4 and not v["other_groups"] for v in views)
    wait_until(merged, 60, "all four nodes members of the first half's group")
    log = "\n".join((Path(lab.node(n).state_dir) / "agent.log").read_text() for n in halves[1])
    assert log.count('"raft.group_dissolved"') == 2, "both nodes of the second half left their group"
    ids = {n: status_json(lab, n)["node_id"] for n in sorted(lab.spec.nodes)}
    joined = {e.get("node") for e in events(lab, "n1") if e["kind"] == "node.joined"}
    assert {ids["n3"], ids["n4"]} <= joined
    # The second half's old journals were set aside, not deleted.
    assert all(list(Path(lab.node(n).state_dir).glob("raft.journal.removed-*")) for n in halves[1])
