"""The Service Monitor's decisions: a pure function of the replicated state.

`decide(state, catalog, now, by, term)` returns the operations the Monitor
should propose now, each stamped with the Raft `term` it was decided under
(the state refuses them once a newer Monitor's heartbeat has landed). It
never acts on a node: agents converge their own node toward what the ops
make desired. Everything it needs (restart counts, back-off deadlines,
migrations in flight) is in the state, so a new Monitor continues exactly
where the old one stopped. `now` is cluster time (the leader's clock).

Rules for a singleton, in order:
* a migration whose release set released (each node reported `stopped`, or
  is lost, hence self-fenced) moves to its `starting` phase; a healthy target
  completes it;
* unplaced: place it on the least-loaded up node (after a catalog change it
  may still wait there for releases);
* its node is lost: migrate it away (the node fenced itself by then: the
  liveness check that marks it lost waits longer than the fence lease);
* unhealthy or failed on its node for the current generation: restart in
  place once the back-off deadline has passed, with exponential back-off;
  after `max_restarts` restarts, migrate to another healthy node;
* stuck (its agent could not stop the old process: it survived SIGKILL,
  typically in D state on a volume whose I/O hangs): migrate at once, as an
  in-place restart cannot start beside it; the move fences the holder's RBD
  client before the volume is attached elsewhere, which also fails the
  stuck process's pending I/O so it can exit;
* healthy for `reset_after`: forget past restarts.
Every-node services get the same restart rule per node, without migration.

A failing instance whose dependency (`depends_on`) is healthy nowhere is not
restarted (that would loop, and count towards a pointless migration): it is
held, once, with a `service.waiting` event naming the dependency, which is
repaired by its own rules. When the dependency is back the instance gets
DEPENDENCY_GRACE to recover by itself before the usual rule applies.
"""

from __future__ import annotations

from typing import Any

from .catalog import Catalog, ServiceSpec
from .placement import release_pending
from nodeos.cluster.state import ClusterState, ServiceRecord

FAILING = ("unhealthy", "failed")
DEPENDENCY_GRACE = 10.0  # seconds a held instance gets to reconnect once its dependency is back


def choose_node(state: ClusterState, exclude: set[str], planned: dict[str, int] | None = None) -> str | None:
    """The up node with the fewest singletons placed on it (ties: lowest id).

    `planned` counts placements decided in this pass but not yet applied.
    """
    candidates = [n for n in state.up_nodes() if n not in exclude]
    if not candidates:
        return None
    load = {n: (planned or {}).get(n, 0) for n in candidates}
    for record in state.services.values():
        if record.placement == "singleton" and record.node in load:
            load[record.node] += 1
    return min(candidates, key=lambda n: (load[n], n))


def decide(state: ClusterState, catalog: Catalog, now: float, by: str, term: int) -> list[dict[str, Any]]:
    ops: list[dict[str, Any]] = []
    up = set(state.up_nodes())
    planned: dict[str, int] = {}
    healthy = state.healthy_services()
    for name in catalog.start_order():
        record = state.services.get(name)
        if record is None:
            continue
        spec = catalog[name]
        base = {"now": now, "service": name, "by": by, "term": term}
        missing = [d for d in spec.depends_on if d not in healthy]
        if spec.singleton:
            op = _decide_singleton(state, record, spec, up, now, base, planned, missing)
            if op is not None:
                ops.append(op)
                target = op.get("to") if op["op"] == "migrate" else op.get("node") if op["op"] == "place" else None
                if target:
                    planned[target] = planned.get(target, 0) + 1
        else:
            ops.extend(_decide_every_node(record, spec, up, now, base, missing))
    return ops


def _decide_singleton(state: ClusterState, record: ServiceRecord, spec: ServiceSpec, up: set[str], now: float,
                      base: dict[str, Any], planned: dict[str, int], missing: list[str]) -> dict[str, Any] | None:
    migration = record.migration
    if migration is not None:
        op = _advance_migration(state, record, migration, up, base)
        if op is not None or (migration["phase"] == "releasing" and record.node is not None):
            return op  # while holders release, only an unplaced service (catalog change) gets a target
    if record.node is None:
        target = choose_node(state, set(), planned)
        return None if target is None else {**base, "op": "place", "node": target, "reason": "not running anywhere"}
    node = record.node
    if node not in up:
        target = choose_node(state, {node}, planned)
        if target is None:
            return None
        return {**base, "op": "migrate", "to": target, "reason": f"node {node} lost"}
    return _restart_or_escalate(state, record, spec, node, now, base, can_migrate=True, planned=planned, missing=missing)


