"""Lease and fence clocks, including the two-leader overlap argument."""

from __future__ import annotations

import random

import pytest

from nodeos.cluster.lease import FenceClock, LeaseClock, PredecessorSilence

LEASE = 1.0


def test_no_action_before_the_guard_or_without_a_committed_heartbeat():
    clock = LeaseClock(LEASE)
    clock.became_leader(10.0)
    assert not clock.may_act(10.5)
    token = clock.heartbeat_submitted(10.9)
    assert not clock.may_act(11.05)  # guard passed, but nothing committed yet
    clock.heartbeat_committed(token)
    assert clock.may_act(11.05)
    assert not clock.may_act(10.9 + LEASE)  # lease ran out: no fresh commit


def test_losing_leadership_ends_the_lease_at_once():
    clock = LeaseClock(LEASE)
    clock.became_leader(0.0)
    clock.heartbeat_committed(clock.heartbeat_submitted(1.1))
    assert clock.may_act(1.2)
    clock.lost_leadership()
    assert not clock.may_act(1.2)


def test_a_commit_that_arrives_after_stepping_down_grants_nothing():
    clock = LeaseClock(LEASE)
    clock.became_leader(0.0)
    token = clock.heartbeat_submitted(1.1)
    clock.lost_leadership()
    assert clock.heartbeat_committed(token) is None
    assert not clock.may_act(1.2)


@pytest.mark.parametrize("seed", range(50))
def test_old_and_new_leader_never_act_at_once(seed: int):
    """The old leader's last acknowledged heartbeat was submitted before the new election."""
    rng = random.Random(seed)
    old, new = LeaseClock(LEASE), LeaseClock(LEASE)
    old.became_leader(0.0)
    t = 1.1
    while t < 5.0:
        old.heartbeat_committed(old.heartbeat_submitted(t))
        t += 0.1
    last_acked = t - 0.1
    # Cut off: later heartbeats are never committed; the majority elects after its timeout.
    for extra in range(5):
        old.heartbeat_submitted(last_acked + 0.1 * (extra + 1))
    elected = last_acked + rng.uniform(0.001, 1.5)
    new.became_leader(elected)
    probe = elected
    while probe < elected + 3.0:
        if probe >= new.guard_until():
            new.heartbeat_committed(new.heartbeat_submitted(probe))
        assert not (old.may_act(probe) and new.may_act(probe)), probe
        probe += 0.01
    assert new.may_act(elected + LEASE * 1.2)  # the new leader does take over


@pytest.mark.parametrize("seed", range(200))
def test_a_guard_backdated_to_the_predecessor_bound_never_overlaps_the_old_lease(seed: int):
    """The old leader's appends reach the new one (receipt >= submission) and reset its election
    deadline to now + [min, max); it stands when the deadline passes and counts its guard from
    PredecessorSilence's bound: never while the old lease runs."""
    rng = random.Random(seed)
    min_timeout, max_timeout = 0.4, 1.0
    old, new, silence = LeaseClock(LEASE), LeaseClock(LEASE), PredecessorSilence(min_timeout)
    silence.following("L")
    old.became_leader(0.0)
    t, deadline = 1.1, 0.0
    while t < 5.0:
        token = old.heartbeat_submitted(t)
        received = t + rng.uniform(0, 0.05)
        deadline = received + rng.uniform(min_timeout, max_timeout)
        if rng.random() < 0.9:  # the other voter's ack: committed (else this one stays pending)
            old.heartbeat_committed(token)
        t += 0.1
    candidate_at = deadline + rng.uniform(0, 0.02)
    silence.became_candidate(candidate_at)
    elected = candidate_at + rng.uniform(0.001, 0.5)
    silence.became_leader(elected, term=2)
    new.became_leader(elected, silence.evidence_bound(2, elected, elected))
    assert new.guard_until() < elected + LEASE  # the point: sooner than from the election
    probe = elected
    while probe < elected + 3.0:
        if probe >= new.guard_until():
            new.heartbeat_committed(new.heartbeat_submitted(probe))
        assert not (old.may_act(probe) and new.may_act(probe)), probe
        probe += 0.005


def test_the_bound_belongs_to_its_term_and_converts_between_clocks():
    silence = PredecessorSilence(0.4)
    silence.following("L")
    silence.became_candidate(100.0)
    silence.became_leader(100.2, term=7)
    assert silence.evidence_bound(6, 100.3, 50.3) is None  # another leadership's election
    assert silence.evidence_bound(7, 100.3, 50.3) == pytest.approx(49.6)  # 0.7 s before, on the other clock
    clock = LeaseClock(LEASE)
    clock.became_leader(50.25)
    assert clock.guard_until() == pytest.approx(50.25 + LEASE * 1.01)
    clock.backdate_guard(silence.evidence_bound(7, 100.3, 50.3))  # learned after the election
    assert clock.guard_until() == pytest.approx(49.6 + LEASE * 1.01)
    assert clock.backdated() == pytest.approx(0.65 * 1.01)
    clock.backdate_guard(None)
    clock.backdate_guard(60.0)  # never later
    assert clock.guard_until() == pytest.approx(49.6 + LEASE * 1.01)


