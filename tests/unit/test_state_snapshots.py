"""ReplicatedCluster.snapshot: a reader's copy is taken again only when more than a heartbeat changed the state."""

from __future__ import annotations

import pickle

from nodeos.cluster.consensus import HEARTBEAT_FIELDS, ReplicatedCluster

JOIN_A = {"op": "node_join", "now": 10.0, "node": "a", "raft_addr": "10.0.0.1:7371", "ip": "10.0.0.1"}
JOIN_B = {"op": "node_join", "now": 10.5, "node": "b", "raft_addr": "10.0.0.2:7371", "ip": "10.0.0.2"}


def apply(cluster: ReplicatedCluster, op: dict) -> dict:
    return cluster.apply_op(dict(op), _doApply=True)  # as pysyncobj applies a committed entry


def heartbeat(leader: str, now: float, term: int = 1) -> dict:
    return {"op": "heartbeat", "now": now, "leader": leader, "term": term}


def test_a_heartbeat_keeping_the_monitor_reuses_the_copy_with_its_own_fields_fresh():
    cluster = ReplicatedCluster()
    apply(cluster, JOIN_A)
    apply(cluster, heartbeat("a", 11.0))
    first = cluster.snapshot("services")
    apply(cluster, heartbeat("a", 11.1))
    second = cluster.snapshot("services")
    assert second.nodes is first.nodes  # not copied again
    assert second is not first
    for name in HEARTBEAT_FIELDS:
        assert getattr(second, name) == getattr(cluster.state, name), name
    assert second.heartbeat_seq == first.heartbeat_seq + 1 and second.time == 11.1
    assert first.heartbeat_seq == second.heartbeat_seq - 1  # an earlier copy is left as it was


def test_any_other_op_or_a_new_monitor_gives_a_new_copy():
    cluster = ReplicatedCluster()
    apply(cluster, JOIN_A)
    apply(cluster, heartbeat("a", 11.0))
    before = cluster.snapshot("services")
    apply(cluster, JOIN_B)
    after_join = cluster.snapshot("services")
    assert "b" in after_join.nodes and "b" not in before.nodes
    apply(cluster, heartbeat("b", 12.0, term=2))
    after_election = cluster.snapshot("services")
    assert after_election.nodes is not after_join.nodes and after_election.monitor == "b"


def test_copies_are_private_to_their_reader_and_to_the_live_state():
    cluster = ReplicatedCluster()
    apply(cluster, JOIN_A)
    services, monitor = cluster.snapshot("services"), cluster.snapshot("monitor")
    assert services.nodes is not monitor.nodes
    assert services.nodes is not cluster.state.nodes
    assert services.events == []  # events left out


def test_a_loaded_raft_snapshot_gives_a_new_copy():
    cluster = ReplicatedCluster()
    apply(cluster, JOIN_A)
    old = cluster.snapshot("services")
    other = ReplicatedCluster()
    apply(other, JOIN_A)
    apply(other, JOIN_B)
    cluster._deserialize(pickle.loads(pickle.dumps(other._serialize())))
    assert "b" in cluster.snapshot("services").nodes and "b" not in old.nodes
