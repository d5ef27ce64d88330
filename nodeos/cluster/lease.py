"""Monitor lease and self-fencing clocks: pure logic, times are arguments.

Why a lease: a pysyncobj leader cut off from the majority keeps calling itself
leader for `leaderFallbackTimeout` (30 s). The Monitor may act only while

* it is the Raft leader, and
* a heartbeat entry it *submitted* at time t was committed by a majority, and
  now < t + lease (the lease), and
* `lease` has passed since the latest instant at which any earlier
  leader's committed heartbeat can have been submitted (the guard).

Safety argument: a new leader's election needs votes from a majority, which
intersects the majority that acknowledged the old leader's last heartbeat.
Those voters acknowledged before voting, so the heartbeat's submission time t
precedes the new leader's election, and the old lease (t + lease) ends before
election + lease. The new leader holds every committed heartbeat (Raft's
election restriction), so it can bound t earlier, on its own clock: it
received that entry, and stood only after a whole election time-out of
silence since its last append (PredecessorSilence below), so t <= its first
candidacy - raft_min_timeout. The guard counts from that bound when the
candidacy was by time-out, else from the election: a leader SIGKILLed
is replaced about 0.4 s sooner. Only durations on each node's own monotonic
clock are compared, so no clock synchronisation is assumed; `drift` widens
the guard for clocks that run at slightly different rates.

Self-fencing uses the same evidence: a node that learned of no committed
heartbeat for `fence_after` drops its VIPs and singleton services. How that
is enforced when the agent itself is dead or hung, and why it ends before
the Monitor moves anything: nodeos/fencing/policy.py.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LeaseClock:
    lease: float
    drift: float = 0.01
    leader_since: float | None = None
    guard_from: float | None = None  # no earlier leader's committed heartbeat was submitted after this
    expires: float = float("-inf")
    _pending: dict[int, float] | None = None
    _next_token: int = 0

    def __post_init__(self) -> None:
        self._pending = {}

    def became_leader(self, now: float, evidence_bound: float | None = None) -> None:
        """`evidence_bound`: PredecessorSilence's bound on any committed heartbeat, on this clock
        (None when there is none: the guard then counts from the election)."""
        self.leader_since = now
        self.guard_from = now if evidence_bound is None else min(now, evidence_bound)
        self.expires = float("-inf")
        assert self._pending is not None
        self._pending.clear()

    def backdate_guard(self, evidence_bound: float | None) -> None:
        """A bound learned after the election (see became_leader)."""
        if self.guard_from is not None and evidence_bound is not None:
            self.guard_from = min(self.guard_from, evidence_bound)

    def backdated(self) -> float:
        """Seconds by which the guard ends before one counted from the election."""
        if self.leader_since is None or self.guard_from is None:
            return 0.0
        return (self.leader_since - self.guard_from) * (1 + self.drift)

    def lost_leadership(self) -> None:
        self.leader_since = self.guard_from = None
        self.expires = float("-inf")
        assert self._pending is not None
        self._pending.clear()

    def heartbeat_submitted(self, now: float) -> int:
        """Record a heartbeat proposal; returns a token for heartbeat_committed."""
        assert self._pending is not None
        self._next_token += 1
        self._pending[self._next_token] = now
        # Bound memory if commits never come (minority side).
        for token in [t for t, sent in self._pending.items() if sent < now - 10 * self.lease]:
            del self._pending[token]
        return self._next_token

    def heartbeat_committed(self, token: int) -> float | None:
        """A majority committed the heartbeat: extend the lease from its submission time."""
        assert self._pending is not None
        sent = self._pending.pop(token, None)
        if sent is None or self.leader_since is None:
            return None
        self.expires = max(self.expires, sent + self.lease)
        return sent

    def guard_until(self) -> float:
        if self.guard_from is None:
            return float("inf")
        return self.guard_from + self.lease * (1 + self.drift)

    def may_act(self, now: float) -> bool:
        if self.leader_since is None:
            return False
        # The lease is shortened by the drift too: our clock may run slow.
        return self.guard_until() <= now < self.expires - self.lease * self.drift


@dataclass
class FenceClock:
    """When did this node last learn that a quorum-backed leader exists?"""

    fence_after: float
    last_evidence: float | None = None

    def evidence(self, when: float) -> None:
        if self.last_evidence is None or when > self.last_evidence:
            self.last_evidence = when

    def fenced(self, now: float) -> bool:
        """True when the node must not hold VIPs or run singletons."""
        if self.last_evidence is None:
            return True
        return now - self.last_evidence > self.fence_after


@dataclass
class PredecessorSilence:
    """Since when has the leader we followed been silent? For a new leader's liveness.

    pysyncobj counts every member's silence from the new leader's election,
    so a crashed Monitor was declared lost only lost_after (1.3 s) after its
    successor won. A bound known at the election is earlier:

    The old leader L's quorum evidence (its lease, its grant) is the
    submission time t_s of its last heartbeat a majority committed. The new
    leader A holds every committed entry (Raft's election restriction), so A
    received that entry, at t_m >= t_s. Each append from the leader resets A's
    election deadline to now + a timeout of at least raft_min_timeout, and A
    became a candidate only when that deadline passed, at t_c. So
    t_s <= t_m <= t_c - raft_min_timeout, on A's clock: L's silence may be
    counted from there. Holds only for candidacies by time-out; nodeos never
    asks pysyncobj for a leadership transfer (timeout_now), which would start
    one at once.

    Times are pysyncobj's clock (the one its response ages use), arguments.
    """

    raft_min_timeout: float
    followed: str | None = None  # the leader we last followed (Raft address)
    candidate_since: float | None = None  # first candidacy since we last followed anyone
    predecessor: str | None = None
    silent_since: float | None = None  # L's evidence ended by then
    elected_at: float | None = None
    term: int | None = None  # the term we were elected in: the bound belongs to that leadership only

    def following(self, leader: str | None) -> None:
        if leader is not None:
            self.followed = leader
            self.candidate_since = None

    def became_follower(self, leader: str | None) -> None:
        """pysyncobj entered the follower state (an append from a leader, or a newer term's vote request)."""
        self.candidate_since = None
        if leader is not None:
            self.followed = leader

    def became_candidate(self, now: float) -> None:
        if self.candidate_since is None:
            self.candidate_since = now

    def became_leader(self, now: float, term: int | None = None) -> None:
        self.elected_at, self.term = now, term
        if self.followed is not None and self.candidate_since is not None:
            self.predecessor, self.silent_since = self.followed, self.candidate_since - self.raft_min_timeout
        else:
            self.predecessor = self.silent_since = None
        self.followed = self.candidate_since = None

    def lost_leadership(self) -> None:
        self.predecessor = self.silent_since = self.elected_at = self.term = None

    def evidence_bound(self, term: int, raft_now: float, now: float) -> float | None:
        """silent_since on another clock whose reading is `now` (the lease's), for the leadership of
        `term` only. Read `raft_now` before `now`: the age is then never overstated."""
        if self.silent_since is None or self.term != term:
            return None
        return now - (raft_now - self.silent_since)

    def age(self, addr: str, raft_age: float, now: float) -> float:
        """Seconds `addr` has been silent: pysyncobj's `raft_age`, or, for the
        predecessor while it has not answered since our election, since its bound."""
        if addr != self.predecessor or self.silent_since is None or self.elected_at is None:
            return raft_age
        if raft_age < now - self.elected_at - 0.005:  # it answered us: it is alive, count normally
            return raft_age
        return max(raft_age, now - self.silent_since)
