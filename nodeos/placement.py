"""Replicated operations on services: the Monitor's decisions and the agents' reports.

Each decision op carries the deciding Monitor (`by`), the reason, and every
time value it needs (`now`, deadlines) as arguments; applying it is pure.
Decisions are recorded as events with service, node, reason and outcome.
"""

from __future__ import annotations

from typing import Any

from .catalog import Catalog, CatalogError
from .state import ClusterState, OpError, ServiceRecord, _require, register

HEALTH_STATES = ("starting", "healthy", "unhealthy", "failed", "stopped")


def _service(state: ClusterState, op: dict[str, Any]) -> ServiceRecord:
    name = _require(op, "service", str)
    record = state.services.get(name)
    if record is None:
        raise OpError(f"unknown service {name!r}")
    return record


def _up_node(state: ClusterState, op: dict[str, Any], key: str = "node") -> str:
    node = _require(op, key, str)
    if node not in state.nodes:
        raise OpError(f"unknown node {node!r}")
    return node


@register("catalog_set")
def _op_catalog_set(state: ClusterState, op: dict[str, Any]) -> dict[str, Any]:
    data = op.get("catalog")
    try:
        catalog = Catalog.from_dict(data)  # deterministic validation of the proposed catalog
    except CatalogError as exc:
        raise OpError(f"invalid catalog: {exc}") from None
    now = op["now"]
    state.catalog = catalog.to_dict()
    state.catalog_version += 1
    for spec in catalog:
        record = state.services.get(spec.name)
        if record is None or record.placement != spec.placement:
            state.services[spec.name] = ServiceRecord(spec.name, spec.placement, vip=record.vip if record else None)
    removed = sorted(set(state.services) - set(catalog.names()))
    for name in removed:
        del state.services[name]  # their hosts see them gone and stop them
    state.add_event(now, "catalog.applied", reason=op.get("reason"), outcome="ok",
                    detail=f"version {state.catalog_version}: {', '.join(catalog.names()) or 'no services'}"
                    + (f"; removed {', '.join(removed)}" if removed else ""))
    return {"version": state.catalog_version}


@register("vip_assign")
def _op_vip_assign(state: ClusterState, op: dict[str, Any]) -> dict[str, Any]:
    record = _service(state, op)
    vip = _require(op, "vip", str)
    taken = {r.vip for r in state.services.values() if r.vip and r is not record}
    if vip in taken or vip in {n.ip for n in state.nodes.values()}:
        raise OpError(f"VIP {vip} is already in use")
    if record.vip is None:
        record.vip = vip
        state.add_event(op["now"], "vip.assigned", service=record.name, detail=vip, reason=op.get("reason"))
    return {"vip": record.vip}


@register("place")
def _op_place(state: ClusterState, op: dict[str, Any]) -> dict[str, Any]:
    """First placement of a singleton that runs nowhere."""
    record = _service(state, op)
    node = _up_node(state, op)
    if record.node is not None:
        return {"already": record.node}
    record.node = node
    record.instance(node)
    state.add_event(op["now"], "service.placed", service=record.name, node=node, reason=op.get("reason"), outcome="ordered",
                    detail=f"by {op.get('by')}")
    return {}


@register("restart")
def _op_restart(state: ClusterState, op: dict[str, Any]) -> dict[str, Any]:
    record = _service(state, op)
    node = _up_node(state, op)
    backoff_until = _require(op, "backoff_until", (int, float))
    counts = bool(op.get("counts", True))  # an operator's restart does not count as a failure
    instance = record.instance(node)
    instance.generation += 1
    if counts:
        instance.restarts += 1
    instance.backoff_until = float(backoff_until)
    state.add_event(op["now"], "service.restart", service=record.name, node=node, reason=op.get("reason"), outcome="ordered",
                    detail=f"restart {instance.restarts}, generation {instance.generation}, by {op.get('by')}")
    return {"generation": instance.generation}


