"""The replicated ClusterState: a pure, deterministic model.

Every change is an *operation*, a plain dict `{"op": NAME, "now": T, ...}`
applied in log order on every node. Time (`now`, the leader's wall clock when
it proposed the op) and any randomness are fields of the op; nothing here
reads a clock, a random source or the host. A bad op never raises: it is
answered with `{"ok": False, "error": ...}` on every node alike and changes
nothing, so one malformed proposal cannot stop the log.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

MAX_EVENTS = 1000
NODE_STATUSES = ("up", "lost")


class OpError(ValueError):
    pass


@dataclass
class NodeRecord:
    node_id: str
    raft_addr: str
    ip: str
    status: str = "up"
    joined_at: float = 0.0
    status_since: float = 0.0
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass
class Instance:
    """Desired state of a service's instance on one node (restart bookkeeping)."""

    generation: int = 0  # bumped to ask the hosting agent for a restart in place
    restarts: int = 0  # restarts in place since the instance was last healthy long enough
    backoff_until: float = 0.0  # cluster time before which no new restart is ordered


@dataclass
class ServiceRecord:
    """Desired and observed state of one catalog service (see placement.py, monitor.py)."""

    name: str
    placement: str  # "singleton" | "every-node"
    node: str | None = None  # singleton: where it should run
    vip: str | None = None
    migration: dict[str, Any] | None = None  # {"from", "to", "reason", "started", "phase": releasing|starting}
    instances: dict[str, Instance] = field(default_factory=dict)  # node -> restart bookkeeping
    # node -> {"state": starting|healthy|unhealthy|failed|stopped, "since": t, "generation": g, "detail": str}
    health: dict[str, dict[str, Any]] = field(default_factory=dict)
    probe: dict[str, Any] = field(default_factory=dict)  # Monitor's probe through the VIP: {"ok", "since"}

    def instance(self, node: str) -> Instance:
        return self.instances.setdefault(node, Instance())


class ClusterState:
    def __init__(self) -> None:
        self.cluster_id: str | None = None
        self.group_id: str | None = None
        self.formed_at: float | None = None
        self.time: float = 0.0  # cluster time of the last applied op
        self.heartbeat_seq: int = 0
        self.monitor: str | None = None  # node id of the leader that wrote the last heartbeat
        self.nodes: dict[str, NodeRecord] = {}
        self.catalog: dict[str, Any] | None = None
        self.catalog_version: int = 0
        self.services: dict[str, ServiceRecord] = {}
        self.events: list[dict[str, Any]] = []
        self.event_seq: int = 0
        self.applied: int = 0

    # -- entry point -------------------------------------------------------
    def apply(self, op: Any) -> dict[str, Any]:
        try:
            if not isinstance(op, dict):
                raise OpError("operation must be a mapping")
            name = op.get("op")
            handler = _HANDLERS.get(name) if isinstance(name, str) else None
            if handler is None:
                raise OpError(f"unknown operation {name!r}")
            now = op.get("now")
            if not isinstance(now, (int, float)) or isinstance(now, bool):
                raise OpError("operation needs a numeric 'now'")
            result = handler(self, op) or {}
            self.time = max(self.time, float(now))  # only a valid op moves cluster time
            self.applied += 1
            return {"ok": True, **result}
        except OpError as exc:
            return {"ok": False, "error": str(exc)}

    # -- helpers for handlers ---------------------------------------------
    def add_event(self, now: float, kind: str, **fields: Any) -> None:
        self.event_seq += 1
        record = {"seq": self.event_seq, "ts": now, "kind": kind}
        record.update({k: v for k, v in fields.items() if v is not None})
        self.events.append(record)
        if len(self.events) > MAX_EVENTS:
            del self.events[: len(self.events) - MAX_EVENTS]

    def up_nodes(self) -> list[str]:
        return sorted(n for n, rec in self.nodes.items() if rec.status == "up")

    def snapshot(self, with_events: bool = True) -> "ClusterState":
        """A private copy for readers outside the apply lock."""
        if with_events:
            return copy.deepcopy(self)
        events, self.events = self.events, []
        try:
            return copy.deepcopy(self)
        finally:
            self.events = events

    def to_dict(self) -> dict[str, Any]:
        return {
            "cluster_id": self.cluster_id,
            "group_id": self.group_id,
            "formed_at": self.formed_at,
            "time": self.time,
            "heartbeat_seq": self.heartbeat_seq,
            "monitor": self.monitor,
            "nodes": {n: vars(r).copy() for n, r in sorted(self.nodes.items())},
            "catalog_version": self.catalog_version,
            "services": {s: _service_dict(r) for s, r in sorted(self.services.items())},
        }


