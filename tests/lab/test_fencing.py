"""Fencing that does not depend on the agent (issue 7): kill, hang, crash-loop, watchdog.

One 3-node lab for the module (restored to healthy before each test). Every
test watches each VIP with its own raw-socket ARP sampler (every 20 ms, from
the client namespace) and takes a process census of every node every 50 ms;
it fails if one VIP was ever answered by two MACs or one singleton ever ran
on two nodes, and checks that the service serves again from the majority.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from nodeos.lab.lab import Lab
from nodeos.lab.services import census

from .cluster_helpers import (agent_events, cli, in_client, is_root, lease_holders, new_lab, status_json, teardown,
                              wait_services_healthy, wait_until)
from .safety_helpers import Observers

pytestmark = [pytest.mark.lab, pytest.mark.skipif(not is_root(), reason="needs root for namespaces")]

SINGLETONS = ["memcached", "nginx"]


@pytest.fixture(scope="module")
def shared_lab():
    lab = new_lab(3, catalog="lab")
    lab.add_client()
    try:
        lab.wait_formed(timeout=60)
        wait_services_healthy(lab)
        yield lab
    finally:
        teardown(lab)


@pytest.fixture
def lab(shared_lab: Lab) -> Lab:
    restore(shared_lab)
    return shared_lab


def restore(lab: Lab) -> None:
    """Every agent running and not stopped, one cluster, every singleton healthy behind its VIP."""
    for name, node in lab.spec.nodes.items():
        for pid in (node.pid, node.guard_pid):
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        if node.pid is None or not Path(f"/proc/{node.pid}").exists():
            node.pid = None
            lab.start_agent(name)
    lab.wait_formed(timeout=60)
    wait_services_healthy(lab, timeout=90)


def monitor_node(lab: Lab) -> str:
    return wait_until(lambda: (lease_holders(lab, sorted(lab.spec.nodes)) or [None])[0], 20, "a Monitor lease holder")


def place(lab: Lab, service: str, node: str) -> None:
    """Move `service` to lab node `node` (if it is elsewhere) and wait until it serves there."""
    ids = lab.names_by_id()
    rows = {r["name"]: r for r in status_json(lab, "n1")["services"]}
    if ids.get(rows[service]["node"]) != node:
        node_id = next(i for i, n in ids.items() if n == node)
        result = cli("service", "move", service, "--to", node_id, "--lab-node", "n1", "--lab", lab.spec.name)
        assert result.returncode == 0, result.stderr
    wait_until(lambda: census(lab).get(service) == [node], 30, f"{service} running on {node} only")
    wait_services_healthy(lab)


def vips(lab: Lab) -> dict[str, str]:
    return {r["name"]: r["vip"] for r in status_json(lab, "n1")["services"] if r.get("vip")}


def serves_from(lab: Lab, service: str, vip: str, nodes: list[str]) -> bool:
    """The VIP answers and the one instance runs on one of `nodes`."""
    if census(lab).get(service, []) not in ([n] for n in nodes):
        return False
    if service == "memcached":
        answer = in_client(lab, "memcached", vip)
        return isinstance(answer, str) and answer.startswith("VERSION")
    answer = in_client(lab, "http", vip, "80")
    return isinstance(answer, str) and answer.startswith("nginx on node")


def guard_events(lab: Lab, node: str) -> list[str]:
    path = Path(lab.node(node).state_dir) / "guard.log"
    return [line for line in path.read_text().splitlines() if '"guard.fenced"' in line]


def holder_not_monitor(lab: Lab) -> tuple[str, str]:
    monitor = monitor_node(lab)
    holder = next(n for n in sorted(lab.spec.nodes) if n != monitor)
    place(lab, "memcached", holder)
    return holder, monitor


def observe(lab: Lab) -> Observers:
    observers = Observers(lab, vips(lab))
    time.sleep(0.5)  # a baseline before the fault
    return observers


def test_kill_agent_of_the_vip_holder(lab: Lab) -> None:
    holder, _ = holder_not_monitor(lab)
    fences_before = len(guard_events(lab, holder))
    observers = observe(lab)
    try:
        lab.kill_agent(holder)
        others = [n for n in lab.spec.nodes if n != holder]
        wait_until(lambda: serves_from(lab, "memcached", observers.vips["memcached"], others), 30,
                   "memcached serving from the majority side")
        time.sleep(1.0)
    finally:
        observers.stop()
    observers.assert_never_two()
    assert len(guard_events(lab, holder)) > fences_before, "the guard did not fence the dead agent's node"
    # Start clean: the new agent holds nothing the replicated state gives elsewhere.
    lab.start_agent(holder)
    lab.wait_formed(timeout=60)
    assert holder not in census(lab).get("memcached", [])


def test_kill_agent_of_the_monitor_holding_a_vip(lab: Lab) -> None:
    monitor = monitor_node(lab)
    place(lab, "memcached", monitor)
    observers = observe(lab)
    try:
        lab.kill_agent(monitor)
        others = [n for n in lab.spec.nodes if n != monitor]
        wait_until(lambda: serves_from(lab, "memcached", observers.vips["memcached"], others), 30,
                   "memcached serving from the majority side")
        new_monitor = monitor_node(lab)
        assert new_monitor != monitor
        time.sleep(1.0)
    finally:
        observers.stop()
    observers.assert_never_two()


def test_kill_agent_of_a_plain_member_moves_nothing(lab: Lab) -> None:
    hosts = {s: census(lab)[s][0] for s in SINGLETONS}
    monitor = monitor_node(lab)
    plain = [n for n in sorted(lab.spec.nodes) if n not in hosts.values() and n != monitor]
    if not plain:
        place(lab, "nginx", hosts["memcached"])
        hosts = {s: census(lab)[s][0] for s in SINGLETONS}
        plain = [n for n in sorted(lab.spec.nodes) if n not in hosts.values() and n != monitor]
    victim = plain[0]
    observers = observe(lab)
    try:
        lab.kill_agent(victim)
        time.sleep(4.0)  # well past the lost threshold
    finally:
        observers.stop()
    observers.assert_never_two()
    assert {s: census(lab)[s] for s in SINGLETONS} == {s: [h] for s, h in hosts.items()}, "a singleton moved"
    assert monitor_node(lab) == monitor


@pytest.mark.parametrize("seconds", [0.5, 3.0, 30.0])
def test_hung_agent_of_the_vip_holder(lab: Lab, seconds: float) -> None:
    holder, _ = holder_not_monitor(lab)
    observers = observe(lab)
    hang = threading.Thread(target=lab.hang_agent, args=(holder, seconds))
    try:
        hang.start()
        if seconds >= 3:
            others = [n for n in lab.spec.nodes if n != holder]
            wait_until(lambda: serves_from(lab, "memcached", observers.vips["memcached"], others), 30,
                       "memcached serving from the majority side while the holder hangs")
        hang.join()
        # After SIGCONT the woken agent must not bring anything back where it no longer belongs.
        wait_services_healthy(lab, timeout=60)
        time.sleep(2.0)
    finally:
        hang.join()
        observers.stop()
    observers.assert_never_two()
    assert serves_from(lab, "memcached", observers.vips["memcached"], sorted(lab.spec.nodes))


def test_agent_crash_looping_at_start(lab: Lab) -> None:
    holder, _ = holder_not_monitor(lab)
    observers = observe(lab)
    chance = random.Random(7)
    try:
        lab.kill_agent(holder)
        for _ in range(6):  # systemd restarting an agent that dies early, again and again
            lab.start_agent(holder)
            time.sleep(chance.uniform(0.3, 1.5))
            lab.kill_agent(holder)
        others = [n for n in lab.spec.nodes if n != holder]
        wait_until(lambda: serves_from(lab, "memcached", observers.vips["memcached"], others), 30,
                   "memcached serving from the majority side")
        lab.start_agent(holder)
        lab.wait_formed(timeout=60)
        wait_services_healthy(lab)
        time.sleep(1.0)
    finally:
        observers.stop()
    observers.assert_never_two()


def test_agent_refuses_to_hold_without_its_guard(lab: Lab) -> None:
    """No guard, no holdings: the agent fences at once when its guard dies, and takes nothing until one answers."""
    holder, _ = holder_not_monitor(lab)
    node = lab.node(holder)
    assert node.guard_pid is not None
    os.kill(node.guard_pid, signal.SIGKILL)
    wait_until(lambda: holder not in census(lab).get("memcached", []), 10, "the agent to give memcached up")
    events = [e["event"] for e in agent_events(lab, holder)]
    assert "fence.local" in events
    node.guard_pid = None
    lab._ensure_guard(node)  # systemd would restart it (Restart=always)
    wait_services_healthy(lab, timeout=60)


def test_hung_agent_and_guard_are_reset_by_the_watchdog(lab: Lab) -> None:
    """The last line: with both the agent and its guard stopped, the node's watchdog resets it."""
    holder, _ = holder_not_monitor(lab)
    node = lab.node(holder)
    watchdog_log = Path(node.state_dir) / "watchdog.log"
    before = watchdog_log.read_text().count("watchdog.rebooted")
    os.kill(node.guard_pid, signal.SIGSTOP)
    os.kill(node.pid, signal.SIGSTOP)
    wait_until(lambda: watchdog_log.read_text().count("watchdog.rebooted") > before, 30, "the watchdog to reset the node")
    reloaded = Lab.load(lab.spec.name)  # the reset rebooted the node: new pids
    lab.spec.nodes[holder] = reloaded.spec.nodes[holder]
    lab.wait_formed(timeout=60)
    wait_services_healthy(lab, timeout=60)
    assert len(census(lab).get("memcached", [])) == 1