def _advance_migration(state: ClusterState, record: ServiceRecord, migration: dict[str, Any], up: set[str],
                       base: dict[str, Any]) -> dict[str, Any] | None:
    if migration["phase"] == "releasing":
        if release_pending(state, record):
            return None
        return {**base, "op": "migration_released", "reason": "every node that may have held it released it"}
    target = migration["to"]
    report = record.health.get(target or "", {})
    if target in up and report.get("state") == "healthy" and report.get("seq", -1) > migration["seq"]:
        return {**base, "op": "migration_done", "to": target}
    return None


def _restart_or_escalate(state: ClusterState, record: ServiceRecord, spec: ServiceSpec, node: str, now: float,
                         base: dict[str, Any], can_migrate: bool, planned: dict[str, int] | None = None,
                         missing: list[str] | None = None) -> dict[str, Any] | None:
    report = record.health.get(node)
    instance = record.instances.get(node)
    generation = instance.generation if instance else 0
    if report is None or report.get("generation", 0) != generation:
        return None  # no news about the current generation yet
    restarts = instance.restarts if instance else 0
    held = _dependency_hold(report, instance.waiting_for if instance else (), missing or [], node, now, base)
    if held is not None:
        return held or None
    if report["state"] in FAILING:
        policy = spec.restart
        if report.get("stuck") and can_migrate:
            target = choose_node(state, {node} | _failing_nodes(record), planned)
            if target is not None:
                fence = "; its volume's client there is fenced first" if spec.volume is not None else ""
                return {**base, "op": "migrate", "to": target, "source_released": False,
                        "reason": f"stuck on {node} ({report.get('detail') or 'stop failed'}): "
                                  f"not restartable in place{fence}"[:300]}
        if restarts >= policy.max_restarts and can_migrate:
            target = choose_node(state, {node} | _failing_nodes(record), planned)
            if target is not None:
                return {**base, "op": "migrate", "to": target, "source_released": False,
                        "reason": f"{report['state']} after {restarts} restarts on {node}"}
        if now < (instance.backoff_until if instance else 0.0):
            return None
        delay = policy.backoff(restarts)
        return {**base, "op": "restart", "node": node, "backoff_until": now + delay,
                "reason": f"{report['state']}: {report.get('detail') or 'check failed'}"}
    if report["state"] == "healthy" and restarts > 0 and now - report["since"] >= spec.restart.reset_after:
        return {**base, "op": "reset_restarts", "node": node, "reason": f"healthy for {spec.restart.reset_after:.0f}s"}
    return None


def _dependency_hold(report: dict[str, Any], waiting: tuple[str, ...], missing: list[str], node: str, now: float,
                     base: dict[str, Any]) -> dict[str, Any] | None:
    """The hold rule: an op, {} (held, nothing new to say), or None (the usual rules apply)."""
    failing = report["state"] in FAILING
    if failing and missing:
        if list(waiting) == missing:
            return {}
        detail = report.get("detail") or "check failed"
        return {**base, "op": "wait_dependency", "node": node, "waiting_for": missing,
                "reason": f"{report['state']} ({detail}) while {', '.join(missing)} is down: not restarted; "
                          f"{', '.join(missing)} is repaired first"[:300]}
    if waiting:
        reason = f"{', '.join(waiting)} healthy again"
        if failing:
            return {**base, "op": "wait_dependency", "node": node, "waiting_for": [],
                    "backoff_until": now + DEPENDENCY_GRACE,
                    "reason": f"{reason}: {DEPENDENCY_GRACE:.0f}s to recover before a restart"}
        return {**base, "op": "wait_dependency", "node": node, "waiting_for": [], "reason": f"{reason}: recovered"}
    return None


def _failing_nodes(record: ServiceRecord) -> set[str]:
    return {n for n, report in record.health.items() if report.get("state") in FAILING}


def _decide_every_node(record: ServiceRecord, spec: ServiceSpec, up: set[str], now: float, base: dict[str, Any],
                       missing: list[str]) -> list[dict[str, Any]]:
    ops = []
    for node in sorted(up):
        op = _restart_or_escalate(ClusterState(), record, spec, node, now, base, can_migrate=False, missing=missing)
        if op is not None:
            ops.append(op)
    return ops
