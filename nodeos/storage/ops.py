"""Ceph's part of the replicated state: the operations that change it, pure.

`state.storage` (a plain dict, so Raft snapshots stay simple) holds:

* `fsid`, `public_network`, `created_at`;
* `keys`: the cephx keys (`CephKeys.to_wire()`), never shown (state.to_dict drops them);
* `initial_mons`: node -> IP of the first monmap (those mons mkfs from it);
* `mons`: node -> IP of the mons that should run now (the desired monmap);
* `mon_removing`: nodes dropped from `mons` whose `ceph mon remove` is still due;
* `registered`: nodes whose client key the mons know (keys of later nodes are imported);
* `pools`: name -> {"size", "min_size"} as last applied to Ceph;
* `osds`: node -> {"ids", "taken", "skipped"} as the node's OSD launcher reported;
* `health`: {"status", "line", "since", "checks"} as the Monitor last read it;
* `service_clients`: name -> {"entity", "caps", "pools", "registered"}: the cephx
  users of the cloud's services (clients.py); their keys are in `keys["services"]`,
  hidden with the other keys; `registered` once the mons have the key with these caps;
* `volumes`: service -> {"image", "size", "fs", "created", "holder", "client",
  "attached_at", "fenced"}: the RBD image of a singleton with a volume, the
  node that attached it and its client instance address (what a fence
  blocklists), and every address fenced so far.

A volume's rule (DESIGN.md invariant 3): a node attaches only while
`holder` is empty or itself, records its client address (`volume_attached`,
committed) before it mounts or writes, and a holder is cleared only by its
own clean detach (`volume_detached`) or by the Monitor's fence
(`volume_fenced`, recorded after Ceph blocklisted the address).

Monitor ops carry a `term` (the state refuses them from a deposed Monitor);
`osd_report` comes from a node's agent and carries none.
"""

from __future__ import annotations

from typing import Any

from nodeos.cluster.state import ClusterState, OpError, _require, register

from .clients import ServiceClient
from .keys import CephKeys, is_valid_key
from .mons import initial_mons

POOL_VOLUMES = "nodeos-volumes"


def ready(state: ClusterState) -> bool:
    return bool(state.storage.get("fsid"))


def _storage(state: ClusterState) -> dict[str, Any]:
    if not ready(state):
        raise OpError("storage is not initialized yet")
    return state.storage


def _node_ip(state: ClusterState, node: str) -> str:
    record = state.nodes.get(node)
    if record is None:
        raise OpError(f"unknown node {node!r}")
    return record.ip


@register("storage_init")
def _op_storage_init(state: ClusterState, op: dict[str, Any]) -> dict[str, Any]:
    if ready(state):
        raise OpError("storage is already initialized")
    fsid = _require(op, "fsid", str)
    network = _require(op, "public_network", str)
    try:
        keys = CephKeys.from_wire(op.get("keys"))
    except ValueError as exc:
        raise OpError(f"field 'keys': {exc}") from None
    mons = _require(op, "mons", list)
    if not mons or any(not isinstance(m, str) for m in mons) or sorted(set(mons)) != initial_mons(mons):
        raise OpError("field 'mons' must be the initial mon nodes (sorted, distinct)")
    placed = {m: _node_ip(state, m) for m in mons}
    state.storage = {"fsid": fsid, "public_network": network, "created_at": op["now"], "keys": keys.to_wire(),
                     "initial_mons": dict(placed), "mons": dict(placed), "mon_removing": [],
                     "registered": sorted(keys.clients), "pools": {}, "osds": {}, "health": {}, "volumes": {},
                     "service_clients": {}}
    state.add_event(op["now"], "storage.initialized", mons=sorted(placed), by=op.get("by"),
                    detail=f"Ceph fsid {fsid}; mons on {', '.join(sorted(placed))}")
    return {"mons": sorted(placed)}