def test_fence_does_not_wait_behind_a_blocked_stop(lab: Lab) -> None:
    """A node busy stopping one service (5 s) and cut off at that moment drops another's VIP in time."""
    holder, _ = holder_not_monitor(lab)
    place(lab, "nginx", holder)
    memcached_pid = int(json.loads((Path(lab.node(holder).state_dir) / "services/memcached/pid.json").read_text())["pid"])
    others = [n for n in sorted(lab.spec.nodes) if n != holder]
    observers = Observers(lab, vips(lab), addresses=True)
    time.sleep(0.5)
    try:
        os.kill(memcached_pid, signal.SIGSTOP)  # its stop now waits 5 s for SIGTERM, then SIGKILLs
        ids = {n: i for i, n in lab.names_by_id().items()}
        result = cli("service", "move", "memcached", "--to", ids[others[0]], "--lab-node", others[0], "--lab", lab.spec.name)
        assert result.returncode == 0, result.stderr
        time.sleep(0.5)  # the holder's services thread is inside the blocked stop now
        lab.partition([holder])
        wait_until(lambda: census(lab).get("nginx", []) in ([n] for n in others), 30, "nginx moved to the majority")
        status = lab.node_status(holder, timeout=5.0)
        assert status is not None and observers.vips["nginx"] not in status["holding"]["vips"], status["holding"]
        time.sleep(5.0)  # past the blocked stop
    finally:
        try:
            os.kill(memcached_pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        lab.heal()
        observers.stop()
    observers.assert_never_two()


def test_vip_holder_reannounces_so_clients_drop_a_wrong_mac(lab: Lab) -> None:
    """After another node may have answered for a VIP (a clone, a healed split), clients move back by themselves."""
    from nodeos.lab import netns

    holder = census(lab)["memcached"][0]
    vip = vips(lab)["memcached"]
    client = lab.add_client()
    wrong = "02:00:00:00:00:99"
    result = subprocess.run(["ip", "-n", client, "neigh", "replace", vip, "lladdr", wrong, "dev", "eth0", "nud", "stale"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    right = netns.link_mac(lab.node(holder).ns, "eth0")

    def client_mac() -> str | None:
        words = subprocess.run(["ip", "-n", client, "neigh", "show", vip, "dev", "eth0"], capture_output=True, text=True).stdout.split()
        return words[words.index("lladdr") + 1].lower() if "lladdr" in words else None

    assert client_mac() == wrong
    wait_until(lambda: client_mac() == right, 10, f"the client's ARP entry for {vip} back at {holder}'s MAC")


def test_a_crashed_node_boots_once_its_watchdog_stays_quiet(lab: Lab) -> None:
    """A power cut stops the node's watchdog too: booting it later must not be followed by a reset."""
    holder, _ = holder_not_monitor(lab)
    watchdog_log = Path(lab.node(holder).state_dir) / "watchdog.log"
    resets = watchdog_log.read_text().count("watchdog.reset")
    lab.crash(holder)  # its guard was armed: it held memcached
    time.sleep(6.0)  # longer than watchdog_timeout
    lab.start_agent(holder)
    lab.wait_formed(timeout=60)
    wait_services_healthy(lab, timeout=60)
    time.sleep(1.0)
    assert watchdog_log.read_text().count("watchdog.reset") == resets
    assert lab.node_status(holder)["fencing"]["guard"] is True  # its agent talks to its (one) guard
