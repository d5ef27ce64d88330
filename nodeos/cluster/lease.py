"""Monitor lease and self-fencing clocks: pure logic, times are arguments.

Why a lease: a pysyncobj leader cut off from the majority keeps calling itself
leader for `leaderFallbackTimeout` (30 s). The Monitor may act only while

* it is the Raft leader, and
* a heartbeat entry it *submitted* at time t was committed by a majority, and
  now < t + lease (the lease), and
* it has been leader for at least `lease` (the guard).

Safety argument: a new leader's election needs votes from a majority, which
intersects the majority that acknowledged the old leader's last heartbeat.
Those voters acknowledged before voting, so the heartbeat's submission time t
precedes the new leader's election, and the old lease (t + lease) ends before
the new leader's guard (election + lease) does. Only durations on each node's
own monotonic clock are compared, so no clock synchronisation is assumed;
`drift` widens the guard for clocks that run at slightly different rates.

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
    expires: float = float("-inf")
    _pending: dict[int, float] | None = None
    _next_token: int = 0

    def __post_init__(self) -> None:
        self._pending = {}

    def became_leader(self, now: float) -> None:
        self.leader_since = now
        self.expires = float("-inf")
        assert self._pending is not None
        self._pending.clear()

    def lost_leadership(self) -> None:
        self.leader_since = None
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
        if self.leader_since is None:
            return float("inf")
        return self.leader_since + self.lease * (1 + self.drift)

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
