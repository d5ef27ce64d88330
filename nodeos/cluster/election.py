"""Election time-outs ranked among a dead leader's followers; pure.

Raft's randomized time-outs (uniform in [raft_min_timeout, raft_max_timeout))
let two survivors of a dead leader stand within a few tens of milliseconds of
each other often enough that the split vote and the next time-out made the
p95 of "leader SIGKILL -> new Monitor" 5.6 s against a 1.6 s median. Here
the followers of one leader take turns instead: each ranks itself among the
leader's other members (sorted by address, so every follower computes the
same order) and times out in its own slot, rank 0 first; a little jitter stays
within the slot. A follower with a stale log that stands first is refused and
the next rank stands one slot later. Without a known leader (a first start,
after granting a vote) the time-out is the usual uniform one.

Safety does not depend on any of this: Raft's votes and the lease
(lease.py) do not assume anything about time-outs, and every time-out is still
at least raft_min_timeout, which PredecessorSilence (lease.py) relies on.
"""

from __future__ import annotations

SLOT_JITTER = 0.25  # share of a slot used for jitter; the rest separates the ranks


def election_timeout(self_addr: str, members: list[str], leader: str | None, min_timeout: float,
                     max_timeout: float, random_unit: float) -> float:
    """Seconds until this node stands for election; `random_unit` in [0, 1)."""
    spread = max_timeout - min_timeout
    if leader is None or leader == self_addr or leader not in members or self_addr not in members:
        return min_timeout + spread * random_unit
    followers = sorted(m for m in members if m != leader)
    slot = spread / len(followers)
    return min_timeout + followers.index(self_addr) * slot + slot * SLOT_JITTER * random_unit
