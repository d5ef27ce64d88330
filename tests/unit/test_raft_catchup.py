"""A member that crashed as leader with an uncommitted tail catches up when it returns.

Real pysyncobj members on loopback (no root, no namespaces). The scenario of
the Monitor-crash defect (README, limits): the leader is cut from both
followers, appends entries no majority stores, and crashes; the others go on
(more than one 64 KiB batch of entries) and elect a leader again; the old
leader restarts from its journal. pysyncobj alone never brings it back in line until a log compaction
(consensus._WatchedSyncObj._drop_conflicting_tail says why), and then it is a
voter that cannot ack: the next leader has no majority.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from nodeos.cluster.config import Timing
from nodeos.cluster.consensus import Consensus

PAD = "x" * 1000  # about 1 KB per entry: 200 entries span several pysyncobj batches (64 KiB)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout:.0f}s: {what}")


class Members:
    """Three Consensus members on loopback, each with its own journal; stopped at teardown."""

    def __init__(self, root: Path) -> None:
        self.addrs = [f"127.0.0.1:{port}" for port in free_ports(3)]
        self.root = root
        self.running: dict[str, Consensus] = {}

    def start(self, addr: str, on_follower_heartbeat: Callable[[float], None] | None = None) -> Consensus:
        state_dir = self.root / addr.replace(":", "_")
        state_dir.mkdir(exist_ok=True)
        member = Consensus(addr, self.addrs, "test-password", state_dir, Timing(), on_follower_heartbeat=on_follower_heartbeat)
        self.running[addr] = member
        return member

    def crash(self, addr: str) -> None:
        self.running.pop(addr).stop()

    def leader(self) -> Consensus | None:
        leaders = [m for m in self.running.values() if m.is_leader()]
        return leaders[0] if len(leaders) == 1 else None

    def start_all(self) -> Consensus:
        """Every member started; returns the leader they elected."""
        for addr in self.addrs:
            self.start(addr)
        wait_for(lambda: self.leader() is not None, 15, "a leader")
        leader = self.leader()
        assert leader is not None
        return leader

    def stop_all(self) -> None:
        for addr in list(self.running):
            self.crash(addr)


@pytest.fixture
def members(tmp_path):
    group = Members(tmp_path)
    yield group
    group.stop_all()


def log_end(member: Consensus) -> tuple[int, int]:
    """(last index, last term) of a member's log."""
    syncobj = member._syncobj
    return syncobj._SyncObj__getCurrentLogIndex(), syncobj._SyncObj__getCurrentLogTerm()


def commit_index(member: Consensus) -> int:
    return int(member._syncobj.raftCommitIndex)


def test_a_crashed_leader_with_an_uncommitted_tail_catches_up(members):
    old = members.start_all()
    for index in range(5):
        old.submit_sync({"op": "pad", "pad": PAD, "i": index})

    # Cut the leader off (its followers crash), let it append what nobody stores, crash it.
    followers = [a for a in members.addrs if a != old.self_addr]
    for addr in followers:
        members.crash(addr)
    committed_before = commit_index(old)
    for index in range(5):
        old.submit({"op": "pad", "pad": PAD, "uncommitted": index})
    wait_for(lambda: log_end(old)[0] >= committed_before + 5, 5, "the uncommitted tail in the old leader's log")
    tail_index, tail_term = log_end(old)
    members.crash(old.self_addr)

    # The others go on without it, far past one batch.
    for addr in followers:
        members.start(addr)
    wait_for(lambda: members.leader() is not None, 15, "a leader among the two survivors")
    new = members.leader()
    assert new is not None and new.term() > tail_term
    for index in range(200):
        new.submit({"op": "pad", "pad": PAD, "after": index})
    new.submit_sync({"op": "pad", "pad": PAD, "last": True}, timeout=20)
    # A leader elected while the old one is away expects it at its own log's end:
    # its first answer is then "my log ends at tail_index", inside the conflict.
    for addr in followers:
        members.crash(addr)
    for addr in followers:
        members.start(addr)
    wait_for(lambda: members.leader() is not None, 15, "a leader among the restarted survivors")
    new = members.leader()
    assert new is not None
    new.submit_sync({"op": "pad", "pad": PAD, "re-elected": True}, timeout=20)
    target = commit_index(new)
    assert target > tail_index + 100

    # The old leader returns: it must drop its tail and hold everything committed.
    returned = members.start(old.self_addr)
    wait_for(lambda: commit_index(returned) >= target, 30, "the returned member's commit index reaching the leader's")
    assert returned._syncobj._SyncObj__getEntries(tail_index)[0][2] != tail_term  # the tail entry was replaced

    # And it acks: with one survivor gone, nothing commits without the returned member.
    members.crash(followers[0])
    wait_for(lambda: members.leader() is not None, 15, "a leader of the two")
    members.leader().submit_sync({"op": "pad", "pad": PAD, "with_returned": True}, timeout=15)


