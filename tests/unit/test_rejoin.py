"""The rejoin barrier's rule (nodeos/cluster/rejoin.py): pure, times as arguments."""

from __future__ import annotations

from nodeos.cluster.rejoin import FollowerEvidence, HeartbeatVerdict

FENCE_AFTER = 1.0


def test_a_follower_that_never_had_evidence_asks_for_a_barrier_once_then_waits():
    evidence = FollowerEvidence(FENCE_AFTER)
    assert evidence.heartbeat_applied(10.0) is HeartbeatVerdict.ASK
    assert evidence.heartbeat_applied(10.1) is HeartbeatVerdict.WAIT
    assert evidence.last_evidence is None


def test_the_barrier_back_in_time_is_evidence_and_heartbeats_count_again():
    evidence = FollowerEvidence(FENCE_AFTER)
    evidence.heartbeat_applied(10.0)
    assert evidence.barrier_applied(evidence.generation, 10.3)
    assert evidence.last_evidence == 10.3
    assert evidence.heartbeat_applied(10.4) is HeartbeatVerdict.EVIDENCE
    assert evidence.heartbeat_applied(11.4) is HeartbeatVerdict.EVIDENCE  # exactly fence_after later: still in time


def test_heartbeats_after_a_lapse_are_not_evidence_until_a_new_barrier_returns():
    """The heal of a partition: the leader's old appends arrive first."""
    evidence = FollowerEvidence(FENCE_AFTER)
    evidence.heartbeat_applied(10.0)
    evidence.barrier_applied(evidence.generation, 10.1)
    assert evidence.heartbeat_applied(20.0) is HeartbeatVerdict.ASK
    for t in (20.01, 20.02, 20.5):
        assert evidence.heartbeat_applied(t) is HeartbeatVerdict.WAIT
    assert evidence.last_evidence == 10.1
    assert evidence.barrier_applied(evidence.generation, 20.6)
    assert evidence.heartbeat_applied(20.7) is HeartbeatVerdict.EVIDENCE


def test_a_barrier_that_came_back_too_late_is_ignored_and_asked_again():
    """Asked, then cut off, applied at the heal: it may precede a move decided without us."""
    evidence = FollowerEvidence(FENCE_AFTER)
    evidence.heartbeat_applied(10.0)
    late = evidence.generation
    assert not evidence.barrier_applied(late, 15.0)
    assert evidence.heartbeat_applied(15.01) is HeartbeatVerdict.ASK
    assert not evidence.barrier_applied(late, 15.1)  # the old one again: not the barrier in flight
    assert evidence.barrier_applied(evidence.generation, 15.2)


def test_a_failed_barrier_is_asked_again_at_the_next_heartbeat():
    evidence = FollowerEvidence(FENCE_AFTER)
    evidence.heartbeat_applied(10.0)
    evidence.barrier_failed(evidence.generation)
    assert evidence.heartbeat_applied(10.1) is HeartbeatVerdict.ASK
    evidence.barrier_failed(evidence.generation - 1)  # an older barrier's failure changes nothing
    assert evidence.heartbeat_applied(10.2) is HeartbeatVerdict.WAIT
