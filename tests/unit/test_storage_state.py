"""Ceph in the replicated state: ops, the Monitor's storage decisions, the files a node writes (no network)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

import nodeos.services.placement  # noqa: F401  (registers the service ops)
from nodeos.cluster.state import ClusterState
from nodeos.services.catalog import load_catalog, packaged_catalog
from nodeos.services.node import desired_here
from nodeos.storage import ops as storage_ops
from nodeos.storage.conf import CephPaths, LAB_TUNING, fsid_for
from nodeos.storage.decide import decide_storage, mons_settled
from nodeos.storage.files import render_files

CATALOG = load_catalog(packaged_catalog("lab-storage"))
NET = "10.0.0.0/24"


def apply(state: ClusterState, op: dict) -> dict:
    result = state.apply(op)
    assert result["ok"], result
    return result


def join(state: ClusterState, node: str, i: int, now: float = 1.0) -> None:
    apply(state, {"op": "node_join", "now": now, "node": node, "raft_addr": f"10.0.0.{i}:7371", "ip": f"10.0.0.{i}"})


def seeded(seed: int = 7):
    rng = random.Random(seed)
    return lambda n: bytes(rng.getrandbits(8) for _ in range(n))


def monitor(state: ClusterState, now: float, replace_after: float = 120.0):
    ops, actions = decide_storage(state, now, "a", 1, seeded(int(now * 10)), NET, replace_after)
    for op in ops:
        apply(state, op)
    return ops, actions


def report(state: ClusterState, service: str, node: str, health: str, now: float) -> None:
    apply(state, {"op": "report_health", "now": now, "service": service, "node": node, "state": health, "generation": 0})


def three_nodes_with(catalog) -> ClusterState:
    """A formed cluster of nodes a, b, c with `catalog` applied."""
    s = ClusterState()
    apply(s, {"op": "init_cluster", "now": 1.0, "cluster_id": "c1", "group_id": "g1"})
    for i, node in enumerate(["a", "b", "c"], start=1):
        join(s, node, i)
    apply(s, {"op": "catalog_set", "now": 1.0, "catalog": catalog.to_dict()})
    return s


@pytest.fixture
def state() -> ClusterState:
    return three_nodes_with(CATALOG)


def test_init_makes_keys_once_with_three_mons_and_keeps_them_out_of_the_status(state):
    ops, _ = monitor(state, 2.0)
    assert [op["op"] for op in ops] == ["storage_init"]
    storage = state.storage
    assert storage["fsid"] == fsid_for("c1")
    assert sorted(storage["mons"]) == ["a", "b", "c"] and storage["mons"]["b"] == "10.0.0.2"
    assert sorted(storage["keys"]["clients"]) == ["a", "b", "c"]
    assert "keys" not in state.to_dict()["storage"] and "keys" in storage
    again, _ = monitor(state, 3.0)
    assert not any(op["op"] == "storage_init" for op in again)
    assert state.apply({**ops[0], "now": 4.0})["ok"] is False  # never initialized twice


def test_same_seed_same_keys_so_every_replica_agrees():
    def keys(seed: int) -> dict:
        s = ClusterState()
        apply(s, {"op": "init_cluster", "now": 1.0, "cluster_id": "c1", "group_id": "g1"})
        join(s, "a", 1)
        apply(s, {"op": "catalog_set", "now": 1.0, "catalog": CATALOG.to_dict()})
        ops, _ = decide_storage(s, 2.0, "a", 1, seeded(seed), NET)
        return ops[0]["keys"]

    assert keys(1) == keys(1) and keys(1) != keys(2)


def test_a_later_node_gets_a_key_that_is_then_imported(state):
    monitor(state, 2.0)
    join(state, "d", 4, now=5.0)
    ops, actions = monitor(state, 6.0)
    assert [op["op"] for op in ops] == ["storage_node_key"] and ops[0]["node"] == "d"
    _, actions = monitor(state, 7.0)
    assert any(a.kind == "register" and a.node == "d" for a in actions)
    apply(state, {"op": "storage_node_registered", "now": 8.0, "node": "d", "term": 1})
    _, actions = monitor(state, 9.0)
    assert not any(a.kind == "register" for a in actions)


def test_only_mon_nodes_run_the_mon_service(state):
    monitor(state, 2.0)
    join(state, "d", 4, now=5.0)
    assert desired_here(state, CATALOG, "a", False, set())["ceph-mon"].run
    assert not desired_here(state, CATALOG, "d", False, set())["ceph-mon"].run
    assert desired_here(state, CATALOG, "d", False, set())["ceph-osd"].run is False  # waits for a mon in quorum
    report(state, "ceph-mon", "a", "healthy", 6.0)
    assert desired_here(state, CATALOG, "d", False, set())["ceph-osd"].run


def lose(state: ClusterState, node: str, now: float) -> None:
    apply(state, {"op": "node_status", "now": now, "node": node, "status": "lost", "term": 1})


def test_a_lost_mon_is_replaced_after_mon_replace_after_one_change_at_a_time(state):
    monitor(state, 2.0)
    join(state, "d", 4, now=3.0)
    for node in "abc":
        report(state, "ceph-mon", node, "healthy", 4.0)
    lose(state, "c", 10.0)
    ops, _ = monitor(state, 20.0, replace_after=30.0)
    assert not any(op["op"].startswith("mon_") for op in ops)  # not yet: lost for 10 s only
    ops, _ = monitor(state, 41.0, replace_after=30.0)
    adds = [op for op in ops if op["op"] == "mon_add"]
    assert [op["node"] for op in adds] == ["d"]
    ops, _ = monitor(state, 42.0, replace_after=30.0)
    assert not any(op["op"].startswith("mon_") for op in ops)  # d has not joined the quorum yet
    assert not mons_settled(state)
    report(state, "ceph-mon", "d", "healthy", 43.0)
    ops, _ = monitor(state, 44.0, replace_after=30.0)
    assert [op["node"] for op in ops if op["op"] == "mon_remove"] == ["c"]
    _, actions = monitor(state, 45.0, replace_after=30.0)
    assert [(a.kind, a.node) for a in actions if a.kind == "remove_mon"] == [("remove_mon", "c")]
    apply(state, {"op": "mon_removed", "now": 46.0, "node": "c", "term": 1})
    assert sorted(state.storage["mons"]) == ["a", "b", "d"] and state.storage["mon_removing"] == []
    ops, _ = monitor(state, 47.0, replace_after=30.0)
    assert not any(op["op"].startswith("mon_") for op in ops)
    kinds = [e["kind"] for e in state.events]
    assert kinds.index("storage.mon_added") < kinds.index("storage.mon_removing") < kinds.index("storage.mon_removed")


def test_the_volume_pool_waits_for_osds_on_three_hosts_then_is_sized_3_2(state):
    monitor(state, 2.0)
    for i, node in enumerate("ab"):
        apply(state, {"op": "osd_report", "now": 3.0, "node": node, "ids": [i], "taken": ["f"], "skipped": {}})
    _, actions = monitor(state, 4.0)
    assert not any(a.kind == "pool" for a in actions)
    apply(state, {"op": "osd_report", "now": 5.0, "node": "c", "ids": [2], "taken": ["f"], "skipped": {}})
    _, actions = monitor(state, 6.0)
    pools = [a for a in actions if a.kind == "pool"]
    assert [(a.pool, a.size, a.min_size) for a in pools] == [(storage_ops.POOL_VOLUMES, 3, 2)]
    apply(state, {"op": "pool_set", "now": 7.0, "pool": pools[0].pool, "size": 3, "min_size": 2, "term": 1})
    _, actions = monitor(state, 8.0)
    assert not any(a.kind == "pool" for a in actions)


def test_a_single_node_cloud_gets_one_mon_and_a_pool_of_size_one():
    s = ClusterState()
    apply(s, {"op": "init_cluster", "now": 1.0, "cluster_id": "c1", "group_id": "g1"})
    join(s, "a", 1)
    apply(s, {"op": "catalog_set", "now": 1.0, "catalog": CATALOG.to_dict()})
    monitor(s, 2.0)
    assert list(s.storage["mons"]) == ["a"]
    apply(s, {"op": "osd_report", "now": 3.0, "node": "a", "ids": [0], "taken": ["f"], "skipped": {}})
    _, actions = monitor(s, 4.0)
    assert [(a.size, a.min_size) for a in actions if a.kind == "pool"] == [(1, 1)]


def test_a_deposed_monitor_cannot_change_the_mons(state):
    monitor(state, 2.0)
    apply(state, {"op": "heartbeat", "now": 3.0, "leader": "b", "term": 5})
    result = state.apply({"op": "mon_remove", "now": 4.0, "node": "a", "term": 1, "by": "a"})
    assert result["ok"] is False and "stale" in result["error"]


def test_files_hold_the_conf_and_keyrings_private_and_the_node_facts(state, tmp_path: Path):
    monitor(state, 2.0)
    paths = CephPaths(str(tmp_path))
    files = render_files(state, "b", paths, LAB_TUNING, "file")
    conf, private = files[paths.conf]
    assert not private and "mon_host" in conf and "host=b" in conf
    assert files[paths.keyring("client.admin")][1] is True
    assert files[paths.keyring("client.node-b")][1] is True
    facts = files[str(tmp_path / "node.json")][0]
    assert '"ip": "10.0.0.2"' in facts and '"osd_disks": "file"' in facts
    for path, (content, private) in files.items():
        if not private:
            assert state.storage["keys"]["admin"] not in content


def test_osd_reports_are_recorded_with_what_was_skipped(state):
    monitor(state, 2.0)
    apply(state, {"op": "osd_report", "now": 3.0, "node": "a", "ids": [0], "taken": ["/dev/vdb"],
                  "skipped": {"/dev/vda": "the boot disk"}})
    assert state.storage["osds"]["a"]["skipped"] == {"/dev/vda": "the boot disk"}
    assert state.events[-1]["kind"] == "storage.osds" and "skipped /dev/vda: the boot disk" in state.events[-1]["detail"]
    bad = state.apply({"op": "osd_report", "now": 4.0, "node": "zz", "ids": [1], "taken": [], "skipped": {}})
    assert bad["ok"] is False


# -- volumes -----------------------------------------------------------------------------------

VOLUMES = {"mariadb": (1 << 30, "ext4")}


def volume_state(state: ClusterState) -> None:
    """Ceph initialised, the pool made, MariaDB placed on a, its image created."""
    monitor(state, 2.0)
    apply(state, {"op": "pool_set", "now": 3.0, "pool": storage_ops.POOL_VOLUMES, "size": 3, "min_size": 2, "term": 1})
    _, actions = decide_storage(state, 4.0, "a", 1, seeded(), NET, volumes=VOLUMES)
    images = [a for a in actions if a.kind == "image"]
    assert [(a.service, a.size, a.fs) for a in images] == [("mariadb", 1 << 30, "ext4")]
    apply(state, {"op": "volume_created", "now": 5.0, "service": "mariadb", "size": 1 << 30, "fs": "ext4", "term": 1})
    state.services["mariadb"] = nodeos_record("mariadb", "a")


def nodeos_record(name: str, node: str):
    from nodeos.cluster.state import ServiceRecord

    return ServiceRecord(name, "singleton", node=node)


def attach(state: ClusterState, node: str, client: str) -> dict:
    return state.apply({"op": "volume_attached", "now": 6.0, "service": "mariadb", "node": node, "client": client})


def test_only_the_placed_node_may_attach_and_only_while_nobody_holds_the_volume(state):
    from nodeos.storage.decide import volume_ready

    volume_state(state)
    assert volume_ready(state, "mariadb", "a") and volume_ready(state, "mariadb", "b")
    assert attach(state, "b", "10.0.0.2:0/1")["ok"] is False  # not placed there
    assert attach(state, "a", "10.0.0.1:0/7")["ok"]
    assert not volume_ready(state, "mariadb", "b")  # held by a
    state.services["mariadb"].node = "b"  # the Monitor moved it
    assert attach(state, "b", "10.0.0.2:0/1")["ok"] is False  # a still holds it: fence first
    assert "10.0.0.1:0/7" in state.to_dict()["storage"]["volumes"]["mariadb"]["client"]


def test_a_rebooted_holder_records_the_dead_clients_it_fenced_itself(state):
    volume_state(state)
    attach(state, "a", "10.0.0.1:0/7")
    op = {"op": "volume_attached", "now": 9.0, "service": "mariadb", "node": "a", "client": "10.0.0.1:0/8"}
    assert state.apply({**op, "fenced_own": ["10.0.0.1:0/8"]})["ok"] is False  # never its new client
    assert state.apply({**op, "fenced_own": "10.0.0.1:0/7"})["ok"] is False
    assert state.apply({**op, "fenced_own": ["10.0.0.1:0/7"]})["ok"]
    volume = state.to_dict()["storage"]["volumes"]["mariadb"]
    assert (volume["holder"], volume["client"], volume["fenced"]) == ("a", "10.0.0.1:0/8", ["10.0.0.1:0/7"])
    event = state.events[-1]
    assert event["kind"] == "storage.volume_attached" and event["fenced_own"] == ["10.0.0.1:0/7"]
    assert "its own earlier 10.0.0.1:0/7" in event["detail"]
    assert attach(state, "a", "10.0.0.1:0/7")["ok"] is False  # the fenced one never comes back


def test_a_live_holder_still_releasing_is_waited_for_a_lost_one_is_fenced(state):
    from nodeos.storage.decide import must_fence, volume_actions

    volume_state(state)
    attach(state, "a", "10.0.0.1:0/7")
    assert volume_actions(state, VOLUMES) == []  # where it should be: nothing to do
    record = state.services["mariadb"]
    record.node, record.migration = "b", {"from": "a", "to": "b", "phase": "releasing", "seq": 0}
    assert not must_fence(state, "mariadb", "a")  # a stops it and detaches cleanly
    record.migration["phase"] = "starting"
    assert must_fence(state, "mariadb", "a")  # a reported stopped but kept the volume: fence
    record.migration["phase"] = "releasing"
    lose(state, "a", 7.0)
    fences = [x for x in volume_actions(state, VOLUMES) if x.kind == "fence"]
    assert [(f.service, f.node, f.client) for f in fences] == [("mariadb", "a", "10.0.0.1:0/7")]


def test_the_fence_is_recorded_once_and_frees_the_volume_for_the_next_node(state):
    volume_state(state)
    attach(state, "a", "10.0.0.1:0/7")
    state.services["mariadb"].node = "b"
    fence = {"op": "volume_fenced", "now": 8.0, "service": "mariadb", "client": "10.0.0.1:0/7",
             "expire": 315360000, "term": 1, "by": "c"}
    apply(state, fence)
    events = [e for e in state.events if e["kind"] == "storage.volume_fenced"]
    assert len(events) == 1 and events[0]["client"] == "10.0.0.1:0/7" and events[0]["node"] == "a"
    assert apply(state, {**fence, "now": 9.0}).get("already")  # a repeated action records nothing twice
    assert len([e for e in state.events if e["kind"] == "storage.volume_fenced"]) == 1
    assert attach(state, "b", "10.0.0.2:0/9")["ok"]
    assert attach(state, "b", "10.0.0.1:0/7")["ok"] is False  # a fenced address never holds it again
    late = state.apply({"op": "volume_detached", "now": 10.0, "service": "mariadb", "node": "a"})
    assert late.get("already") and state.storage["volumes"]["mariadb"]["holder"] == "b"


def test_a_service_with_a_volume_waits_for_it(state):
    catalog = load_catalog(packaged_catalog("lab-storage"))
    volume_state(state)
    for node in "abc":
        report(state, "ceph-mon", node, "healthy", 6.0)
    report(state, "ceph-osd", "a", "healthy", 6.0)
    state.services["mariadb"].node = "b"
    attach_b = desired_here(state, catalog, "b", False, set())["mariadb"]
    assert attach_b.run  # nobody holds it, b is registered
    state.storage["volumes"]["mariadb"]["holder"] = "a"
    waiting = desired_here(state, catalog, "b", False, set())["mariadb"]
    assert not waiting.run and waiting.waiting_for == ["volume"]