@register("storage_node_key")
def _op_storage_node_key(state: ClusterState, op: dict[str, Any]) -> dict[str, Any]:
    storage = _storage(state)
    node = _require(op, "node", str)
    key = _require(op, "key", str)
    _node_ip(state, node)
    if not is_valid_key(key):
        raise OpError("field 'key' is not a cephx key")
    clients = storage["keys"]["clients"]
    if node not in clients:
        clients[node] = key
    return {}


@register("storage_node_registered")
def _op_storage_node_registered(state: ClusterState, op: dict[str, Any]) -> dict[str, Any]:
    storage = _storage(state)
    node = _require(op, "node", str)
    if node not in storage["keys"]["clients"]:
        raise OpError(f"node {node} has no client key")
    if node not in storage["registered"]:
        storage["registered"] = sorted([*storage["registered"], node])
    return {}


def service_key(state: ClusterState, name: str) -> str | None:
    """The cephx key of a service's client once the mons know it with its current caps, else None."""
    record = (state.storage.get("service_clients") or {}).get(name)
    if not record or not record.get("registered"):
        return None
    return ((state.storage.get("keys") or {}).get("services") or {}).get(name)


@register("storage_service_key")
def _op_storage_service_key(state: ClusterState, op: dict[str, Any]) -> dict[str, Any]:
    """A service's client: its key (made once, never replaced) and its caps (a change re-registers it)."""
    storage = _storage(state)
    key = _require(op, "key", str)
    caps = _require(op, "caps", dict)
    pools = _require(op, "pools", list)
    try:
        client = ServiceClient(_require(op, "name", str), {str(k): str(v) for k, v in caps.items()},
                               tuple(str(p) for p in pools))
    except ValueError as exc:
        raise OpError(str(exc)) from None
    if not is_valid_key(key):
        raise OpError("field 'key' is not a cephx key")  # never echo it
    keys = storage["keys"].setdefault("services", {})
    records = storage.setdefault("service_clients", {})
    before = records.get(client.name)
    wanted = {"entity": client.entity, "caps": client.caps_wire(), "pools": list(client.pools)}
    if before is not None and {k: before[k] for k in wanted} == wanted:
        return {"already": True}
    keys.setdefault(client.name, key)
    records[client.name] = {**wanted, "registered": False}
    state.add_event(op["now"], "storage.client_key", client=client.entity, by=op.get("by"),
                    detail=f"{client.entity}: caps " + "; ".join(f"{k} '{v}'" for k, v in wanted["caps"].items())
                    + (" (changed)" if before is not None else ""))
    return {}


@register("storage_service_registered")
def _op_storage_service_registered(state: ClusterState, op: dict[str, Any]) -> dict[str, Any]:
    storage = _storage(state)
    name = _require(op, "name", str)
    caps = _require(op, "caps", dict)
    record = (storage.get("service_clients") or {}).get(name)
    if record is None:
        raise OpError(f"no service client {name!r}")
    if record["caps"] != caps:
        return {"stale": True}  # imported with caps since changed: the next import follows
    if record["registered"]:
        return {"already": True}
    record["registered"] = True
    state.add_event(op["now"], "storage.client_registered", client=record["entity"], by=op.get("by"),
                    detail=f"{record['entity']} known to the mons")
    return {}


@register("mon_add")
def _op_mon_add(state: ClusterState, op: dict[str, Any]) -> dict[str, Any]:
    storage = _storage(state)
    node = _require(op, "node", str)
    ip = _node_ip(state, node)
    if state.nodes[node].status != "up":
        raise OpError(f"node {node} is not up")
    if node in storage["mons"]:
        raise OpError(f"node {node} already runs a mon")
    storage["mons"][node] = ip
    state.add_event(op["now"], "storage.mon_added", node=node, reason=op.get("reason"), by=op.get("by"),
                    detail=f"mons now {', '.join(sorted(storage['mons']))}")
    return {}


