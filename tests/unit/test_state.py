"""ClusterState: deterministic, never reads time or randomness, survives bad ops."""

from __future__ import annotations

import pickle
import random
import time

import pytest

from nodeos.cluster.state import MAX_EVENTS, ClusterState


def ops_sequence() -> list[dict]:
    return [
        {"op": "node_join", "now": 10.0, "node": "a", "raft_addr": "10.0.0.1:7371", "ip": "10.0.0.1", "facts": {"cpus": 2}},
        {"op": "node_join", "now": 10.1, "node": "b", "raft_addr": "10.0.0.2:7371", "ip": "10.0.0.2"},
        {"op": "init_cluster", "now": 10.2, "group_id": "g", "cluster_id": "c"},
        {"op": "heartbeat", "now": 10.3, "leader": "a"},
        {"op": "node_status", "now": 11.0, "node": "b", "status": "lost", "reason": "no answer"},
        {"op": "heartbeat", "now": 11.1, "leader": "b"},
        {"op": "node_join", "now": 12.0, "node": "b", "raft_addr": "10.0.0.2:7371", "ip": "10.0.0.2"},
    ]


@pytest.fixture
def no_clock_or_randomness(monkeypatch):
    def forbidden(*_a, **_k):
        raise AssertionError("replicated state read the clock or randomness")

    for name in ("time", "monotonic", "perf_counter"):
        monkeypatch.setattr(time, name, forbidden)
    monkeypatch.setattr(random, "random", forbidden)
    monkeypatch.setattr(random, "randint", forbidden)


def test_applying_the_same_log_gives_the_same_state(no_clock_or_randomness):
    one, two = ClusterState(), ClusterState()
    for op in ops_sequence():
        assert one.apply(dict(op)) == two.apply(dict(op))
    assert one.to_dict() == two.to_dict()
    assert one.events == two.events


def test_node_lifecycle_is_recorded_as_events():
    state = ClusterState()
    for op in ops_sequence():
        assert state.apply(op)["ok"]
    assert state.group_id == "g" and state.monitor == "b" and state.heartbeat_seq == 2
    assert state.nodes["b"].status == "up"
    kinds = [e["kind"] for e in state.events]
    assert kinds == ["node.joined", "node.joined", "cluster.formed", "monitor.elected", "node.lost", "monitor.elected", "node.back"]


def test_init_cluster_is_idempotent():
    state = ClusterState()
    state.apply({"op": "init_cluster", "now": 1.0, "group_id": "g1", "cluster_id": "c"})
    result = state.apply({"op": "init_cluster", "now": 2.0, "group_id": "g2", "cluster_id": "c"})
    assert result == {"ok": True, "already": True} and state.group_id == "g1"


@pytest.mark.parametrize("op", [
    None, "heartbeat", {"op": "nope", "now": 1.0}, {"op": "heartbeat"}, {"op": "heartbeat", "now": "x"},
    {"op": "heartbeat", "now": 1.0, "leader": 5}, {"op": "node_status", "now": 1.0, "node": "zz", "status": "up"},
    {"op": "node_status", "now": 1.0, "node": "a", "status": "sleeping"},
    {"op": "node_join", "now": 1.0, "node": "x", "raft_addr": "r", "ip": "i", "facts": [1]},
])
def test_bad_operations_are_refused_without_change(op):
    state = ClusterState()
    state.apply(ops_sequence()[0])
    before = pickle.dumps(state.to_dict())
    result = state.apply(op)
    assert result["ok"] is False and result["error"]
    assert pickle.dumps(state.to_dict()) == before


def test_event_log_is_bounded():
    state = ClusterState()
    for i in range(MAX_EVENTS + 50):
        state.apply({"op": "event", "now": float(i), "kind": "test.event", "detail": str(i)})
    assert len(state.events) == MAX_EVENTS
    assert state.events[0]["seq"] == 51 and state.events[-1]["seq"] == MAX_EVENTS + 50


def test_cluster_time_never_goes_backwards():
    state = ClusterState()
    state.apply({"op": "heartbeat", "now": 10.0, "leader": "a"})
    state.apply({"op": "heartbeat", "now": 5.0, "leader": "a"})
    assert state.time == 10.0


def test_state_pickles_for_raft_snapshots():
    state = ClusterState()
    for op in ops_sequence():
        state.apply(op)
    assert pickle.loads(pickle.dumps(state)).to_dict() == state.to_dict()


