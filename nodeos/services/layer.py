"""The services layer of an agent: node-side convergence and the Service Monitor.

Runs in its own thread (every PASS seconds) so that health checks and ARP
probes never delay the agent's consensus loop:

* every node: converge its own services and VIPs (node.py),
  self-fenced when the agent says so;
* the lease holder only: apply the configured catalog once, allocate VIPs
  (ARP-probed free addresses of the nodes' subnet, or the configured range),
  propose the Monitor's decisions (monitor.py) and probe each VIP end to end.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from nodeos import log
from nodeos.stall import Stall, where_is
from . import arp
from nodeos.fencing.policy import Vip
from .catalog import Catalog, CatalogError, HealthCheckSpec, ServiceSpec, load_catalog, packaged_catalog, parse_catalog
from .health import CheckTarget, run_check
from .monitor import choose_node, decide
from .node import NodeServices
from .runtime import ProcessRuntime, Runtime, SystemdRuntime, mount_namespace_argv
from .systemd_bus import SystemdBus
from nodeos.cloud.host import host_for
from nodeos.cloud.layer import CloudLayer, ceph_clients, uses_cloud
from nodeos.storage.layer import StorageLayer
from nodeos.storage.node_volumes import NodeVolumes
from nodeos.storage import volumes as volume_io
from nodeos.storage.volumed import RemoteVolumes
from nodeos.cluster.split import OPERATOR_CATALOG
from nodeos.cluster.state import ClusterState, ServiceRecord
from .vip import VipManager, VipRangeError, candidate_vips, parse_vip_range

if TYPE_CHECKING:
    from nodeos.cluster.agent import Agent
    from nodeos.cluster.consensus import Consensus

# Node and Monitor passes run at once when an op other than a heartbeat is applied (a
# decision, a node lost, a report), when a local service's process exits or one of its
# checks fails (node.py), and when this node gains the lease. Between those, 10 times a
# second while anything is in flux; 4 times a second once all is settled, and twice a
# second for the Monitor thread of a node without the lease. 20 timed passes a second
# cost an idle agent a third of its CPU (issue 11, item 5), 10 a fifth.
PASS = 0.1
PASS_SETTLED = 0.25
PASS_NOT_MONITOR = 0.5
DECISION_RETRY = 2.0  # re-propose a decision whose commit we never saw
PROBE_INTERVAL = 0.5
PROBE_INTERVAL_SETTLED = 1.0  # once nothing moves, a VIP that stops answering is news within a second


def cluster_settled(state: ClusterState) -> bool:
    """Every node up, nothing moving, every service healthy where it runs: nothing the
    Monitor watches by the clock (a restart's back-off, a lost node's fence margin)."""
    up = set(state.up_nodes())
    if len(up) != len(state.nodes):
        return False
    for record in state.services.values():
        if record.migration:
            return False
        if record.placement == "singleton":
            if record.node is None or record.health.get(record.node, {}).get("state") != "healthy":
                return False
        elif any(report.get("state") not in ("healthy", "stopped") for node, report in record.health.items() if node in up):
            return False
    return True


def resolve_catalog_path(setting: str | None) -> Path | None:
    if setting is None:
        return None
    if "/" not in setting and not setting.endswith(".yaml") and packaged_catalog(setting).exists():
        return packaged_catalog(setting)  # a packaged catalog by name: lab, lab-storage, default
    return Path(setting)


class Refused(Exception):
    """An operator request that cannot be carried out; becomes an HTTP error reply."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _refusals_as_replies(handler: Callable[..., tuple[int, Any]]) -> Callable[..., tuple[int, Any]]:
    @functools.wraps(handler)
    def wrapped(*args: Any) -> tuple[int, Any]:
        try:
            return handler(*args)
        except Refused as refused:
            return refused.code, {"error": str(refused)}
    return wrapped


