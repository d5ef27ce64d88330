"""A service whose old process survives SIGKILL (D state on a hung volume): the agent reports it
stuck instead of "starting" it beside the old one, and the Monitor moves it at once (the move
fences the volume's holder first). Pure state and a fake runtime: no processes, no network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nodeos.cluster.state import ClusterState
from nodeos.services.catalog import parse_catalog
from nodeos.services.monitor import decide
from nodeos.services.node import NodeServices
from nodeos.services.runtime import ServiceRuntimeError

from .test_monitor import CATALOG, apply, state  # noqa: F401  (state: the three-node fixture)

STUCK = "memcached: process group 4242 survived SIGKILL"


def monitor(state: ClusterState, now: float, catalog=CATALOG) -> list[dict]:
    ops = decide(state, catalog, now, "a", 1)
    for op in ops:
        apply(state, op)
    return ops


def report(state: ClusterState, node: str, health: str, now: float, **extra: Any) -> None:
    record = state.services["memcached"]
    generation = record.instances[node].generation if node in record.instances else 0
    apply(state, {"op": "report_health", "now": now, "service": "memcached", "node": node, "state": health,
                  "generation": generation, **extra})


def test_a_stuck_instance_is_moved_at_once_not_restarted_in_place(state):
    monitor(state, 2.0)
    home = state.services["memcached"].node
    report(state, home, "healthy", 3.0)
    report(state, home, "unhealthy", 4.0, detail="memcached: set: connection refused")
    [restart] = monitor(state, 4.0)
    assert restart["op"] == "restart"
    report(state, home, "failed", 10.0, detail=f"stuck: {STUCK}", stuck=True)
    assert state.services["memcached"].health[home]["stuck"] is True
    [move] = monitor(state, 10.0)  # one restart so far, max_restarts 3: moved anyway
    assert move["op"] == "migrate" and move["to"] != home
    assert move["reason"] == f"stuck on {home} (stuck: {STUCK}): not restartable in place"
    migration = state.services["memcached"].migration
    assert migration["phase"] == "releasing" and migration["release"] == [home]


def test_a_later_report_without_the_flag_clears_it(state):
    monitor(state, 2.0)
    home = state.services["memcached"].node
    report(state, home, "failed", 3.0, detail=f"stuck: {STUCK}", stuck=True)
    report(state, home, "failed", 3.5, detail="process exited")
    assert "stuck" not in state.services["memcached"].health[home]
    assert [o["op"] for o in monitor(state, 4.0)] == ["restart"]


def test_a_stuck_instance_with_a_volume_says_its_holder_is_fenced_first(state):
    catalog = parse_catalog("""
services:
  db:
    placement: singleton
    port: 3306
    start: {command: [mariadbd]}
    volume: {size: 1GiB, fs: ext4, mount: "{root}/var/lib/mysql"}
""", "catalog.yaml")
    apply(state, {"op": "catalog_set", "now": 1.0, "catalog": catalog.to_dict()})
    monitor(state, 2.0, catalog)
    home = state.services["db"].node
    apply(state, {"op": "report_health", "now": 3.0, "service": "db", "node": home, "state": "failed", "generation": 0,
                  "detail": "stuck: db: process group 7 survived SIGKILL", "stuck": True})
    [move] = monitor(state, 3.0, catalog)
    assert move["op"] == "migrate" and move["reason"].endswith("its volume's client there is fenced first")


def test_with_nowhere_to_go_a_stuck_instance_gets_the_usual_restart(state):
    monitor(state, 2.0)
    home = state.services["memcached"].node
    for node in ("a", "b", "c"):
        if node != home:
            report(state, node, "failed", 3.0)  # every other node failing it: no target
    report(state, home, "failed", 3.0, detail=f"stuck: {STUCK}", stuck=True)
    assert [o["op"] for o in monitor(state, 3.0)] == ["restart"]  # the agent tries the bounded stop again


# -- the agent ------------------------------------------------------------------------------------------

class StuckRuntime:
    """A runtime whose process survives SIGKILL until `release()` (the fence failed its I/O)."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.starts = 0
        self.stuck = False
        self.known: list[str] = []

    def start(self, spec: Any, ctx: Any) -> None:
        if self.pid is None:
            self.starts, self.pid = self.starts + 1, 4242 + self.starts

    def stop(self, name: str, timeout: float = 5.0) -> None:
        if self.stuck:
            raise ServiceRuntimeError(f"{name}: process group {self.pid} survived SIGKILL")
        self.pid = None

    def is_running(self, name: str) -> bool:
        return self.pid is not None

    def main_pid(self, name: str) -> int | None:
        return self.pid

    def running(self) -> set[str]:
        return {"memcached"} if self.pid else set()

    def stop_all(self) -> None:
        self.pid = None

    def fence_target(self, name: str) -> dict[str, str]:
        return {}

    def know(self, specs: Any) -> None:
        self.known += [spec.name for spec in specs]


class Vips:
    ifname = "eth0"
    announce_count = 1

    def __init__(self) -> None:
        self.held: set[str] = set()

    def add(self, ip: str, prefixlen: int, announce: bool = True) -> None:
        self.held.add(ip)

    def remove(self, ip: str) -> None:
        self.held.discard(ip)

    def present(self, max_age: float = 0.0) -> set[str]:
        return set(self.held)


class Gate:
    def claim_vip(self, *args: Any) -> bool:
        return True

    def claim_service(self, *args: Any) -> bool:
        return True

    def release_vip(self, *args: Any) -> None:
        pass

    def release_service(self, *args: Any) -> None:
        pass

    def still_valid(self) -> bool:
        return False  # no gratuitous ARP from a unit test


def test_the_agent_reports_stuck_instead_of_starting_beside_the_old_process(state, tmp_path: Path):
    catalog = parse_catalog("""
services:
  memcached:
    placement: singleton
    port: 11211
    start: {command: [memcached]}
    health: [{type: process}]
""", "catalog.yaml")
    apply(state, {"op": "catalog_set", "now": 1.0, "catalog": catalog.to_dict()})
    monitor(state, 2.0, catalog)
    home = state.services["memcached"].node
    sent: list[dict] = []
    runtime = StuckRuntime()
    agent = NodeServices(home, runtime, Vips(), sent.append, Gate(), root=tmp_path)
    try:
        agent.converge(state, catalog, False, 3.0)
        assert runtime.starts == 1 and runtime.known == ["memcached"]  # told before it started
        apply(state, {"op": "restart", "now": 4.0, "service": "memcached", "node": home, "by": "a", "term": 1,
                      "backoff_until": 4.5, "reason": "unhealthy"})
        runtime.stuck = True
        sent.clear()
        agent.converge(state, catalog, False, 5.0)
        assert runtime.starts == 1  # not "started" beside the stuck one
        [stuck] = [op for op in sent if op.get("stuck")]
        assert (stuck["state"], stuck["generation"]) == ("failed", 1)
        assert stuck["detail"] == "stuck: memcached: process group 4242 survived SIGKILL"
        agent.converge(state, catalog, False, 6.0)
        assert runtime.starts == 1 and agent.local["memcached"].stuck
        # The fence failed its I/O: the process is gone, and the same generation starts here.
        runtime.stuck, runtime.pid = False, None
        agent.converge(state, catalog, False, 7.0)
        agent.converge(state, catalog, False, 8.0)
        assert runtime.starts == 2 and not agent.local["memcached"].stuck
    finally:
        agent.stop_everything()