@register("mon_remove")
def _op_mon_remove(state: ClusterState, op: dict[str, Any]) -> dict[str, Any]:
    storage = _storage(state)
    node = _require(op, "node", str)
    if node not in storage["mons"]:
        raise OpError(f"node {node} runs no mon")
    if len(storage["mons"]) <= 1:
        raise OpError("the last mon is never removed")
    del storage["mons"][node]
    storage["mon_removing"] = sorted({*storage["mon_removing"], node})
    state.add_event(op["now"], "storage.mon_removing", node=node, reason=op.get("reason"), by=op.get("by"),
                    detail=f"mons now {', '.join(sorted(storage['mons']))}; `ceph mon remove` follows")
    return {}


@register("mon_removed")
def _op_mon_removed(state: ClusterState, op: dict[str, Any]) -> dict[str, Any]:
    storage = _storage(state)
    node = _require(op, "node", str)
    if node not in storage["mon_removing"]:
        raise OpError(f"no removal of the mon on {node} is due")
    storage["mon_removing"] = [n for n in storage["mon_removing"] if n != node]
    state.add_event(op["now"], "storage.mon_removed", node=node, detail=op.get("detail"), by=op.get("by"))
    return {}


@register("pool_set")
def _op_pool_set(state: ClusterState, op: dict[str, Any]) -> dict[str, Any]:
    storage = _storage(state)
    name = _require(op, "pool", str)
    size = _require(op, "size", int)
    min_size = _require(op, "min_size", int)
    if not 1 <= min_size <= size <= 10:
        raise OpError("pool sizes must satisfy 1 <= min_size <= size <= 10")
    before = storage["pools"].get(name)
    after = {"size": size, "min_size": min_size}
    if before == after:
        return {"already": True}  # the Monitor may record an idempotent action twice
    storage["pools"][name] = after
    state.add_event(op["now"], "storage.pool_created" if before is None else "storage.pool_resized", pool=name,
                    by=op.get("by"), detail=f"{name}: size {size}, min_size {min_size}"
                    + (f" (was {before['size']}/{before['min_size']})" if before else ""))
    return {}


@register("osd_report")
def _op_osd_report(state: ClusterState, op: dict[str, Any]) -> dict[str, Any]:
    storage = _storage(state)
    node = _require(op, "node", str)
    _node_ip(state, node)
    ids = _require(op, "ids", list)
    taken = _require(op, "taken", list)
    skipped = _require(op, "skipped", dict)
    if any(not isinstance(i, int) or isinstance(i, bool) for i in ids):
        raise OpError("field 'ids' must list OSD ids")
    report = {"ids": sorted(ids), "taken": [str(t) for t in taken],
              "skipped": {str(k): str(v) for k, v in skipped.items()}}
    if storage["osds"].get(node) != report:
        storage["osds"][node] = report
        skipped_text = "; ".join(f"skipped {d}: {why}" for d, why in sorted(report["skipped"].items()))
        state.add_event(op["now"], "storage.osds", node=node, ids=report["ids"], taken=report["taken"],
                        skipped=report["skipped"] or None,
                        detail=f"OSDs {', '.join(map(str, report['ids']))} on {', '.join(report['taken'])}"
                        + (f"; {skipped_text}" if skipped_text else ""))
    return {}


@register("storage_health")
def _op_storage_health(state: ClusterState, op: dict[str, Any]) -> dict[str, Any]:
    storage = _storage(state)
    status = _require(op, "status", str)
    line = _require(op, "line", str)
    checks = op.get("checks") or []
    if not isinstance(checks, list):
        raise OpError("field 'checks' must be a list")
    before = storage.get("health") or {}
    since = before.get("since", op["now"]) if before.get("status") == status else op["now"]
    storage["health"] = {"status": status, "line": line, "since": since, "checks": [str(c) for c in checks][:20]}
    if before.get("status") != status:
        state.add_event(op["now"], "storage.health", status=status, previous=before.get("status"),
                        checks=storage["health"]["checks"] or None,
                        detail=line + ("; " + "; ".join(storage["health"]["checks"]) if storage["health"]["checks"] else ""))
    return {}


def volume_image(service: str) -> str:
    """The RBD image of a service's volume (in POOL_VOLUMES)."""
    return f"svc-{service}"


