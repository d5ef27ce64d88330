"""The agent names the call a stuck pass waits on (nodeos/stall.py)."""

from __future__ import annotations

import threading

from nodeos.stall import where_is


def waits_on_an_unreachable_ceph(release: threading.Event) -> None:
    release.wait(10)


def test_a_blocked_thread_is_found_in_the_call_it_waits_on() -> None:
    release = threading.Event()
    thread = threading.Thread(target=waits_on_an_unreachable_ceph, args=(release,), name="services")
    thread.start()
    try:
        for _ in range(100):  # until it is inside the wait
            where = where_is(thread)
            if any("waits_on_an_unreachable_ceph" in frame for frame in where):
                break
            release.wait(0.01)
        assert any(frame.endswith(" waits_on_an_unreachable_ceph") and "test_stall.py:" in frame for frame in where), where
        assert where[-1].split(" ")[-1] == "wait"  # innermost last: Event.wait, then Condition.wait
        assert len(where) <= 8
    finally:
        release.set()
        thread.join()


def test_an_ended_thread_is_nowhere() -> None:
    thread = threading.Thread(target=lambda: None)
    thread.start()
    thread.join()
    assert where_is(thread) == []


def test_the_layer_reports_only_the_pass_that_is_late() -> None:
    from nodeos.services.layer import ServicesLayer
    release = threading.Event()
    services = threading.Thread(target=waits_on_an_unreachable_ceph, args=(release,), name="services")
    monitor = threading.Thread(target=release.wait, name="monitor")
    layer = object.__new__(ServicesLayer)  # only what stalled() reads
    layer.consensus, layer._threads = object(), [services, monitor]
    layer.last_pass, layer.last_monitor_pass = 100.0, 125.0
    services.start()
    monitor.start()
    try:
        [stall] = layer.stalled(130.0, after=10.0)
        assert (stall.thread, stall.seconds) == ("services", 30.0)
        assert layer.stalled(130.0, after=31.0) == []
        layer.consensus = None  # between two memberships: nothing is expected to turn
        assert layer.stalled(130.0, after=10.0) == []
    finally:
        release.set()
        services.join()
        monitor.join()


def test_a_slow_pass_keeps_the_watchdog_fed_within_the_time_scale() -> None:
    """On an emulated CPU (service_time_scale 10) a 40 s volume attach is not a hung agent;
    at scale 1 it is. Consensus keeps systemd's own 30 s either way."""
    from types import SimpleNamespace
    from nodeos.cluster.agent import Agent
    from nodeos.services.layer import ServicesLayer
    layer = object.__new__(ServicesLayer)
    layer.consensus, layer.last_pass, layer.last_monitor_pass = object(), 100.0, 139.0
    agent = object.__new__(Agent)
    agent.services, agent.formation, agent.fatal = layer, SimpleNamespace(phase="member"), None
    agent.consensus = SimpleNamespace(running=lambda: True)
    agent.config = SimpleNamespace(service_time_scale=1.0)
    assert not agent._turning(140.0)
    agent.config = SimpleNamespace(service_time_scale=10.0)
    assert agent._turning(140.0)
    assert not agent._turning(400.0)
    agent.consensus = SimpleNamespace(running=lambda: False)
    assert not agent._turning(140.0)


def test_frames_are_named_from_the_package_down() -> None:
    from nodeos.stall import _short
    assert _short("/opt/nodeos/venv/lib/python3.11/site-packages/nodeos/services/runtime.py") == "nodeos/services/runtime.py"
    assert _short("/usr/lib/python3.11/subprocess.py") == "subprocess.py"
    assert _short("/work/main/nodeos/services/layer.py") == "nodeos/services/layer.py"
