"""The Service Monitor's decisions, on the pure replicated state (no network)."""

from __future__ import annotations

import pytest

import nodeos.services.placement  # noqa: F401  (registers the service ops)
from nodeos.services.catalog import load_catalog, packaged_catalog
from nodeos.services.monitor import decide
from nodeos.services.node import desired_here
from nodeos.cluster.state import ClusterState

CATALOG = load_catalog(packaged_catalog("lab"))


def apply(state: ClusterState, op: dict) -> dict:
    result = state.apply(op)
    assert result["ok"], result
    return result


@pytest.fixture
def state() -> ClusterState:
    s = ClusterState()
    for i, node in enumerate(["a", "b", "c"]):
        apply(s, {"op": "node_join", "now": 1.0, "node": node, "raft_addr": f"10.0.0.{i + 1}:7371", "ip": f"10.0.0.{i + 1}"})
    apply(s, {"op": "catalog_set", "now": 1.0, "catalog": CATALOG.to_dict()})
    return s


def run_monitor(state: ClusterState, now: float, rounds: int = 1) -> list[dict]:
    """Decide and apply, as the Monitor does (each op commits before the next pass)."""
    all_ops = []
    for _ in range(rounds):
        ops = decide(state, CATALOG, now, "a", 1)
        for op in ops:
            apply(state, op)
        all_ops += ops
    return all_ops


def report(state: ClusterState, service: str, node: str, health: str, now: float) -> None:
    record = state.services[service]
    generation = record.instances[node].generation if node in record.instances else 0
    apply(state, {"op": "report_health", "now": now, "service": service, "node": node, "state": health, "generation": generation})


def test_singletons_are_spread_over_nodes(state):
    ops = run_monitor(state, 2.0)
    placed = {op["service"]: op["node"] for op in ops if op["op"] == "place"}
    assert set(placed) == {"memcached", "nginx"}
    assert placed["memcached"] != placed["nginx"]
    assert run_monitor(state, 2.1) == []  # nothing more to do: decisions are idempotent


def test_failure_restarts_in_place_with_exponential_backoff_then_migrates(state):
    run_monitor(state, 2.0)
    home = state.services["memcached"].node
    now = 3.0
    delays = []
    for attempt in range(3):
        report(state, "memcached", home, "failed", now)
        ops = run_monitor(state, now)
        assert [o["op"] for o in ops] == ["restart"] and ops[0]["node"] == home
        delays.append(ops[0]["backoff_until"] - now)
        if attempt < 2:  # failing again at once: no restart before the back-off deadline
            report(state, "memcached", home, "failed", now + 0.01)
            assert run_monitor(state, now + 0.01) == []
        now = ops[0]["backoff_until"] + 0.01
    assert delays == [0.5, 1.0, 2.0]
    report(state, "memcached", home, "healthy", now - 0.005)
    assert state.events[-1]["kind"] == "service.recovered" and state.events[-1]["outcome"] == "ok"
    report(state, "memcached", home, "failed", now)
    ops = run_monitor(state, now)
    assert [o["op"] for o in ops] == ["migrate"] and ops[0]["to"] != home
    assert "after 3 restarts" in ops[0]["reason"]
    migration = state.services["memcached"].migration
    assert migration["phase"] == "releasing"  # the source is alive: it must stop first


def test_migration_waits_for_release_then_completes_on_health(state):
    run_monitor(state, 2.0)
    record = state.services["memcached"]
    source = record.node
    target = next(n for n in "abc" if n != source)
    apply(state, {"op": "migrate", "now": 5.0, "service": "memcached", "to": target, "reason": "operator"})
    assert not desired_here(state, CATALOG, target, fenced=False, running=set())["memcached"].run
    assert desired_here(state, CATALOG, source, fenced=False, running={"memcached"})["memcached"].release_pending
    assert run_monitor(state, 5.1) == []  # the source has not released yet
    report(state, "memcached", source, "stopped", 5.2)
    assert [o["op"] for o in run_monitor(state, 5.3)] == ["migration_released"]
    assert desired_here(state, CATALOG, target, fenced=False, running=set())["memcached"].run
    report(state, "memcached", target, "healthy", 6.0)
    assert [o["op"] for o in run_monitor(state, 6.1)] == ["migration_done"]
    assert state.services["memcached"].migration is None and state.services["memcached"].node == target


def test_a_new_monitor_resumes_a_migration_from_the_state(state):
    """Decisions depend only on the replicated state: another node's Monitor continues."""
    run_monitor(state, 2.0)
    source = state.services["memcached"].node
    target = next(n for n in "abc" if n != source)
    apply(state, {"op": "migrate", "now": 5.0, "service": "memcached", "to": target, "reason": "operator", "by": "a"})
    report(state, "memcached", source, "stopped", 5.2)
    copy = state.snapshot()  # what the next leader has in its log
    ops = decide(copy, CATALOG, 5.3, "b", 2)
    assert [o["op"] for o in ops] == ["migration_released"] and ops[0]["by"] == "b"


