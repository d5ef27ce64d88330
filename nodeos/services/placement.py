"""Replicated operations on services: the Monitor's decisions and the agents' reports.

Each decision op carries the deciding Monitor (`by`), the reason, and every
time value it needs (`now`, deadlines) as arguments; applying it is pure.
Decisions are recorded as events with service, node, reason and outcome.

A singleton never starts on its node while another node may still run it.
Every move (and every catalog change that re-creates a singleton's record)
records the nodes that may hold it in `migration["release"]`; overlapping
moves accumulate that set. Each of them must release it, by reporting
`stopped` after the decision (log position `seq`) or by being lost (it fenced
itself), before `migration_released` lets the target start; the ops check
this against the state themselves, so a late or stale decision cannot skip it.
"""

from __future__ import annotations

from typing import Any

from .catalog import Catalog, CatalogError
from nodeos.cluster.split import OPERATOR_CATALOG
from nodeos.cluster.state import ClusterState, OpError, ServiceRecord, _require, register

# slow: answers time out while the process lives and listens (busy): reported, never repaired.
HEALTH_STATES = ("starting", "healthy", "slow", "unhealthy", "failed", "stopped")


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


def _singleton(state: ClusterState, op: dict[str, Any]) -> ServiceRecord:
    record = _service(state, op)
    if record.placement != "singleton":
        raise OpError(f"{record.name} runs on every node; only singletons are placed or moved")
    return record


# -- who must release a singleton --------------------------------------------

def release_set(migration: dict[str, Any]) -> list[str]:
    """The nodes a migration waits for (records from before the set existed name one source)."""
    return list(migration.get("release", [migration["from"]] if migration.get("from") else []))


def _is_up(state: ClusterState, node: str) -> bool:
    record = state.nodes.get(node)
    return record is not None and record.status == "up"


def _stopped_since(record: ServiceRecord, node: str, seq: int) -> bool:
    """The node reported `stopped` after the decision at `seq`, from a state that showed it.

    `seen` (the log position the reporting node acted on) rules out a report
    it sent before it knew of the decision that merely committed later: such a
    node may have started the service again in between.
    """
    report = record.health.get(node, {})
    return report.get("state") == "stopped" and report.get("seq", -1) > seq and report.get("seen", seq + 1) > seq


def release_pending(state: ClusterState, record: ServiceRecord) -> list[str]:
    """Nodes that must still release the singleton before its target may start it.

    Released: reported `stopped` after the decision, or not up (a lost node
    fenced itself: the liveness check waits longer than the fence lease).
    """
    migration = record.migration
    if migration is None or migration["phase"] != "releasing":
        return []
    return [n for n in release_set(migration) if _is_up(state, n) and not _stopped_since(record, n, migration["seq"])]


def _may_hold(state: ClusterState, record: ServiceRecord) -> set[str]:
    """Nodes that may run the service right now, by what the state ordered so far."""
    if record.placement != "singleton":
        return set(state.nodes)
    holders = set(release_pending(state, record))
    if record.node is not None:
        holders.add(record.node)  # its host, or a target that may have started it
    return holders


def _release_wait(state: ClusterState, record: ServiceRecord, holders: set[str], now: float, reason: Any, by: Any,
                  source: str | None, target: str | None) -> list[str]:
    """Start a migration record that waits for `holders` (the up ones) to release."""
    release = sorted(n for n in holders if _is_up(state, n))
    record.migration = {"from": source, "to": target, "reason": reason, "started": now, "by": by, "seq": state.applied,
                        "phase": "releasing" if release else "starting", "release": release}
    return release


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
    state.catalog_source = OPERATOR_CATALOG if op.get("source") == OPERATOR_CATALOG else "config"
    for spec in catalog:
        record = state.services.get(spec.name)
        if record is None or record.placement != spec.placement:
            holders = _may_hold(state, record) if record is not None else set(state.retired.get(spec.name, []))
            state.services[spec.name] = _fresh_record(state, spec.name, spec.placement, record, holders, op)
        state.retired.pop(spec.name, None)
    removed = sorted(set(state.services) - set(catalog.names()))
    for name in removed:
        # Their hosts see them gone and stop them, but report nothing: remember
        # who may still run them, in case they come back as a singleton.
        state.retired[name] = sorted(_may_hold(state, state.services.pop(name)))
    state.add_event(now, "catalog.applied", reason=op.get("reason"), outcome="ok",
                    detail=f"version {state.catalog_version}: {', '.join(catalog.names()) or 'no services'}"
                    + (f"; removed {', '.join(removed)}" if removed else ""))
    return {"version": state.catalog_version}


def _fresh_record(state: ClusterState, name: str, placement: str, old: ServiceRecord | None, holders: set[str],
                  op: dict[str, Any]) -> ServiceRecord:
    record = ServiceRecord(name, placement, vip=old.vip if old else None)
    if placement == "singleton" and any(_is_up(state, n) for n in holders):
        # E.g. it ran on every node, or was removed and re-added while running:
        # wherever it is placed, it starts only once all of them stopped it.
        release = _release_wait(state, record, holders, op["now"], "catalog change", op.get("by"), None, None)
        state.add_event(op["now"], "service.migrating", service=name, reason="catalog change", outcome="ordered",
                        detail=f"may still run on {', '.join(release)}: they release it before it starts anywhere")
    return record


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
    """First placement of a singleton that runs nowhere (it may still wait for releases)."""
    record = _singleton(state, op)
    node = _up_node(state, op)
    if record.node is not None:
        return {"already": record.node}
    record.node = node
    record.instance(node)
    waiting = release_pending(state, record)
    if record.migration is not None:
        record.migration["to"] = node  # a catalog change's release wait: it now has a target
    state.add_event(op["now"], "service.placed", service=record.name, node=node, reason=op.get("reason"), outcome="ordered",
                    detail=(f"waits for {', '.join(waiting)} to release it; " if waiting else "") + f"by {op.get('by')}")
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


