"""Rise/fall debouncing and per-check scheduling: pure, no clock, no network."""

from __future__ import annotations

import pytest

from nodeos.services.catalog import HealthCheckSpec
from nodeos.services.health import CheckResult, HealthTracker, ServiceHealth


def feed(tracker: HealthTracker, results: str) -> list[str | None]:
    """'+' is a success, '-' a failure; returns observe()'s answers."""
    return [tracker.observe(r == "+") for r in results]


def test_starts_in_starting_and_needs_rise_successes() -> None:
    tracker = HealthTracker(rise=3, fall=2)
    assert tracker.state == "starting"
    assert feed(tracker, "++") == [None, None]
    assert tracker.observe(True) == "healthy"
    assert tracker.state == "healthy"
    assert tracker.observe(True) is None  # no repeated change reports


def test_fall_failures_in_a_row_make_it_unhealthy() -> None:
    tracker = HealthTracker(rise=1, fall=3)
    assert tracker.observe(True) == "healthy"
    assert feed(tracker, "--") == [None, None]
    assert tracker.observe(False) == "unhealthy"
    assert tracker.observe(False) is None


def test_a_success_resets_the_failure_run() -> None:
    tracker = HealthTracker(rise=1, fall=2)
    tracker.observe(True)
    assert feed(tracker, "-+-+-+") == [None] * 6  # flapping never reaches fall=2
    assert tracker.state == "healthy"


def test_a_failure_resets_the_success_run() -> None:
    tracker = HealthTracker(rise=2, fall=2)
    assert feed(tracker, "--") == [None, "unhealthy"]
    assert feed(tracker, "+-+-") == [None] * 4
    assert feed(tracker, "++") == [None, "healthy"]


def test_starting_can_go_straight_to_unhealthy() -> None:
    tracker = HealthTracker(rise=2, fall=1)
    assert tracker.observe(False) == "unhealthy"


def test_reset_goes_back_to_starting() -> None:
    tracker = HealthTracker(rise=1, fall=1)
    tracker.observe(True)
    tracker.reset()
    assert tracker.state == "starting"
    assert tracker.observe(False) == "unhealthy"


@pytest.mark.parametrize(("rise", "fall"), [(0, 1), (1, 0), (-1, 2)])
def test_thresholds_must_be_positive(rise: int, fall: int) -> None:
    with pytest.raises(ValueError):
        HealthTracker(rise=rise, fall=fall)


def test_same_input_same_output() -> None:
    pattern = "+-++--+++---+"
    assert feed(HealthTracker(2, 2), pattern) == feed(HealthTracker(2, 2), pattern)


# ---------------------------------------------------------------- ServiceHealth

FAST = HealthCheckSpec(type="process", interval=1.0, rise=1, fall=1)
SLOW = HealthCheckSpec(type="tcp", port=80, interval=5.0, rise=2, fall=2)


def test_all_checks_due_at_first_then_by_interval() -> None:
    health = ServiceHealth([FAST, SLOW], now=100.0)
    assert health.due(100.0) == [0, 1]
    health.record(0, True, now=100.0)
    health.record(1, True, now=100.0)
    assert health.due(100.5) == []
    assert health.due(101.0) == [0]
    assert health.due(105.0) == [0, 1]
    assert health.next_due() == 101.0
    assert health.check_spec(1) is SLOW and health.checks == (FAST, SLOW)


def test_service_is_healthy_only_when_every_check_is() -> None:
    health = ServiceHealth([FAST, SLOW], now=0.0)
    assert health.record(0, True, now=0.0) is None  # FAST healthy, SLOW still starting
    assert health.state == "starting"
    assert health.record(1, True, now=0.0) is None
    assert health.record(1, CheckResult(True, "connected", 0.01), now=5.0) == "healthy"
    assert health.record(0, False, now=6.0) == "unhealthy"  # any unhealthy check
    assert health.record(0, True, now=7.0) == "healthy"
    details = health.details()
    assert details[1] == {"type": "tcp", "state": "healthy", "ok": True, "detail": "connected"}


def test_reset_makes_everything_due_and_starting() -> None:
    health = ServiceHealth([FAST], now=0.0)
    health.record(0, True, now=0.0)
    assert health.state == "healthy"
    health.reset(now=50.0)
    assert health.state == "starting"
    assert health.due(50.0) == [0]


def test_no_checks_stays_starting() -> None:
    health = ServiceHealth([], now=0.0)
    assert health.due(0.0) == [] and health.state == "starting" and health.next_due() is None


def test_start_period_ignores_failures_until_the_first_pass():
    from nodeos.services.catalog import HealthCheckSpec
    from nodeos.services.health import ServiceHealth

    health = ServiceHealth([HealthCheckSpec(type="tcp", port=1, rise=1, fall=2, start_period=10.0)], now=0.0)
    for t in (1.0, 2.0, 3.0, 9.0):
        health.record(0, False, t)
    assert health.state == "starting"  # initialising: failures do not count yet
    health.record(0, True, 9.5)
    assert health.state == "healthy"
    health.record(0, False, 9.6)
    health.record(0, False, 9.7)
    assert health.state == "unhealthy"  # after a pass, the grace is over
    health.reset(20.0)
    for t in (31.0, 32.0):
        health.record(0, False, t)
    assert health.state == "unhealthy"  # past the period after the restart: failures count


