"""Mon placement (nodeos/storage/mons.py): one change at a time, never below quorum."""

from __future__ import annotations

import itertools

import pytest

from nodeos.storage.mons import MonChange, choose_mons, initial_mons, mon_target


def nodes(n: int) -> list[str]:
    return [f"n{i}" for i in range(1, n + 1)]


@pytest.mark.parametrize("count, target", [(0, 0), (1, 1), (2, 2), (3, 3), (4, 3), (6, 3), (7, 5), (20, 5)])
def test_mon_count_follows_the_node_count(count: int, target: int) -> None:
    assert mon_target(count) == target


def test_initial_mons_are_the_first_nodes_sorted() -> None:
    assert initial_mons(["n3", "n1", "n2", "n4"]) == ["n1", "n2", "n3"]
    assert initial_mons(["solo"]) == ["solo"]
    assert initial_mons(nodes(8)) == ["n1", "n2", "n3", "n4", "n5"]


def converge(up: list[str], mons: list[str], lost: dict[str, float], now: float) -> tuple[list[str], list[MonChange]]:
    """Apply choose_mons' changes until it has none, checking quorum after each one."""
    mons, steps = list(mons), []
    for _ in range(20):
        change = choose_mons(up, mons, lost, now)
        if change is None:
            return mons, steps
        steps.append(change)
        if change.action == "add":
            assert change.node in up and change.node not in mons
            mons.append(change.node)
        else:
            mons.remove(change.node)
        live = [m for m in mons if m in up]
        assert 2 * len(live) > len(mons), f"quorum lost after {change}: {mons}"
    raise AssertionError(f"no fixed point: {steps}")


def test_a_cluster_grows_one_mon_at_a_time() -> None:
    mons, steps = converge(nodes(3), [], {}, 0.0)
    assert sorted(mons) == nodes(3)
    assert [s.action for s in steps] == ["add", "add", "add"]
    mons, steps = converge(nodes(7), mons, {}, 0.0)
    assert len(mons) == 5 and [s.action for s in steps] == ["add", "add"]


def test_a_fourth_node_gets_no_mon() -> None:
    assert choose_mons(nodes(4), nodes(3), {}, 0.0) is None


def test_a_lost_mon_is_kept_until_mon_replace_after() -> None:
    up = ["n1", "n2", "n4"]
    assert choose_mons(up, nodes(3), {"n3": 100.0}, 100.0 + 119.9) is None
    change = choose_mons(up, nodes(3), {"n3": 100.0}, 100.0 + 120.0)
    assert change is not None and (change.action, change.node) == ("add", "n4")
    assert change.reason == "replaces the mon on n3 (lost for 120s)"


def test_replacement_adds_first_then_removes_the_dead_mon() -> None:
    up, lost = ["n1", "n2", "n4", "n5"], {"n3": 0.0}
    mons, steps = converge(up, nodes(3), lost, 500.0)
    assert [(s.action, s.node) for s in steps] == [("add", "n4"), ("remove", "n3")]
    assert sorted(mons) == ["n1", "n2", "n4"]


def test_without_a_spare_node_the_dead_mon_stays() -> None:
    # 3 nodes, one gone for long: removing it gains nothing, keeping it lets it rejoin.
    assert choose_mons(["n1", "n2"], nodes(3), {"n3": 0.0}, 10_000.0) is None


def test_the_custom_replace_delay_is_honoured() -> None:
    change = choose_mons(["n1", "n2", "n4"], nodes(3), {"n3": 0.0}, 31.0, mon_replace_after=30.0)
    assert change is not None and change.action == "add"


def test_a_mon_whose_node_left_the_cluster_is_replaced_at_once() -> None:
    # n3 is neither up nor lost: it was removed from the cluster.
    change = choose_mons(["n1", "n2", "n4"], nodes(3), {}, 0.0)
    assert change is not None and (change.action, change.node) == ("add", "n4") and "left" in change.reason


def test_no_add_that_would_leave_the_monmap_without_quorum() -> None:
    # 5 mons, 3 dead: 2 live + 1 new is not a majority of 6. Nothing safe to do.
    up = ["n1", "n2", "n6", "n7"]
    lost = {"n3": 0.0, "n4": 0.0, "n5": 0.0}
    assert choose_mons(up, nodes(5), lost, 1000.0) is None


def test_two_overdue_mons_are_replaced_one_by_one() -> None:
    up = ["n1", "n2", "n3", "n6", "n7"]
    lost = {"n4": 10.0, "n5": 0.0}
    mons, steps = converge(up, nodes(5), lost, 1000.0)
    assert [(s.action, s.node) for s in steps] == [("add", "n6"), ("remove", "n5"), ("add", "n7"), ("remove", "n4")]
    assert sorted(mons) == ["n1", "n2", "n3", "n6", "n7"]


def test_a_returning_node_ends_the_replacement() -> None:
    # n4 was added to replace n3, then n3 came back before its removal: drop the extra live mon.
    change = choose_mons(nodes(4), nodes(4), {}, 0.0)
    assert change is not None and change.action == "remove"
    mons, _ = converge(nodes(4), nodes(4), {}, 0.0)
    assert len(mons) == 3


def test_no_live_mon_is_removed_while_one_is_dead() -> None:
    # 4 mons after an add, the dead one recently lost again: keep the live ones.
    assert choose_mons(["n1", "n2", "n4"], nodes(4), {"n3": 990.0}, 1000.0) is None


def scenarios():
    """Up to 7 nodes, any set of mons that has quorum, any set of lost nodes."""
    for n in range(1, 8):
        members = nodes(n)
        for mon_count in range(0, min(n, 5) + 1):
            for mons in itertools.combinations(members, mon_count):
                for lost_count in range(0, n):
                    for lost_nodes in itertools.combinations(members, lost_count):
                        live = [m for m in mons if m not in lost_nodes]
                        if mons and 2 * len(live) <= len(mons):
                            continue  # no quorum to begin with: no monmap change can be made
                        yield n, [m for m in members if m not in lost_nodes], list(mons), list(lost_nodes)


def test_every_small_scenario_reaches_the_target_without_losing_quorum() -> None:
    """Lost long ago: mons end on min(target, up nodes) live nodes; converge() checks quorum at each step."""
    for n, up, mons, lost_nodes in scenarios():
        final, _ = converge(up, mons, {m: 0.0 for m in lost_nodes}, 1000.0)
        live = [m for m in final if m in up]
        assert len(live) == min(mon_target(n), len(up)), (n, up, mons, final)
        dead = [m for m in final if m not in up]
        assert not dead or len(live) < mon_target(n), f"a dead mon kept though replaced: {final}"


def test_a_recent_loss_never_removes_a_mon() -> None:
    for _n, up, mons, lost_nodes in scenarios():
        final, steps = converge(up, mons, {m: 999.0 for m in lost_nodes}, 1000.0)
        assert not any(s.action == "remove" and s.node in lost_nodes for s in steps)
        assert set(mons) & set(lost_nodes) <= set(final)
