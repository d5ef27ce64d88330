"""Split racks: what a group holds, which of two groups dissolves, the replicated dissolve (issue 11, item 4)."""

from __future__ import annotations

import itertools

import pytest

from nodeos.cluster.formation import FormationParams, FormationState, Group, Member, PeerView, step
from nodeos.cluster.split import GroupView, group_to_join, holdings
from nodeos.cluster.state import ClusterState
from nodeos.services import placement  # noqa: F401  (registers catalog_set)
from nodeos.services.catalog import load_catalog, packaged_catalog

CATALOG = load_catalog(packaged_catalog("lab")).to_dict()


def fresh_state() -> ClusterState:
    state = ClusterState()
    state.apply({"op": "init_cluster", "now": 1.0, "group_id": "g1", "cluster_id": "c"})
    return state


def test_a_group_with_the_images_catalog_only_holds_nothing() -> None:
    state = fresh_state()
    assert state.apply({"op": "catalog_set", "now": 2.0, "catalog": CATALOG, "reason": "image config"})["ok"]
    assert state.catalog_source == "config"
    assert holdings(state) == ()


@pytest.mark.parametrize(("change", "held"), [
    (lambda s: s.storage.update(fsid="f"), "ceph"),
    (lambda s: s.storage.update(volumes={"mariadb": {"created": True}}), "volumes"),
    (lambda s: s.cloud.update(jobs={"keystone-db-sync": {"state": "done"}}), "cloud"),
    (lambda s: s.cloud.update(keys={"fernet": ["k"]}), "cloud"),
    (lambda s: s.apply({"op": "catalog_set", "now": 2.0, "catalog": CATALOG, "source": "operator"}), "operator catalog"),
])
def test_what_a_merge_would_lose_is_held(change, held) -> None:
    state = fresh_state()
    change(state)
    assert holdings(state) == (held,)


def test_a_running_job_or_an_empty_storage_record_is_not_held() -> None:
    state = fresh_state()
    state.cloud["jobs"] = {"keystone-db-sync": {"state": "running"}}
    state.storage["volumes"] = {}
    assert holdings(state) == ()


def test_a_group_that_holds_something_never_dissolves() -> None:
    ours = GroupView("a", 2, ("volumes",))
    assert group_to_join(ours, [GroupView("b", 5, ("ceph",)), GroupView("c", 9)]) is None


def test_an_empty_group_joins_one_that_holds_something_even_a_smaller_one() -> None:
    target = GroupView("z", 1, ("cloud",))
    assert group_to_join(GroupView("a", 4), [target, GroupView("b", 2)]) == target


def test_of_two_empty_groups_the_smaller_joins_the_larger_and_ties_go_to_the_smaller_id() -> None:
    assert group_to_join(GroupView("a", 2), [GroupView("b", 3)]) == GroupView("b", 3)
    assert group_to_join(GroupView("b", 3), [GroupView("a", 2)]) is None
    assert group_to_join(GroupView("b", 2), [GroupView("a", 2)]) == GroupView("a", 2)
    assert group_to_join(GroupView("a", 2), [GroupView("b", 2)]) is None


@pytest.mark.parametrize("holds", list(itertools.product([(), ("ceph",)], repeat=3)))
def test_groups_that_see_each_other_never_all_dissolve_and_one_always_stays(holds) -> None:
    groups = [GroupView(f"g{i}", members, h) for i, (members, h) in enumerate(zip((2, 3, 2), holds))]
    dissolving = [g for g in groups if group_to_join(g, [o for o in groups if o != g]) is not None]
    assert len(dissolving) < len(groups)
    assert all(not g.holds for g in dissolving)
    assert len(dissolving) == len([g for g in groups if not g.holds]) - (0 if any(g.holds for g in groups) else 1)


def test_the_dissolve_is_replicated_once_and_refused_when_the_group_holds_something() -> None:
    state = fresh_state()
    result = state.apply({"op": "group_dissolve", "now": 3.0, "into": "g0", "term": 1, "reason": "r"})
    assert result["ok"] and state.dissolved_into == "g0"
    assert state.apply({"op": "group_dissolve", "now": 3.1, "into": "g0", "term": 1})["ok"]
    assert [e["kind"] for e in state.events].count("cluster.dissolved") == 1
    held = fresh_state()
    held.storage["fsid"] = "f"
    refused = held.apply({"op": "group_dissolve", "now": 3.0, "into": "g0", "term": 1})
    assert not refused["ok"] and "holds ceph" in refused["error"] and held.dissolved_into is None


def test_a_node_that_left_a_dissolved_group_joins_the_other_never_the_old_one() -> None:
    """Members of the old group that have not left yet still list us; the other group does not."""
    params = FormationParams(bootstrap_expect=2, settle=0.5, offer_timeout=6.0, peer_timeout=2.0)
    old = Group("g1-old", (Member("me", "10.0.0.1:7371"), Member("o", "10.0.0.2:7371")))
    other = Group("g2-new", (Member("x", "10.0.0.3:7371"), Member("y", "10.0.0.4:7371")))
    assert old.group_id < other.group_id  # formation would pick the lowest id
    peers = {"o": PeerView("o", "10.0.0.2:7371", "member", 10.0, group=old),
             "x": PeerView("x", "10.0.0.3:7371", "member", 10.0, group=other)}
    leaving = step(FormationState("me", "10.0.0.1:7371", leaving="g1-old"), peers, 10.1, params, "offer")
    assert leaving.join == other and leaving.state.phase == "joining"
    unaware = step(FormationState("me", "10.0.0.1:7371"), peers, 10.1, params, "offer")
    assert unaware.state.phase == "member" and unaware.state.group == old  # what `leaving` prevents