class ServicesLayer:
    def __init__(self, agent: "Agent") -> None:
        self.agent = agent
        self.me = agent.node_id
        runtime: Runtime = (ProcessRuntime(agent.state_dir / "services",
                                           enter=mount_namespace_argv(agent.mount_ns) if agent.mount_ns else ())
                            if agent.config.runtime == "process" else SystemdRuntime(bus=SystemdBus().unit_states))
        self.vips = VipManager(agent.iface.name)
        self.storage = StorageLayer(self.me, agent.iface.ip, str(agent.iface.network), agent.state_dir,
                                    agent.config.storage, self._submit)
        # Under systemd the agent is sandboxed (no mounts, no CAP_SYS_ADMIN): the volume helper attaches.
        io = volume_io if agent.config.runtime == "process" else RemoteVolumes()
        volumes = NodeVolumes(self.me, self.storage.ceph, self._submit_sync, io=io)
        node_root = getattr(agent, "node_root", Path("/"))
        # The lab's agent writes and runs as root itself; a node's sandboxed agent through transient units.
        host = host_for(agent.config.runtime, node_root, getattr(runtime, "enter", ()))
        self.cloud = CloudLayer(self.me, agent.identity, host, self._submit, lab=agent.config.runtime == "process",
                                time_scale=agent.config.service_time_scale)
        self.node = NodeServices(self.me, runtime, self.vips, self._submit, agent.guardian, ceph_dir=self.storage.root,
                                 volumes=volumes, root=node_root, prepare=self.cloud.prepare)
        self.node.add_check_values(self.cloud.check_values())
        self.consensus: "Consensus | None" = None
        self._stop = threading.Event()
        self._wake = {"services": threading.Event(), "monitor": threading.Event()}  # the state changed: pass now
        # Two threads: a node stuck stopping one of its services must not stall
        # the Monitor's decisions for the whole cluster (and the other way round).
        self.node.attention = self._wake["services"].set
        self._threads = [threading.Thread(target=self._loop, args=(self.node_pass, "services.pass_failed", self._wake["services"],
                                                                        self._node_period), name="services", daemon=True),
                         threading.Thread(target=self._loop, args=(self.monitor_pass, "monitor.pass_failed", self._wake["monitor"],
                                                                        self._monitor_period), name="monitor", daemon=True)]
        self._monitor_settled = False  # the last Monitor pass found nothing in flux (cluster_settled)
        self._catalog: tuple[int, Catalog | None] = (-1, None)
        self._inflight: dict[tuple[str, str], float] = {}
        self._inflight_lock = threading.Lock()
        self._catalog_proposed = 0.0
        self._vip_probe: Future | None = None
        self._probes: dict[str, tuple[float, Future | None]] = {}
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="monitor-probe")
        self._lock = threading.Lock()
        self.last_pass = time.monotonic()
        self.last_monitor_pass = time.monotonic()

    # -- lifecycle -----------------------------------------------------------
    def attach(self, consensus: "Consensus") -> None:
        """Consensus started: the passes begin (again, after a rejoin: the threads already turn)."""
        self.consensus = consensus
        consensus.cluster.on_changed = self._state_changed
        for thread in self._threads:
            if not thread.is_alive():
                thread.start()

    def detach(self) -> None:
        """The node left its Raft group to join again (agent._leave_to_rejoin): passes idle, fenced."""
        if self.consensus is not None:
            self.consensus.cluster.on_changed = None
        self.consensus = None

    def _state_changed(self) -> None:
        """pysyncobj's thread applied an op other than a heartbeat: both passes run now."""
        for event in self._wake.values():
            event.set()

    def shutdown(self) -> None:
        self._stop.set()
        self._state_changed()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=10)
        with self._lock:
            self.node.stop_everything()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.storage.shutdown()
        self.cloud.shutdown()

    def healthy(self, now: float, limit: float) -> bool:
        """False when convergence or the Monitor is stuck (a hung check, runtime or netlink call)."""
        return self.consensus is None or (now - self.last_pass < limit and now - self.last_monitor_pass < limit)

    def stalled(self, now: float, after: float) -> list[Stall]:
        """The passes that have not finished for `after` seconds, each with where its thread is now
        (the watchdog restarts the agent soon: this says what it was waiting on)."""
        if self.consensus is None:
            return []
        ages = {"services": now - self.last_pass, "monitor": now - self.last_monitor_pass}
        return [Stall(thread.name, round(ages[thread.name], 1), where_is(thread))
                for thread in self._threads if ages[thread.name] >= after]

    def _submit(self, op: dict[str, Any], callback: Any = None) -> None:
        if self.consensus is not None:
            self.consensus.submit(op, callback)

    def _submit_sync(self, op: dict[str, Any]) -> dict[str, Any]:
        """Propose and wait for the commit (ConsensusError when there is none in time)."""
        assert self.consensus is not None
        return self.consensus.submit_sync(op, timeout=5.0)

    def _loop(self, step: Callable[[float], None], failure: str, wake: threading.Event, period: Callable[[], float]) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            wake.clear()  # before the pass: a change applied during it brings the next one at once
            try:
                step(started)
            except Exception as exc:  # keep going; one bad pass must not end the thread
                log.event(failure, level="error", error=repr(exc))
            wake.wait(max(0.0, period() - (time.monotonic() - started)))

    def _node_period(self) -> float:
        return PASS_SETTLED if self.node.settled else PASS

    def _monitor_period(self) -> float:
        if not self.agent.may_act():
            return PASS_NOT_MONITOR
        return PASS_SETTLED if self._monitor_settled else PASS

    def lease_acquired(self) -> None:
        """The agent gained the Monitor lease: its first pass runs now, not at the next slow turn."""
        self._wake["monitor"].set()

    def _snapshot(self) -> ClusterState:
        assert self.consensus is not None
        return self.consensus.cluster.snapshot(threading.current_thread().name)

    def node_pass(self, now: float) -> None:
        if self.consensus is None:  # between two memberships: fenced (the guard holds nothing), per-node services stay
            self.last_pass = time.monotonic()
            return
        # Fenced first, the state after: evidence stamped before this check comes after
        # the rejoin barrier (cluster/rejoin.py), so the snapshot taken next holds every
        # decision made without this node; the other order could pair an old state with a grant.
        fenced = self.agent.fenced()
        snapshot = self._snapshot()
        catalog = self.catalog_of(snapshot)
        with self._lock:
            if catalog is not None:
                if uses_ceph(catalog):
                    self.storage.node_pass(snapshot)  # the files the Ceph services start from
                if uses_cloud(catalog):
                    self.cloud.node_pass(snapshot, catalog)
                self.node.converge(snapshot, catalog, fenced, now)
            elif fenced:
                self.node.release_singletons(None)
        self.last_pass = time.monotonic()

    def monitor_pass(self, now: float) -> None:
        settled = False
        if self.consensus is not None and self.agent.may_act():
            snapshot = self._snapshot()
            catalog = self.catalog_of(snapshot)
            self._monitor_pass(snapshot, catalog, now)
            with self._inflight_lock:
                settled = catalog is not None and not self._inflight and cluster_settled(snapshot)
        self._monitor_settled = settled
        self.last_monitor_pass = time.monotonic()

    def _term(self) -> int:
        assert self.consensus is not None
        return self.consensus.term()

    def catalog_of(self, state: ClusterState) -> Catalog | None:
        version, catalog = self._catalog
        if version != state.catalog_version:
            catalog = Catalog.from_dict(state.catalog) if state.catalog is not None else None
            self._catalog = (state.catalog_version, catalog)
        return catalog

    # -- the Monitor ---------------------------------------------------------------
    def _monitor_pass(self, state: ClusterState, catalog: Catalog | None, now: float) -> None:
        if state.catalog is None:
            self._apply_configured_catalog(now)
            return
        assert catalog is not None
        self._allocate_vip(state, catalog)
        assert self.consensus is not None
        term = self.consensus.term()  # the fencing token: ops of a deposed Monitor are refused in apply
        for op in decide(state, catalog, time.time(), self.me, term):
            self._propose_decision(op, now)
        if uses_ceph(catalog):
            volumes = {s.name: (s.volume.size, s.volume.fs) for s in catalog if s.volume is not None}
            self.storage.monitor_pass(state, term, now, volumes, ceph_clients(catalog))
        if uses_cloud(catalog):
            self.cloud.monitor_pass(state, catalog, term, now)
        self._probe_vips(state, catalog, now)

    def _apply_configured_catalog(self, now: float) -> None:
        path = resolve_catalog_path(self.agent.config.catalog)
        if path is None or now - self._catalog_proposed < 5.0:
            return
        self._catalog_proposed = now
        try:
            catalog = load_catalog(path).scaled(self.agent.config.service_time_scale)
        except CatalogError as exc:
            log.event("catalog.rejected", level="error", error=str(exc))
            return
        self._submit({"op": "catalog_set", "now": time.time(), "catalog": catalog.to_dict(), "reason": f"image config ({path})",
                      "term": self._term()})

    def _propose_decision(self, op: dict[str, Any], now: float) -> None:
        key = (op["service"], op.get("node") or op.get("to") or "")
        with self._inflight_lock:
            if now - self._inflight.get(key, float("-inf")) < DECISION_RETRY:
                return
            self._inflight[key] = now
        log.event("monitor.decision", op=op["op"], service=op["service"], node=op.get("node") or op.get("to"), reason=op.get("reason"))

        def committed(result: Any, error: Any, key: tuple[str, str] = key) -> None:
            with self._inflight_lock:
                self._inflight.pop(key, None)
            if error or not (result or {}).get("ok", False):
                log.event("monitor.decision_failed", level="warning", service=key[0], error=error or (result or {}).get("error"))

        self._submit(op, committed)

    def _allocate_vip(self, state: ClusterState, catalog: Catalog) -> None:
        """One VIP at a time: ARP-probe a candidate off the consensus thread."""
        if self._vip_probe is not None:
            if not self._vip_probe.done():
                return
            result, self._vip_probe = self._vip_probe.result(), None
            if result is not None:
                service, vip = result
                self._submit({"op": "vip_assign", "now": time.time(), "service": service, "vip": vip, "reason": "ARP-probed free",
                              "term": self._term()})
            return
        needing = [s.name for s in catalog.singletons() if s.vip and state.services.get(s.name) and state.services[s.name].vip is None]
        if not needing:
            return
        taken = {r.vip for r in state.services.values() if r.vip} | {n.ip for n in state.nodes.values()}
        try:
            candidates = self._vip_candidates(taken)
        except VipRangeError as exc:
            log.event("vip.range_invalid", level="error", error=str(exc))
            return
        self._vip_probe = self._pool.submit(self._first_free, needing[0], candidates)

    def _vip_candidates(self, taken: set[str]) -> list[str]:
        configured = self.agent.config.vip_range
        if configured:
            return [ip for ip in parse_vip_range(configured) if ip not in taken][:8]
        return candidate_vips(str(self.agent.iface.network), taken, 8)

    def _first_free(self, service: str, candidates: list[str]) -> tuple[str, str] | None:
        for vip in candidates:
            if not arp.probe_in_use(self.agent.iface.name, vip, timeout=0.3):
                return service, vip
            log.event("vip.in_use", service=service, vip=vip)
        log.event("vip.none_free", level="error", service=service, tried=candidates)
        return None

    def _probe_vips(self, state: ClusterState, catalog: Catalog, now: float) -> None:
        """End-to-end: can a client reach each singleton through its VIP?"""
        for spec in catalog.singletons():
            record = state.services.get(spec.name)
            if record is None or not record.vip or spec.port is None:
                continue
            if record.health.get(record.node or "", {}).get("state") in (None, "starting", "stopped"):
                continue  # nothing to reach yet; probing now would only log noise
            last, future = self._probes.get(spec.name, (float("-inf"), None))
            if future is not None and future.done():
                ok, detail = future.result()
                self._probes[spec.name] = (last, None)
                if record.probe.get("ok") != ok:
                    self._submit({"op": "probe", "now": time.time(), "service": spec.name, "ok": ok, "detail": detail,
                                  "term": self._term()})
            elif future is None and now - last >= (PROBE_INTERVAL_SETTLED if self._monitor_settled else PROBE_INTERVAL):
                self._probes[spec.name] = (now, self._pool.submit(_probe_through_vip, spec, record.vip))

    # -- operator API -----------------------------------------------------------------
    def holding_view(self, state: ClusterState) -> dict[str, Any]:
        """What this node really holds now (addresses on the link, live processes), not what it believes."""
        vips = {Vip(self.vips.ifname, r.vip) for r in state.services.values() if r.vip}
        singletons = {n: self.node.runtime.fence_target(n) for n, r in state.services.items() if r.placement == "singleton"}
        return self.agent.guardian.actually_held(vips, singletons)

    def status_view(self, state: ClusterState) -> list[dict[str, Any]]:
        rows = []
        for name, record in sorted(state.services.items()):
            if record.placement == "singleton":
                health = record.health.get(record.node or "", {}).get("state", "-") if record.node else "unplaced"
                instance = record.instances.get(record.node or "")
                note = f"moving from {record.migration['from']} ({record.migration['phase']})" if record.migration else ""
                if record.probe and not record.probe.get("ok"):
                    note = (note + "; " if note else "") + "VIP probe failing"
                note = _join(note, _health_note(record, record.node, instance))
                rows.append({"name": name, "placement": "singleton", "node": record.node, "vip": record.vip, "health": health,
                             "restarts": instance.restarts if instance else 0, "generation": instance.generation if instance else 0,
                             "migration": record.migration, "probe": record.probe, "note": note})
            else:
                up = state.up_nodes()
                if record.placement == "ceph-mons":
                    up = [n for n in up if n in (state.storage.get("mons") or {})]
                healthy = sum(1 for n in up if record.health.get(n, {}).get("state") == "healthy")
                restarts = sum(i.restarts for i in record.instances.values())
                notes = [f"{n}: {note}" for n in up if (note := _health_note(record, n, record.instances.get(n)))]
                rows.append({"name": name, "placement": record.placement, "node": record.placement, "vip": None,
                             "health": f"healthy {healthy}/{len(up)}", "restarts": restarts,
                             "instances": {n: record.health.get(n, {}).get("state") for n in up}, "note": "; ".join(notes)})
        return rows

    def get_routes(self) -> dict[str, Any]:
        def catalog(_: dict[str, Any]) -> tuple[int, Any]:
            assert self.consensus is not None
            return 200, self.consensus.cluster.read(lambda s: {"version": s.catalog_version, "catalog": s.catalog})

        def local(_: dict[str, Any]) -> tuple[int, Any]:
            with self._lock:
                return 200, {"node_id": self.me, "services": self.node.local_view(), "vips": sorted(self.vips.held())}

        return {"/catalog": catalog, "/local": local}

    def post_routes(self) -> dict[str, Any]:
        return {"/catalog": self._post_catalog, "/service/restart": self._post_restart, "/service/move": self._post_move}

    def _sync(self, op: dict[str, Any]) -> tuple[int, Any]:
        from nodeos.cluster.consensus import ConsensusError

        if self.consensus is None:
            return 503, {"error": "this node is not a cluster member yet"}
        try:
            result = self.consensus.submit_sync(op, timeout=5.0)
        except ConsensusError as exc:
            return 503, {"error": str(exc)}
        return (200, result) if result.get("ok") else (400, result)

    def _post_catalog(self, params: dict[str, Any]) -> tuple[int, Any]:
        text, source = params.get("text"), str(params.get("source") or "<catalog>")
        if not isinstance(text, str):
            return 400, {"error": "body needs 'text' (the catalog YAML)"}
        try:
            catalog = parse_catalog(text, source)
        except CatalogError as exc:
            return 400, {"error": str(exc)}
        return self._sync({"op": "catalog_set", "now": time.time(), "catalog": catalog.to_dict(), "reason": f"operator ({source})",
                           "source": OPERATOR_CATALOG})

    def _lookup(self, params: dict[str, Any]) -> tuple[ClusterState, ServiceRecord]:
        """The state and the named service's record; Refused when there is none."""
        if self.consensus is None:
            raise Refused(503, "this node is not a cluster member yet")
        state = self.consensus.cluster.read(lambda s: s.snapshot(with_events=False))
        record = state.services.get(str(params.get("name")))
        if record is None:
            raise Refused(404, f"no service {params.get('name')!r} (have: {', '.join(sorted(state.services)) or 'none'})")
        return state, record

    @_refusals_as_replies
    def _post_restart(self, params: dict[str, Any]) -> tuple[int, Any]:
        state, record = self._lookup(params)
        nodes = [record.node] if record.placement == "singleton" else state.up_nodes()
        if not nodes or nodes == [None]:
            return 409, {"error": f"{record.name} is not placed on any node"}
        for node in nodes:
            code, result = self._sync({"op": "restart", "now": time.time(), "service": record.name, "node": node, "backoff_until": 0.0,
                                       "counts": False, "reason": "operator request", "by": f"operator via {self.me}"})
            if code != 200:
                return code, result
        return 200, {"ok": True, "service": record.name, "nodes": nodes}

    @_refusals_as_replies
    def _post_move(self, params: dict[str, Any]) -> tuple[int, Any]:
        state, record = self._lookup(params)
        if record.placement != "singleton":
            return 409, {"error": f"{record.name} runs on every node; only singletons move"}
        wanted = params.get("to")
        target: str | None
        if wanted:
            matches = [n for n in state.up_nodes() if n.startswith(str(wanted))]
            if len(matches) != 1:
                return 400, {"error": f"--to {wanted}: {'no' if not matches else 'several'} up node(s) match (up: {', '.join(state.up_nodes())})"}
            target = matches[0]
        else:
            target = choose_node(state, {record.node} if record.node else set())
        if target is None or target == record.node:
            return 409, {"error": f"no other up node to move {record.name} to"}
        return self._sync({"op": "migrate", "now": time.time(), "service": record.name, "to": target,
                           "reason": "operator request", "by": f"operator via {self.me}"})


