"""An agent's cloud duties, called from its services threads.

* every node: write a service's configuration just before it starts
  (`prepare`), and run the one-time jobs the Monitor handed to this node
  (`node_pass`), on a worker of their own, reporting each attempt's outcome;
  both through the node's `host` (host.py: the agent itself in the lab,
  transient systemd units on a real node, whose agent is sandboxed);
* the Monitor (`monitor_pass`): propose decide.py's ops.

Only when the catalog has a service with a `config:` or `jobs:`.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from nodeos import log
from nodeos.cluster.identity import ClusterIdentity
from nodeos.cluster.state import ClusterState
from nodeos.services.catalog import Catalog, ServiceSpec
from nodeos.services.node import NotReady
from nodeos.storage.clients import ServiceClient

from . import ops as _ops  # noqa: F401  (registers the cloud ops)
from .config import ConfigError, context_from_state, render
from .decide import decide_cloud
from .host import Host
from .jobs import JobError, commands
from .registry import CEPH_CLIENTS, JOBS
from .secrets import admin_password, health_password, mq_password

RETRY = 3.0  # re-propose an op whose outcome we never saw

Submit = Callable[[dict[str, Any], Any], None]


def uses_cloud(catalog: Catalog) -> bool:
    return any(spec.config or spec.jobs for spec in catalog)


def ceph_clients(catalog: Catalog) -> dict[str, ServiceClient]:
    """The cephx users (and pools) the catalog's services need: glance's when glance runs."""
    configs = {spec.config for spec in catalog if spec.config}
    return {name: ServiceClient(name, caps, pools) for name, (caps, pools) in sorted(CEPH_CLIENTS.items())
            if name in configs}


class CloudLayer:
    def __init__(self, node_id: str, identity: ClusterIdentity, host: Host, submit: Submit, lab: bool,
                 time_scale: float = 1.0) -> None:
        self.node_id = node_id
        self.time_scale = time_scale  # the config's service_time_scale: jobs' time-outs too
        self.identity = identity
        self.host = host
        self.submit = submit
        self.lab = lab
        self.started_at = time.time()  # an attempt handed out before this process began was interrupted
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cloud-job")
        self._running: dict[tuple[str, int], Future[None]] = {}
        self._outcome: dict[tuple[str, int], tuple[bool, str, float]] = {}  # re-sent until the state has it
        self._tried: dict[str, float] = {}
        self._lock = threading.Lock()

    def shutdown(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)

    def check_values(self) -> dict[str, str]:
        """Secrets the service-specific checks log in with (never shown: templates cannot name them)."""
        return {"admin_password": admin_password(self.identity), "health_password": health_password(self.identity),
                "mq_password": mq_password(self.identity)}

    # -- every node ------------------------------------------------------------------
    def prepare(self, spec: ServiceSpec, state: ClusterState, catalog: Catalog) -> None:
        """Its configuration files, from the state, before it starts (ConfigError: not yet possible)."""
        if spec.config is None:
            return
        try:
            ctx = context_from_state(state, catalog, self.identity, self.lab, self.node_id)
            written = self.host.write(render(spec.config, ctx), spec.config)
        except ConfigError as exc:
            raise NotReady(str(exc)) from exc
        if written:
            log.event("cloud.config_written", service=spec.name, files=written)

    def node_pass(self, state: ClusterState, catalog: Catalog) -> None:
        for name, record in (state.cloud.get("jobs") or {}).items():
            if record["node"] != self.node_id or record["state"] != "running":
                continue
            key = (name, record["attempt"])
            with self._lock:
                if key in self._running:
                    self._resend(name, key)
                    continue
                if record["since"] < self.started_at:
                    self._running[key] = _done_future()
                    self._report(name, record["attempt"], False, "interrupted: the agent restarted during the attempt")
                    continue
                self._running[key] = self._worker.submit(self._run_job, name, record["attempt"], state, catalog)

    def _resend(self, name: str, key: tuple[str, int]) -> None:
        """A report lost with a leader change: the state still says running."""
        outcome = self._outcome.get(key)
        if outcome is not None and time.monotonic() - outcome[2] >= RETRY:
            self._report(name, key[1], outcome[0], outcome[1])

    def _run_job(self, name: str, attempt: int, state: ClusterState, catalog: Catalog) -> None:
        job = JOBS[name]
        log.event("cloud.job_started", job=name, attempt=attempt)
        started = time.monotonic()
        try:
            ctx = context_from_state(state, catalog, self.identity, self.lab, self.node_id)
            self.host.write(render(job.config, ctx), job.config)
            detail = self.host.run(name, commands(name, ctx), job.timeout * self.time_scale)
            ok = True
        except (JobError, ConfigError, OSError) as exc:
            ok, detail = False, str(exc)
        log.event("cloud.job_finished", level="info" if ok else "warning", job=name, attempt=attempt, ok=ok,
                  seconds=round(time.monotonic() - started, 1), detail=detail)
        self._report(name, attempt, ok, detail)

    def _report(self, name: str, attempt: int, ok: bool, detail: str) -> None:
        self._outcome[(name, attempt)] = (ok, detail, time.monotonic())
        self.submit({"op": "job_report", "now": time.time(), "job": name, "node": self.node_id, "attempt": attempt,
                     "ok": ok, "detail": detail}, None)

    # -- status ----------------------------------------------------------------------
    @staticmethod
    def status_view(state: ClusterState) -> dict[str, Any] | None:
        jobs = state.cloud.get("jobs")
        if not jobs and not state.cloud.get("keys"):
            return None
        return {"jobs": {name: dict(record) for name, record in sorted((jobs or {}).items())},
                "keys": "made" if state.cloud.get("keys") else "not yet"}

    # -- the Monitor -------------------------------------------------------------------
    def monitor_pass(self, state: ClusterState, catalog: Catalog, term: int, now: float) -> None:
        for op in decide_cloud(state, catalog, time.time(), self.node_id, term, os.urandom):
            key = f"{op['op']}:{op.get('job', '')}:{op.get('attempt', '')}"
            with self._lock:
                if now - self._tried.get(key, float("-inf")) < RETRY:
                    continue
                self._tried[key] = now
            log.event("cloud.decision", op=op["op"], job=op.get("job"), node=op.get("node"), reason=op.get("reason"))
            self.submit(op, None)


def _done_future() -> Future[None]:
    future: Future[None] = Future()
    future.set_result(None)
    return future