@register("migrate")
def _op_migrate(state: ClusterState, op: dict[str, Any]) -> dict[str, Any]:
    """Move a singleton. If the source may still run it, it must release first."""
    record = _service(state, op)
    target = _up_node(state, op, "to")
    source = record.node
    if source == target:
        raise OpError(f"{record.name} already runs on {target}")
    source_released = bool(op.get("source_released", False))
    record.node = target
    record.migration = {"from": source, "to": target, "reason": op.get("reason"), "started": op["now"],
                        "phase": "starting" if source is None or source_released else "releasing", "by": op.get("by"),
                        "seq": state.applied}
    instance = record.instance(target)
    instance.restarts, instance.backoff_until = 0, 0.0
    state.add_event(op["now"], "service.migrating", service=record.name, node=target, reason=op.get("reason"), outcome="ordered",
                    detail=f"from {source} ({record.migration['phase']}), by {op.get('by')}")
    return {}


@register("migration_released")
def _op_migration_released(state: ClusterState, op: dict[str, Any]) -> dict[str, Any]:
    record = _service(state, op)
    if record.migration is None or record.migration["phase"] != "releasing":
        return {"already": True}
    record.migration["phase"] = "starting"
    state.add_event(op["now"], "service.released", service=record.name, node=record.migration["from"], reason=op.get("reason"),
                    outcome="ok", detail=f"by {op.get('by')}")
    return {}


@register("migration_done")
def _op_migration_done(state: ClusterState, op: dict[str, Any]) -> dict[str, Any]:
    record = _service(state, op)
    if record.migration is None:
        return {"already": True}
    migration, record.migration = record.migration, None
    took = op["now"] - migration["started"]
    state.add_event(op["now"], "service.migrated", service=record.name, node=migration["to"], reason=migration.get("reason"),
                    outcome="ok", detail=f"from {migration['from']} in {took:.2f}s, completed by {op.get('by')}")
    return {}


@register("reset_restarts")
def _op_reset_restarts(state: ClusterState, op: dict[str, Any]) -> dict[str, Any]:
    record = _service(state, op)
    node = _require(op, "node", str)
    if node in record.instances:
        record.instances[node].restarts = 0
    return {}


@register("report_health")
def _op_report_health(state: ClusterState, op: dict[str, Any]) -> dict[str, Any]:
    """An agent reports a change of its own instance's health."""
    record = _service(state, op)
    node = _up_node(state, op)
    health = _require(op, "state", str)
    if health not in HEALTH_STATES:
        raise OpError(f"state must be one of {HEALTH_STATES}")
    generation = op.get("generation", 0)
    detail = str(op.get("detail", ""))[:200]
    previous = record.health.get(node, {}).get("state")
    # "seq" (the log position) orders reports against decisions without trusting clocks.
    record.health[node] = {"state": health, "since": op["now"], "generation": generation, "detail": detail, "seq": state.applied}
    if previous != health and health in ("unhealthy", "failed"):
        state.add_event(op["now"], f"service.{health}", service=record.name, node=node, detail=detail)
    elif health == "healthy" and previous in ("unhealthy", "failed", "starting") and _recovering(record, node):
        state.add_event(op["now"], "service.recovered", service=record.name, node=node, outcome="ok",
                        detail=f"generation {generation}")
    return {}


def _recovering(record: ServiceRecord, node: str) -> bool:
    """Healthy after a restart or a move (not the first start of a fresh service)."""
    instance = record.instances.get(node)
    return bool(instance and (instance.generation > 0 or instance.restarts > 0)) or record.migration is not None


@register("probe")
def _op_probe(state: ClusterState, op: dict[str, Any]) -> dict[str, Any]:
    record = _service(state, op)
    ok = bool(op.get("ok"))
    if record.probe.get("ok") != ok:
        record.probe = {"ok": ok, "since": op["now"], "detail": str(op.get("detail", ""))[:200]}
        kind = "vip.probe_failed" if not ok else "vip.probe_ok"
        state.add_event(op["now"], kind, service=record.name, detail=f"{record.vip}: {record.probe['detail']}")
    return {}