@register("wait_dependency")
def _op_wait_dependency(state: ClusterState, op: dict[str, Any]) -> dict[str, Any]:
    """Hold (or stop holding) restarts of an instance that fails because a dependency is down."""
    record = _service(state, op)
    node = _up_node(state, op)
    waiting = op.get("waiting_for")
    if not isinstance(waiting, list) or not all(isinstance(d, str) for d in waiting):
        raise OpError("field 'waiting_for' must be a list of service names")
    instance = record.instance(node)
    instance.waiting_for = tuple(waiting)
    if "backoff_until" in op:
        instance.backoff_until = float(_require(op, "backoff_until", (int, float)))
    kind = "service.waiting" if waiting else "service.dependency_back"
    state.add_event(op["now"], kind, service=record.name, node=node, reason=op.get("reason"),
                    outcome="held" if waiting else None, detail=f"by {op.get('by')}")
    return {}


@register("migrate")
def _op_migrate(state: ClusterState, op: dict[str, Any]) -> dict[str, Any]:
    """Move a singleton. Every up node that may still run it must release it first.

    A move during a move keeps the previous one's nodes that have not released
    yet, and adds the node it was placed on (the previous target may have
    started it). The target itself is in the set when it may still run an
    older instance: it stops that one before starting afresh.
    """
    record = _singleton(state, op)
    target = _up_node(state, op, "to")
    source = record.node
    if source == target:
        raise OpError(f"{record.name} already runs on {target}")
    previous = record.migration
    # For display: where it last ran (a move still releasing never started on its target).
    shown = (previous.get("from") if previous and previous["phase"] == "releasing" else None) or source
    holders = _may_hold(state, record)
    record.node = target
    release = _release_wait(state, record, holders, op["now"], op.get("reason"), op.get("by"), shown, target)
    instance = record.instance(target)
    instance.restarts, instance.backoff_until = 0, 0.0
    waits = f"; waits for {', '.join(release)} to release it" if release else ""
    state.add_event(op["now"], "service.migrating", service=record.name, node=target, reason=op.get("reason"), outcome="ordered",
                    detail=f"from {shown} ({record.migration['phase']}{waits}), by {op.get('by')}")
    return {}


@register("migration_released")
def _op_migration_released(state: ClusterState, op: dict[str, Any]) -> dict[str, Any]:
    record = _service(state, op)
    migration = record.migration
    if migration is None or migration["phase"] != "releasing":
        return {"already": True}
    pending = release_pending(state, record)
    if pending:  # checked here too: a late or stale decision must not let the target start early
        raise OpError(f"{record.name}: {', '.join(pending)} must still release it")
    nodes = release_set(migration)
    how = [f"{n} {'stopped it' if _stopped_since(record, n, migration['seq']) else 'lost (fenced)'}" for n in nodes]
    migration["phase"] = "starting"
    state.add_event(op["now"], "service.released", service=record.name, node=", ".join(nodes) or None, reason=op.get("reason"),
                    outcome="ok", detail=f"{'; '.join(how) or 'nobody held it'}; by {op.get('by')}")
    return {}


@register("migration_done")
def _op_migration_done(state: ClusterState, op: dict[str, Any]) -> dict[str, Any]:
    record = _service(state, op)
    migration = record.migration
    if migration is None:
        return {"already": True}
    target = migration["to"]
    if migration["phase"] != "starting" or target is None or not _healthy_since(record, target, migration["seq"]):
        raise OpError(f"{record.name} has not started healthy on {target} since the move")  # a stale decision
    record.migration = None
    took = op["now"] - migration["started"]
    state.add_event(op["now"], "service.migrated", service=record.name, node=migration["to"], reason=migration.get("reason"),
                    outcome="ok", detail=f"from {migration['from'] or 'a catalog change'} in {took:.2f}s, completed by {op.get('by')}")
    return {}


def _healthy_since(record: ServiceRecord, node: str, seq: int) -> bool:
    report = record.health.get(node, {})
    return report.get("state") == "healthy" and report.get("seq", -1) > seq


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
    seen = op.get("seen")
    if isinstance(seen, int) and not isinstance(seen, bool):
        record.health[node]["seen"] = seen
    if op.get("stuck") is True:  # its old process survived SIGKILL: the Monitor moves it rather than restart
        record.health[node]["stuck"] = True
    if previous != health and health in ("unhealthy", "failed", "slow"):
        state.add_event(op["now"], f"service.{health}", service=record.name, node=node, detail=detail)
    elif health == "healthy" and previous == "slow":
        state.add_event(op["now"], "service.recovered", service=record.name, node=node, outcome="ok",
                        detail="answering in time again")
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