def test_lost_node_singletons_move_without_waiting_for_release(state):
    run_monitor(state, 2.0)
    home = state.services["memcached"].node
    apply(state, {"op": "node_status", "now": 3.0, "node": home, "status": "lost"})
    ops = [o for o in run_monitor(state, 3.1) if o["service"] == "memcached"]
    assert ops[0]["op"] == "migrate" and ops[0]["to"] != home
    assert state.services["memcached"].migration["phase"] == "starting"


def test_fenced_node_runs_no_singleton_but_keeps_every_node_services(state):
    run_monitor(state, 2.0)
    home = state.services["memcached"].node
    assert desired_here(state, CATALOG, home, fenced=False, running=set())["memcached"].run
    fenced = desired_here(state, CATALOG, home, fenced=True, running=set())
    assert not fenced["memcached"].run
    assert fenced["node-http"].run


def test_dependency_gates_the_first_start_only(state):
    run_monitor(state, 2.0)
    home = state.services["nginx"].node
    want = desired_here(state, CATALOG, home, fenced=False, running=set())["nginx"]
    assert not want.run and want.waiting_for == ["memcached"]
    assert desired_here(state, CATALOG, home, fenced=False, running={"nginx"})["nginx"].run


def test_restart_counter_resets_after_healthy_period(state):
    run_monitor(state, 2.0)
    home = state.services["memcached"].node
    report(state, "memcached", home, "failed", 3.0)
    run_monitor(state, 3.0)
    report(state, "memcached", home, "healthy", 4.0)
    assert run_monitor(state, 4.0 + 59) == []
    ops = run_monitor(state, 4.0 + 61)
    assert [o["op"] for o in ops] == ["reset_restarts"]
    assert state.services["memcached"].instances[home].restarts == 0


def test_every_node_service_restarts_per_node(state):
    run_monitor(state, 2.0)
    report(state, "node-http", "b", "unhealthy", 3.0)
    ops = [o for o in run_monitor(state, 3.0) if o["service"] == "node-http"]
    assert [(o["op"], o["node"]) for o in ops] == [("restart", "b")]


def test_bad_catalog_op_changes_nothing(state):
    before = state.to_dict()
    result = state.apply({"op": "catalog_set", "now": 9.0, "catalog": {"version": 1, "services": {"x": {"placement": "nowhere"}}}})
    assert result["ok"] is False and "invalid catalog" in result["error"]
    assert state.to_dict() == before


def test_every_decision_carries_the_term_it_was_decided_under(state):
    ops = decide(state, CATALOG, 2.0, "a", 7)
    assert ops and all(op["term"] == 7 for op in ops)


def test_decisions_of_a_deposed_monitor_are_refused(state):
    apply(state, {"op": "heartbeat", "now": 1.5, "leader": "a", "term": 3})
    stale = decide(state, CATALOG, 2.0, "a", 3)  # decided under a's lease ...
    apply(state, {"op": "heartbeat", "now": 2.1, "leader": "b", "term": 4})  # ... but b took over first
    before = state.to_dict()
    for op in stale:
        result = state.apply(op)
        assert result["ok"] is False and "stale" in result["error"]
    assert state.to_dict() == before and state.monitor == "b"
    current = decide(state, CATALOG, 2.2, "b", 4)
    assert current and all(state.apply(op)["ok"] for op in current)


def test_a_service_failing_while_its_dependency_is_down_is_held_not_restarted(state):
    """nginx depends on memcached: nginx failing while memcached is down waits, once, with an event."""
    run_monitor(state, 2.0)
    web, cache = state.services["nginx"].node, state.services["memcached"].node
    report(state, "memcached", cache, "healthy", 2.5)
    report(state, "nginx", web, "healthy", 2.5)
    report(state, "memcached", cache, "failed", 3.0)
    report(state, "nginx", web, "unhealthy", 3.0)
    ops = run_monitor(state, 3.0)
    by_service = {o["service"]: o for o in ops}
    assert by_service["memcached"]["op"] == "restart"  # the dependency is repaired by its own rules
    assert by_service["nginx"]["op"] == "wait_dependency" and by_service["nginx"]["waiting_for"] == ["memcached"]
    assert "memcached is down" in by_service["nginx"]["reason"]
    waiting = [e for e in state.events if e["kind"] == "service.waiting"]
    assert waiting and waiting[-1]["service"] == "nginx" and waiting[-1]["outcome"] == "held"
    for step in range(20):  # a long outage: nginx is never restarted, nor moved, nor re-announced
        report(state, "nginx", web, "unhealthy", 4.0 + step)
        assert [o for o in run_monitor(state, 4.0 + step) if o["service"] == "nginx"] == []
    assert state.services["nginx"].instances[web].restarts == 0
    report(state, "memcached", cache, "healthy", 30.0)
    ops = [o for o in run_monitor(state, 30.0) if o["service"] == "nginx"]
    assert [o["op"] for o in ops] == ["wait_dependency"] and ops[0]["waiting_for"] == []
    assert ops[0]["backoff_until"] == 30.0 + 10.0  # time to reconnect before a restart
    assert [o for o in run_monitor(state, 35.0) if o["service"] == "nginx"] == []
    ops = [o for o in run_monitor(state, 40.5) if o["service"] == "nginx"]
    assert [o["op"] for o in ops] == ["restart"]  # still failing after the grace: the usual rule


