"""The Monitor's cloud decisions: keystone's keys once, and the one-time jobs, pure.

`decide_cloud(state, catalog, now, by, term, random_bytes)` returns ops; the
state (ops.py) re-checks each one, so a stale or repeated decision changes
nothing. A job is handed out when its prerequisites hold (services healthy
somewhere, earlier jobs done), to the node that runs the service whose
configuration it reads (it has that configuration), else to the first up
node. A failed attempt is retried after a back-off; an attempt on a node that
was lost is handed to another node at once. Time and randomness are arguments.
"""

from __future__ import annotations

from typing import Any, Callable

from nodeos.cluster.state import ClusterState
from nodeos.services.catalog import Catalog

from .registry import JOBS, jobs_closure
from .secrets import make_fernet_key

RETRY_FIRST, RETRY_MAX = 5.0, 120.0


def needed_jobs(catalog: Catalog) -> list[str]:
    return jobs_closure([job for name in catalog.start_order() for job in catalog[name].jobs])


def needs_keys(catalog: Catalog) -> bool:
    return any(spec.config == "keystone" for spec in catalog)


def retry_delay(attempt: int) -> float:
    return min(RETRY_MAX, RETRY_FIRST * 2.0 ** max(0, attempt - 1))


def decide_cloud(state: ClusterState, catalog: Catalog, now: float, by: str, term: int,
                 random_bytes: Callable[[int], bytes]) -> list[dict[str, Any]]:
    base = {"now": now, "by": by, "term": term}
    ops: list[dict[str, Any]] = []
    if needs_keys(catalog) and not state.cloud.get("keys"):
        ops.append({**base, "op": "cloud_keys", "reason": "keystone needs its key repositories",
                    "fernet": [make_fernet_key(random_bytes) for _ in range(2)],
                    "credential": [make_fernet_key(random_bytes) for _ in range(2)]})
    healthy = state.healthy_services()
    jobs = state.cloud.get("jobs") or {}
    for name in needed_jobs(catalog):
        op = _decide_job(state, catalog, name, jobs.get(name), healthy, jobs, now)
        if op is not None:
            ops.append({**base, **op})
    return ops


def _decide_job(state: ClusterState, catalog: Catalog, name: str, record: dict[str, Any] | None, healthy: set[str],
                jobs: dict[str, Any], now: float) -> dict[str, Any] | None:
    job = JOBS[name]
    if record is not None and record["state"] == "done":
        return None
    if any((jobs.get(before) or {}).get("state") != "done" for before in job.after_jobs):
        return None
    if any(service not in healthy for service in job.after_services):
        return None
    attempt = record["attempt"] if record else 0
    if record is not None and record["state"] == "running":
        holder = state.nodes.get(record["node"])
        if holder is not None and holder.status == "up":
            return None  # its node runs it, or reports it failed
        reason = f"node {record['node']} lost during attempt {attempt}"
    elif record is not None:  # failed
        if now < record["since"] + retry_delay(attempt):
            return None
        reason = f"attempt {attempt} failed: {record.get('detail') or 'no detail'}"[:200]
    else:
        reason = "prerequisites met"
    node = _job_node(state, catalog, job.config)
    if node is None:
        return None
    return {"op": "job_assign", "job": name, "node": node, "attempt": attempt + 1, "reason": reason}


def _job_node(state: ClusterState, catalog: Catalog, config: str) -> str | None:
    up = state.up_nodes()
    for spec in catalog:
        record = state.services.get(spec.name)
        if spec.config == config and record is not None and record.node in up:
            return record.node
    return up[0] if up else None
