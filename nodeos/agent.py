"""The node agent: one loop that discovers, forms, leads and reconciles.

Threads: the discovery receiver, pysyncobj's tick thread, the control
servers, and this module's main loop, which every `TICK` seconds

1. advances formation (until this node is a member of a group),
2. sends a beacon when due (or at once after a phase change),
3. tracks leadership, proposes lease heartbeats, and computes the Monitor
   lease (lease.py) and the self-fencing clock,
4. as lease holder, runs the Monitor (node liveness and, via `services`,
   the Service Monitor's decisions), and handles join requests,
5. lets the node side of the services (`services`) converge this node.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import psutil

from . import log, sdnotify
from .beacon import BeaconCodec, Message
from .config import NodeConfig
from .consensus import Consensus, dropped_connections
from .discovery import Discovery, detect_interface
from .formation import FormationParams, FormationState, Group, Member, Offer, PeerView, step
from .identity import ClusterIdentity, load_or_create_node_id, write_private
from .lease import FenceClock, LeaseClock

TICK = 0.02
STATUS_SCHEMA = 1


def load_membership(state_dir: Path) -> Group | None:
    try:
        data = json.loads((state_dir / "membership.json").read_text())
        return Group.from_wire(data)
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise RuntimeError(f"{state_dir / 'membership.json'}: unreadable ({exc}); refusing to guess membership") from exc


def save_membership(state_dir: Path, group: Group) -> None:
    # fsynced and atomic: a node must never forget it belongs to a group.
    write_private(state_dir / "membership.json", json.dumps(group.to_wire()))


class Agent:
    def __init__(self, config: NodeConfig, identity: ClusterIdentity, state_dir: Path) -> None:
        self.config = config
        self.identity = identity
        self.state_dir = state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(state_dir, 0o700)
        self.node_id = load_or_create_node_id(state_dir)
        self.iface = detect_interface(config.interface)
        self.raft_addr = f"{self.iface.ip}:{config.raft_port}"
        log.configure(node=self.node_id)
        t = config.timing
        self.params = FormationParams(config.bootstrap_expect, t.formation_settle, t.formation_offer_timeout, peer_timeout=max(3.0, 4 * t.beacon_interval))
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self.started_mono = time.monotonic()
        self.peers: dict[str, PeerView] = {}
        self._peer_ts: dict[str, float] = {}
        membership = load_membership(state_dir)
        self.formation = FormationState(self.node_id, self.raft_addr, phase="member" if membership else "waiting", group=membership)
        self.consensus: Consensus | None = None
        self.lease = LeaseClock(t.lease)
        self.fence = FenceClock(t.fence_after)
        self._lease_lock = threading.Lock()
        self._was_leader = False
        self._may_act = False
        self._last_heartbeat = 0.0
        self._last_seq: int | None = None
        self._last_beacon = 0.0
        self._beacon_due = True
        self._last_registration = 0.0
        self._last_join_sent = 0.0
        self._pending_joins: dict[str, dict[str, Any]] = {}
        self._join_in_flight: tuple[str, float] | None = None
        self._persisted_members: list[str] = sorted(m.addr for m in membership.members) if membership else []
        self._cluster_initialised = False
        self._status_proposals: dict[str, float] = {}
        codec = BeaconCodec(identity.beacon_key, identity.cluster_id, t.beacon_max_age)
        self.discovery = Discovery(codec, self.node_id, self.iface, config.multicast_group, config.discovery_port, self._on_message)
        self.services: Any = None  # the services layer (monitor + node side), attached by run_agent

    # -- discovery input (receiver thread) -------------------------------
    def _on_message(self, message: Message, src_ip: str) -> None:
        if message.kind == "join":
            self._on_join_request(message, src_ip)
            return
        body = message.body
        phase = body.get("phase")
        if phase not in ("waiting", "offering", "accepted", "member", "joining"):
            raise ValueError(f"unknown phase {phase!r}")
        offer = Offer.from_wire(body["offer"]) if body.get("offer") else None
        group = Group.from_wire(body["group"]) if body.get("group") else None
        addr = str(body["addr"])
        with self._lock:
            if message.ts <= self._peer_ts.get(message.node_id, float("-inf")):
                return  # reordered: keep the newest view of each peer
            self._peer_ts[message.node_id] = message.ts
            self.peers[message.node_id] = PeerView(message.node_id, addr, phase, time.monotonic(), offer, group)

    def _on_join_request(self, message: Message, src_ip: str) -> None:
        addr = str(message.body["addr"])
        if addr.split(":")[0] != src_ip:
            raise ValueError(f"join for {addr} sent from {src_ip}")
        with self._lock:
            self._pending_joins[message.node_id] = {"addr": addr, "ip": src_ip, "at": time.monotonic()}

    # -- beacons -----------------------------------------------------------
    def _beacon_body(self) -> dict[str, Any]:
        with self._lock:
            state = self.formation
            body: dict[str, Any] = {"phase": state.phase, "addr": self.raft_addr, "ip": self.iface.ip}
            if state.offer is not None and state.phase in ("offering", "accepted"):
                body["offer"] = state.offer.to_wire()
            if state.phase == "member" and state.group is not None:
                body["group"] = self._current_group().to_wire()
        return body

    def _current_group(self) -> Group:
        """The group as it is now: formation's group id, consensus's live member list."""
        assert self.formation.group is not None
        if self.consensus is None:
            return self.formation.group
        ids = self._addr_to_node_id()
        members = tuple(Member(ids.get(a, a), a) for a in self.consensus.member_addrs())
        return Group(self.formation.group.group_id, members)

    def _addr_to_node_id(self) -> dict[str, str]:
        ids = {m.addr: m.node_id for m in self.formation.group.members} if self.formation.group else {}
        ids.update({j["addr"]: n for n, j in self._pending_joins.items()})
        if self.consensus is not None:
            ids.update(self.consensus.cluster.read(lambda s: {r.raft_addr: r.node_id for r in s.nodes.values()}))
        return ids

    def _beacon_tick(self, now: float) -> None:
        if self._beacon_due or now - self._last_beacon >= self.config.timing.beacon_interval:
            self._last_beacon, self._beacon_due = now, False
            try:
                self.discovery.send_beacon(self._beacon_body())
            except ValueError as exc:  # e.g. a group too large for one datagram
                log.event("discovery.beacon_unsendable", level="error", error=str(exc))

    # -- formation -----------------------------------------------------------
    def _formation_tick(self, now: float) -> None:
        with self._lock:
            before = self.formation.phase
            decision = step(self.formation, dict(self.peers), now, self.params, secrets.token_hex(6))
            self.formation = decision.state
        if decision.note:
            log.event(decision.note, **decision.extra)
        if decision.state.phase != before:
            self._beacon_due = True
        if decision.start_raft is not None:
            save_membership(self.state_dir, decision.start_raft)
            self._persisted_members = sorted(m.addr for m in decision.start_raft.members)
        if decision.join is not None:
            self._send_join(decision.join, now)

    def _send_join(self, group: Group, now: float) -> None:
        if now - self._last_join_sent < self.config.timing.beacon_interval:
            return
        self._last_join_sent = now
        for member in group.members:
            self.discovery.send_join({"addr": self.raft_addr}, member.addr.split(":")[0])

    def _start_consensus(self) -> None:
        group = self.formation.group
        assert group is not None
        members = [m.addr for m in group.members]
        self.consensus = Consensus(self.raft_addr, members, self.identity.raft_password, self.state_dir,
                                   self.config.timing, self._on_raft_state_changed)
        log.event("raft.started", group=group.group_id, members=members)
        if self.services is not None:
            self.services.attach(self.consensus)

    def _on_raft_state_changed(self, old: int, new: int) -> None:
        names = {0: "follower", 1: "candidate", 2: "leader"}
        log.event("raft.state", old=names.get(old, old), new=names.get(new, new))

    # -- leadership, lease, fencing ----------------------------------------
    def _leadership_tick(self, now: float) -> None:
        assert self.consensus is not None
        leader = self.consensus.is_leader()
        with self._lease_lock:
            if leader and not self._was_leader:
                self.lease.became_leader(now)
                self._cluster_initialised = False
                log.event("monitor.candidate", term=self.consensus.term(), guard_until=round(self.lease.guard_until(), 3))
            elif not leader and self._was_leader:
                self.lease.lost_leadership()
            self._was_leader = leader
            may_act = self.lease.may_act(now)
        if leader and now - self._last_heartbeat >= self.config.timing.heartbeat_interval:
            self._propose_heartbeat(now)
        seq = self.consensus.cluster.read(lambda s: s.heartbeat_seq)
        if seq != self._last_seq:
            # A new committed heartbeat from a leader we follow is evidence of a
            # quorum-backed leader; the replay of our own journal after a restart
            # (no leader known yet) is not.
            if self._last_seq is not None and not leader and self.consensus.leader_addr() is not None:
                with self._lease_lock:
                    self.fence.evidence(now)
            self._last_seq = seq
        if may_act != self._may_act:
            self._may_act = may_act
            # "mono" is CLOCK_MONOTONIC, shared by all namespaces of one host:
            # the lab tests compare these intervals across nodes.
            log.event("lease.acquired" if may_act else "lease.released", mono=round(now, 4), term=self.consensus.term())

    def _propose_heartbeat(self, now: float) -> None:
        assert self.consensus is not None
        self._last_heartbeat = now
        with self._lease_lock:
            token = self.lease.heartbeat_submitted(now)

        def committed(result: Any, error: Any) -> None:
            if error:
                return
            with self._lease_lock:
                sent = self.lease.heartbeat_committed(token)
                if sent is not None:
                    self.fence.evidence(sent)

        self.consensus.submit({"op": "heartbeat", "now": time.time(), "leader": self.node_id}, committed)

    def may_act(self) -> bool:
        with self._lease_lock:
            return self.consensus is not None and self.lease.may_act(time.monotonic())

    def fenced(self) -> bool:
        with self._lease_lock:
            return self.fence.fenced(time.monotonic())

    # -- cluster bookkeeping ---------------------------------------------------
    def _membership_tick(self) -> None:
        assert self.consensus is not None and self.formation.group is not None
        members = self.consensus.member_addrs()
        if members != self._persisted_members:
            group = self._current_group()
            save_membership(self.state_dir, group)
            with self._lock:
                self.formation = FormationState(self.node_id, self.raft_addr, phase="member", group=group)
            self._persisted_members = members
            log.event("raft.members", members=members)
            self._beacon_due = True

    def _registration_tick(self, now: float) -> None:
        """Make sure the replicated state knows this node (and that it is up)."""
        assert self.consensus is not None
        known = self.consensus.cluster.read(lambda s: (s.nodes[self.node_id].status, s.nodes[self.node_id].raft_addr) if self.node_id in s.nodes else None)
        if known == ("up", self.raft_addr) or now - self._last_registration < 1.0:
            return
        self._last_registration = now
        self.consensus.submit({"op": "node_join", "now": time.time(), "node": self.node_id, "raft_addr": self.raft_addr,
                               "ip": self.iface.ip, "facts": node_facts()})

    def _leader_duties(self, now: float) -> None:
        """Work only the lease holder does: init, joins, node liveness.

        The Service Monitor runs in the services layer's own thread (health
        checks and ARP probes may block), also gated by may_act().
        """
        assert self.consensus is not None
        if not self._cluster_initialised:
            group_id = self.formation.group.group_id if self.formation.group else "?"
            self.consensus.submit({"op": "init_cluster", "now": time.time(), "group_id": group_id, "cluster_id": self.identity.cluster_id})
            self._cluster_initialised = True
        self._join_tick(now)
        self._liveness_tick(now)

    def _join_tick(self, now: float) -> None:
        assert self.consensus is not None
        if self._join_in_flight is not None:
            addr, since = self._join_in_flight
            if addr in self.consensus.member_addrs() or now - since > 5.0:
                self._join_in_flight = None
            return
        with self._lock:
            pending = {n: j for n, j in self._pending_joins.items() if now - j["at"] < 10.0}
            self._pending_joins = pending
        members = self.consensus.member_addrs()
        for node_id, join in sorted(pending.items()):
            if join["addr"] in members:
                continue
            self._join_in_flight = (join["addr"], now)
            log.event("raft.adding_member", joining=node_id, addr=join["addr"])

            def added(result: Any, error: Any, joining: str = node_id) -> None:
                log.event("raft.member_added" if not error else "raft.member_add_failed", joining=joining, error=error)

            self.consensus.add_member(join["addr"], added)
            return

    def node_liveness(self) -> dict[str, float]:
        """Seconds since each member last answered the leader (leader only)."""
        assert self.consensus is not None
        ids = self._addr_to_node_id()
        ages = {ids.get(addr, addr): age for addr, age in self.consensus.response_ages().items()}
        ages[self.node_id] = 0.0
        return ages

    def lost_after(self) -> float:
        t = self.config.timing
        return t.fence_after + t.fence_margin

    def _liveness_tick(self, now: float) -> None:
        assert self.consensus is not None
        ages = self.node_liveness()
        nodes = self.consensus.cluster.read(lambda s: {n: r.status for n, r in s.nodes.items()})
        for node_id, status in nodes.items():
            age = ages.get(node_id)
            if age is None:
                continue  # not a Raft member (yet)
            wanted = "lost" if age > self.lost_after() else ("up" if age < 2 * self.config.timing.heartbeat_interval + 0.2 else status)
            if wanted != status and now - self._status_proposals.get(node_id, 0.0) > 0.5:
                self._status_proposals[node_id] = now
                reason = f"no answer for {age:.2f}s" if wanted == "lost" else "answering again"
                self.consensus.submit({"op": "node_status", "now": time.time(), "node": node_id, "status": wanted, "reason": reason})

    # -- main loop -------------------------------------------------------------
    def tick(self) -> None:
        now = time.monotonic()
        if self.formation.phase != "member":
            self._formation_tick(now)
        if self.formation.phase == "member" and self.consensus is None:
            self._start_consensus()
        self._beacon_tick(now)
        if self.consensus is None:
            return
        self._leadership_tick(now)
        self._membership_tick()
        self._registration_tick(now)
        if self._may_act:
            self._leader_duties(now)

    def run(self) -> int:
        self.discovery.start()
        log.event("agent.started", node_id=self.node_id, ip=self.iface.ip, interface=self.iface.name,
                  raft=self.raft_addr, formation=self.formation.phase, expect=self.config.bootstrap_expect)
        sdnotify.notify("READY=1")
        watchdog = sdnotify.watchdog_interval()
        last_watchdog = 0.0
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.tick()
            except Exception as exc:  # keep the node's loop alive; the watchdog catches hangs, not errors
                log.event("agent.tick_failed", level="error", error=repr(exc), trace=traceback.format_exc(limit=5))
                self._stop.wait(0.5)
            if watchdog and started - last_watchdog >= watchdog and self._converging(started):
                # Only an agent whose loops still turn feeds the watchdog;
                # systemd restarts a hung one (WatchdogSec in the unit).
                sdnotify.notify("WATCHDOG=1")
                last_watchdog = started
            self._stop.wait(max(0.0, TICK - (time.monotonic() - started)))
        self._shutdown()
        return 0

    def _converging(self, now: float) -> bool:
        return self.services is None or self.services.healthy(now)

    def stop(self, *_: Any) -> None:
        self._stop.set()

    def _shutdown(self) -> None:
        log.event("agent.stopping")
        if self.services is not None:
            self.services.shutdown()
        self.discovery.stop()
        if self.consensus is not None:
            self.consensus.stop()
        log.event("agent.stopped")

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    # -- views for the control API -------------------------------------------
    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            formation = self.formation
            peers = len([p for p in self.peers.values() if now - p.seen_at <= self.params.peer_timeout])
        out: dict[str, Any] = {
            "schema": STATUS_SCHEMA,
            "node_id": self.node_id,
            "cluster_id": self.identity.cluster_id,
            "address": self.iface.ip,
            "raft_addr": self.raft_addr,
            "formation": formation.phase,
            "group_id": formation.group.group_id if formation.group else None,
            "bootstrap_expect": self.config.bootstrap_expect,
            "uptime": round(now - self.started_mono, 3),
            "leader": None,
            "is_leader": False,
            "monitor": None,
            "may_act": self.may_act(),
            "fenced": self.fenced(),
            "term": None,
            "members": [],
            "services": [],
            "discovery": {"peers": peers, **self.discovery.counters()},
            "raft": {"dropped_connections": dropped_connections()},
        }
        if self.consensus is None:
            return out
        state = self.consensus.cluster.read(lambda s: s.snapshot(with_events=False))
        ids = {r.raft_addr: r.node_id for r in state.nodes.values()}
        leader_addr = self.consensus.leader_addr()
        raft = self.consensus.raft_status()
        members = self.consensus.member_addrs()
        out.update({
            "leader": ids.get(leader_addr, leader_addr) if leader_addr else None,
            "is_leader": self.consensus.is_leader(),
            "monitor": state.monitor,
            "term": self.consensus.term(),
            "group_id": state.group_id or out["group_id"],
            "members": [self._member_view(addr, ids, state) for addr in members],
        })
        out["raft"].update({"commit_index": raft.get("commit_idx"), "last_applied": raft.get("last_applied"),
                            "log_len": raft.get("log_len"), "has_quorum": raft.get("has_quorum")})
        if self.services is not None:
            out["services"] = self.services.status_view(state)
        return out

    @staticmethod
    def _member_view(addr: str, ids: dict[str, str], state: Any) -> dict[str, Any]:
        node_id = ids.get(addr)
        record = state.nodes.get(node_id) if node_id else None
        return {"node_id": node_id, "raft_addr": addr, "ip": addr.split(":")[0],
                "status": record.status if record else "joining"}

    def events(self, since: int = 0, limit: int = 200) -> list[dict[str, Any]]:
        if self.consensus is None:
            return []
        return self.consensus.cluster.read(lambda s: [dict(e) for e in s.events if e["seq"] > since][-limit:])


def node_facts() -> dict[str, Any]:
    """Hardware facts a node reports (used for placement)."""
    return {
        "cpus": psutil.cpu_count() or 1,
        "memory_mb": psutil.virtual_memory().total // (1024 * 1024),
        "hostname": os.uname().nodename,
    }
