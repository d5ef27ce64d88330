"""Lease and fence clocks, including the two-leader overlap argument."""

from __future__ import annotations

import random

import pytest

from nodeos.cluster.lease import FenceClock, LeaseClock

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


def test_fence_clock():
    fence = FenceClock(fence_after=1.0)
    assert fence.fenced(0.0)  # no evidence yet: hold nothing
    fence.evidence(5.0)
    assert not fence.fenced(5.9)
    assert fence.fenced(6.01)
    fence.evidence(4.0)  # older evidence does not move the clock back
    assert fence.fenced(6.01)