def test_importing_consensus_keeps_socket_inet_ntop_working():
    """pysyncobj 0.3.17 swaps in a Windows-only inet_ntop; pyroute2 needs the real one."""
    import socket

    import nodeos.cluster.consensus  # noqa: F401

    assert socket.inet_ntop(socket.AF_INET, b"\x0a\x4d\x00\xfe") == "10.77.0.254"


def test_single_node_consensus_commits_and_syncs_its_journal(tmp_path):
    """A real pysyncobj instance on loopback: ops commit, the journal reaches the disk."""
    import socket

    from nodeos.cluster.config import Timing
    from nodeos.cluster.consensus import Consensus

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    consensus = Consensus(f"127.0.0.1:{port}", [f"127.0.0.1:{port}"], "secret-for-test", tmp_path, Timing())
    try:
        result = consensus.submit_sync({"op": "heartbeat", "now": 5.0, "leader": "solo"}, timeout=10)
        assert result == {"ok": True, "seq": 1}
        consensus.sync_to_disk()
        assert (tmp_path / "raft.journal").stat().st_size > 0
    finally:
        consensus.stop()


# -- Monitor terms: a deposed leader's late proposals are refused ---------------

def test_stale_heartbeat_after_a_newer_one_is_refused():
    state = ClusterState()
    assert state.apply({"op": "heartbeat", "now": 1.0, "leader": "a", "term": 2})["ok"]
    assert state.apply({"op": "heartbeat", "now": 2.0, "leader": "b", "term": 3})["ok"]
    before = state.to_dict()
    result = state.apply({"op": "heartbeat", "now": 3.0, "leader": "a", "term": 2})  # forwarded late by pysyncobj
    assert result["ok"] is False and "stale" in result["error"] and "term 2" in result["error"]
    assert state.monitor == "b" and state.monitor_term == 3
    assert state.to_dict() == before


def test_heartbeat_of_a_higher_term_takes_over():
    state = ClusterState()
    state.apply({"op": "heartbeat", "now": 1.0, "leader": "a", "term": 2})
    assert state.apply({"op": "heartbeat", "now": 2.0, "leader": "b", "term": 5})["ok"]
    assert state.monitor == "b" and state.monitor_term == 5
    assert "term 5" in state.events[-1]["detail"]


def test_equal_term_is_accepted_and_ops_without_a_term_are_not_fenced():
    state = ClusterState()
    for op in ops_sequence()[:3]:
        state.apply(op)
    state.apply({"op": "heartbeat", "now": 10.4, "leader": "a", "term": 4})
    assert state.apply({"op": "heartbeat", "now": 10.5, "leader": "a", "term": 4})["ok"]
    assert state.apply({"op": "node_status", "now": 10.6, "node": "b", "status": "lost", "term": 4})["ok"]
    # An agent's own report and a join carry no term: they are not Monitor decisions.
    assert state.apply({"op": "node_join", "now": 10.7, "node": "b", "raft_addr": "10.0.0.2:7371", "ip": "10.0.0.2"})["ok"]


def test_stale_node_status_and_init_cluster_are_refused():
    state = ClusterState()
    state.apply(ops_sequence()[0])
    state.apply({"op": "heartbeat", "now": 1.0, "leader": "b", "term": 7})
    before = state.to_dict()
    for op in ({"op": "node_status", "now": 2.0, "node": "a", "status": "lost", "term": 6},
               {"op": "init_cluster", "now": 2.0, "group_id": "g", "cluster_id": "c", "term": 6}):
        result = state.apply(op)
        assert result["ok"] is False and "stale" in result["error"]
    assert state.to_dict() == before


@pytest.mark.parametrize("term", ["3", True, -1, 2.5, None])
def test_malformed_term_is_refused(term):
    state = ClusterState()
    result = state.apply({"op": "heartbeat", "now": 1.0, "leader": "a", "term": term})
    assert result["ok"] is False and "term" in result["error"] and state.monitor is None


def test_state_pickled_before_terms_existed_loads_with_defaults():
    state = ClusterState()
    state.apply({"op": "heartbeat", "now": 1.0, "leader": "a"})
    for name in ("monitor_term", "retired"):
        del state.__dict__[name]  # as in a Raft snapshot written by an older version
    loaded = pickle.loads(pickle.dumps(state))
    assert loaded.monitor_term == 0 and loaded.retired == {} and loaded.monitor == "a"
    assert loaded.apply({"op": "heartbeat", "now": 2.0, "leader": "b", "term": 1})["ok"]
