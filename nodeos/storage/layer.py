"""An agent's storage duties, called from its services threads.

* every node (`node_pass`): keep its Ceph files in step with the state
  (files.py) and report what its OSD launcher took (`osd_report`);
* the Monitor (`monitor_pass`): propose decide.py's ops, run its actions
  (actions.py) on a worker of their own so a slow `ceph` call never
  delays a decision, and read Ceph's health every HEALTH_INTERVAL.

Only when the catalog runs Ceph (a service with placement `ceph-mons`).
"""

from __future__ import annotations

import os
import re
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping

from nodeos import log
from nodeos.cluster.config import StorageConfig
from nodeos.cluster.state import ClusterState

from . import asok
from .actions import read_health, run_action
from .clients import ServiceClient
from .conf import CephPaths
from .daemons import CephError, CephNode
from .decide import Action, decide_storage
from .files import StorageFiles
from .ops import ready

HEALTH_INTERVAL = 5.0
HEALTH_LINE_EVERY = 30.0  # a changed summary line alone is re-recorded at most this often
SLOW_OPS_EVERY = 60.0  # while Ceph reports SLOW_OPS, log this node's daemons' ops this often
RETRY = 3.0  # re-propose an op / re-run an action whose outcome we never saw

Submit = Callable[[dict[str, Any], Any], None]


