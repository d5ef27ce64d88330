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
4. the volumes pool and the service clients' pools (`service_clients`: name ->
   ServiceClient, clients.py), sized for the hosts, once OSDs are up; each
   client's key made once, then imported with its caps;
5. volumes (`volumes`: service -> (size, fs) from the catalog): the image is
   made before the service's first placement can start; a holder that is
   not where the service should run is fenced (its client address
   blocklisted) unless it is a live node still releasing the service (it
   detaches cleanly then). Attaching elsewhere waits for the holder to clear.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from nodeos.cluster.state import ClusterState

from .clients import ServiceClient
from .conf import fsid_for
from .keys import RandomBytes, make_key, make_keys
from .mons import MON_REPLACE_AFTER, choose_mons, initial_mons
from .ops import POOL_VOLUMES, ready
from .pools import pool_size

MON_SERVICE = "ceph-mon"
OSD_SERVICE = "ceph-osd"


@dataclass(frozen=True)
class Action:
    """Ceph I/O the Monitor runs, then reports with an op: remove_mon | register | pool | image | fence |
    service_client (`service` names the client)."""

    kind: str
    node: str = ""
    pool: str = ""
    size: int = 0
    min_size: int = 0
    service: str = ""
    fs: str = ""
    client: str = ""
    osds: tuple[int, ...] = ()
    since: float = 0.0  # osd_down: once per loss of the node

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.node or self.pool or self.service}:{self.since}"

    @property
    def once(self) -> bool:
        """Done once when it succeeded (no op records it), not repeated."""
        return self.kind == "osd_down"


def lost_since(state: ClusterState) -> dict[str, float]:
    return {n: r.status_since for n, r in state.nodes.items() if r.status == "lost"}


def decide_storage(state: ClusterState, now: float, by: str, term: int, random_bytes: RandomBytes,
                   public_network: str, mon_replace_after: float = MON_REPLACE_AFTER,
                   volumes: Mapping[str, tuple[int, str]] | None = None,
                   service_clients: Mapping[str, ServiceClient] | None = None,
                   ) -> tuple[list[dict[str, Any]], list[Action]]:
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
    # A lost node is fenced: its OSDs are marked down at once, so the PGs they
    # lead stop waiting for them (Ceph alone waits for its heartbeat grace).
    for node, since in sorted(lost_since(state).items()):
        ids = tuple((storage["osds"].get(node) or {}).get("ids") or ())
        if ids:
            actions.append(Action("osd_down", node=node, osds=ids, since=since))
    op = _mon_change(state, base, now, mon_replace_after)
    if op is not None:
        ops.append(op)
    wanted = service_clients or {}
    actions += _pool_actions(state, [POOL_VOLUMES, *sorted({p for c in wanted.values() for p in c.pools})])
    client_ops, client_actions = client_decisions(state, wanted, base, random_bytes)
    ops += client_ops
    actions += client_actions
    actions += volume_actions(state, volumes or {})
    return ops, actions


def client_decisions(state: ClusterState, clients: Mapping[str, ServiceClient], base: dict[str, Any],
                     random_bytes: RandomBytes) -> tuple[list[dict[str, Any]], list[Action]]:
    """A key for each service client (once; again with the same key when its caps change), then its import."""
    ops: list[dict[str, Any]] = []
    actions: list[Action] = []
    records = state.storage.get("service_clients") or {}
    for name, client in sorted(clients.items()):
        record = records.get(name)
        if record is None or record["caps"] != client.caps_wire() or record["pools"] != list(client.pools):
            ops.append({**base, "op": "storage_service_key", "name": name, "key": make_key(random_bytes, base["now"]),
                        "caps": client.caps_wire(), "pools": list(client.pools)})
        elif not record["registered"]:
            actions.append(Action("service_client", service=name))
    return ops, actions


def volume_actions(state: ClusterState, volumes: Mapping[str, tuple[int, str]]) -> list[Action]:
    if POOL_VOLUMES not in state.storage["pools"]:
        return []
    recorded = state.storage.get("volumes") or {}
    actions = [Action("image", pool=POOL_VOLUMES, service=name, size=size, fs=fs)
               for name, (size, fs) in sorted(volumes.items()) if name not in recorded]
    for name, volume in sorted(recorded.items()):
        if volume.get("holder") and volume.get("client") and must_fence(state, name, volume["holder"]):
            actions.append(Action("fence", service=name, node=volume["holder"], client=volume["client"]))
    return actions


def must_fence(state: ClusterState, service: str, holder: str) -> bool:
    """Is `holder` holding `service`'s volume where the service should not run, and not about to let go?"""
    record = state.services.get(service)
    if record is not None and record.node == holder:
        return False
    node = state.nodes.get(holder)
    migration = record.migration if record is not None else None
    still_releasing = (node is not None and node.status == "up" and migration is not None
                       and migration.get("phase") == "releasing")
    return not still_releasing


def volume_ready(state: ClusterState, service: str, node: str) -> bool:
    """May `node` attach `service`'s volume now (pool and image made, nobody else holding it)?"""
    if not ready(state) or POOL_VOLUMES not in state.storage["pools"]:
        return False
    volume = (state.storage.get("volumes") or {}).get(service)
    return volume is not None and volume.get("created") and volume.get("holder") in (None, node)


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


def _pool_actions(state: ClusterState, pools: list[str]) -> list[Action]:
    hosts = osd_hosts(state)
    # Made once OSDs are on as many hosts as its size will be (no growing
    # right after creation); a host's reported OSDs stay counted while it is
    # lost, so a reboot never shrinks the pool and grows it back.
    if hosts < max(1, min(len(state.nodes), 3)):
        return []
    size, min_size = pool_size(hosts)
    return [Action("pool", pool=pool, size=size, min_size=min_size) for pool in pools
            if state.storage["pools"].get(pool) != {"size": size, "min_size": min_size}]
