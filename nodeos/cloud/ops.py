"""The cloud's part of the replicated state: one-time jobs and keystone's keys, pure.

`state.cloud` (a plain dict, so Raft snapshots stay simple) holds:

* `keys`: {"fernet": [staged, primary], "credential": [staged, primary]},
  keystone's key repositories, made once by the Monitor (randomness is an
  argument of the op); never shown (state.to_dict drops them);
* `jobs`: name -> {"state": running|done|failed, "node", "attempt", "since",
  "detail", "by"}: each one-time step (registry.py) with the node and the
  attempt it was handed to.

A job runs where the Monitor assigned it, attempt by attempt. `job_assign`
checks the state itself: never for a done job, never while the attempt
before it still runs on an up node (a lost node fenced itself: its attempt
is over). `job_report` counts only for the node and attempt it names, so a
late report of an old attempt changes nothing. A done job is never run again.
"""

from __future__ import annotations

from typing import Any

from nodeos.cluster.state import ClusterState, OpError, _require, register

from .registry import JOBS
from .secrets import is_fernet_key

JOB_STATES = ("running", "done", "failed")


def jobs_of(state: ClusterState) -> dict[str, dict[str, Any]]:
    return state.cloud.setdefault("jobs", {})


def job_done(state: ClusterState, name: str) -> bool:
    return (state.cloud.get("jobs") or {}).get(name, {}).get("state") == "done"


def _key_pair(op: dict[str, Any], field: str) -> list[str]:
    keys = op.get(field)
    if not isinstance(keys, list) or len(keys) != 2 or not all(is_fernet_key(k) for k in keys):
        raise OpError(f"field '{field}' must be two Fernet keys")
    return list(keys)


@register("cloud_keys")
def _op_cloud_keys(state: ClusterState, op: dict[str, Any]) -> dict[str, Any]:
    if state.cloud.get("keys"):
        return {"already": True}  # a new Monitor may propose them again before it sees them
    state.cloud["keys"] = {"fernet": _key_pair(op, "fernet"), "credential": _key_pair(op, "credential")}
    state.add_event(op["now"], "cloud.keys_made", detail="keystone fernet and credential keys", reason=op.get("reason"))
    return {}


def _job_fields(op: dict[str, Any]) -> tuple[str, str, int]:
    return _require(op, "job", str), _require(op, "node", str), _require(op, "attempt", int)


@register("job_assign")
def _op_job_assign(state: ClusterState, op: dict[str, Any]) -> dict[str, Any]:
    name, node, attempt = _job_fields(op)
    if name not in JOBS:
        raise OpError(f"unknown job {name!r}")
    if node not in state.nodes or state.nodes[node].status != "up":
        raise OpError(f"node {node!r} is not up")
    record = jobs_of(state).get(name)
    previous = record["attempt"] if record else 0
    if attempt != previous + 1:
        raise OpError(f"job {name}: attempt {attempt} is not the next one (last {previous})")
    if record is not None and record["state"] == "done":
        raise OpError(f"job {name} is done; it never runs again")
    if record is not None and record["state"] == "running" and state.nodes[record["node"]].status == "up":
        raise OpError(f"job {name}: attempt {previous} still runs on {record['node']}")
    jobs_of(state)[name] = {"state": "running", "node": node, "attempt": attempt, "since": op["now"],
                            "detail": "", "by": op.get("by")}
    state.add_event(op["now"], "job.started", node=node, reason=op.get("reason"),
                    detail=f"{name}, attempt {attempt}, by {op.get('by')}")
    return {}


@register("job_report")
def _op_job_report(state: ClusterState, op: dict[str, Any]) -> dict[str, Any]:
    name, node, attempt = _job_fields(op)
    ok = _require(op, "ok", bool)
    detail = str(op.get("detail") or "")[:500]
    record = jobs_of(state).get(name)
    if record is None or record["node"] != node or record["attempt"] != attempt or record["state"] != "running":
        return {"stale": True}  # an old attempt's report: the job moved on without it
    record.update(state="done" if ok else "failed", since=op["now"], detail=detail)
    state.add_event(op["now"], "job.done" if ok else "job.failed", node=node, outcome="done" if ok else "failed",
                    detail=f"{name}, attempt {attempt}" + (f": {detail}" if detail else ""))
    return {}