def test_a_held_service_that_recovers_by_itself_is_not_restarted(state):
    run_monitor(state, 2.0)
    web, cache = state.services["nginx"].node, state.services["memcached"].node
    report(state, "memcached", cache, "failed", 3.0)
    report(state, "nginx", web, "unhealthy", 3.0)
    run_monitor(state, 3.0)
    assert state.services["nginx"].instances[web].waiting_for == ("memcached",)
    report(state, "memcached", cache, "healthy", 5.0)
    report(state, "nginx", web, "healthy", 5.5)
    ops = [o for o in run_monitor(state, 6.0) if o["service"] == "nginx"]
    assert [o["op"] for o in ops] == ["wait_dependency"] and "recovered" in ops[0]["reason"]
    assert state.services["nginx"].instances[web].waiting_for == ()
    assert [e["kind"] for e in state.events if e.get("service") == "nginx"][-1] == "service.dependency_back"


def test_a_slow_instance_is_reported_but_never_restarted_and_its_dependents_are_held(state):
    run_monitor(state, 2.0)
    home = state.services["memcached"].node
    report(state, "memcached", home, "healthy", 3.0)
    state.services["memcached"].health[home]["detail"] = ""
    apply(state, {"op": "report_health", "now": 4.0, "service": "memcached", "node": home, "state": "slow",
                  "generation": 0, "detail": "memcached: slow: set: timed out (process running, port 11211 accepting)"})
    assert state.events[-1]["kind"] == "service.slow" and "timed out" in state.events[-1]["detail"]
    assert run_monitor(state, 5.0) == [] and run_monitor(state, 100.0) == []  # the agent says when it is overdue
    assert "memcached" not in state.healthy_services()  # dependents wait (held) rather than restart
    report(state, "memcached", home, "healthy", 101.0)
    assert state.events[-1]["kind"] == "service.recovered" and state.events[-1]["detail"] == "answering in time again"


def test_a_lost_node_s_or_a_moving_singleton_s_old_report_is_not_healthy_for_its_dependents(state):
    """keystone's last report from a crashed node said healthy: its dependents must be held, not
    restarted for its token timeouts, while it moves (lab-cloud chaos campaign, 2026-12-02)."""
    run_monitor(state, 2.0)
    home = state.services["memcached"].node
    report(state, "memcached", home, "healthy", 3.0)
    assert "memcached" in state.healthy_services()
    apply(state, {"op": "node_status", "now": 4.0, "node": home, "status": "lost"})
    assert state.services["memcached"].health[home]["state"] == "healthy"  # its last word, kept
    assert "memcached" not in state.healthy_services()
    run_monitor(state, 4.5)  # the move off the lost node
    target = state.services["memcached"].node
    assert target != home and "memcached" not in state.healthy_services()
    report(state, "memcached", target, "healthy", 6.0)
    assert "memcached" in state.healthy_services()


def test_cluster_settles_only_when_every_service_is_healthy_where_it_runs(state):
    """The Monitor's pass slows down (services/layer.py) only once nothing it times by the clock
    is under way: every node up, nothing moving, every service healthy where it runs."""
    from nodeos.services.layer import cluster_settled

    run_monitor(state, 2.0)
    assert not cluster_settled(state)  # placed, nothing reported yet
    for name, record in state.services.items():
        for node in ([record.node] if record.placement == "singleton" else ["a", "b", "c"]):
            report(state, name, node, "healthy", 3.0)
    assert cluster_settled(state)
    report(state, "nginx", state.services["nginx"].node, "failed", 4.0)
    assert not cluster_settled(state)  # a restart's back-off is timed by the clock
    report(state, "nginx", state.services["nginx"].node, "healthy", 5.0)
    assert cluster_settled(state)
    apply(state, {"op": "node_status", "now": 6.0, "node": "c", "status": "lost", "reason": "test"})
    assert not cluster_settled(state)  # its singletons wait for the fence margin
