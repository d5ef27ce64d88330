"""The fencing policy (nodeos/fencing/policy.py), pinned: when a node may hold, when the guard fences."""

from __future__ import annotations

from nodeos.cluster.config import Timing
from nodeos.fencing.policy import ACT_BUDGET, APPLY_LAG, ENFORCE_PERIOD, GuardPolicy, Holdings, Vip, margin_is_safe

VIP = Vip("eth0", "10.0.0.9")
MEMCACHED = {"memcached": {"run_dir": "/run/x/services/memcached"}}


def holding(vips: set[Vip] | None = None, services: dict[str, dict[str, str]] | None = None) -> Holdings:
    return Holdings.of(vips or set(), services or {})


def test_nothing_may_be_held_before_a_grant() -> None:
    policy = GuardPolicy()
    assert not policy.valid(10.0)
    assert policy.grant(10.0, None, holding({VIP})) is False  # no evidence yet: refused
    assert policy.holdings.vips == {VIP}  # ...but what was claimed is enforced absent
    assert policy.enforces_vip("eth0", VIP.ip, 10.0)


def test_a_valid_grant_holds_until_its_end_then_the_guard_fences() -> None:
    policy = GuardPolicy()
    assert policy.grant(10.0, 11.0, holding({VIP}, MEMCACHED)) is True
    assert policy.valid(10.99) and not policy.must_fence(10.99)
    assert not policy.enforces_vip("eth0", VIP.ip, 10.5)
    assert policy.must_fence(11.0)  # at the deadline, not a tick later
    policy.fenced_now(11.0)
    assert policy.fences == 1 and not policy.valid(11.0) and not policy.must_fence(11.5)


def test_an_expired_grant_is_refused_and_forgets_nothing() -> None:
    policy = GuardPolicy()
    policy.grant(10.0, 11.0, holding({VIP}, MEMCACHED))
    policy.fenced_now(11.0)
    assert policy.grant(12.0, 11.5, holding(services={"nginx": {"run_dir": "/n"}})) is False
    assert set(policy.holdings.service_targets()) == {"memcached", "nginx"} and policy.holdings.vips == {VIP}


def test_after_a_fence_holdings_stay_enforced_absent() -> None:
    policy = GuardPolicy()
    policy.grant(10.0, 11.0, holding({VIP}, MEMCACHED))
    policy.fenced_now(11.0)
    assert not policy.must_enforce(11.0 + ENFORCE_PERIOD / 2)
    assert policy.must_enforce(11.0 + ENFORCE_PERIOD * 1.01)
    assert policy.enforces_vip("eth0", VIP.ip, 30.0)  # a hung agent waking up later
    assert not policy.enforces_vip("eth0", "10.0.0.1", 30.0)  # the node's own address is never touched


def test_a_new_valid_grant_takes_over_and_may_shrink_the_holdings() -> None:
    policy = GuardPolicy()
    policy.grant(10.0, 11.0, holding({VIP}, MEMCACHED))
    policy.fenced_now(11.0)
    assert policy.grant(20.0, 21.0, holding()) is True
    assert not policy.holdings and policy.valid(20.5)
    assert not policy.watchdog_armed()  # nothing to answer for: a hung guard harms nobody


def test_the_watchdog_is_armed_while_the_guard_answers_for_anything() -> None:
    policy = GuardPolicy()
    assert not policy.watchdog_armed()
    policy.grant(10.0, 11.0, holding({VIP}))
    assert policy.watchdog_armed()


def test_holdings_round_trip_and_reject_garbage() -> None:
    original = holding({VIP}, MEMCACHED)
    assert Holdings.from_wire(original.to_wire()) == original
    for bad in ([], {"vips": [{"ip": 1}]}, {"services": {"x": {"run_dir": 3}}}, {"vips": ["x"]}):
        try:
            Holdings.from_wire(bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad!r}")


def test_the_default_margin_covers_the_evidence_lag_and_the_guards_action() -> None:
    timing = Timing()
    assert margin_is_safe(timing.fence_margin)
    # The grant (fence_after from the last evidence) ends before the Monitor's lost threshold
    # (fence_after + fence_margin from the last reply it counted), with room to act.
    assert timing.fence_after + APPLY_LAG + ACT_BUDGET < timing.fence_after + timing.fence_margin
    assert not margin_is_safe(APPLY_LAG + ACT_BUDGET)
