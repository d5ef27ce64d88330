"""Foundation lab tests: real agents in network namespaces on a bridge."""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
import time

import pytest

from .cluster_helpers import cli, is_root, lease, lease_holders, lease_intervals, status_json, wait_until

pytestmark = [pytest.mark.lab, pytest.mark.skipif(not is_root(), reason="needs root for namespaces")]


@pytest.mark.parametrize("size", [3, 5])
def test_nodes_form_one_cluster_with_no_configuration(lab_factory, size):
    lab = lab_factory(size)
    lab.wait_formed(timeout=60)
    statuses = [status_json(lab, n) for n in sorted(lab.spec.nodes)]
    assert len({s["group_id"] for s in statuses}) == 1
    assert len({s["cluster_id"] for s in statuses}) == 1
    assert sum(1 for s in statuses if s["is_leader"]) == 1
    node_ids = {s["node_id"] for s in statuses}
    for s in statuses:
        assert {m["node_id"] for m in s["members"]} == node_ids
        assert all(m["status"] == "up" for m in s["members"])
    # The lease holder appears within a few seconds, and it is the leader.
    holder = wait_until(lambda: lease_holders(lab, sorted(lab.spec.nodes)), 10, "a lease holder")
    assert len(holder) == 1
    assert status_json(lab, holder[0])["is_leader"]


def test_late_node_joins_and_restarted_nodes_rejoin(lab_factory):
    lab = lab_factory(3)
    lab.wait_formed(timeout=60)
    lab.add_node()
    view = lab.wait_formed(timeout=60)
    assert len(view["statuses"]["n4"]["members"]) == 4

    leader = lab.node_name_of(view["leader"])
    follower = next(n for n in sorted(lab.spec.nodes) if n != leader)
    lab.crash(follower)
    lab.start_agent(follower)
    lab.wait_formed(timeout=60)

    lab.crash(leader)
    others = [n for n in sorted(lab.spec.nodes) if n != leader]
    old_id = view["leader"]

    def new_leader() -> str | None:
        current = lab.cluster_view(others)["leader"]
        return current if current not in (None, old_id) else None

    assert lab.node_name_of(wait_until(new_leader, 20, "a new leader among the survivors")) in others
    wait_until(lambda: lease_holders(lab, others), 10, "a new Monitor lease holder")
    lab.start_agent(leader)
    view = lab.wait_formed(timeout=60)
    assert len(view["statuses"][leader]["members"]) == 4
    events = cli("events", "--json", "--lab-node", others[0], "--lab", lab.spec.name).stdout
    assert '"monitor.elected"' in events and '"node.lost"' in events


def test_full_power_cycle_keeps_cluster_and_state(lab_factory):
    lab = lab_factory(3)
    lab.wait_formed(timeout=60)
    before = status_json(lab, "n1")
    events_before = cli("events", "--json", "--lab-node", "n1", "--lab", lab.spec.name).stdout.splitlines()
    assert events_before
    for name in lab.spec.nodes:
        lab.crash(name)
    for name in ["n3", "n1"]:  # a different order, and only a majority at first
        lab.start_agent(name)
    wait_until(lambda: lease_holders(lab, ["n1", "n3"]), 30, "a lease holder after power-up of a majority")
    lab.start_agent("n2")
    view = lab.wait_formed(timeout=60)
    after = status_json(lab, "n2")
    assert (after["group_id"], after["cluster_id"]) == (before["group_id"], before["cluster_id"])
    assert {m["node_id"] for m in after["members"]} == {m["node_id"] for m in before["members"]}
    events_after = cli("events", "--json", "--lab-node", "n2", "--lab", lab.spec.name).stdout.splitlines()
    assert events_after[: len(events_before)] == events_before  # the replicated log survived
    assert view["formed"]


def test_leader_cut_off_into_minority_never_overlaps_monitor_lease(lab_factory):
    lab = lab_factory(3)
    lab.wait_formed(timeout=60)
    names = sorted(lab.spec.nodes)
    old = wait_until(lambda: lease_holders(lab, names), 10, "a lease holder")[0]
    samples: list[tuple[float, list[str]]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            started = time.monotonic()
            holders = [n for n in names if lease(lab, n)]
            samples.append((started, holders))
            stop.wait(max(0.0, 0.02 - (time.monotonic() - started)))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        time.sleep(0.5)
        lab.disconnect(old)
        others = [n for n in names if n != old]
        wait_until(lambda: lease_holders(lab, others), 20, "a lease holder on the majority side")
        time.sleep(2.0)
        lab.reconnect(old)
        time.sleep(2.0)
    finally:
        stop.set()
        sampler.join()
    gaps = [b[0] - a[0] for a, b in zip(samples, samples[1:])]
    assert max(gaps) <= 0.05, f"sampling gap {max(gaps):.3f}s"
    assert all(len(holders) <= 1 for _, holders in samples), [s for s in samples if len(s[1]) > 1]
    assert any(holders == [old] for _, holders in samples)
    assert any(holders and holders != [old] for _, holders in samples)
    # The agents' own logged lease intervals (host-wide monotonic clock) never overlap either.
    end = time.monotonic()
    intervals = [(n, iv) for n in names for iv in lease_intervals(lab, n, end)]
    for (n1, a), (n2, b) in itertools.combinations(intervals, 2):
        if n1 != n2:
            assert a[1] <= b[0] or b[1] <= a[0], f"{n1} {a} overlaps {n2} {b}"


def test_wrong_secret_never_joins_and_bad_beacons_are_counted(lab_factory, tmp_path):
    from nodeos.cluster.beacon import BeaconCodec
    from nodeos.cluster.identity import ClusterIdentity, load_identity, write_private

    lab = lab_factory(3)
    lab.wait_formed(timeout=60)
    # A rogue node: same cluster id, different secret.
    good = load_identity(lab.identity_path)
    rogue = ClusterIdentity(good.cluster_id, b"r" * 32, good.ca_cert_pem, good.ca_key_pem)
    rogue_path = lab.dir / "rogue-identity.json"
    write_private(rogue_path, rogue.to_json())
    rogue_node = lab.add_node(identity=rogue_path)
    # Forged and replayed beacons from a client namespace on the same LAN.
    client = lab.add_client()
    forged = BeaconCodec(b"x" * 32, good.cluster_id).encode("beacon", "evil", {"phase": "waiting", "addr": "10.77.0.5:7371"}, time.time(), "f1")
    genuine = BeaconCodec(good.beacon_key, good.cluster_id).encode("beacon", "ghost", {"phase": "waiting", "addr": "10.77.0.5:7371"}, time.time(), "r1")
    sender = ("import socket,sys,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
              "s.setsockopt(socket.IPPROTO_IP,socket.IP_MULTICAST_IF,socket.inet_aton('10.77.0.5'))\n"
              "for d in sys.argv[1:]:\n  s.sendto(bytes.fromhex(d),('239.192.73.70',7370)); time.sleep(0.05)\n")
    subprocess.run(["ip", "netns", "exec", client, sys.executable, "-c", sender, forged.hex(), genuine.hex(), genuine.hex()], check=True, timeout=30)
    time.sleep(3.0)
    for name in ["n1", "n2", "n3"]:
        status = status_json(lab, name)
        assert len(status["members"]) == 3
        dropped = status["discovery"]["dropped"]
        assert dropped.get("forged", 0) >= 2, dropped  # the forged beacon and the rogue node's beacons
        assert dropped.get("replayed", 0) >= 1, dropped
    rogue_status = status_json(lab, rogue_node.name)
    assert rogue_status["formation"] == "waiting" and rogue_status["members"] == []
