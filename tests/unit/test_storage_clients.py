"""Cephx users of the cloud's services (client.glance) and their pools, in the replicated state (no network)."""

from __future__ import annotations

import json

import pytest

from nodeos.cloud.layer import ceph_clients
from nodeos.cluster.state import ClusterState
from nodeos.services.catalog import load_catalog, packaged_catalog
from nodeos.storage import ops as storage_ops
from nodeos.storage.clients import ServiceClient, rbd_caps, service_keyring
from nodeos.storage.decide import decide_storage
from nodeos.storage.keys import is_valid_key, make_key

from .test_storage_state import NET, apply, seeded, three_nodes_with

CLOUD = load_catalog(packaged_catalog("lab-cloud"))
GLANCE = ServiceClient("glance", rbd_caps("images"), ("images",))


@pytest.fixture
def state() -> ClusterState:
    s = three_nodes_with(CLOUD)
    ops, _ = decide_storage(s, 2.0, "a", 1, seeded(), NET)
    apply(s, ops[0])  # storage_init
    for i, node in enumerate(["a", "b", "c"]):
        apply(s, {"op": "osd_report", "now": 3.0, "node": node, "ids": [i], "taken": ["f"], "skipped": {}})
    return s


def monitor(state: ClusterState, now: float, seed: int = 1):
    ops, actions = decide_storage(state, now, "a", 1, seeded(seed), NET, service_clients={"glance": GLANCE})
    for op in ops:
        if op["op"] == "storage_service_key":
            apply(state, op)
    return ops, actions


def test_the_cloud_catalog_asks_for_glance_and_cinder_with_rbd_caps_on_their_pools_only():
    clients = ceph_clients(CLOUD)
    assert clients == {"glance": GLANCE, "cinder": clients["cinder"]}
    assert GLANCE.caps_wire() == {"mon": "profile rbd", "osd": "profile rbd pool=images"}
    # cinder writes its own pool (not nodeos's `volumes`) and reads glance's images (copy-on-write clones).
    assert clients["cinder"].pools == ("cinder",)
    assert clients["cinder"].caps_wire() == {"mon": "profile rbd",
                                             "osd": "profile rbd pool=cinder, profile rbd-read-only pool=images"}
    assert ceph_clients(load_catalog(packaged_catalog("lab-storage"))) == {}


def test_the_key_is_made_once_registered_then_kept_and_never_shown(state):
    ops, actions = monitor(state, 4.0)
    key_op = next(o for o in ops if o["op"] == "storage_service_key")
    assert is_valid_key(key_op["key"]) and key_op["caps"] == GLANCE.caps_wire()
    assert [(a.kind, a.pool) for a in actions if a.kind == "pool"] == [("pool", "nodeos-volumes"), ("pool", "images")]
    key = state.storage["keys"]["services"]["glance"]
    assert storage_ops.service_key(state, "glance") is None  # not usable before the mons know it
    ops, actions = monitor(state, 5.0, seed=2)
    assert not any(o["op"] == "storage_service_key" for o in ops)
    assert [a.service for a in actions if a.kind == "service_client"] == ["glance"]
    apply(state, {"op": "storage_service_registered", "now": 6.0, "name": "glance", "caps": GLANCE.caps_wire(),
                  "term": 1})
    assert storage_ops.service_key(state, "glance") == key
    _, actions = monitor(state, 7.0, seed=3)
    assert not any(a.kind == "service_client" for a in actions)
    # A second Monitor proposing its own key changes nothing: the first key stays.
    again = state.apply({**key_op, "now": 8.0, "key": make_key(seeded(5))})
    assert again == {"ok": True, "already": True} and state.storage["keys"]["services"]["glance"] == key
    shown = json.dumps(state.to_dict())
    assert key not in shown and "glance" in json.dumps(state.to_dict()["storage"]["service_clients"])
    assert f"key = {key}" in service_keyring("glance", key)


def test_changed_caps_keep_the_key_and_register_again(state):
    monitor(state, 4.0)
    key = state.storage["keys"]["services"]["glance"]
    apply(state, {"op": "storage_service_registered", "now": 5.0, "name": "glance", "caps": GLANCE.caps_wire(),
                  "term": 1})
    wider = ServiceClient("glance", rbd_caps("images", "vms"), ("images",))
    ops, _ = decide_storage(state, 6.0, "a", 1, seeded(9), NET, service_clients={"glance": wider})
    apply(state, next(o for o in ops if o["op"] == "storage_service_key"))
    assert state.storage["keys"]["services"]["glance"] == key
    assert storage_ops.service_key(state, "glance") is None  # until imported with the new caps
    stale = state.apply({"op": "storage_service_registered", "now": 7.0, "name": "glance",
                         "caps": GLANCE.caps_wire(), "term": 1})
    assert stale == {"ok": True, "stale": True}  # an import with the old caps does not count


def test_bad_client_ops_are_refused_without_echoing_the_key(state):
    bad = state.apply({"op": "storage_service_key", "now": 4.0, "name": "glance", "key": "secret-ish",
                       "caps": {}, "pools": [], "term": 1})
    assert not bad["ok"] and "secret-ish" not in bad["error"]
    assert not state.apply({"op": "storage_service_key", "now": 4.0, "name": "Bad Name", "key": "x", "caps": {},
                            "pools": [], "term": 1})["ok"]
    with pytest.raises(ValueError):
        ServiceClient("glance", {}, ("bad pool",))