def _volume(state: ClusterState, op: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    service = _require(op, "service", str)
    volume = _storage(state).setdefault("volumes", {}).get(service)
    if volume is None:
        raise OpError(f"service {service} has no volume")
    return service, volume


@register("volume_created")
def _op_volume_created(state: ClusterState, op: dict[str, Any]) -> dict[str, Any]:
    storage = _storage(state)
    service = _require(op, "service", str)
    size = _require(op, "size", int)
    fs = _require(op, "fs", str)
    volumes = storage.setdefault("volumes", {})
    if service in volumes:
        return {"already": True}
    volumes[service] = {"image": volume_image(service), "size": size, "fs": fs, "created": True, "holder": None,
                        "client": None, "attached_at": None, "fenced": []}
    state.add_event(op["now"], "storage.volume_created", service=service, by=op.get("by"),
                    detail=f"{POOL_VOLUMES}/{volume_image(service)}, {size >> 20} MiB, {fs}")
    return {}


@register("volume_attached")
def _op_volume_attached(state: ClusterState, op: dict[str, Any]) -> dict[str, Any]:
    service, volume = _volume(state, op)
    node = _require(op, "node", str)
    client = _require(op, "client", str)
    record = state.services.get(service)
    if record is None or record.node != node:
        raise OpError(f"{service} is not placed on {node}: it must not attach its volume")
    if volume["holder"] not in (None, node):
        raise OpError(f"{service}'s volume is held by {volume['holder']} ({volume['client']}) until it is fenced")
    if client in volume["fenced"]:
        raise OpError(f"client {client} was fenced")
    fenced_own = _fenced_own(op, client)
    if (volume["holder"], volume["client"]) != (node, client):
        volume.update(holder=node, client=client, attached_at=op["now"])
        volume["fenced"] = [*volume["fenced"], *(a for a in fenced_own if a not in volume["fenced"])][-50:]
        before = f", after blocklisting its own earlier {', '.join(fenced_own)}" if fenced_own else ""
        state.add_event(op["now"], "storage.volume_attached", service=service, node=node, client=client,
                        fenced_own=fenced_own or None, detail=f"{volume['image']} attached read-write by {client}{before}")
    return {}


def _fenced_own(op: dict[str, Any], client: str) -> list[str]:
    """The node's dead earlier clients it blocklisted before attaching (volumes.fence_own_stale); optional."""
    fenced = op.get("fenced_own") or []
    if not isinstance(fenced, list) or any(not isinstance(a, str) for a in fenced) or client in fenced:
        raise OpError("field 'fenced_own' must list client addresses other than the new client")
    return fenced[:10]


@register("volume_detached")
def _op_volume_detached(state: ClusterState, op: dict[str, Any]) -> dict[str, Any]:
    service, volume = _volume(state, op)
    node = _require(op, "node", str)
    client = op.get("client")
    if volume["holder"] != node or (client is not None and volume["client"] != client):
        return {"already": True}  # a late report of an older attachment
    state.add_event(op["now"], "storage.volume_detached", service=service, node=node, client=volume["client"],
                    detail=f"{volume['image']} unmounted and detached cleanly")
    volume.update(holder=None, client=None, attached_at=None)
    return {}


@register("volume_fenced")
def _op_volume_fenced(state: ClusterState, op: dict[str, Any]) -> dict[str, Any]:
    service, volume = _volume(state, op)
    client = _require(op, "client", str)
    expire = _require(op, "expire", int)
    if client in volume["fenced"] and volume["client"] != client:
        return {"already": True}  # recorded before (an action the Monitor ran twice)
    if client not in volume["fenced"]:
        volume["fenced"] = [*volume["fenced"], client][-50:]
    holder = volume["holder"]
    if volume["client"] == client:
        volume.update(holder=None, client=None, attached_at=None)
    state.add_event(op["now"], "storage.volume_fenced", service=service, node=holder, client=client, by=op.get("by"),
                    reason=op.get("reason"),
                    detail=f"Ceph blocklisted {client} for {expire // 86400} days before {volume['image']} "
                           "is attached elsewhere")
    return {}
