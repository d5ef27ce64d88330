"""One node id on two machines (a copied state dir): the state refuses it, the newcomer is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeos.cluster.identity import clone_ambiguous, clone_refusal, clone_verdict, clone_warning
from nodeos.cluster.state import ClusterState

A, B, C, CLONE = "10.0.0.1:7371", "10.0.0.2:7371", "10.0.0.3:7371", "10.0.0.9:7371"


def join(node: str, addr: str, now: float, members: list[str] | None = None) -> dict:
    op = {"op": "node_join", "now": now, "node": node, "raft_addr": addr, "ip": addr.split(":")[0]}
    if members is not None:
        op["members"] = members
    return op


def three_nodes() -> ClusterState:
    state = ClusterState()
    for i, addr in enumerate((A, B, C)):
        assert state.apply(join(f"n{i}", addr, 1.0 + i, [A, B, C]))["ok"]
    return state


def test_node_join_refuses_a_second_address_for_a_members_id():
    state = three_nodes()
    before, events = state.to_dict(), list(state.events)
    result = state.apply(join("n1", CLONE, 10.0, [A, B, C, CLONE]))
    assert result["ok"] is False
    assert "n1" in result["error"] and B in result["error"] and CLONE in result["error"] and "clone" in result["error"]
    assert "membership.json" in result["error"]
    assert state.to_dict() == before and state.events == events  # a refused op changes nothing


def test_node_join_still_accepts_re_registration_at_the_same_address():
    state = three_nodes()
    state.apply({"op": "node_status", "now": 5.0, "node": "n1", "status": "lost"})
    assert state.apply(join("n1", B, 6.0, [A, B, C]))["ok"]
    assert state.nodes["n1"].status == "up" and state.nodes["n1"].raft_addr == B


def test_node_join_without_members_replays_as_before():
    """Ops logged before the field existed must apply as they did then (determinism across versions)."""
    state = three_nodes()
    assert state.apply(join("n1", CLONE, 10.0))["ok"]
    assert state.nodes["n1"].raft_addr == CLONE


def test_node_join_accepts_an_address_no_longer_a_member():
    state = three_nodes()
    assert state.apply(join("n1", CLONE, 10.0, [A, C, CLONE]))["ok"]


@pytest.mark.parametrize("members", ["10.0.0.1:7371", [1, 2], {"a": 1}])
def test_node_join_rejects_malformed_members(members):
    state = three_nodes()
    op = join("n9", CLONE, 10.0)
    op["members"] = members
    assert state.apply(op) == {"ok": False, "error": "field 'members' must be a list of addresses"}


def test_refusal_is_deterministic():
    one, two = three_nodes(), three_nodes()
    op = join("n1", CLONE, 10.0, [A, B, C, CLONE])
    assert one.apply(dict(op)) == two.apply(dict(op))
    assert one.to_dict() == two.to_dict()


@pytest.mark.parametrize("me, other, registered, members, other_is_member, verdict", [
    # The replicated state decides when it knows the id.
    (B, CLONE, B, [A, B, C], False, "stay"),
    (CLONE, B, B, [A, B, C, CLONE], True, "leave"),  # a full disk clone that started Raft from the copied journal
    # Raft membership, when the state has no record yet.
    (B, CLONE, None, [A, B, C], False, "stay"),
    (CLONE, B, None, [B, CLONE], True, "unsure"),
    # No consensus yet: a member's announcement wins over a fresh machine.
    (CLONE, B, None, None, True, "leave"),
    # Two fresh machines: the higher address yields, so exactly one stays.
    (CLONE, B, None, None, False, "leave"),
    (B, CLONE, None, None, False, "stay"),
    ("10.0.0.10:7371", "10.0.0.9:7371", None, None, False, "leave"),  # numeric, not text, order
])
def test_clone_verdict(me, other, registered, members, other_is_member, verdict):
    assert clone_verdict(me, other, registered, members, other_is_member) == verdict


def test_messages_name_the_id_both_addresses_and_the_remedy():
    refusal = clone_refusal("abc123", CLONE, B, Path("/var/lib/nodeos"))
    assert "abc123" in refusal and CLONE in refusal and B in refusal
    assert "/var/lib/nodeos/node_id" in refusal and "raft.* / membership.json" in refusal and "new node" in refusal
    for text in (clone_warning("abc123", B, CLONE), clone_ambiguous("abc123", B, CLONE)):
        assert "abc123" in text and B in text and CLONE in text and "membership.json" in text