def _health_note(record: ServiceRecord, node: str | None, instance: Any) -> str:
    """Why an instance is not healthy: the failing check (its layer) and a dependency hold."""
    report = record.health.get(node or "", {})
    note = ""
    if report.get("state") in ("unhealthy", "failed", "slow") and report.get("detail"):
        note = str(report["detail"])[:160]
    if instance is not None and instance.waiting_for:
        note = _join(note, f"held: waiting for {', '.join(instance.waiting_for)}")
    return note


def _join(first: str, second: str) -> str:
    return f"{first}; {second}" if first and second else first or second


def uses_ceph(catalog: Catalog) -> bool:
    """Does the catalog run Ceph (its mons have their own placement)?"""
    return any(spec.placement == "ceph-mons" for spec in catalog)


def vip_probe_spec(spec: ServiceSpec) -> HealthCheckSpec:
    """The service's own HTTP check if it has one, else a TCP connect to its port."""
    for check in spec.health:
        if check.type == "http":
            return dataclasses.replace(check, timeout=min(check.timeout, 0.5))
    return HealthCheckSpec(type="tcp", port=spec.port, timeout=0.5)


def _probe_through_vip(spec: ServiceSpec, vip: str) -> tuple[bool, str]:
    result = run_check(vip_probe_spec(spec), CheckTarget(host=vip))
    return result.ok, result.detail