@pytest.mark.parametrize("timing", [Timing(), Timing(raft_min_timeout=2.0, raft_max_timeout=4.0, append_entries_period=0.3)])
def test_a_failed_candidacy_is_retried_before_any_follower_would_stand(timing):
    """consensus._WatchedSyncObj._retry_candidacy_sooner: the retry wait stays under a
    follower's shortest time-out (so a follower's first candidacy is still what bounds the
    old leader's silence), and well above a vote's round trip (a few pysyncobj ticks)."""
    from nodeos.cluster.consensus import candidacy_window

    low, high = candidacy_window(timing)
    assert 5 * 0.02 <= low < high < timing.raft_min_timeout


def test_a_member_whose_time_out_fires_while_the_others_hear_the_leader_does_not_depose_it(members):
    """Pre-vote (nodeos/cluster/prevote.py): a stalled or restarted member asks first, and is refused."""
    leader = members.start_all()
    term = leader.term()
    follower = next(m for m in members.running.values() if m is not leader)
    for _ in range(5):  # its time-out fires again and again, as in a stall
        follower._syncobj._SyncObj__raftElectionDeadline = 0
        time.sleep(0.3)
    assert members.leader() is leader and leader.term() == term
    leader.submit_sync({"op": "pad", "pad": PAD, "still": True})

    # A member restarted from its journal rejoins without an election too.
    members.crash(follower.self_addr)
    members.start(follower.self_addr)
    time.sleep(2.0)
    assert members.leader() is leader and leader.term() == term


def test_after_a_leader_crash_the_survivors_grant_each_other_and_elect(members):
    old = members.start_all()
    members.crash(old.self_addr)
    wait_for(lambda: members.leader() is not None, 10, "a new leader among the survivors")
    members.leader().submit_sync({"op": "pad", "pad": PAD, "after_crash": True})


def test_a_returning_member_has_quorum_evidence_only_once_it_holds_what_was_decided_without_it(members):
    """The heal of a partition (CI, test_services): the evidence that gives a node back its
    grant must not come while its state predates the Monitor's moves of its singletons."""
    leader = members.start_all()
    away = next(a for a in members.addrs if a != leader.self_addr)
    members.crash(away)
    term = leader.term()

    def heartbeat() -> dict:
        return {"op": "heartbeat", "now": time.time(), "leader": "the-monitor", "term": term}

    for _ in range(3):
        leader.submit(heartbeat())  # committed while it is away: its catch-up starts with these
    for index in range(200):
        leader.submit({"op": "pad", "pad": PAD, "i": index})  # several batches before the decision
    leader.submit({"op": "event", "now": time.time(), "kind": "test.moved_away"})
    leader.submit_sync(heartbeat(), timeout=20)

    returned: list[Consensus] = []
    stamps: list[bool] = []  # per evidence stamp: did the state already hold the decision?

    def stamped(_at: float) -> None:
        while not returned:  # the tick thread may run before the constructor returns
            time.sleep(0.001)
        stamps.append(returned[0].cluster.read(lambda s: any(e["kind"] == "test.moved_away" for e in s.events)))

    returned.append(members.start(away, on_follower_heartbeat=stamped))
    target = commit_index(leader)
    wait_for(lambda: commit_index(returned[0]) >= target, 30, "the returned member catching up")
    leader.submit_sync(heartbeat(), timeout=20)
    wait_for(lambda: len(stamps) > 0, 10, "quorum evidence on the returned member")
    assert all(stamps), stamps
