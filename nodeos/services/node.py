"""The node side of services: converge THIS node toward the desired state.

Safe to run again at any time (kubelet style): each pass compares what the
replicated state wants on this node with what runs here, starts, restarts or
stops services and adds or removes VIPs, runs due health checks, and reports
changes of its instances' health back (rate-limited). A fenced node (no
quorum-backed leader for longer than its lease) runs no singleton and holds
no VIP, whatever the last state it saw said.
"""

from __future__ import annotations

import time
from pathlib import Path
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

from nodeos import log
from . import arp
from .catalog import Catalog, ServiceSpec, render_template
from .exits import ExitWatch
from .health import CheckResult, CheckTarget, ServiceHealth, run_check
from .placement import release_set
from .runtime import Runtime, ServiceContext, ServiceRuntimeError
from nodeos.cluster.state import ClusterState
from nodeos.storage.decide import volume_ready
from nodeos.storage.node_volumes import NodeVolumes
from nodeos.storage.volume_spec import VolumeError
from .vip import PRESENT_TTL, VipError, VipManager

REPORT_MIN_INTERVAL = 0.2
# The holder re-announces its VIPs this often: clients that learned another
# MAC while two nodes may have answered (a clone, a healed partition) move back.
REANNOUNCE_INTERVAL = 1.0


class NotReady(Exception):
    """A service's start must wait (its configuration cannot be written yet); not a failure."""


# Writes a service's configuration files before it starts (nodeos/cloud/layer.py); raises NotReady to wait.
Prepare = Callable[[ServiceSpec, ClusterState, Catalog], None]


class FenceGate(Protocol):
    """What the node side needs from fencing (guardian.Guardian): claim before taking."""

    def claim_vip(self, ifname: str, ip: str, prefixlen: int = 32) -> bool: ...

    def claim_service(self, name: str, target: dict[str, str]) -> bool: ...

    def release_vip(self, ifname: str, ip: str, prefixlen: int = 32) -> None: ...

    def release_service(self, name: str) -> None: ...

    def still_valid(self) -> bool: ...


@dataclass
class Desired:
    run: bool
    generation: int = 0
    vip: str | None = None
    release_pending: bool = False  # a migration waits for this node to confirm it stopped
    waiting_for: list[str] = field(default_factory=list)  # dependencies not healthy yet


@dataclass
class Local:
    generation: int
    health: ServiceHealth
    vip: str | None
    started: float
    pending: dict[int, Future] = field(default_factory=dict)
    state: str = "starting"
    detail: str = ""
    stuck: bool = False  # the previous instance survived SIGKILL: this generation was never started


def volume_may_attach(state: ClusterState, service: str, me: str) -> bool:
    return volume_ready(state, service, me) and me in state.storage.get("registered", [])


def desired_here(state: ClusterState, catalog: Catalog, me: str, fenced: bool, running: set[str]) -> dict[str, Desired]:
    """What this node should run, from the replicated state (pure)."""
    out: dict[str, Desired] = {}
    healthy_somewhere = state.healthy_services()
    for name in catalog.start_order():
        record = state.services.get(name)
        if record is None:
            continue
        spec = catalog[name]
        instance = record.instances.get(me)
        generation = instance.generation if instance else 0
        migration = record.migration
        if spec.placement == "ceph-mons":
            want = Desired(me in (state.storage.get("mons") or {}), generation)
        elif spec.singleton:
            # While any node may still hold it, its node waits and every such node
            # stops it and confirms with a `stopped` report after the decision.
            releasing = migration is not None and migration["phase"] == "releasing"
            run = record.node == me and not fenced and not releasing
            report = record.health.get(me, {})
            confirmed = releasing and report.get("state") == "stopped" and report.get("seq", -1) > migration["seq"]
            release = releasing and me in release_set(migration) and not confirmed
            want = Desired(run, generation, record.vip if spec.vip else None, release)
        else:
            want = Desired(True, generation)
        # Dependencies order the first start only; a running service is never
        # stopped because a dependency blinked.
        missing = [d for d in spec.depends_on if d not in healthy_somewhere]
        if want.run and missing and name not in running:
            want.run, want.waiting_for = False, missing
        jobs = [f"job {j}" for j in spec.jobs if (state.cloud.get("jobs") or {}).get(j, {}).get("state") != "done"]
        if want.run and jobs and name not in running:
            want.run, want.waiting_for = False, jobs  # one-time steps (schema, bootstrap) come first
        if want.run and spec.volume is not None and not volume_may_attach(state, name, me):
            want.run, want.waiting_for = False, ["volume"]  # its image, or the previous holder's fence
        out[name] = want
    return out


