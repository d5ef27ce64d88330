"""The Monitor's storage decisions: a pure function of the replicated state.

`decide_storage` returns the ops to propose now, stamped with the Monitor's
term; randomness (new cephx keys) and time are arguments. What needs Ceph
itself (`ceph mon remove`, pools, registering a node's key, reading health)
is returned as `Action`s for the Monitor to run off its decision thread;
each ends in an op, so a new Monitor picks up what an old one left.

Order of things:
1. init, once the catalog runs Ceph: fsid, keys, the first mons;
2. a client key for every node that joined later, imported into the mons;
3. mon changes, one at a time (mons.py): only while every mon of the
   desired monmap that is on an up node reports healthy (in quorum) and no
   removal is still due, so each change has landed before the next;
4. the volumes pool, sized for the hosts, once an OSD is up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nodeos.cluster.state import ClusterState

from .conf import fsid_for
from .keys import RandomBytes, make_key, make_keys
from .mons import MON_REPLACE_AFTER, choose_mons, initial_mons
from .ops import POOL_VOLUMES, ready
from .pools import pool_size

MON_SERVICE = "ceph-mon"
OSD_SERVICE = "ceph-osd"


@dataclass(frozen=True)
class Action:
    """Ceph I/O the Monitor runs, then reports with an op: kind in remove_mon | register | pool."""

    kind: str
    node: str = ""
    pool: str = ""
    size: int = 0
    min_size: int = 0

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.node or self.pool}"


def lost_since(state: ClusterState) -> dict[str, float]:
    return {n: r.status_since for n, r in state.nodes.items() if r.status == "lost"}


def decide_storage(state: ClusterState, now: float, by: str, term: int, random_bytes: RandomBytes,
                   public_network: str, mon_replace_after: float = MON_REPLACE_AFTER) -> tuple[list[dict[str, Any]], list[Action]]:
    base = {"now": now, "by": by, "term": term}
    up = state.up_nodes()
    if not ready(state):
        if not up or state.cluster_id is None:
            return [], []
        mons = initial_mons(up)
        keys = make_keys(random_bytes, sorted(state.nodes), created=now)
        return [{**base, "op": "storage_init", "fsid": fsid_for(state.cluster_id), "public_network": public_network,
                 "keys": keys.to_wire(), "mons": mons}], []
    storage = state.storage
    ops: list[dict[str, Any]] = []
    actions: list[Action] = []
    clients = storage["keys"]["clients"]
    for node in sorted(state.nodes):
        if node not in clients:
            ops.append({**base, "op": "storage_node_key", "node": node, "key": make_key(random_bytes, now)})
        elif node not in storage["registered"]:
            actions.append(Action("register", node=node))
    actions += [Action("remove_mon", node=n) for n in storage["mon_removing"]]
    op = _mon_change(state, base, now, mon_replace_after)
    if op is not None:
        ops.append(op)
    pool = _pool_action(state)
    if pool is not None:
        actions.append(pool)
    return ops, actions


def mons_settled(state: ClusterState) -> bool:
    """Every desired mon on an up node reports healthy, and no removal is still due."""
    storage = state.storage
    if storage["mon_removing"]:
        return False
    record = state.services.get(MON_SERVICE)
    up = set(state.up_nodes())
    for node in storage["mons"]:
        if node in up and (record is None or record.health.get(node, {}).get("state") != "healthy"):
            return False
    return True


def _mon_change(state: ClusterState, base: dict[str, Any], now: float, replace_after: float) -> dict[str, Any] | None:
    if MON_SERVICE not in state.services or not mons_settled(state):
        return None
    change = choose_mons(state.up_nodes(), state.storage["mons"], lost_since(state), now, replace_after)
    if change is None:
        return None
    return {**base, "op": f"mon_{change.action}", "node": change.node, "reason": change.reason}


def osd_hosts(state: ClusterState) -> int:
    """Hosts whose OSDs Ceph has: nodes that reported at least one OSD."""
    return sum(1 for report in state.storage["osds"].values() if report.get("ids"))


def _pool_action(state: ClusterState) -> Action | None:
    hosts = osd_hosts(state)
    # Made once OSDs are on as many hosts as its size will be (no growing
    # right after creation); a host's reported OSDs stay counted while it is
    # lost, so a reboot never shrinks the pool and grows it back.
    if hosts < max(1, min(len(state.nodes), 3)):
        return None
    size, min_size = pool_size(hosts)
    if state.storage["pools"].get(POOL_VOLUMES) == {"size": size, "min_size": min_size}:
        return None
    return Action("pool", pool=POOL_VOLUMES, size=size, min_size=min_size)