def _service_dict(record: ServiceRecord) -> dict[str, Any]:
    data = copy.deepcopy(vars(record))
    data["instances"] = {n: vars(i).copy() for n, i in sorted(record.instances.items())}
    return data


def _require(op: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = op.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise OpError(f"field '{key}' missing or of the wrong type")
    return value


# -- cluster and node operations --------------------------------------------

def _op_init_cluster(state: ClusterState, op: dict[str, Any]) -> dict[str, Any]:
    group_id = _require(op, "group_id", str)
    cluster_id = _require(op, "cluster_id", str)
    if state.group_id is not None:
        return {"already": True}  # idempotent: every new leader proposes it once
    state.group_id, state.cluster_id, state.formed_at = group_id, cluster_id, op["now"]
    state.add_event(op["now"], "cluster.formed", detail=f"group {group_id}")
    return {}


def _op_heartbeat(state: ClusterState, op: dict[str, Any]) -> dict[str, Any]:
    leader = _require(op, "leader", str)
    if state.monitor != leader:
        state.add_event(op["now"], "monitor.elected", node=leader, detail=f"previous {state.monitor}")
    state.monitor = leader
    state.heartbeat_seq += 1
    return {"seq": state.heartbeat_seq}


def _op_node_join(state: ClusterState, op: dict[str, Any]) -> dict[str, Any]:
    node_id = _require(op, "node", str)
    raft_addr = _require(op, "raft_addr", str)
    ip = _require(op, "ip", str)
    facts = op.get("facts") or {}
    if not isinstance(facts, dict):
        raise OpError("field 'facts' must be a mapping")
    now = op["now"]
    record = state.nodes.get(node_id)
    if record is None:
        state.nodes[node_id] = NodeRecord(node_id, raft_addr, ip, "up", now, now, dict(facts))
        state.add_event(now, "node.joined", node=node_id, detail=raft_addr)
        return {"new": True}
    record.raft_addr, record.ip, record.facts = raft_addr, ip, dict(facts)
    if record.status != "up":
        record.status, record.status_since = "up", now
        state.add_event(now, "node.back", node=node_id)
    return {"new": False}


def _op_node_status(state: ClusterState, op: dict[str, Any]) -> dict[str, Any]:
    node_id = _require(op, "node", str)
    status = _require(op, "status", str)
    if status not in NODE_STATUSES:
        raise OpError(f"status must be one of {NODE_STATUSES}")
    record = state.nodes.get(node_id)
    if record is None:
        raise OpError(f"unknown node {node_id}")
    if record.status != status:
        record.status, record.status_since = status, op["now"]
        state.add_event(op["now"], f"node.{status}", node=node_id, reason=op.get("reason"))
    return {}


def _op_event(state: ClusterState, op: dict[str, Any]) -> dict[str, Any]:
    kind = _require(op, "kind", str)
    fields = {k: op.get(k) for k in ("node", "service", "reason", "outcome", "detail")}
    state.add_event(op["now"], kind, **fields)
    return {}


Handler = Callable[[ClusterState, dict[str, Any]], dict[str, Any] | None]
_HANDLERS: dict[str, Handler] = {
    "init_cluster": _op_init_cluster,
    "heartbeat": _op_heartbeat,
    "node_join": _op_node_join,
    "node_status": _op_node_status,
    "event": _op_event,
}


def register(name: str) -> Callable[[Handler], Handler]:
    """Register a replicated operation handler (used by the services model)."""

    def wrap(func: Handler) -> Handler:
        _HANDLERS[name] = func
        return func

    return wrap
