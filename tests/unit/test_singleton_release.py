"""A singleton starts on its node only after every node that may hold it released it.

Overlapping moves, restarts and catalog changes on the pure model (issue 7,
item 7): the release set accumulates, and the ops check it themselves.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

import nodeos.services.placement  # noqa: F401  (registers the service ops)
from nodeos.services.catalog import Catalog, load_catalog, packaged_catalog
from nodeos.services.monitor import decide
from nodeos.services.node import Desired, desired_here
from nodeos.cluster.state import ClusterState

CATALOG = load_catalog(packaged_catalog("lab"))
TERM = 1


def apply(state: ClusterState, op: dict[str, Any]) -> dict[str, Any]:
    result = state.apply(op)
    assert result["ok"], result
    return result


def run_monitor(state: ClusterState, now: float, catalog: Catalog = CATALOG) -> list[str]:
    ops = decide(state, catalog, now, "a", TERM)
    for op in ops:
        apply(state, op)
    return [op["op"] for op in ops]


def report(state: ClusterState, node: str, health: str, now: float, service: str = "memcached") -> None:
    record = state.services[service]
    generation = record.instances[node].generation if node in record.instances else 0
    apply(state, {"op": "report_health", "now": now, "service": service, "node": node, "state": health, "generation": generation})


def move(state: ClusterState, to: str, now: float) -> None:
    apply(state, {"op": "migrate", "now": now, "service": "memcached", "to": to, "reason": "operator request", "by": "operator"})


def want(state: ClusterState, node: str, running: bool = False, catalog: Catalog = CATALOG, service: str = "memcached") -> Desired:
    return desired_here(state, catalog, node, fenced=False, running={service} if running else set())[service]


def catalog_with(changes: dict[str, dict[str, Any] | None]) -> Catalog:
    """The lab catalog with services replaced (a dict) or removed (None)."""
    data = copy.deepcopy(CATALOG.to_dict())
    for name, spec in changes.items():
        if spec is None:
            del data["services"][name]
        else:
            data["services"][name] = spec
    return Catalog.from_dict(data)


def set_catalog(state: ClusterState, catalog: Catalog, now: float) -> None:
    apply(state, {"op": "catalog_set", "now": now, "catalog": catalog.to_dict(), "reason": "operator"})


@pytest.fixture
def state() -> ClusterState:
    s = ClusterState()
    for i, node in enumerate(["a", "b", "c"]):
        apply(s, {"op": "node_join", "now": 1.0, "node": node, "raft_addr": f"10.0.0.{i + 1}:7371", "ip": f"10.0.0.{i + 1}"})
    set_catalog(s, CATALOG, 1.0)
    run_monitor(s, 2.0)
    report(s, s.services["memcached"].node, "healthy", 3.0)
    return s


def nodes(state: ClusterState) -> tuple[str, str, str]:
    """(where memcached runs, the two others)"""
    home = state.services["memcached"].node
    first, second = [n for n in "abc" if n != home]
    return home, first, second


# -- overlapping moves ---------------------------------------------------------

def test_second_move_waits_for_the_real_source_not_the_previous_target(state):
    a, b, c = nodes(state)
    move(state, b, 5.0)
    move(state, c, 5.1)  # while a (slow to stop) still holds it
    assert want(state, a, running=True).release_pending and not want(state, a, running=True).run
    assert not want(state, c).run
    report(state, b, "stopped", 5.2)  # b never ran it: it says so at once
    assert run_monitor(state, 5.3) == []
    assert not want(state, c).run  # a still holds it
    assert state.services["memcached"].migration["release"] == sorted([a, b])
    report(state, a, "stopped", 5.4)
    assert run_monitor(state, 5.5) == ["migration_released"]
    assert want(state, c).run
    released = [e for e in state.events if e["kind"] == "service.released"][-1]
    assert a in released["node"] and f"{a} stopped it" in released["detail"] and f"{b} stopped it" in released["detail"]
    report(state, c, "healthy", 6.0)
    assert run_monitor(state, 6.1) == ["migration_done"]
    assert state.services["memcached"].migration is None and state.services["memcached"].node == c


def test_a_move_after_the_first_target_started_waits_for_that_target_only(state):
    a, b, c = nodes(state)
    move(state, b, 5.0)
    report(state, a, "stopped", 5.1)
    assert run_monitor(state, 5.2) == ["migration_released"]
    assert want(state, b).run
    report(state, b, "starting", 5.3)
    move(state, c, 5.4)
    assert not want(state, c).run and not want(state, b, running=True).run
    assert want(state, b, running=True).release_pending and not want(state, a).release_pending  # a released already
    report(state, b, "stopped", 5.5)
    assert run_monitor(state, 5.6) == ["migration_released"] and want(state, c).run
    assert state.services["memcached"].migration["release"] == [b]


def test_a_stopped_report_from_before_the_move_does_not_count(state):
    a, b, c = nodes(state)
    move(state, b, 5.0)
    report(state, a, "stopped", 5.1)
    run_monitor(state, 5.2)
    report(state, b, "healthy", 5.3)
    report(state, b, "stopped", 5.4)  # e.g. fenced for a moment, then started again
    report(state, b, "healthy", 5.5)
    move(state, c, 6.0)
    assert want(state, b, running=True).release_pending
    assert run_monitor(state, 6.1) == []


def test_moving_back_during_the_release_restarts_it_cleanly(state):
    a, b, _ = nodes(state)
    move(state, b, 5.0)
    move(state, a, 5.1)  # back, before a stopped: a must stop its old instance too
    assert not want(state, a, running=True).run
    report(state, a, "stopped", 5.2)
    report(state, b, "stopped", 5.2)
    assert run_monitor(state, 5.3) == ["migration_released"] and want(state, a).run
    assert state.services["memcached"].migration["release"] == sorted([a, b])


def test_lost_node_counts_as_released(state):
    a, b, c = nodes(state)
    move(state, b, 5.0)
    move(state, c, 5.1)
    report(state, b, "stopped", 5.2)
    apply(state, {"op": "node_status", "now": 5.3, "node": a, "status": "lost", "reason": "no answer"})
    assert run_monitor(state, 5.4) == ["migration_released"]
    assert f"{a} lost (fenced)" in [e for e in state.events if e["kind"] == "service.released"][-1]["detail"]


def test_monitor_move_away_from_a_lost_node_does_not_wait_for_it(state):
    a, _, _ = nodes(state)
    apply(state, {"op": "node_status", "now": 5.0, "node": a, "status": "lost", "reason": "no answer"})
    assert "migrate" in run_monitor(state, 5.1)
    migration = state.services["memcached"].migration
    assert migration["phase"] == "starting" and migration["release"] == []


# -- the ops check the release set themselves -----------------------------------

def test_early_migration_released_is_refused_and_changes_nothing(state):
    a, b, c = nodes(state)
    move(state, b, 5.0)
    move(state, c, 5.1)
    report(state, b, "stopped", 5.2)
    before = state.to_dict()
    result = state.apply({"op": "migration_released", "now": 5.3, "service": "memcached", "reason": "source stopped it", "by": "a"})
    assert result["ok"] is False and a in result["error"]
    assert state.to_dict() == before and not want(state, c).run


def test_stale_migration_done_cannot_end_a_release_wait(state):
    a, b, c = nodes(state)
    move(state, b, 5.0)
    report(state, a, "stopped", 5.1)
    run_monitor(state, 5.2)
    report(state, b, "healthy", 5.3)
    done = decide(state, CATALOG, 5.4, "a", TERM)  # decided for the move to b ...
    move(state, c, 5.5)  # ... but a second move lands first
    assert [op["op"] for op in done] == ["migration_done"]
    result = state.apply(done[0])
    assert result["ok"] is False
    assert state.services["memcached"].migration["to"] == c and not want(state, c).run


def test_records_from_before_the_release_set_still_wait_for_their_source(state):
    a, b, _ = nodes(state)
    move(state, b, 5.0)
    del state.services["memcached"].migration["release"]  # as written by an older version
    assert want(state, a, running=True).release_pending and not want(state, b).run
    assert run_monitor(state, 5.1) == []
    report(state, a, "stopped", 5.2)
    assert run_monitor(state, 5.3) == ["migration_released"]


# -- catalog changes -------------------------------------------------------------

def test_every_node_service_turned_singleton_waits_for_every_node(state):
    for node in "abc":
        report(state, node, "healthy", 3.0, service="node-http")
    single = catalog_with({"node-http": {**CATALOG.to_dict()["services"]["node-http"], "placement": "singleton"}})
    set_catalog(state, single, 4.0)
    assert "place" in run_monitor(state, 4.1, single)
    record = state.services["node-http"]
    home = record.node
    assert not want(state, home, running=True, catalog=single, service="node-http").run
    for node in sorted("abc"):
        assert want(state, node, running=True, catalog=single, service="node-http").release_pending
    report(state, "a", "stopped", 4.2, service="node-http")
    report(state, "b", "stopped", 4.2, service="node-http")
    assert run_monitor(state, 4.3, single) == []
    assert not want(state, home, catalog=single, service="node-http").run
    report(state, "c", "stopped", 4.4, service="node-http")
    assert run_monitor(state, 4.5, single) == ["migration_released"]
    assert want(state, home, catalog=single, service="node-http").run
    assert record.migration["release"] == ["a", "b", "c"]
    report(state, home, "healthy", 5.0, service="node-http")
    assert run_monitor(state, 5.1, single) == ["migration_done"]


def test_singleton_removed_and_re_added_while_running_waits_for_its_old_host(state):
    a, _, _ = nodes(state)
    nginx_home = state.services["nginx"].node
    set_catalog(state, catalog_with({"memcached": None, "nginx": None}), 4.0)
    set_catalog(state, CATALOG, 4.1)  # back before a stopped it
    assert "place" in run_monitor(state, 4.2)
    home = state.services["memcached"].node
    assert not want(state, home).run
    report(state, a, "stopped", 4.3)
    assert "migration_released" in run_monitor(state, 4.4)
    assert want(state, home).run
    assert state.services["memcached"].migration["release"] == [a] and "memcached" not in state.retired
    assert state.services["nginx"].migration["release"] == [nginx_home]


def test_catalog_change_during_a_move_keeps_every_holder(state):
    a, b, c = nodes(state)
    move(state, b, 5.0)
    set_catalog(state, catalog_with({"memcached": None, "nginx": None}), 5.1)
    set_catalog(state, CATALOG, 5.2)
    run_monitor(state, 5.25)
    assert not want(state, state.services["memcached"].node).run
    assert state.services["memcached"].migration["release"] == sorted([a, b])
    every = catalog_with({"memcached": {**CATALOG.to_dict()["services"]["memcached"], "placement": "every-node", "vip": False}})
    set_catalog(state, every, 5.3)
    set_catalog(state, CATALOG, 5.4)  # every-node in between: any node may run it now
    assert state.services["memcached"].migration["release"] == ["a", "b", "c"]


def test_catalog_change_that_keeps_the_placement_keeps_the_move(state):
    a, b, _ = nodes(state)
    move(state, b, 5.0)
    migration = copy.deepcopy(state.services["memcached"].migration)
    set_catalog(state, CATALOG, 5.1)
    assert state.services["memcached"].migration == migration


def test_a_new_singleton_nobody_ran_is_placed_at_once(state):
    extra = catalog_with({"extra": {**CATALOG.to_dict()["services"]["memcached"], "port": 11311}})
    set_catalog(state, extra, 4.0)
    assert state.services["extra"].migration is None
    assert "place" in run_monitor(state, 4.1, extra)


def test_a_stopped_report_sent_before_the_node_knew_of_the_move_does_not_release_it(state: ClusterState) -> None:
    home, target, _ = nodes(state)
    seen_before_move = state.applied  # the holder acts on this state: no move in it yet
    move(state, target, 4.0)
    # The holder's "stopped" (say, it was briefly fenced) commits after the move, but was sent from a state without it:
    # it may have started the service again since. It must not count.
    apply(state, {"op": "report_health", "now": 5.0, "service": "memcached", "node": home, "state": "stopped",
                  "generation": 0, "seen": seen_before_move})
    assert "migration_released" not in run_monitor(state, 6.0)
    assert not want(state, target).run
    # The same report from a state that shows the move does.
    apply(state, {"op": "report_health", "now": 7.0, "service": "memcached", "node": home, "state": "stopped",
                  "generation": 0, "seen": state.applied})
    assert "migration_released" in run_monitor(state, 8.0)
