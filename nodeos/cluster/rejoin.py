"""When does a follower's applied heartbeat count as quorum evidence? Pure; times are arguments.

A follower's evidence (the grant that lets it hold VIPs and singletons,
nodeos/fencing/policy.py) is stamped when pysyncobj applies a committed
heartbeat. That is sound while the grant lasts: the Monitor moves a node's
singletons only after fence_after + fence_margin of silence, and a follower
whose evidence never lapsed cannot have missed such a decision.

After a lapse it is not. A member cut off by a partition keeps its TCP
connection; at the heal, the appends the leader sent during the partition
arrive first, with the heartbeats and the commit index of that time. Applied,
they renewed the grant while the state still said "memcached runs here, with
its VIP": the node took the VIP back for 90 ms next to its new holder (CI,
tests/lab/test_services.py). No check on the messages can tell they are old.

So after a lapse (and at start) the follower proves it holds every decision
taken without it: it submits an entry of its own, the *rejoin barrier*. The
leader appends it when it receives it, after everything it committed before;
once applied here, the state holds all of that. It counts only if it came
back within fence_after of the request. The request leaves right after a
reply to the leader (we ask when an append from it is applied), so the leader
heard this node at most then: a move decided without us needs fence_after +
fence_margin of silence after that, later than the barrier's return. A barrier
that took longer (asked, then cut off, returned at the heal) may sit before
such a decision in the log: it is ignored and a new one asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class HeartbeatVerdict(Enum):
    EVIDENCE = "evidence"  # stamp it: the grant goes on
    ASK = "ask"  # lapsed: submit a rejoin barrier now
    WAIT = "wait"  # lapsed, a barrier is on its way


@dataclass
class FollowerEvidence:
    fence_after: float
    last_evidence: float | None = None
    generation: int = 0  # of the barrier in flight; an answer to an older one is ignored
    asked_at: float | None = None

    def heartbeat_applied(self, now: float) -> HeartbeatVerdict:
        if self.last_evidence is not None and now - self.last_evidence <= self.fence_after:
            self.last_evidence = now
            return HeartbeatVerdict.EVIDENCE
        if self.asked_at is not None and now - self.asked_at <= self.fence_after:
            return HeartbeatVerdict.WAIT
        self.generation += 1
        self.asked_at = now
        return HeartbeatVerdict.ASK

    def barrier_applied(self, generation: int, now: float) -> bool:
        """Our barrier was applied here: True if that is evidence (and the grant comes back)."""
        if generation != self.generation or self.asked_at is None or now - self.asked_at > self.fence_after:
            return False
        self.asked_at = None
        self.last_evidence = now
        return True

    def barrier_failed(self, generation: int) -> None:
        """Not committed (no leader, a new term): ask again at the next heartbeat."""
        if generation == self.generation:
            self.asked_at = None
