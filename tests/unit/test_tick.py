"""pysyncobj's tick thread sleeps until its next Raft deadline and wakes for a proposal.

Real pysyncobj members on loopback (no root, no namespaces), as in test_raft_catchup.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from nodeos.cluster import consensus
from nodeos.cluster.config import Timing
from nodeos.cluster.consensus import Consensus, tick_sleep

from .test_raft_catchup import Members, free_ports, wait_for


def test_the_tick_sleeps_until_the_deadline_within_the_ceiling():
    assert tick_sleep(due=10.03, now=10.0, ceiling=0.1) == pytest.approx(0.03)
    assert tick_sleep(due=15.0, now=10.0, ceiling=0.1) == 0.1


def test_a_deadline_the_tick_could_not_act_on_sleeps_the_ceiling_instead_of_spinning():
    # A follower whose time-out fired but which reaches no member: the deadline stays past.
    assert tick_sleep(due=9.0, now=10.0, ceiling=0.1) == 0.1
    assert tick_sleep(due=10.0, now=10.0, ceiling=0.1) == 0.1


def count_polls(member: Consensus) -> list[int]:
    """A counter of the tick thread's polls (one per tick)."""
    syncobj = member._syncobj
    calls = [0]
    poll = syncobj._nodeos_poll

    def counted(timeout: float) -> None:
        calls[0] += 1
        poll(timeout)

    syncobj._nodeos_poll = counted
    return calls


@pytest.fixture
def members(tmp_path):
    group = Members(tmp_path)
    yield group
    group.stop_all()


def test_an_idle_group_ticks_far_less_than_every_20_ms(members):
    members.start_all()
    counters = {addr: count_polls(member) for addr, member in members.running.items()}
    threading.Event().wait(2.0)
    for addr, calls in counters.items():
        # pysyncobj's own loop: 100 ticks in 2 s. Now a follower ticks for each append
        # from the leader (10 a second) and the leader for its appends and their answers.
        assert calls[0] <= 80, f"{addr} ticked {calls[0]} times in 2 s"
        assert calls[0] >= 5, f"{addr} ticked {calls[0]} times in 2 s: is it turning?"


def test_a_proposal_wakes_the_sleeping_tick_thread(tmp_path: Path, monkeypatch):
    """A lone member with appends 1 s apart: its proposal commits in a tick the proposal woke.

    Without the wake the tick thread sleeps until its next append, and the commit waits for it.
    """
    monkeypatch.setattr(consensus, "TICK_CEILING", 30.0)
    timing = Timing(raft_min_timeout=3.1, raft_max_timeout=3.5, append_entries_period=1.0)
    addr = f"127.0.0.1:{free_ports(1)[0]}"
    member = Consensus(addr, [addr], "test-password", tmp_path, timing)
    try:
        wait_for(member.is_leader, 60, "the lone member leads")
        syncobj = member._syncobj
        appended = syncobj._SyncObj__newAppendEntriesTime
        wait_for(lambda: syncobj._SyncObj__newAppendEntriesTime != appended, 15, "an append period passed")
        next_append = syncobj._SyncObj__newAppendEntriesTime
        result = member.submit_sync({"op": "heartbeat", "now": 1.0, "leader": "n1", "term": 0}, timeout=20.0)
        assert result.get("ok"), result
        assert syncobj._SyncObj__newAppendEntriesTime == next_append, "the commit waited for the next append period"
    finally:
        member.stop(wait=True)


def test_a_leader_sends_a_proposal_with_its_next_append(members, monkeypatch):
    """Appends 1 s apart: a proposal on the leader commits with the first append after it, not the second.

    pysyncobj sends a due append before it takes queued proposals into its log;
    the leader is not woken for a proposal, so its tick takes them in first.
    """
    monkeypatch.setattr(consensus, "TICK_CEILING", 30.0)
    timing = Timing(raft_min_timeout=3.1, raft_max_timeout=3.5, append_entries_period=1.0)
    for addr in members.addrs:
        state_dir = members.root / addr.replace(":", "_")
        state_dir.mkdir()
        members.running[addr] = Consensus(addr, members.addrs, "test-password", state_dir, timing)
    wait_for(lambda: members.leader() is not None, 60, "a leader")
    leader = members.leader()
    syncobj = leader._syncobj
    appended = syncobj._SyncObj__newAppendEntriesTime
    wait_for(lambda: syncobj._SyncObj__newAppendEntriesTime != appended, 15, "an append period passed")
    next_append = syncobj._SyncObj__newAppendEntriesTime
    result = leader.submit_sync({"op": "heartbeat", "now": 1.0, "leader": "n1", "term": 0}, timeout=20.0)
    assert result.get("ok"), result
    sent_at = syncobj._SyncObj__newAppendEntriesTime - timing.append_entries_period
    assert sent_at == pytest.approx(next_append, abs=0.2), "the proposal waited for a later append"


def test_a_member_with_the_event_driven_tick_still_compacts_its_log(tmp_path: Path):
    """pysyncobj pickles the SyncObj's own attributes into its dumps: ours must not stop that."""
    addr = f"127.0.0.1:{free_ports(1)[0]}"
    member = Consensus(addr, [addr], "test-password", tmp_path, Timing())
    try:
        wait_for(member.is_leader, 30, "the lone member leads")
        for index in range(20):
            member.submit_sync({"op": "heartbeat", "now": float(index), "leader": "n1", "term": 0})
        syncobj = member._syncobj
        before = len(syncobj._SyncObj__raftLog)
        syncobj.forceLogCompaction()
        wait_for(lambda: len(syncobj._SyncObj__raftLog) < before, 15, "the log compacted")
        assert (tmp_path / "raft.dump").exists()
    finally:
        member.stop(wait=True)
