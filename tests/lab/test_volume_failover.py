"""A stateful service on a Ceph volume (issue 8): real MariaDB, its data on RBD, moved under fencing.

One 3-node lab per module (catalog lab-storage: Ceph + MariaDB with a 1 GiB
ext4 volume). A writer in the client namespace inserts through the VIP with
autocommit (InnoDB flushes every commit) and records each acknowledged id;
neutral observers record, every 20-50 ms, the MACs answering the VIP, the
nodes running MariaDB (process census) and the nodes with the volume mounted
read-write (the kernel's mount table). Each test fails on any acknowledged
row missing, or any sample with two of either. Recovery times are printed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from nodeos.lab.lab import Lab
from nodeos.lab.services import census

from nodeos.bench.stateful import Writer, healthy_on, service_row as mariadb_row, stored_ids, write_gap

from .cluster_helpers import cli, lab_marks, mariadb_storage_lab, wait_until
from .safety_helpers import Observers, VolumeMounts

pytestmark = lab_marks("ceph-mon", "mariadbd", what="Ceph or MariaDB")

SERVICE = "mariadb"
SETTLE = 180.0

def timeline(lab: Lab, node: str, since_wall: float) -> str:
    """The event log from the fault on, as offsets: what the recovery time went into."""
    lines = cli("events", "--json", "--lab", lab.spec.name, "--lab-node", node).stdout.splitlines()
    events = [e for e in map(json.loads, lines) if e["ts"] >= since_wall - 1]
    return "; ".join(f"+{e['ts'] - since_wall:.1f}s {e['kind']}" for e in events)


@pytest.fixture(scope="module")
def shared_lab():
    yield from mariadb_storage_lab(SETTLE)


@pytest.fixture
def lab(shared_lab: Lab) -> Lab:
    """Every node running and connected, MariaDB healthy."""
    shared_lab.heal()
    for name, node in shared_lab.spec.nodes.items():
        if node.pid is None or not Path(f"/proc/{node.pid}").exists():
            shared_lab.start_agent(name)
    shared_lab.wait_formed(timeout=90)
    wait_until(lambda: healthy_on(shared_lab), SETTLE, "MariaDB healthy again")
    return shared_lab


def run_fault(lab: Lab, fault: Any, observe_after: float = 10.0) -> tuple[str, float, list[int], set[int]]:
    """Writer + observers; `fault(holder)` on MariaDB's node; wait for writes through the VIP again."""
    holder = wait_until(lambda: healthy_on(lab), 60, "MariaDB healthy before the fault")
    vip = mariadb_row(lab)["vip"]
    writer = Writer(lab, vip)
    observers = Observers(lab, {SERVICE: vip}, addresses=True)  # a cut-off node is out of the ARP samplers' reach
    mounts = VolumeMounts(lab, SERVICE)
    try:
        wait_until(lambda: len(writer.acks()) >= 30, 60, "30 acknowledged inserts before the fault")
        started, started_wall = time.monotonic(), time.time()
        fault(holder)
        survivor = next(n for n in sorted(lab.spec.nodes) if n != holder)
        wait_until(lambda: writer.acked_after(started) >= 20, 120, "acknowledged inserts again after the fault",
                   interval=0.2)
        recovery = write_gap(writer.acks(), started)
        time.sleep(observe_after)  # keep observing while the cluster settles
        new_home = healthy_on(lab)
        print(f"\n{holder} fault timeline: {timeline(lab, survivor, started_wall)}")
    finally:
        acked = writer.stop()
        observers.stop()
        mounts.stop()
    observers.assert_never_two()
    assert not mounts.doubles(), f"volume mounted read-write on two nodes: {mounts.doubles()[:3]}"
    assert mounts.samples
    stored = stored_ids(lab, vip)
    missing = sorted(set(acked) - stored)
    assert not missing, f"{len(missing)} acknowledged rows lost, first {missing[:10]}"
    assert new_home is not None and new_home != holder
    return holder, recovery, acked, stored


def fence_events(lab: Lab, node: str) -> list[dict[str, Any]]:
    lines = cli("events", "--json", "--lab", lab.spec.name, "--lab-node", node).stdout.splitlines()
    return [e for e in map(json.loads, lines) if e["kind"] == "storage.volume_fenced"]


def test_crash_of_the_holder_loses_no_acknowledged_row(lab: Lab) -> None:
    holder, recovery, acked, stored = run_fault(lab, lab.crash)
    print(f"\ncrash of {holder}: MariaDB took writes through its VIP again after {recovery:.1f}s; "
          f"{len(acked)} acknowledged rows, all {len(stored)} stored rows read back")
    survivor = next(n for n in sorted(lab.spec.nodes) if n != holder)
    assert fence_events(lab, survivor), "no fence recorded in the event log before the volume moved"


def test_partitioned_holder_is_fenced_and_never_writes_again(lab: Lab) -> None:
    holder, recovery, acked, stored = run_fault(lab, lambda node: lab.partition([node]))
    print(f"\npartition of {holder}: MariaDB took writes through its VIP again after {recovery:.1f}s; "
          f"{len(acked)} acknowledged rows, none lost")
    survivor = next(n for n in sorted(lab.spec.nodes) if n != holder)
    ids = {name: node_id for node_id, name in lab.names_by_id().items()}
    fenced = [e for e in fence_events(lab, survivor) if e.get("node") == ids[holder]]
    assert fenced, "the old holder's client was not blocklisted"
    before = len(stored)
    lab.heal()
    lab.wait_formed(timeout=60)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # healed: the old node must not run MariaDB or mount its volume again
        assert holder not in census(lab).get(SERVICE, [])
        time.sleep(0.1)
    assert len(stored_ids(lab, mariadb_row(lab)["vip"])) == before


def test_full_power_cycle_brings_ceph_and_the_data_back(lab: Lab) -> None:
    holder = wait_until(lambda: healthy_on(lab), 60, "MariaDB healthy before the power cut")
    vip = mariadb_row(lab)["vip"]
    writer = Writer(lab, vip)
    try:
        wait_until(lambda: len(writer.acks()) >= 30, 60, "30 acknowledged inserts before the power cut")
    finally:
        for name in sorted(lab.spec.nodes):  # every node loses power; the writer keeps trying meanwhile
            lab.crash(name)
        cut_at = time.monotonic()
    for name in sorted(lab.spec.nodes):
        lab.start_agent(name)
    try:
        wait_until(lambda: healthy_on(lab), SETTLE, "MariaDB healthy again after the power cycle")
        wait_until(lambda: writer.acked_after(cut_at) >= 10, 60, "writes through the VIP again", interval=0.2)
        back = min(at for _, at in writer.acks() if at > cut_at) - cut_at
    finally:
        acked = writer.stop()
    print(f"\npower cycle of every node (MariaDB was on {holder}): writes through its VIP again {back:.1f}s "
          f"after the cut (agents restarted at once); {len(acked)} acknowledged rows")
    missing = sorted(set(acked) - stored_ids(lab, vip))
    assert not missing, f"{len(missing)} acknowledged rows lost, first {missing[:10]}"