def test_fence_clock():
    fence = FenceClock(fence_after=1.0)
    assert fence.fenced(0.0)  # no evidence yet: hold nothing
    fence.evidence(5.0)
    assert not fence.fenced(5.9)
    assert fence.fenced(6.01)
    fence.evidence(4.0)  # older evidence does not move the clock back
    assert fence.fenced(6.01)


# -- a new leader counts its predecessor's silence from before its election --------

def _elected_after_following(min_timeout: float = 0.4) -> PredecessorSilence:
    silence = PredecessorSilence(min_timeout)
    silence.following("10.0.0.1:7371")  # appends from the old leader until it died
    silence.became_candidate(100.0)  # our election deadline passed
    silence.became_leader(100.2)
    return silence


def test_the_predecessor_is_silent_since_candidacy_minus_the_minimum_timeout() -> None:
    silence = _elected_after_following()
    # pysyncobj restarted its count at the election: 0.5 s; the bound is 100.0 - 0.4.
    assert silence.age("10.0.0.1:7371", 0.5, 100.7) == pytest.approx(1.1)
    # Another follower is counted as pysyncobj counts it.
    assert silence.age("10.0.0.2:7371", 0.5, 100.7) == 0.5


def test_a_predecessor_that_answered_us_is_counted_normally() -> None:
    silence = _elected_after_following()
    assert silence.age("10.0.0.1:7371", 0.05, 100.7) == 0.05


def test_the_first_candidacy_since_following_counts_and_following_again_resets_it() -> None:
    silence = PredecessorSilence(0.4)
    silence.following("10.0.0.1:7371")
    silence.became_candidate(100.0)
    silence.became_candidate(101.2)  # a split vote: a second candidacy
    silence.became_leader(101.3)
    assert silence.silent_since == pytest.approx(99.6)
    silence.lost_leadership()
    silence.following("10.0.0.3:7371")
    silence.became_candidate(105.0)
    silence.became_leader(105.1)
    assert (silence.predecessor, silence.silent_since) == ("10.0.0.3:7371", pytest.approx(104.6))


def test_no_bound_without_a_followed_leader_or_a_candidacy() -> None:
    fresh = PredecessorSilence(0.4)
    fresh.became_candidate(1.0)
    fresh.became_leader(1.1)  # the first election of a new cluster: nobody to backdate
    assert fresh.age("10.0.0.1:7371", 0.3, 1.4) == 0.3
    after_loss = _elected_after_following()
    after_loss.lost_leadership()
    assert after_loss.age("10.0.0.1:7371", 0.3, 100.9) == 0.3


@pytest.mark.parametrize("seed", range(200))
def test_the_bound_never_precedes_the_old_leaders_last_evidence(seed: int) -> None:
    """A random history: the old leader's appends reset our deadline to now + [min, max);
    its evidence is the submission time of an entry we received (receipt >= submission)."""
    rng = random.Random(seed)
    min_timeout, max_timeout = 0.4, 1.0
    silence = PredecessorSilence(min_timeout)
    now, deadline, evidence = 0.0, min_timeout, None
    silence.following("L")
    while rng.random() < 0.9:  # appends, each delivered after its submission
        submitted = now + rng.uniform(0, 0.1)
        now = submitted + rng.uniform(0, 0.05)
        evidence = submitted if rng.random() < 0.8 else evidence
        deadline = now + rng.uniform(min_timeout, max_timeout)
    candidate_at = max(now, deadline) + rng.uniform(0, 0.05)  # the tick that notices comes a little late
    silence.became_candidate(candidate_at)
    silence.became_leader(candidate_at + rng.uniform(0, 2))
    if evidence is not None:
        assert silence.silent_since is not None and silence.silent_since >= evidence


def test_an_append_while_standing_restarts_the_count() -> None:
    """Candidate at 100, an append from a new leader makes us follow it (unseen by the tick),
    it dies, we stand again at 103: its heartbeats reached us after 100 - min."""
    silence = PredecessorSilence(0.4)
    silence.following("10.0.0.1:7371")
    silence.became_candidate(100.0)
    silence.became_follower("10.0.0.3:7371")
    silence.became_candidate(103.0)
    silence.became_leader(103.1)
    assert (silence.predecessor, silence.silent_since) == ("10.0.0.3:7371", pytest.approx(102.6))
