"""Human-readable rendering of status and events for the CLI."""

from __future__ import annotations

import datetime
from typing import Any


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


def render_status(status: dict[str, Any]) -> str:
    lines = [
        f"node      {status['node_id']}  ({status['address']})",
        f"cluster   {status['cluster_id']}  group {status.get('group_id') or '-'}",
        f"formation {status['formation']}  (bootstrap_expect {status.get('bootstrap_expect')})",
        f"leader    {status.get('leader') or '-'}   monitor {status.get('monitor') or '-'}   term {status.get('term')}",
        f"this node {'holds the Monitor lease' if status.get('may_act') else 'is not the Monitor'}"
        f"{'; FENCED (no quorum-backed leader)' if status.get('fenced') and status['formation'] == 'member' else ''}",
    ]
    for group_id, others in sorted((status.get("other_groups") or {}).items()):
        lines.append(f"SPLIT     another group of this cluster, {group_id}, runs apart: members {', '.join(others)}")
    members = status.get("members") or []
    if members:
        rows = [[m.get("node_id") or "?", m["raft_addr"], m["status"], "leader" if m.get("node_id") == status.get("leader") else ""] for m in members]
        lines += ["", _table(rows, ["MEMBER", "RAFT", "STATUS", ""])]
    services = status.get("services") or []
    if services:
        rows = [[s["name"], s.get("node") or "-", s.get("vip") or "-", s.get("health") or "-", str(s.get("restarts", 0)), s.get("note") or ""] for s in services]
        lines += ["", _table(rows, ["SERVICE", "NODE", "VIP", "HEALTH", "RESTARTS", ""])]
    storage = status.get("storage")
    if storage:
        health = storage.get("health") or {}
        lines += ["", f"storage   Ceph {storage['fsid']}: {health.get('line') or 'health not read yet'}"]
        lines += [f"          {check}" for check in health.get("checks") or []]
        lines += [f"          mons on {', '.join(storage['mons'])}"
                  + (f"; removing {', '.join(storage['mon_removing'])}" if storage.get("mon_removing") else "")]
        for node, osds in sorted((storage.get("osds") or {}).items()):
            skipped = "; ".join(f"skipped {d}: {why}" for d, why in sorted((osds.get("skipped") or {}).items()))
            lines.append(f"          {node}: OSD {', '.join(map(str, osds.get('ids') or []))} on "
                         f"{', '.join(osds.get('taken') or [])}" + (f"; {skipped}" if skipped else ""))
    cloud = status.get("cloud")
    if cloud:
        lines += ["", f"cloud     keystone keys {cloud.get('keys')}"]
        for name, job in sorted((cloud.get("jobs") or {}).items()):
            detail = f": {job['detail']}" if job.get("detail") and job["state"] != "done" else ""
            lines.append(f"          job {name}: {job['state']} (attempt {job['attempt']} on {job['node']}){detail}")
    return "\n".join(lines)


def render_event(event: dict[str, Any]) -> str:
    when = datetime.datetime.fromtimestamp(event["ts"]).strftime("%H:%M:%S.%f")[:-3]
    parts = [f"{event['seq']:>5} {when} {event['kind']:<22}"]
    for key in ("service", "node", "reason", "outcome", "detail"):
        if event.get(key):
            parts.append(f"{key}={event[key]}")
    return " ".join(parts)