class StorageLayer:
    def __init__(self, node_id: str, ip: str, network: str, state_dir: Path, settings: StorageConfig,
                 submit: Submit) -> None:
        self.node_id = node_id
        self.network = network
        self.settings = settings
        self.root = Path(state_dir) / "ceph"
        self.files = StorageFiles(node_id, self.root, settings)
        self.ceph = CephNode(node_id, ip, CephPaths(str(self.root)), command_timeout=settings.command_timeout)
        self.submit = submit
        self._worker = ThreadPoolExecutor(max_workers=2, thread_name_prefix="storage")
        self._running: dict[str, Future[Any]] = {}
        self._tried: dict[str, float] = {}
        self._lock = threading.Lock()
        self._reported_osds: dict[str, Any] | None = None
        self._done: set[str] = set()  # `once` actions that succeeded
        self._health_at = float("-inf")
        self._health_line_at = float("-inf")
        self._slow_ops_at = float("-inf")

    def shutdown(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)

    # -- every node ------------------------------------------------------------------
    def node_pass(self, state: ClusterState) -> None:
        if not self.files.sync(state):
            return
        self._explain_slow_ops(state.storage.get("health") or {})
        report = self.files.osd_report()
        if report is not None and report != self._reported_osds and \
                (state.storage.get("osds") or {}).get(self.node_id) != _normalized(report):
            self._reported_osds = report
            self.submit({"op": "osd_report", "now": time.time(), "node": self.node_id, "ids": report.get("ids", []),
                         "taken": report.get("taken", []), "skipped": report.get("skipped", {})}, None)

    def _explain_slow_ops(self, health: Mapping[str, Any]) -> None:
        """Ceph names the daemons with slow ops; each node logs what its own are waiting for."""
        slow = next((c for c in health.get("checks") or [] if str(c).startswith("SLOW_OPS")), None)
        now = time.monotonic()
        if slow is None or now - self._slow_ops_at < SLOW_OPS_EVERY:
            return
        self._slow_ops_at = now
        run_dir = os.path.join(str(self.root), "run")
        daemons = {f"mon.{self.node_id}": asok.socket_path(run_dir, "mon", self.node_id),
                   **{f"osd.{i}": path for i, path in asok.osd_sockets(run_dir).items()}}
        for name, path in daemons.items():
            if re.search(rf"\b{re.escape(name)}\b", slow) and os.path.exists(path):
                self._worker.submit(self._log_slow_ops, name, path)

    @staticmethod
    def _log_slow_ops(name: str, path: str) -> None:
        try:
            log.event("storage.slow_ops", level="warning", daemon=name, **asok.slow_ops(path))
        except asok.AdminSocketError as exc:
            log.event("storage.slow_ops_unreadable", level="warning", daemon=name, error=str(exc))

    # -- the Monitor -------------------------------------------------------------------
    def monitor_pass(self, state: ClusterState, term: int, now: float,
                     volumes: dict[str, tuple[int, str]] | None = None,
                     clients: Mapping[str, ServiceClient] | None = None) -> None:
        ops, actions = decide_storage(state, time.time(), self.node_id, term, os.urandom, self.network,
                                      self.settings.mon_replace_after, volumes, clients)
        for op in ops:
            self._propose(op, now)
        if not ready(state) or not Path(self.ceph.admin_keyring).exists():
            return  # the admin key and conf (written by this node's services pass) are needed below
        for action in actions:
            if action.key not in self._done:
                self._start(action.key, now, lambda a=action: self._run(a, dict(state.storage), term))
        if now - self._health_at >= HEALTH_INTERVAL:
            self._health_at = now
            self._start("health", now, lambda: self._read_health(state.storage.get("health") or {}, term, now),
                        retry=0.0)

    def _propose(self, op: dict[str, Any], now: float) -> None:
        key = f"{op['op']}:{op.get('node', '')}{op.get('name', '')}"
        with self._lock:
            if now - self._tried.get(key, float("-inf")) < RETRY:
                return
            self._tried[key] = now
        log.event("storage.decision", op=op["op"], node=op.get("node"), reason=op.get("reason"))

        def committed(result: Any, error: Any) -> None:
            with self._lock:
                self._tried.pop(key, None)
            if error or not (result or {}).get("ok", False):
                log.event("storage.decision_failed", level="warning", op=op["op"],
                          error=error or (result or {}).get("error"))

        self.submit(op, committed)

    def _start(self, key: str, now: float, work: Callable[[], None], retry: float = RETRY) -> None:
        with self._lock:
            running = self._running.get(key)
            if running is not None and not running.done():
                return
            if now - self._tried.get(key, float("-inf")) < retry:
                return
            self._tried[key] = now
            self._running[key] = self._worker.submit(work)

    def _run(self, action: Action, storage: dict[str, Any], term: int) -> None:
        try:
            op = run_action(self.ceph, storage, action, self.node_id, term)
        except CephError as exc:
            log.event("storage.action_failed", level="warning", action=action.kind, node=action.node or None,
                      pool=action.pool or None, error=str(exc))
            return
        log.event("storage.action_done", action=action.kind, node=action.node or None, pool=action.pool or None,
                  service=action.service or None)
        if action.once:
            self._done.add(action.key)
        with self._lock:
            self._tried[action.key] = time.monotonic()  # give its op RETRY to be applied before a repeat
        if op:
            self.submit(op, None)

    def _read_health(self, before: dict[str, Any], term: int, now: float) -> None:
        try:
            health = read_health(self.ceph)
        except CephError as exc:
            health = {"status": "HEALTH_UNKNOWN", "line": f"Ceph does not answer: {exc}"[:300], "checks": []}
        same = before.get("status") == health["status"] and before.get("checks") == health["checks"]
        if same and (before.get("line") == health["line"] or now - self._health_line_at < HEALTH_LINE_EVERY):
            return
        self._health_line_at = now
        self.submit({"op": "storage_health", "now": time.time(), "by": self.node_id, "term": term, **health}, None)

    # -- status ----------------------------------------------------------------------
    @staticmethod
    def status_view(state: ClusterState) -> dict[str, Any] | None:
        if not ready(state):
            return None
        storage = state.storage
        return {"fsid": storage["fsid"], "mons": sorted(storage["mons"]), "mon_removing": storage["mon_removing"],
                "pools": storage["pools"], "osds": storage["osds"], "health": storage.get("health") or {},
                "volumes": storage.get("volumes") or {}, "service_clients": storage.get("service_clients") or {}}


def _normalized(report: dict[str, Any]) -> dict[str, Any]:
    return {"ids": sorted(report.get("ids", [])), "taken": [str(t) for t in report.get("taken", [])],
            "skipped": {str(k): str(v) for k, v in (report.get("skipped") or {}).items()}}
