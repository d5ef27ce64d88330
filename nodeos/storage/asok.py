"""Ceph daemons' admin sockets, asked directly: the health checks' cheap path.

`ceph daemon X cmd` is a Python program (~0.4 s of CPU per call); a check
every few seconds per daemon per node would cost more than the daemons. The
protocol is small (src/common/admin_socket_client.cc): write the JSON
command followed by a NUL byte, read a 4-byte big-endian length, then that
many bytes of JSON.
"""

from __future__ import annotations

import glob
import json
import os
import socket
import struct
from typing import Any

MAX_REPLY = 16 << 20


class AdminSocketError(RuntimeError):
    pass


def socket_path(run_dir: str, kind: str, daemon_id: str) -> str:
    """Where a daemon's admin socket is (Ceph's default `$run_dir/$cluster-$name.asok`)."""
    return os.path.join(run_dir, f"ceph-{kind}.{daemon_id}.asok")


def osd_sockets(run_dir: str) -> dict[int, str]:
    """OSD id -> admin socket of every OSD whose socket exists in `run_dir`."""
    found = {}
    for path in glob.glob(os.path.join(run_dir, "ceph-osd.*.asok")):
        name = os.path.basename(path)[len("ceph-osd."):-len(".asok")]
        if name.isdigit():
            found[int(name)] = path
    return found


def ask(path: str, prefix: str, timeout: float = 2.0, **args: Any) -> Any:
    """One admin socket command; its parsed JSON reply."""
    request = json.dumps({"prefix": prefix, **args}).encode() + b"\0"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(path)
            conn.sendall(request)
            size = struct.unpack(">I", _read(conn, 4))[0]
            if size > MAX_REPLY:
                raise AdminSocketError(f"{path}: reply of {size} bytes")
            body = _read(conn, size)
    except OSError as exc:
        raise AdminSocketError(f"{os.path.basename(path)}: {exc.strerror or exc}") from None
    try:
        return json.loads(body) if body.strip() else {}
    except json.JSONDecodeError as exc:
        raise AdminSocketError(f"{os.path.basename(path)}: no JSON reply to {prefix}: {exc}") from None


def _read(conn: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = conn.recv(min(left, 1 << 16))
        if not chunk:
            raise AdminSocketError("connection closed mid-reply")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


# -- what the health checks ask ---------------------------------------------------

def mon_in_quorum(run_dir: str, mon_id: str) -> tuple[bool, str]:
    status = ask(socket_path(run_dir, "mon", mon_id), "mon_status")
    state = status.get("state") if isinstance(status, dict) else None
    if state in ("leader", "peon"):
        return True, f"in quorum ({state})"
    return False, f"not in quorum (state {state})"


def osds_active(run_dir: str) -> tuple[bool, str]:
    sockets = osd_sockets(run_dir)
    if not sockets:
        return False, "no OSD admin socket yet"
    bad = []
    for osd_id, path in sorted(sockets.items()):
        try:
            state = ask(path, "status").get("state")
        except AdminSocketError as exc:
            bad.append(f"osd.{osd_id}: {exc}")
            continue
        if state != "active":
            bad.append(f"osd.{osd_id} {state}")
    return (False, "; ".join(bad)) if bad else (True, f"{len(sockets)} OSD(s) active")


def mgr_answers(run_dir: str, mgr_id: str) -> tuple[bool, str]:
    ask(socket_path(run_dir, "mgr", mgr_id), "version")
    return True, "answers"


def daemon_check(kind: str, run_dir: str, node_id: str) -> tuple[bool, str]:
    """The `ceph` health check: mon in quorum, every local OSD active, the mgr answering."""
    try:
        if kind == "mon":
            return mon_in_quorum(run_dir, node_id)
        if kind == "osd":
            return osds_active(run_dir)
        if kind == "mgr":
            return mgr_answers(run_dir, node_id)
    except AdminSocketError as exc:
        return False, str(exc)
    return False, f"unknown Ceph daemon kind {kind!r}"


# -- what an operator needs when Ceph says SLOW_OPS ------------------------------------

def slow_ops(path: str, oldest: int = 3, timeout: float = 5.0) -> dict[str, Any]:
    """A daemon's ops in flight, summarized: how many of each kind, and the oldest with where they wait.

    Ceph's health names only the daemons ("1354 slow ops ... [mon.a, mon.b]");
    the admin socket's `ops` says which requests and at which step they stop.
    """
    reply = ask(path, "ops", timeout=timeout)
    ops = reply.get("ops", []) if isinstance(reply, dict) else []
    kinds: dict[str, int] = {}
    for op in ops:
        kind = str(op.get("description", "?")).split("(", 1)[0].strip() or "?"
        kinds[kind] = kinds.get(kind, 0) + 1
    ranked = sorted(ops, key=lambda op: -float(op.get("age", 0.0)))[:oldest]
    return {"count": len(ops), "kinds": dict(sorted(kinds.items(), key=lambda kv: -kv[1])),
            "oldest": [{"age": round(float(op.get("age", 0.0)), 1), "description": str(op.get("description", ""))[:240],
                        "waiting": _last_step(op)} for op in ranked]}


def _last_step(op: dict[str, Any]) -> str:
    data = op.get("type_data") or {}
    events = data.get("events") or []
    last = events[-1].get("event", "") if events and isinstance(events[-1], dict) else ""
    return f"{data.get('flag_point', '')}: {last}".strip(": ")