# -- slow: a timeout on a live, listening process ---------------------------------------------------

def test_slow_answers_are_reported_and_count_as_a_failure_only_after_the_grace() -> None:
    tracker = HealthTracker(rise=1, fall=3, slow_grace=120.0)
    assert tracker.observe(True, now=0.0) == "healthy"
    assert tracker.observe(False, slow=True, now=2.0) == "slow"
    for now in range(4, 120, 4):  # far more than `fall` timeouts in a row: still only slow
        assert tracker.observe(False, slow=True, now=float(now)) is None
    assert tracker.observe(False, slow=True, now=122.0) == "unhealthy"  # 120 s after the first missing answer
    assert tracker.observe(False, slow=True, now=126.0) is None


def test_a_pass_ends_slowness_and_a_later_slow_run_has_its_own_grace() -> None:
    tracker = HealthTracker(rise=1, fall=3, slow_grace=60.0)
    tracker.observe(True, now=0.0)
    tracker.observe(False, slow=True, now=10.0)
    assert tracker.observe(True, now=50.0) == "healthy"
    assert tracker.observe(False, slow=True, now=100.0) == "slow"
    assert tracker.observe(False, slow=True, now=159.0) is None
    assert tracker.observe(False, slow=True, now=160.0) == "unhealthy"


def test_refused_answers_still_fail_after_fall_even_between_slow_ones() -> None:
    tracker = HealthTracker(rise=1, fall=3, slow_grace=120.0)
    tracker.observe(True, now=0.0)
    assert tracker.observe(False, now=1.0) is None  # one refusal: not yet
    assert tracker.observe(False, slow=True, now=2.0) == "slow"
    assert tracker.observe(False, now=3.0) is None  # a slow answer between failures neither resets nor counts
    assert tracker.observe(False, now=4.0) == "unhealthy"
    # Unhealthy stays unhealthy through slow answers until a pass (no way back by slowness).
    assert tracker.observe(False, slow=True, now=5.0) is None and tracker.state == "unhealthy"
    assert tracker.observe(True, now=6.0) == "healthy"


def test_a_service_is_slow_when_one_check_is_and_none_is_unhealthy() -> None:
    checks = [HealthCheckSpec(type="process", rise=1), HealthCheckSpec(type="mariadb", rise=1, fall=3, port=3306)]
    health = ServiceHealth(checks, now=0.0)
    health.record(0, True, 0.0)
    assert health.record(1, True, 0.0) == "healthy"
    slow = CheckResult(False, "slow: write heartbeat: timed out (2013) (process running, port 3306 accepting)", 2.0,
                       slow=True)
    assert health.record(1, slow, 2.0) == "slow"
    for now in (6.0, 10.0, 14.0, 18.0):
        assert health.record(1, slow, now) is None
    assert health.details()[1]["state"] == "slow"
    assert health.record(1, CheckResult(False, "connect: connection refused (2003)", 0.0), 22.0) is None
    assert health.record(1, CheckResult(False, "connect: connection refused (2003)", 0.0), 26.0) is None
    assert health.record(1, CheckResult(False, "connect: connection refused (2003)", 0.0), 30.0) == "unhealthy"


def test_a_timeout_is_slow_only_on_a_live_runnable_process_whose_port_accepts() -> None:
    from nodeos.services.health import slow_result, timed_out

    timeout = CheckResult(False, "write heartbeat: timed out (2013)", 2.0)
    assert timed_out(timeout.detail) and not timed_out("connect 127.0.0.1:3306: connection refused (2003)")
    accepts, refuses = (lambda address, timeout: True), (lambda address, timeout: False)
    slow = slow_result(timeout, "disk-sleep", ("127.0.0.1", 3306), 2.0, connect=accepts)
    assert slow.slow and slow.detail == \
        "slow: write heartbeat: timed out (2013) (process disk-sleep, port 3306 accepting)"
    assert slow_result(timeout, "sleeping", None, 2.0, connect=refuses).slow  # no port: the process alone
    assert slow_result(timeout, "running", ("127.0.0.1", 3306), 2.0, connect=refuses) == timeout  # not listening
    assert slow_result(timeout, None, ("127.0.0.1", 3306), 2.0, connect=accepts) == timeout  # gone
    assert slow_result(timeout, "stopped", ("127.0.0.1", 3306), 2.0, connect=accepts) == timeout  # frozen, not busy
    assert slow_result(timeout, "zombie", None, 2.0, connect=accepts) == timeout


def test_run_check_marks_a_timeout_slow_and_slow_grace_zero_keeps_it_a_failure(monkeypatch) -> None:
    import os
    import socket

    from nodeos.services import health

    monkeypatch.setitem(health._CHECKS, "mariadb", lambda spec, target: (False, "write heartbeat: timed out (2013)"))
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        target = health.CheckTarget(pid=os.getpid())
        result = health.run_check(HealthCheckSpec(type="mariadb", port=port, timeout=1.0), target)
        assert result.slow and result.detail.startswith("slow: write heartbeat: timed out (2013) (process ")
        strict = health.run_check(HealthCheckSpec(type="mariadb", port=port, timeout=1.0, slow_grace=0.0), target)
        assert not strict.slow and strict.detail == "write heartbeat: timed out (2013)"