class NodeServices:
    def __init__(self, node_id: str, runtime: Runtime, vips: VipManager, submit: Callable[[dict[str, Any]], None],
                 gate: FenceGate, ceph_dir: Path | None = None, volumes: NodeVolumes | None = None,
                 root: Path = Path("/"), prepare: Prepare | None = None) -> None:
        self.node_id = node_id
        self.root = root
        self.prepare = prepare
        self._pass: tuple[ClusterState, Catalog] | None = None  # what prepare() renders from
        self._not_ready: dict[str, str] = {}
        self.ceph_dir = ceph_dir
        self.volumes = volumes
        self.runtime = runtime
        self.vips = vips
        self.submit = submit
        self.gate = gate
        self._announced: dict[str, float] = {}
        self._announcer = arp.Announcer(vips.ifname)
        self._seen = -1  # log position of the state this pass acts on
        self.local: dict[str, Local] = {}
        self._reported: dict[str, tuple[str, int]] = {}
        self._last_report: dict[str, float] = {}
        self._checks = ThreadPoolExecutor(max_workers=4, thread_name_prefix="check")
        # What wakes the services pass between its turns: a main process that exits, a check
        # that fails (the layer sets it). Passes may then turn slowly while all is well.
        self.attention: Callable[[], None] = lambda: None
        self._exits = ExitWatch(lambda: self.attention())
        self.settled = False  # the last pass found every local service healthy, nothing to start or stop
        self._fenced_logged = False
        self._check_values = {"node_id": node_id, "ceph_dir": str(ceph_dir or "")}

    def add_check_values(self, values: dict[str, str]) -> None:
        """Secrets the service-specific checks log in with (nodeos/cloud/layer.py)."""
        self._check_values = {**self._check_values, **values}

    # -- one pass ------------------------------------------------------------
    def converge(self, state: ClusterState, catalog: Catalog, fenced: bool, now: float) -> None:
        self._seen = state.applied
        if self._pass is None or self._pass[1] is not catalog:
            self.runtime.know(catalog)
        self._pass = (state, catalog)
        if fenced != self._fenced_logged:
            log.event("fence.engaged" if fenced else "fence.released", level="warning" if fenced else "info")
            self._fenced_logged = fenced
        desired = desired_here(state, catalog, self.node_id, fenced, set(self.local))
        if self.volumes is not None:
            # Before anything else: a volume this node must not hold (a crash's leftover, fenced, moved away).
            keep = {n for n, want in desired.items() if want.run or (n in self.local and catalog[n].volume)}
            self.volumes.detach_unwanted(state, keep, lambda op: self.submit(op))
        for name in list(self.local):
            if name not in desired:
                self._stop(name, reason="removed from the catalog", report=False)
        held = self._present_vips()
        for name, want in desired.items():
            spec = catalog[name]
            if want.run:
                self._ensure_running(spec, want, now, held)
            elif name in self.local or self.runtime.is_running(name):
                self._stop(name, reason="fenced" if fenced and spec.singleton else "not placed here", report=name in state.services)
            elif want.release_pending:
                self._report(name, "stopped", 0, "not running here", now, force=True)
            if not want.run and want.vip and want.vip in held:
                self._remove_vip(want.vip)  # e.g. left by a previous agent process
        self._run_checks(catalog, now, {n: r.vip for n, r in state.services.items() if r.vip})
        self._reannounce(held, now)
        # Exactly what should run here runs, and all of it is healthy.
        running_here = {name for name, want in desired.items() if want.run}
        self.settled = not fenced and set(self.local) == running_here and all(
            local.state == "healthy" and not local.stuck for local in self.local.values())

    # -- starting and stopping -------------------------------------------------
    def _ensure_running(self, spec: ServiceSpec, want: Desired, now: float, held: set[str]) -> None:
        local = self.local.get(spec.name)
        if local is not None and local.generation >= want.generation:
            if want.vip and not local.stuck and (local.vip != want.vip or want.vip not in held):
                # Also after a fence took it away while this process was hung.
                if self._add_vip(want.vip):
                    local.vip = want.vip
            return  # running (or failed: restarting is the Monitor's decision)
        if local is not None:
            log.event("service.restarting", service=spec.name, generation=want.generation)
            error = self._stop_process(spec.name)
            if error is not None:
                self._stuck(spec, want, error, now)
                return
        if not self._configured(spec):
            return
        if want.vip and not self._add_vip(want.vip):  # before the service: it may bind the VIP
            return
        if spec.singleton and not self.gate.claim_service(spec.name, self.runtime.fence_target(spec.name)):
            if not self.runtime.is_running(spec.name):
                self.gate.release_service(spec.name)  # nothing taken: nothing for the guard to answer for
            return  # no valid grant: a singleton never starts unguarded
        ctx = ServiceContext(node_id=self.node_id, vip=want.vip, ceph_dir=self.ceph_dir, root=self.root)
        try:
            self._prepare_volume(spec, ctx)
            self.runtime.start(spec, ctx)
            detail = "started"
        except (ServiceRuntimeError, VolumeError) as exc:
            detail = f"start failed: {exc}"
            log.event("service.start_failed", level="error", service=spec.name, error=str(exc))
        self.local[spec.name] = Local(want.generation, ServiceHealth(spec.health, now), want.vip, now)
        if detail != "started":
            self.local[spec.name].state = "failed"
            self.local[spec.name].detail = detail
            self._report(spec.name, "failed", want.generation, detail, now)
        else:
            self._report(spec.name, "starting", want.generation, detail, now, force=True)

    def _stuck(self, spec: ServiceSpec, want: Desired, error: str, now: float) -> None:
        """The old process outlived SIGKILL (D state: I/O on a volume that does not answer). Starting
        beside it would only find it "running": report the new generation failed and stuck, so the
        Monitor moves the service (fencing its volume first, which fails the pending I/O)."""
        local = self.local.get(spec.name)
        vip = local.vip if local is not None else None
        stuck = Local(want.generation, ServiceHealth(spec.health, now), vip, now, state="failed",
                      detail=f"stuck: {error}", stuck=True)
        self.local[spec.name] = stuck
        log.event("service.stuck", level="error", service=spec.name, generation=want.generation, error=error)
        self._report(spec.name, "failed", want.generation, stuck.detail, now, force=True, stuck=True)

    def _configured(self, spec: ServiceSpec) -> bool:
        """Its configuration written from the state; False (logged once per reason) while that must wait."""
        if self.prepare is None or self._pass is None:
            return True
        try:
            self.prepare(spec, *self._pass)
        except Exception as exc:  # NotReady: waits; anything else (a full disk): waits too, said louder
            if self._not_ready.get(spec.name) != str(exc):
                self._not_ready[spec.name] = str(exc)
                log.event("service.not_ready", level="info" if isinstance(exc, NotReady) else "error",
                          service=spec.name, reason=str(exc))
            return False
        self._not_ready.pop(spec.name, None)
        return True

    def _prepare_volume(self, spec: ServiceSpec, ctx: ServiceContext) -> None:
        """Attach, record and mount the service's volume before it starts (node_volumes.py)."""
        if spec.volume is None:
            return
        if self.volumes is None:
            raise VolumeError(f"{spec.name} has a volume but this node runs no storage")
        run_dir = getattr(self.runtime, "run_dir", lambda _name: "")(spec.name)
        values = spec.template_values(node_id=self.node_id, run_dir=run_dir, vip=ctx.vip, bind=ctx.bind,
                                      ceph_dir=ctx.ceph_dir or "", root=ctx.root)
        self.volumes.prepare(spec.name, spec.volume.fs, render_template(spec.volume.mount, values))

    def _stop(self, name: str, reason: str, report: bool) -> None:
        local = self.local.pop(name, None)
        self._exits.forget(name)  # an exit we cause is no news
        if local is not None and local.vip:
            self._remove_vip(local.vip)  # first: clients stop coming while it stops
        error = self._stop_process(name)
        if error is None:
            self.gate.release_service(name)
            if self.volumes is not None and name in self.volumes.held_here():
                # After the process (it may flush on exit); fenced: do not wait on OSDs it may not reach.
                self.volumes.release(name, lambda op: self.submit(op), fenced=reason == "fenced")
        if error is not None:
            # Its VIP is gone; a volume stays attached here, and the Monitor fences its client before
            # another node attaches it (invariant 3): a release may go on without this process.
            reason = f"{reason}; stop failed: {error}"
        log.event("service.stopped", service=name, reason=reason)
        if report:
            self._report(name, "stopped", local.generation if local else 0, reason, time.monotonic(), force=True)

    def _stop_process(self, name: str) -> str | None:
        """Stop the service's processes; None when they are gone, else why not."""
        try:
            self.runtime.stop(name)
            return None
        except ServiceRuntimeError as exc:
            log.event("service.stop_failed", level="error", service=name, error=str(exc))
            return str(exc)

    def _add_vip(self, vip: str) -> bool:
        """Claim (the guard must confirm a valid grant), add, then announce if still valid."""
        if not self.gate.claim_vip(self.vips.ifname, vip, 32):
            if vip not in self._present_vips(max_age=0.0):
                self.gate.release_vip(self.vips.ifname, vip, 32)  # nothing taken: nothing to answer for
            return False
        try:
            self.vips.add(vip, 32, announce=False)
        except VipError as exc:
            log.event("vip.add_failed", level="error", vip=vip, error=str(exc))
            return False
        self._announce(vip, time.monotonic())
        return True

    def _remove_vip(self, vip: str) -> None:
        try:
            self.vips.remove(vip)
            self.gate.release_vip(self.vips.ifname, vip, 32)
            self._announced.pop(vip, None)
        except VipError as exc:
            log.event("vip.remove_failed", level="error", vip=vip, error=str(exc))

    def _announce(self, vip: str, now: float, count: int | None = None) -> None:
        # A gratuitous ARP moves every client's cache: never send one on a stale grant.
        if not self.gate.still_valid():
            return
        try:
            self._announcer.announce(vip, count=count or self.vips.announce_count)
            self._announced[vip] = now
        except OSError as exc:
            log.event("vip.announce_failed", level="warning", vip=vip, error=str(exc))

    def _reannounce(self, held: set[str], now: float) -> None:
        for local in self.local.values():
            vip = local.vip
            if vip and vip in held and now - self._announced.get(vip, float("-inf")) >= REANNOUNCE_INTERVAL:
                self._announce(vip, now, count=1)

    def _present_vips(self, max_age: float = PRESENT_TTL) -> set[str]:
        try:
            return self.vips.present(max_age)
        except VipError:
            return set()

    def release_singletons(self, catalog: Catalog | None) -> None:
        """Self-fencing at once (used on shutdown too): no singleton, no VIP."""
        for name in list(self.local):
            if catalog is None or name not in catalog or catalog[name].singleton:
                self._stop(name, reason="fenced", report=False)

    def stop_everything(self) -> None:
        for name in list(self.local):
            self._stop(name, reason="agent stopping", report=False)
        self._checks.shutdown(wait=False, cancel_futures=True)
        self._exits.stop()

    # -- health -------------------------------------------------------------------
    def _run_checks(self, catalog: Catalog, now: float, vips: Mapping[str, str]) -> None:
        for name, local in list(self.local.items()):  # a stuck instance whose process is gone leaves
            if name not in catalog:
                continue
            pid = self.runtime.main_pid(name)
            self._exits.watch(name, pid)
            if local.stuck:
                self._watch_stuck(name, local, pid, now)
                continue
            if pid is None:
                # A dead main process is definite: no need to wait for `fall` checks.
                if local.state != "failed":
                    local.state, local.detail = "failed", "process exited"
                    log.event("service.exited", level="warning", service=name, generation=local.generation)
                self._report(name, "failed", local.generation, local.detail, now)
                continue
            self._collect(local, now)
            target = CheckTarget(host="127.0.0.1", pid=pid, values=self._check_values, vip=local.vip, vips=vips)
            for index in local.health.due(now):
                if index not in local.pending:
                    local.pending[index] = future = self._checks.submit(run_check, local.health.check_spec(index), target)
                    future.add_done_callback(self._check_finished)
            new_state = local.health.state
            if local.state != "failed" or new_state == "healthy":
                local.state = new_state
            detail = "; ".join(f"{d['type']}: {d['detail']}" for d in local.health.details() if d["detail"] and d["ok"] is False)
            self._report(name, local.state, local.generation, detail or local.state, now)

    def _check_finished(self, future: Future) -> None:
        """A failing check wakes the pass: it is counted now, not at the pass's next turn."""
        try:
            ok = future.result().ok
        except Exception:
            ok = False
        if not ok:
            self.attention()

    def _watch_stuck(self, name: str, local: Local, pid: int | None, now: float) -> None:
        """A stuck instance is not checked: it is failed until its old process is gone; then it is
        forgotten, so the next pass starts its generation here (if the service is still placed here)."""
        if pid is None:
            log.event("service.unstuck", service=name, generation=local.generation)
            self.local.pop(name, None)
            return
        self._report(name, "failed", local.generation, local.detail, now, stuck=True)

    def _collect(self, local: Local, now: float) -> None:
        for index, future in list(local.pending.items()):
            if future.done():
                del local.pending[index]
                try:
                    result = future.result()
                except Exception as exc:  # run_check already catches; belt and braces
                    result = CheckResult(False, repr(exc), 0.0)
                local.health.record(index, result, now)

    def _report(self, name: str, state: str, generation: int, detail: str, now: float, force: bool = False,
                stuck: bool = False) -> None:
        key = (state, generation)
        if not force and self._reported.get(name) == key:
            return
        if not force and now - self._last_report.get(name, float("-inf")) < REPORT_MIN_INTERVAL:
            return  # rate limit: the latest state goes out on a later pass
        self._reported[name] = key
        self._last_report[name] = now
        op = {"op": "report_health", "now": time.time(), "service": name, "node": self.node_id,
              "state": state, "generation": generation, "detail": detail, "seen": self._seen}
        if stuck:
            op["stuck"] = True
        self.submit(op)

    def local_view(self) -> dict[str, Any]:
        return {name: {"generation": l.generation, "state": l.state, "vip": l.vip, "pid": self.runtime.main_pid(name)}
                for name, l in self.local.items()}
