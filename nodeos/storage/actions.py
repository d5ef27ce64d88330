"""The Monitor's Ceph I/O (decide.py says what, this does it): each ends in an op.

Runs on the Monitor's node with the admin key, off the decision thread.
Every action is idempotent, so a Monitor that dies between doing it and
recording it leaves the next Monitor a harmless repeat.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any, Callable, TypeVar

from nodeos import log

from . import volumes
from .daemons import CephError, CephNode, ceph, ceph_status, create_pool, health
from .decide import Action
from .clients import service_keyring
from .keys import ADMIN, CephKeys, node_keyring
from .ops import volume_image
from .status import summarize

T = TypeVar("T")


def run_action(node: CephNode, storage: dict[str, Any], action: Action, by: str, term: int) -> dict[str, Any]:
    """Do `action` in Ceph; the op that records it ({} for none). CephError when Ceph refused or did not answer."""
    base = {"now": time.time(), "by": by, "term": term}
    if action.kind == "remove_mon":
        detail = _remove_mon(node, action.node)
        return {**base, "op": "mon_removed", "node": action.node, "detail": detail}
    if action.kind == "register":
        _import_key(node, CephKeys.from_wire(storage["keys"]), action.node)
        return {**base, "op": "storage_node_registered", "node": action.node}
    if action.kind == "pool":
        create_pool(node, action.pool, action.size, action.min_size, application="rbd")
        return {**base, "op": "pool_set", "pool": action.pool, "size": action.size, "min_size": action.min_size}
    if action.kind == "service_client":
        record = storage["service_clients"][action.service]
        _import_keyring(node, service_keyring(action.service, storage["keys"]["services"][action.service],
                                              record["caps"]))
        return {**base, "op": "storage_service_registered", "name": action.service, "caps": record["caps"]}
    if action.kind == "osd_down":
        ceph(node, "osd", "down", *[str(i) for i in action.osds])
        return {}
    if action.kind == "image":
        _volume_call(lambda: volumes.ensure_image(node, action.pool, volume_image(action.service), action.size,
                                                  name=ADMIN))
        return {**base, "op": "volume_created", "service": action.service, "size": action.size, "fs": action.fs}
    if action.kind == "fence":
        entry = _volume_call(lambda: volumes.blocklist_add(node, action.client, volumes.BLOCKLIST_EXPIRE, name=ADMIN))
        log.event("storage.fenced", service=action.service, node=action.node, client=action.client,
                  until=getattr(entry, "until", None))
        return {**base, "op": "volume_fenced", "service": action.service, "client": action.client,
                "expire": volumes.BLOCKLIST_EXPIRE, "reason": f"{action.service} must run elsewhere than {action.node}"}
    raise CephError(f"unknown storage action {action.kind!r}")


def _volume_call(work: Callable[[], T]) -> T:
    try:
        return work()
    except volumes.VolumeError as exc:
        raise CephError(str(exc)) from None


def _remove_mon(node: CephNode, mon_id: str) -> str:
    try:
        ceph(node, "mon", "remove", mon_id)
    except CephError as exc:
        text = str(exc)
        if "does not exist" in text or "ENOENT" in text:
            return "was no longer in the monmap"
        raise
    return "removed from the monmap"


def _import_key(node: CephNode, keys: CephKeys, node_id: str) -> None:
    _import_keyring(node, node_keyring(keys, node_id))


def _import_keyring(node: CephNode, keyring: str) -> None:
    """`ceph auth import`: adds the entity, or sets its key and caps to these (idempotent)."""
    # A file, not argv or stdin of a logged command: keys never show in /proc or logs.
    fd, path = tempfile.mkstemp(prefix=".import-", suffix=".keyring", dir=node.paths.keys_dir)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(keyring)
        ceph(node, "auth", "import", "-i", path)
    finally:
        os.unlink(path)


def read_health(node: CephNode) -> dict[str, Any]:
    """{"status", "line", "checks"} from `ceph status` and `ceph health detail`."""
    timeout = node.command_timeout
    summary = summarize(ceph_status(node.conf, node.admin_keyring, timeout=timeout))
    checks: list[str] = []
    if summary.health != "HEALTH_OK":
        detail = health(node.conf, node.admin_keyring, timeout=timeout)
        checks = [f"{code}: {check['summary']}" for code, check in sorted(detail["checks"].items())]
    return {"status": summary.health, "line": summary.line(), "checks": checks}
