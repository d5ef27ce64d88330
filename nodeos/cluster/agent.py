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
from collections import deque
from pathlib import Path
from typing import Any, Callable

import psutil

from nodeos import log
from . import sdnotify
from .beacon import BeaconCodec, Message
from .config import NodeConfig
from .consensus import Consensus, ConsensusError, dropped_connections, raft_clock
from .discovery import Discovery, detect_interface
from .formation import FormationParams, FormationState, Group, Member, Offer, PeerView, step
from nodeos.fencing.guard import SOCKET_NAME as GUARD_SOCKET
from nodeos.fencing.guardian import Guardian, guard_timeout_for
from .identity import (ClusterIdentity, clone_ambiguous, clone_refusal, clone_verdict, clone_warning, load_or_create_node_id,
                       write_private)
from .lease import FenceClock, LeaseClock, PredecessorSilence
from .split import GroupView, group_to_join, holdings
from .membership import MemberView, member_to_remove, removal_refusal, replaced_member
from nodeos.realtime import set_realtime

# Idle, 5 times a second: joins, beacons and a member's lateness need no more (a leader's
# heartbeats ride in pysyncobj's appends: _heartbeat_due). 20 times a second while
# something is in flux (formation, a leader waiting out its guard, a member late to
# answer): lease transitions and lost-node detection keep their 50 ms grain. 50 ticks a
# second were a fifth of an idle agent's CPU, 20 a sixth.
TICK = 0.2
TICK_BUSY = 0.05
# A services or Monitor pass unfinished this long (times service_time_scale) stops the
# watchdog's feeding: systemd restarts the agent (WatchdogSec=30 in its unit).
PASS_LIMIT = 30.0
# A pass this long is reported with its thread's stack, then every STALL_REPORT_EVERY while it lasts.
STALL_REPORT_AFTER = 10.0
STALL_REPORT_EVERY = 10.0
STATUS_SCHEMA = 1
AGENT_PRIORITY = 10  # SCHED_RR, below the guard's (nodeos/realtime.py says why)
LAG_WINDOW = 3000  # loop-lag samples kept (one per tick: about a minute)
REMOVED_CONFIRM = 5.0  # seconds fenced, with no group member listing us, before we rejoin as a new member


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
    def __init__(self, config: NodeConfig, identity: ClusterIdentity, state_dir: Path, *, node_root: Path = Path("/"),
                 mount_ns: Path | None = None) -> None:
        self.config = config
        self.identity = identity
        self.state_dir = state_dir
        # The lab gives each node a private root for packaged services' /etc, /var/lib...
        # and a mount namespace its services run in; a real node has neither.
        self.node_root = node_root
        self.mount_ns = mount_ns
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
        self.predecessor = PredecessorSilence(t.raft_min_timeout)
        self._lease_lock = threading.Lock()
        self.guardian = Guardian(state_dir / GUARD_SOCKET, self.grant_until,
                                 guard_timeout=guard_timeout_for(config.timing.fence_margin))
        self.loop_lags: deque[float] = deque(maxlen=LAG_WINDOW)
        self.control_counters: Callable[[], dict[str, Any]] = dict  # the control server's, once it runs
        self._was_leader = False
        self._stall_reported = float("-inf")
        self._leader_term: int | None = None  # the term of the leadership the lease clock counts
        self._may_act = False
        self._member_late = False  # a member answered the leader late: tick at TICK_BUSY (_liveness_tick)
        self._last_heartbeat = 0.0
        self._last_beacon = 0.0
        self._beacon_due = True
        self._last_registration = 0.0
        self._last_join_sent = 0.0
        self._pending_joins: dict[str, dict[str, Any]] = {}
        self._change_in_flight: tuple[str, str, float] | None = None  # ("add" | "remove", Raft address, since)
        self._removal_checked = 0.0
        self._split_checked = 0.0
        self._split_logged: set[str] = set()
        self._persisted_members: list[str] = sorted(m.addr for m in membership.members) if membership else []
        self._cluster_initialised = False
        self._status_proposals: dict[str, float] = {}
        codec = BeaconCodec(identity.beacon_key, identity.cluster_id, t.beacon_max_age)
        self.discovery = Discovery(codec, self.node_id, self.iface, config.multicast_group, config.discovery_port, self._on_message)
        self.services: Any = None  # the services layer (monitor + node side), attached by run_agent

    # -- discovery input (receiver thread) -------------------------------
    def _on_message(self, message: Message, src_ip: str) -> None:
        if message.node_id == self.node_id:  # Discovery passes our id only from another address
            self._on_own_id_elsewhere(message, src_ip)
            return
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
        if self._lists_my_id_elsewhere(offer, group) or self._second_address(message.node_id, addr, phase):
            return  # never let formation act on a view that has a cloned id in it
        with self._lock:
            if message.ts <= self._peer_ts.get(message.node_id, float("-inf")):
                return  # reordered: keep the newest view of each peer
            self._peer_ts[message.node_id] = message.ts
            self.peers[message.node_id] = PeerView(message.node_id, addr, phase, time.monotonic(), offer, group,
                                                   tuple(str(h) for h in body.get("holds") or ()))

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
                body["holds"] = list(self._holdings())
        return body

    def _holdings(self) -> tuple[str, ...]:
        """What our group's state holds that a merge would lose (split.py); nothing before consensus runs."""
        consensus = self.consensus
        return consensus.cluster.read(holdings) if consensus is not None else ()

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
        if self.fatal is not None:
            return
        group = self.formation.group
        assert group is not None
        members = [m.addr for m in group.members]
        try:
            self.consensus = Consensus(self.raft_addr, members, self.identity.raft_password, self.state_dir,
                                       self.config.timing, self._on_raft_state_changed, self._on_follower_heartbeat,
                                       on_failed=self._fail, node_id=self.node_id, on_append_due=self._heartbeat_due)
        except ConsensusError as exc:  # e.g. a damaged journal: trying again every tick cannot help
            self._fail(str(exc), event="raft.start_failed")
            return
        log.event("raft.started", group=group.group_id, members=members)
        if self.services is not None:
            self.services.attach(self.consensus)

    def _on_raft_state_changed(self, old: int, new: int) -> None:
        names = {0: "follower", 1: "candidate", 2: "leader"}
        now = raft_clock()  # pysyncobj's thread, inside the change: stamps are never early
        with self._lease_lock:
            if old == 2:
                self.predecessor.lost_leadership()
            if new == 0:
                # Every append from a leader while we stood makes us a follower here (the tick may
                # never see that leader): a later candidacy must count from then, not from before.
                consensus = getattr(self, "consensus", None)
                self.predecessor.became_follower(consensus.leader_addr() if consensus is not None else None)
            elif new == 1:
                self.predecessor.became_candidate(now)
            elif new == 2:
                consensus = getattr(self, "consensus", None)
                self.predecessor.became_leader(now, consensus.term() if consensus is not None else None)
        log.event("raft.state", old=names.get(old, old), new=names.get(new, new))

    # -- leadership, lease, fencing ----------------------------------------
    def _leadership_tick(self, now: float) -> None:
        assert self.consensus is not None
        leader = self.consensus.is_leader()
        term = self.consensus.term()
        with self._lease_lock:
            if leader and (not self._was_leader or term != self._leader_term):
                self._leader_term = term
                self.lease.became_leader(now, self._evidence_bound(term))
                self._cluster_initialised = False
                log.event("monitor.candidate", term=term, guard_until=round(self.lease.guard_until(), 3),
                          backdated=round(self.lease.backdated(), 3))
            elif leader and now < self.lease.guard_until():
                # pysyncobj's callback may record this term's election after the tick saw it.
                self.lease.backdate_guard(self._evidence_bound(term))
            elif not leader and self._was_leader:
                self.lease.lost_leadership()
            self._was_leader = leader
            may_act = self.lease.may_act(now)
            if not leader:
                self.predecessor.following(self.consensus.leader_addr())
        if leader and now - self._last_heartbeat >= 2 * self.config.timing.heartbeat_interval:
            # The first of a leadership, or one the append hook did not send (_heartbeat_due).
            self._propose_heartbeat(now, self.consensus)
        if may_act != self._may_act:
            self._may_act = may_act
            if may_act and self.services is not None:
                self.services.lease_acquired()
            # "mono" is CLOCK_MONOTONIC, shared by all namespaces of one host:
            # the lab tests compare these intervals across nodes.
            log.event("lease.acquired" if may_act else "lease.released", mono=round(now, 4), term=self.consensus.term())

    def _evidence_bound(self, term: int) -> float | None:
        """The latest time (time.monotonic) a committed heartbeat of any earlier leader can have
        been submitted, if known for this term's election (lease.PredecessorSilence); lease lock held."""
        raft_now = raft_clock()  # first: the age is never overstated
        return self.predecessor.evidence_bound(term, raft_now, time.monotonic())

    def _heartbeat_due(self) -> None:
        """pysyncobj's thread, as a leader's append is about to go out: the heartbeat rides in
        it, proposed now rather than from this loop up to a period earlier. Its interval is
        rounded to whole append periods (the first append at or after interval - half a period)."""
        consensus = self.consensus
        if consensus is None:
            return  # still being made: the loop proposes the leadership's first heartbeat
        t = self.config.timing
        now = time.monotonic()
        term = consensus.term()
        with self._lease_lock:
            if not (self._was_leader and self._leader_term == term):
                return  # the loop has not started the lease clock of this leadership yet
            if now - self._last_heartbeat < t.heartbeat_interval - t.append_entries_period / 2:
                return
            token = self._heartbeat_token(now)
        self._submit_heartbeat(consensus, token, term)

    def _propose_heartbeat(self, now: float, consensus: Consensus) -> None:
        """From the loop, which knows we lead (the lease clock counts this leadership)."""
        with self._lease_lock:
            token = self._heartbeat_token(now)
        self._submit_heartbeat(consensus, token, consensus.term())

    def _heartbeat_token(self, now: float) -> int:
        """Lease lock held."""
        self._last_heartbeat = now
        return self.lease.heartbeat_submitted(now)

    def _submit_heartbeat(self, consensus: Consensus, token: int, term: int) -> None:
        def committed(result: Any, error: Any) -> None:
            if error:
                return
            if not (result or {}).get("ok"):
                # Refused (a newer Monitor's term has landed): no lease from it.
                log.event("monitor.heartbeat_refused", level="warning", term=term, error=(result or {}).get("error"))
                return
            with self._lease_lock:
                sent = self.lease.heartbeat_committed(token)
                if sent is not None:
                    self.fence.evidence(sent)

        consensus.submit({"op": "heartbeat", "now": time.time(), "leader": self.node_id, "term": term}, committed)

    def _on_follower_heartbeat(self, applied_at: float) -> None:
        """pysyncobj applied a committed heartbeat of the leader we follow (its thread).

        Stamped at apply time, not when this loop next looks: the fencing
        argument (nodeos/fencing/policy.py) needs the stamp to trail the leader's view of
        our last reply by at most one pysyncobj tick.
        """
        with self._lease_lock:
            self.fence.evidence(applied_at)

    def grant_until(self) -> float | None:
        """Until when this node may hold VIPs and singletons (CLOCK_MONOTONIC), if at all."""
        with self._lease_lock:
            last = self.fence.last_evidence
        return None if last is None else last + self.fence.fence_after

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

    def other_groups(self, now: float) -> dict[str, list[str]]:
        """Other Raft groups of this cluster, from their members' beacons: group id -> member node ids.

        Beacons are signed with the cluster's key, so a member beacon with
        another group id is this cluster split in two: halves of a rack that
        each reached bootstrap_expect while cut apart (issue 11, item 4).
        """
        return {view.group_id: members for view, members in self._other_group_views(now)}

    def _other_group_views(self, now: float) -> list[tuple[GroupView, list[str]]]:
        """other_groups, each with what its members say it holds."""
        group = self.formation.group
        if group is None:
            return []
        with self._lock:
            seen = {p.group.group_id: (p.group, p.holds) for p in self.peers.values()
                    if now - p.seen_at <= self.params.peer_timeout and p.phase == "member"
                    and p.group is not None and p.group.group_id != group.group_id}
        return [(GroupView(group_id, len(other.members), holds), sorted(other.node_ids()))
                for group_id, (other, holds) in sorted(seen.items())]

    def _split_tick(self, now: float) -> None:
        """Report a second group of our cluster: this node's log, `status`, and the lease holder's event, once each."""
        if now - self._split_checked < 1.0:
            return
        self._split_checked = now
        dissolved_into = self._dissolved()
        if dissolved_into is not None:
            self._leave_to_rejoin(dissolved_into)
            return
        views = self._other_group_views(now)
        others = {view.group_id: members for view, members in views}
        if set(others) != self._split_logged:
            log.event("cluster.split" if others else "cluster.split_gone", level="error" if others else "info",
                      ours=self.formation.group.group_id if self.formation.group else None, others=others)
            self._split_logged = set(others)
        consensus = self.consensus
        if not others or consensus is None or not self.may_act():
            return
        recorded = consensus.cluster.read(lambda s: {str(e.get("detail", "")) for e in s.events
                                                     if e["kind"] == "cluster.split"})
        for view, members in views:
            # Again when what the other group holds or who is in it changes: its first beacons
            # after a heal may predate its catalog, and "holding nothing" would stand in the log.
            detail = (f"group {view.group_id} of this cluster runs apart from this one, members {', '.join(members)}, "
                      f"holding {', '.join(view.holds) or 'nothing'}: formed while the rack was cut in two")
            if detail not in recorded and self._split_proposals.allow(detail)[0]:
                consensus.submit({"op": "event", "now": time.time(), "kind": "cluster.split", "detail": detail})
        self._maybe_dissolve(consensus, [view for view, _ in views])

    def _maybe_dissolve(self, consensus: Consensus, others: list[GroupView]) -> None:
        """Lease holder: a group that holds nothing joins the other group (split.py), once decided."""
        assert self.formation.group is not None
        ours = GroupView(self.formation.group.group_id, len(consensus.member_addrs()), self._holdings())
        target = group_to_join(ours, others)
        if target is None or not self._dissolve_proposals.allow(target.group_id)[0]:
            return
        log.event("cluster.dissolving", level="warning", ours=ours.group_id, into=target.group_id,
                  their_holdings=list(target.holds), their_members=target.members, our_members=ours.members)
        consensus.submit({"op": "group_dissolve", "now": time.time(), "into": target.group_id, "term": consensus.term(),
                          "reason": f"group {target.group_id} holds {', '.join(target.holds) or 'nothing either'} "
                                    f"and has {target.members} members, this one {ours.members}"})

    def _dissolved(self) -> str | None:
        """The group ours dissolved into, once the state says so: every member leaves."""
        assert self.consensus is not None
        return self.consensus.cluster.read(lambda s: s.dissolved_into)

    def _registration_tick(self, now: float) -> None:
        """Make sure the replicated state knows this node (and that it is up)."""
        assert self.consensus is not None
        known = self.consensus.cluster.read(lambda s: (s.nodes[self.node_id].status, s.nodes[self.node_id].raft_addr) if self.node_id in s.nodes else None)
        if known == ("up", self.raft_addr) or now - self._last_registration < 1.0:
            return
        self._last_registration = now
        # `members` lets the op refuse our id at a second address (a cloned state dir).
        self.consensus.submit({"op": "node_join", "now": time.time(), "node": self.node_id, "raft_addr": self.raft_addr,
                               "ip": self.iface.ip, "facts": node_facts(), "members": self.consensus.member_addrs()},
                              self._registration_done)

    def _leader_duties(self, now: float) -> None:
        """Work only the lease holder does: init, joins, node liveness.

        The Service Monitor runs in the services layer's own thread (health
        checks and ARP probes may block), also gated by may_act().
        """
        assert self.consensus is not None
        if not self._cluster_initialised:
            group_id = self.formation.group.group_id if self.formation.group else "?"
            self.consensus.submit({"op": "init_cluster", "now": time.time(), "group_id": group_id, "cluster_id": self.identity.cluster_id,
                                   "term": self.consensus.term()})
            self._cluster_initialised = True
        self._join_tick(now)
        self._removal_tick(now)
        self._liveness_tick(now)

    def _removed_from_group(self, now: float) -> bool:
        """Did the cluster take this node out of its Raft configuration (membership.py) while it was away?

        A removed member hears no leader again (pre-vote keeps it from deposing
        one), so it would stay fenced forever. It knows from the beacons of its
        group's members: none lists it any more. Only after REMOVED_CONFIRM of
        fencing, so a member that is just slow or cut off never concludes it.
        """
        group = self.formation.group
        if group is None:
            return False
        last = self.fence.last_evidence
        fenced_since = self.started_mono if last is None else last + self.fence.fence_after
        if now - fenced_since < REMOVED_CONFIRM:
            return False
        with self._lock:
            views = [p.group for p in self.peers.values() if now - p.seen_at <= self.params.peer_timeout
                     and p.phase == "member" and p.group is not None and p.group.group_id == group.group_id]
        return bool(views) and all(self.raft_addr not in {m.addr for m in view.members} for view in views)

    def _leave_to_rejoin(self, dissolved_into: str | None = None) -> None:
        """Set the old member's Raft files aside and join again as a new member (formation's join path):
        of our group, or, when it dissolved (split.py), of the group it dissolved into."""
        assert self.consensus is not None and self.formation.group is not None
        left = self.formation.group.group_id
        if dissolved_into is None:
            log.event("raft.removed_from_group", level="warning", group=left,
                      detail="no member of the group lists this node: joining again as a new member")
        else:
            log.event("raft.group_dissolved", level="warning", group=left, into=dissolved_into,
                      detail="this group held nothing a merge would lose: joining the other group as a new member")
        if self.services is not None:
            self.services.detach()
        self.consensus.stop(wait=True)
        self.consensus = None
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for name in ("raft.journal", "raft.dump", "membership.json"):
            path = self.state_dir / name
            if path.exists() or path.is_symlink():
                path.rename(self.state_dir / f"{name}.removed-{stamp}")  # kept for a post-mortem, never read again
        with self._lock:
            self.formation = FormationState(self.node_id, self.raft_addr,
                                            leaving=left if dissolved_into is not None else None)
        self._persisted_members = []
        self._cluster_initialised = False
        self.predecessor = PredecessorSilence(self.config.timing.raft_min_timeout)
        self._beacon_due = True

    def _membership_busy(self, now: float) -> bool:
        """One Raft membership change at a time (pysyncobj's rule): True while one is in flight."""
        assert self.consensus is not None
        if self._change_in_flight is None:
            return False
        kind, addr, since = self._change_in_flight
        members = self.consensus.member_addrs()
        if (addr in members) == (kind == "add") or now - since > 5.0:
            self._change_in_flight = None
            return False
        return True

    def _join_tick(self, now: float) -> None:
        assert self.consensus is not None
        if self._membership_busy(now):
            return
        with self._lock:
            pending = {n: j for n, j in self._pending_joins.items() if now - j["at"] < 10.0}
            self._pending_joins = pending
        members = self.consensus.member_addrs()
        for node_id, join in sorted(pending.items()):
            if join["addr"] in members:
                replaced = replaced_member(self._member_views(), join["addr"], node_id)
                if replaced is not None:  # re-imaged: the old member goes first, the join adds the new one after
                    self._remove_member(replaced, now, "node.replaced",
                                        f"{replaced.addr} joins again as node {node_id} (re-imaged); the old member leaves first")
                    return
                continue
            taken = self._member_addr_of(node_id, members)
            if taken is not None and taken != join["addr"]:
                # A member's id from another machine: adding it would make a ghost of that member.
                with self._lock:
                    self._pending_joins.pop(node_id, None)
                self._report_duplicate(node_id, taken, join["addr"], "join request")
                continue
            self._change_in_flight = ("add", join["addr"], now)
            log.event("raft.adding_member", joining=node_id, addr=join["addr"])
            consensus = self.consensus
            previous = consensus.cluster.read(lambda s, a=join["addr"], n=node_id: next(
                (i for i, r in s.nodes.items() if r.raft_addr == a and i != n), None))

            def added(result: Any, error: Any, joining: str = node_id, join: dict[str, Any] = join,
                      previous: str | None = previous) -> None:
                log.event("raft.member_added" if not error else "raft.member_add_failed", joining=joining, error=error)
                if not error and previous is not None:
                    # The address was another node's (a re-image): beacons name members by the
                    # state's records, and the newcomer waits to see its own id there.
                    consensus.submit({"op": "node_join", "now": time.time(), "node": joining, "raft_addr": join["addr"],
                                      "ip": join["ip"]})

            consensus.add_member(join["addr"], added)
            return

    def _removal_tick(self, now: float) -> None:
        """A member lost for member_remove_after leaves the configuration (membership.py)."""
        if now - self._removal_checked < 1.0 or self._membership_busy(now):
            return  # once a second is plenty for a rule counted in minutes
        self._removal_checked = now
        remove_after = self.config.timing.member_remove_after
        victim = member_to_remove(self._member_views(), remove_after)
        if victim is not None:
            self._remove_member(victim, now, "node.removed",
                                f"{victim.addr} lost for {victim.lost_for:.0f}s (member_remove_after {remove_after:g}s)")

    def _member_views(self, leader_view: bool = True) -> list[MemberView]:
        """Every Raft member: answering (the leader's response ages, else the node records) and lost for how long."""
        assert self.consensus is not None
        ids = self._addr_to_node_id()
        records = self.consensus.cluster.read(lambda s: {n: (r.status, r.status_since) for n, r in s.nodes.items()})
        ages = self.node_liveness() if leader_view else {}
        views = []
        for addr in self.consensus.member_addrs():
            node_id = ids.get(addr)
            status, since = records.get(node_id, ("up", time.time())) if node_id else ("up", time.time())
            answering = ages.get(node_id or addr, 0.0) <= self.lost_after() if leader_view else status == "up"
            lost_for = max(0.0, time.time() - since) if status == "lost" else 0.0
            views.append(MemberView(addr, node_id, answering or addr == self.raft_addr, lost_for))
        return views

    def _remove_member(self, member: MemberView, now: float, kind: str, detail: str) -> None:
        """Propose the removal; once committed, record why in the event log."""
        assert self.consensus is not None
        self._change_in_flight = ("remove", member.addr, now)
        log.event("raft.removing_member", node_id=member.node_id, addr=member.addr, reason=detail)
        consensus = self.consensus

        def removed(result: Any, error: Any) -> None:
            if error:
                log.event("raft.member_remove_failed", level="warning", node_id=member.node_id, addr=member.addr, error=error)
                return
            log.event("raft.member_removed", node_id=member.node_id, addr=member.addr)
            consensus.submit({"op": "event", "now": time.time(), "kind": kind, "node": member.node_id,
                              "detail": f"{detail}; {len(consensus.member_addrs())} members now"})

        consensus.remove_member(member.addr, removed)

    def node_liveness(self) -> dict[str, float]:
        """Seconds since each member last answered the leader (leader only)."""
        assert self.consensus is not None
        ids = self._addr_to_node_id()
        now = raft_clock()
        with self._lease_lock:
            # A crashed Monitor's silence counts from before our election (lease.PredecessorSilence).
            ages = {ids.get(addr, addr): self.predecessor.age(addr, age, now)
                    for addr, age in self.consensus.response_ages().items()}
        ages[self.node_id] = 0.0
        return ages

    def lost_after(self) -> float:
        t = self.config.timing
        return t.fence_after + t.fence_margin

    def _liveness_tick(self, now: float) -> None:
        assert self.consensus is not None
        ages = self.node_liveness()
        # Answers come every append period: one three periods old is a member going quiet.
        self._member_late = any(age > 3 * self.config.timing.append_entries_period for age in ages.values())
        nodes = self.consensus.cluster.read(lambda s: {n: r.status for n, r in s.nodes.items()})
        for node_id, status in nodes.items():
            age = ages.get(node_id)
            if age is None:
                continue  # not a Raft member (yet)
            wanted = "lost" if age > self.lost_after() else ("up" if age < 2 * self.config.timing.heartbeat_interval + 0.2 else status)
            if wanted != status and now - self._status_proposals.get(node_id, 0.0) > 0.5:
                self._status_proposals[node_id] = now
                reason = f"no answer for {age:.2f}s" if wanted == "lost" else "answering again"
                self.consensus.submit({"op": "node_status", "now": time.time(), "node": node_id, "status": wanted, "reason": reason,
                                       "term": self.consensus.term()})

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
        if self._removed_from_group(now):
            self._leave_to_rejoin()
            return

        self._membership_tick()
        self._split_tick(now)
        if self.consensus is None:  # left a dissolved group
            return
        self._registration_tick(now)
        if self._may_act:
            self._leader_duties(now)

    def run(self) -> int:
        if self.config.realtime:
            # Before any thread starts: threads inherit the policy; children do not.
            set_realtime("agent", AGENT_PRIORITY)
        self.guardian.start()
        self.discovery.start()
        log.event("agent.started", node_id=self.node_id, ip=self.iface.ip, interface=self.iface.name,
                  raft=self.raft_addr, formation=self.formation.phase, expect=self.config.bootstrap_expect)
        sdnotify.notify("READY=1")
        watchdog = sdnotify.watchdog_interval()
        last_watchdog = 0.0
        expected = time.monotonic()
        while not self._stop.is_set():
            started = time.monotonic()
            self.loop_lags.append(max(0.0, started - expected))
            try:
                self.tick()
            except Exception as exc:  # keep the node's loop alive; the watchdog catches hangs, not errors
                log.event("agent.tick_failed", level="error", error=repr(exc), trace=traceback.format_exc(limit=5))
                self._stop.wait(0.5)
            if watchdog and started - last_watchdog >= watchdog and self._turning(started):
                # Only an agent whose loops still turn feeds the watchdog;
                # systemd restarts a hung one (WatchdogSec in the unit).
                sdnotify.notify("WATCHDOG=1")
                last_watchdog = started
            self._report_stalls(started)
            pause = max(0.0, self._tick_period() - (time.monotonic() - started))
            expected = time.monotonic() + pause
            self._stop.wait(pause)
        self._shutdown()
        return 0

    def _tick_period(self) -> float:
        if self.consensus is None or self.formation.phase != "member":
            return TICK_BUSY
        if self._was_leader and (not self._may_act or self._member_late):
            return TICK_BUSY
        return TICK

    def _report_stalls(self, now: float) -> None:
        """A pass unfinished for STALL_REPORT_AFTER: which, and where its thread is (said once per
        STALL_REPORT_EVERY), before the watchdog restarts the agent at PASS_LIMIT."""
        if self.services is None or now - self._stall_reported < STALL_REPORT_EVERY:
            return
        stalls = self.services.stalled(now, STALL_REPORT_AFTER)
        if stalls:
            self._stall_reported = now
            for stall in stalls:
                log.event("agent.pass_stalled", level="warning", thread=stall.thread, seconds=stall.seconds,
                          where=stall.where)

    def _turning(self, now: float) -> bool:
        """Feed systemd's watchdog only while consensus (once a member) and convergence both turn.

        A pass may take PASS_LIMIT x service_time_scale: on an emulated CPU a unit's start or
        stop, or a volume's attach, takes longer than 30 s, and a restarted agent would only
        begin them again (the cloud image under TCG, 2026-12-02). Consensus is held to
        systemd's own 30 s.
        """
        consensus_ok = self.formation.phase != "member" or self.consensus_running()
        limit = PASS_LIMIT * self.config.service_time_scale
        return consensus_ok and (self.services is None or self.services.healthy(now, limit))

    def stop(self, *_: Any) -> None:
        self._stop.set()

    def _shutdown(self) -> None:
        log.event("agent.stopping")
        if self.services is not None:
            self.services.shutdown()
        self.guardian.keep(time.monotonic())  # tell the guard what was given up
        self.guardian.stop()
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
            "fencing": self.guardian.view(),
            "loop_lag": loop_lag_view(list(self.loop_lags)),
            "term": None,
            "members": [],
            "services": [],
            "discovery": {"peers": peers, **self.discovery.counters()},
            "other_groups": self.other_groups(now),
            "raft": {"dropped_connections": dropped_connections()},
            "control": self.control_counters(),
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
            out["holding"] = self.services.holding_view(state)
            out["storage"] = self.services.storage.status_view(state)
            out["cloud"] = self.services.cloud.status_view(state)
        return out

    @staticmethod
    def _member_view(addr: str, ids: dict[str, str], state: Any) -> dict[str, Any]:
        node_id = ids.get(addr)
        record = state.nodes.get(node_id) if node_id else None
        return {"node_id": node_id, "raft_addr": addr, "ip": addr.split(":")[0],
                "status": record.status if record else "joining"}

    def remove_node(self, wanted: str, timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
        """`nodeos node remove ID`: take a dead node's member out of the Raft configuration now.

        Any node may be asked (pysyncobj forwards the change to the leader).
        Refused while the node answers or when the members left would have
        no answering majority (membership.removal_refusal).
        """
        consensus = self.consensus
        if consensus is None:
            return 503, {"error": "this node is not a cluster member yet"}
        ids = self._addr_to_node_id()  # a re-imaged machine's address maps to its new id, not the old record's
        member_ids = {ids.get(addr, addr): addr for addr in consensus.member_addrs()}
        matches = [n for n in member_ids if n.startswith(wanted)] if wanted else []
        if len(matches) != 1:
            return 404 if not matches else 400, {"error": f"{wanted!r}: {'no' if not matches else 'several'} member node id(s) "
                                                          f"match (members: {', '.join(sorted(member_ids))})"}
        node_id, addr = matches[0], member_ids[matches[0]]
        views = self._member_views(leader_view=consensus.is_leader())
        refusal = removal_refusal(views, addr)
        if refusal is not None:
            return 409, {"error": refusal}
        done = threading.Event()
        box: dict[str, Any] = {}

        def removed(result: Any, error: Any) -> None:
            box["error"] = error
            done.set()

        log.event("raft.removing_member", node_id=node_id, addr=addr, reason="operator request")
        consensus.remove_member(addr, removed)
        if not done.wait(timeout) or box.get("error"):
            return 503, {"error": f"the removal of {node_id} was not committed (pysyncobj: {box.get('error', 'no answer')}); "
                                  f"try again"}
        left = len(consensus.member_addrs())
        consensus.submit({"op": "event", "now": time.time(), "kind": "node.removed", "node": node_id,
                          "detail": f"{addr} removed by an operator via {self.node_id}; {left} members now"})
        return 200, {"ok": True, "node": node_id, "addr": addr, "members": left}

    def events(self, since: int = 0, limit: int = 200) -> list[dict[str, Any]]:
        if self.consensus is None:
            return []
        return self.consensus.cluster.read(lambda s: [dict(e) for e in s.events if e["seq"] > since][-limit:])

    # -- failing for good, and consensus health ----------------------------------
    fatal: str | None = None  # why the agent stopped itself; the daemon then exits 2 (EXIT_CONFIG)

    def _fail(self, message: str, event: str | None = None, **fields: Any) -> None:
        """Stop for good, from any thread: restarting cannot fix this (a cloned id, a damaged journal)."""
        if event is not None:
            log.event(event, level="error", error=message, **fields)
        if self.fatal is None:
            self.fatal = message
        self.stop()

    def consensus_running(self) -> bool:
        """Raft runs and turns: False before it starts, after it failed, and once the agent gave up."""
        consensus = self.consensus
        return self.fatal is None and consensus is not None and consensus.running()

    # -- one node id on two machines (a cloned disk or VM) ------------------------
    # Class-level: one agent per process; thread-safe limiters shared by all threads.
    _duplicate_log = log.RateLimiter(period=10.0, burst=3)
    _duplicate_proposals = log.RateLimiter(period=60.0, burst=1)
    _split_proposals = log.RateLimiter(period=60.0, burst=1)
    _dissolve_proposals = log.RateLimiter(period=5.0, burst=1)

    def _on_own_id_elsewhere(self, message: Message, src_ip: str) -> None:
        """Another machine announces this node's id: one of the two has a copied state dir and must leave."""
        other = str(message.body.get("addr") or src_ip)
        other_is_member = message.kind == "beacon" and message.body.get("phase") == "member"
        self._judge_clone(other, other_is_member, f"{message.kind} from {src_ip}")

    def _lists_my_id_elsewhere(self, offer: Offer | None, group: Group | None) -> bool:
        """A peer's group or offer names this node's id at another address (formation would take it as ours)."""
        for listed, is_member in ((group, True), (offer, False)):
            for member in listed.members if listed is not None else ():
                if member.node_id == self.node_id and member.addr != self.raft_addr:
                    self._judge_clone(member.addr, is_member, "group" if is_member else "offer")
                    return True
        return False

    def _judge_clone(self, other: str, other_is_member: bool, seen_in: str) -> None:
        if self.fatal is not None:
            return  # already leaving
        consensus = self.consensus
        registered: str | None = None
        members: list[str] | None = None
        if consensus is not None:
            registered = consensus.cluster.read(lambda s: s.nodes[self.node_id].raft_addr if self.node_id in s.nodes else None)
            members = consensus.member_addrs()
        verdict = clone_verdict(self.raft_addr, other, registered, members, other_is_member)
        if verdict == "leave":
            self._fail(clone_refusal(self.node_id, self.raft_addr, other, self.state_dir), event="node.duplicate_id",
                       node_id=self.node_id, addresses=[self.raft_addr, other], seen_in=seen_in)
        elif verdict == "stay":
            self._report_duplicate(self.node_id, self.raft_addr, other, seen_in)
        else:
            self._log_duplicate(self.node_id, self.raft_addr, other, seen_in, clone_ambiguous(self.node_id, self.raft_addr, other))

    def _second_address(self, node_id: str, addr: str, phase: str) -> bool:
        """A beacon for a known node id from another address; True: ignore it, the known one stays."""
        consensus = self.consensus
        if consensus is not None:
            registered = consensus.cluster.read(lambda s: s.nodes[node_id].raft_addr if node_id in s.nodes else None)
            if registered is None or registered == addr or registered not in consensus.member_addrs():
                return False
            self._report_duplicate(node_id, registered, addr, "beacon")
            return True
        with self._lock:
            known = self.peers.get(node_id)
        if known is None or known.addr == addr or time.monotonic() - known.seen_at > self.params.peer_timeout:
            return False
        self._log_duplicate(node_id, known.addr, addr, "beacon", clone_ambiguous(node_id, known.addr, addr))
        return not (phase == "member" and known.phase != "member")  # a member's view beats a newcomer's

    def _member_addr_of(self, node_id: str, members: list[str]) -> str | None:
        """The Raft member address a node id already has (replicated state, else our group), if any."""
        assert self.consensus is not None
        known = self.consensus.cluster.read(lambda s: s.nodes[node_id].raft_addr if node_id in s.nodes else None)
        group = self.formation.group
        if known is None and group is not None:
            known = next((m.addr for m in group.members if m.node_id == node_id), None)
        return known if known in members else None

    def _registration_done(self, result: Any, error: Any) -> None:
        """pysyncobj thread: a refused node_join means our id is registered for a member elsewhere."""
        consensus = self.consensus
        if error or not isinstance(result, dict) or result.get("ok", True) or consensus is None:
            return
        if self._duplicate_log.allow("registration")[0]:
            log.event("node.registration_refused", level="error", error=result.get("error"))
        registered = consensus.cluster.read(lambda s: s.nodes[self.node_id].raft_addr if self.node_id in s.nodes else None)
        if registered is not None and registered != self.raft_addr and registered in consensus.member_addrs():
            self._fail(clone_refusal(self.node_id, self.raft_addr, registered, self.state_dir), event="node.duplicate_id",
                       node_id=self.node_id, addresses=[self.raft_addr, registered], seen_in="registration")

    def _report_duplicate(self, node_id: str, original: str, clone: str, seen_in: str) -> None:
        """`clone` announces the id registered for `original`: log it; the lease holder records it once."""
        self._log_duplicate(node_id, original, clone, seen_in, clone_warning(node_id, original, clone))
        consensus = self.consensus
        if consensus is None or not self.may_act():
            return
        prefix = f"{clone} "
        recorded = consensus.cluster.read(lambda s: any(
            e["kind"] == "node.duplicate_id" and e.get("node") == node_id and str(e.get("detail", "")).startswith(prefix) for e in s.events))
        if recorded or not self._duplicate_proposals.allow(f"{node_id} {clone}")[0]:
            return  # one event per clone; the limiter covers the proposal still in flight
        consensus.submit({"op": "event", "now": time.time(), "kind": "node.duplicate_id", "node": node_id,
                          "detail": f"{clone} announces node id {node_id}, registered for {original}: refused as a clone "
                                    f"(its state dir was copied); remove node_id and raft.* / membership.json there to join as a new node"})

    def _log_duplicate(self, node_id: str, one: str, other: str, seen_in: str, message: str) -> None:
        allowed, suppressed = self._duplicate_log.allow(f"{node_id} {' '.join(sorted((one, other)))}")
        if allowed:
            log.event("node.duplicate_id", level="error", node_id=node_id, addresses=[one, other], seen_in=seen_in,
                      error=message, suppressed=suppressed)


def loop_lag_view(lags: list[float]) -> dict[str, Any]:
    """How late the agent's loop woke up (scheduling latency), in ms."""
    if not lags:
        return {"n": 0}
    ordered = sorted(lags)

    def pick(q: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {"n": len(ordered), "p50_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": round(1000 * ordered[-1], 2)}


def node_facts() -> dict[str, Any]:
    """Hardware facts a node reports (used for placement)."""
    return {
        "cpus": psutil.cpu_count() or 1,
        "memory_mb": psutil.virtual_memory().total // (1024 * 1024),
        "hostname": os.uname().nodename,
    }
