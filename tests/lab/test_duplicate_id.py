"""A node id copied into another machine's state dir (a cloned disk or VM) is refused loudly.

The clone exits 2 naming the id, the other address and the remedy; the
cluster records one `node.duplicate_id` event; the original keeps its id,
its address in `status` and its singletons.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from nodeos.lab.lab import Lab, LabNode

from .cluster_helpers import (agent_events, cli, host_of, in_client, is_root, new_lab, node_mac, status_json, teardown,
                              wait_services_healthy, wait_until)

pytestmark = [pytest.mark.lab, pytest.mark.skipif(not is_root(), reason="needs root for namespaces")]


@pytest.fixture
def healthy_lab(request: pytest.FixtureRequest) -> Lab:
    lab = new_lab(3, catalog="lab")
    request.addfinalizer(lambda: teardown(lab))
    lab.add_client()
    lab.wait_formed(timeout=60)
    wait_services_healthy(lab)
    return lab


def add_clone(lab: Lab, node_id: str) -> LabNode:
    """A 4th machine whose state dir holds a copy of another node's node_id."""
    node = lab._plan_node(max(n.index for n in lab.spec.nodes.values()) + 1)
    lab.save()
    lab._make_node_network(node)
    (Path(node.state_dir) / "node_id").write_text(node_id + "\n")
    return node


def watch_until_exit(lab: Lab, pid: int, timeout: float) -> tuple[int | None, list[dict[str, Any]]]:
    """The agent's exit code (this process is its parent) and n1's status views meanwhile.

    No subprocess may start while we wait: subprocess reaps orphaned children
    it once started, and the exit code would be lost.
    """
    samples: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), samples
        view = lab.node_status("n1", timeout=1.0)
        if view:
            samples.append(view)
        time.sleep(0.05)
    return None, samples


def test_cloned_node_id_is_refused_and_the_clone_exits_2(healthy_lab: Lab) -> None:
    lab = healthy_lab
    victim = host_of(lab, "memcached")  # the clone must not take over a node that runs a singleton
    assert victim is not None
    rows = {r["name"]: r for r in status_json(lab, "n1")["services"]}
    vip = rows["memcached"]["vip"]
    victim_status = status_json(lab, victim)
    node_id, victim_raft = victim_status["node_id"], victim_status["raft_addr"]

    clone = add_clone(lab, node_id)
    clone_raft = f"{clone.ip}:{victim_raft.rsplit(':', 1)[1]}"
    pid = lab.start_agent(clone.name)
    code, samples = watch_until_exit(lab, pid, timeout=30)

    assert code == 2, f"the clone agent should exit 2 (got {code}); its log:\n{(Path(clone.state_dir) / 'agent.log').read_text()[-3000:]}"
    refusals = [e for e in agent_events(lab, clone.name) if e["event"] == "node.duplicate_id"]
    assert refusals, "the clone logged no node.duplicate_id"
    text = str(refusals[0])
    assert node_id in text and victim_raft in text and "node_id" in text and "membership.json" in text
    # Never a ghost: the id stays at the original's address, the clone's address is never a member.
    assert samples
    for view in samples:
        for member in view["members"]:
            assert member["raft_addr"] != clone_raft, member
            if member["node_id"] == node_id:
                assert member["raft_addr"] == victim_raft, member

    def recorded() -> list[str]:
        out = cli("events", "--json", "--lab-node", "n1", "--lab", lab.spec.name).stdout
        return [line for line in out.splitlines() if '"node.duplicate_id"' in line]

    events = wait_until(recorded, 10, "a node.duplicate_id event in the cluster's log")
    assert len(events) == 1 and node_id in events[0] and clone.ip in events[0] and victim_raft in events[0]
    # The original keeps its id, its membership and its singleton, and only it answers the VIP.
    view = lab.cluster_view(["n1", "n2", "n3"])
    assert view["formed"], view["summary"]
    assert host_of(lab, "memcached") == victim
    wait_until(lambda: in_client(lab, "who_has", vip, "0.3") == [node_mac(lab, victim)], 10, f"ARP for {vip} answered by {victim} only")
