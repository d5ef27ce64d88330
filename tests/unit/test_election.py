"""Ranked election time-outs (nodeos/cluster/election.py)."""

from __future__ import annotations

import random

import pytest

from nodeos.cluster.election import election_timeout

MEMBERS = ["10.0.0.1:7371", "10.0.0.2:7371", "10.0.0.3:7371"]


def test_the_followers_of_a_dead_leader_take_turns_in_address_order() -> None:
    leader = MEMBERS[1]
    first = [election_timeout(MEMBERS[0], MEMBERS, leader, 0.4, 1.0, r / 10) for r in range(10)]
    second = [election_timeout(MEMBERS[2], MEMBERS, leader, 0.4, 1.0, r / 10) for r in range(10)]
    assert min(first) == pytest.approx(0.4) and max(first) < 0.48
    assert min(second) == pytest.approx(0.7) and max(second) < 0.78
    assert min(second) - max(first) > 0.2  # far more than a vote's round trip: no split vote


@pytest.mark.parametrize("size", [2, 3, 5, 7])
def test_every_time_out_stays_within_the_configured_range_and_ranks_never_overlap(size: int) -> None:
    members = [f"10.0.0.{i}:7371" for i in range(1, size + 1)]
    rng = random.Random(size)
    for leader in members:
        windows = []
        for me in members:
            if me == leader:
                continue
            samples = [election_timeout(me, members, leader, 0.4, 1.0, rng.random()) for _ in range(50)]
            assert all(0.4 <= t < 1.0 for t in samples)
            windows.append((min(samples), max(samples)))
        windows.sort()
        assert all(a[1] < b[0] for a, b in zip(windows, windows[1:]))


def test_without_a_known_leader_the_time_out_is_uniform_raft() -> None:
    assert election_timeout(MEMBERS[0], MEMBERS, None, 0.4, 1.0, 0.5) == pytest.approx(0.7)
    assert election_timeout(MEMBERS[0], MEMBERS, MEMBERS[0], 0.4, 1.0, 0.9) == pytest.approx(0.94)  # we were leader
    assert election_timeout(MEMBERS[0], MEMBERS, "10.9.9.9:7371", 0.4, 1.0, 0.0) == pytest.approx(0.4)  # not a member
