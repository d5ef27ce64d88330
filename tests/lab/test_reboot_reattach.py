"""A rebooted volume holder gets its volume back without waiting out its dead client (issue 11).

One 3-node lab (catalog lab-storage: Ceph + MariaDB on a 1 GiB ext4 volume).
The node holding MariaDB is rebooted: everything in it is SIGKILLed (its
rbd-fuse too, so its Ceph client dies holding the image's watch and lock)
and its agent starts again at once, before the cluster declares it lost.
It keeps MariaDB, so nobody else fences the dead client: the booting node
fences its own previous instances itself. The test checks the data, that
only the rebooted node's addresses were blocklisted (never another node's
client, never the new incarnation's), and prints the time and where it went.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from nodeos.bench.stateful import Writer, healthy_on, service_row, stored_ids, write_gap
from nodeos.lab.lab import Lab
from nodeos.storage.volume_spec import parse_blocklist

from .cluster_helpers import agent_events, cli, lab_marks, mariadb_storage_lab, wait_until

pytestmark = lab_marks("ceph-mon", "mariadbd", what="Ceph or MariaDB")

SETTLE = 180.0
# The events that say where a reboot's recovery time went, on the rebooted node.
STEPS = ("volume.self_fenced", "volume.attach_retry", "volume.attach_phases", "volume.attached", "volume.ready",
         "service.start_failed")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from mariadb_storage_lab(SETTLE)


def volume_record(lab: Lab, node: str) -> dict[str, Any]:
    view = json.loads(cli("status", "--json", "--lab-node", node, "--lab", lab.spec.name).stdout)
    return (view.get("storage", {}).get("volumes") or {}).get("mariadb") or {}


def blocklisted(lab: Lab, node: str) -> list[str]:
    conf = Path(lab.node(node).state_dir) / "ceph" / "ceph.conf"
    argv = ["ip", "netns", "exec", lab.node(node).ns, "ceph", "--conf", str(conf), "--name", "client.admin",
            "--connect-timeout", "10", "osd", "blocklist", "ls", "-f", "json"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout
    return [entry.address for entry in parse_blocklist(out)]  # 16.2.15 prints a second list after it


def steps_since(lab: Lab, node: str, since_wall: float) -> str:
    """The agent's volume steps on `node` as offsets from the reboot: where the time went."""
    events = [e for e in agent_events(lab, node) if e.get("ts", 0) >= since_wall and e.get("event") in STEPS]
    return "; ".join(f"+{e['ts'] - since_wall:.1f}s {e['event']} {e.get('seconds') or e.get('error') or ''}".rstrip()
                     for e in events)


def volume_events(lab: Lab, node: str, since_wall: float) -> str:
    """The replicated event log's volume and MariaDB entries since the reboot, as offsets."""
    lines = cli("events", "--json", "--lab", lab.spec.name, "--lab-node", node).stdout.splitlines()
    events = [e for e in map(json.loads, lines) if e["ts"] >= since_wall
              and (e["kind"].startswith("storage.volume") or e.get("service") == "mariadb")]
    return "; ".join(f"+{e['ts'] - since_wall:.1f}s {e['kind']} {e.get('detail', '')}".rstrip() for e in events)


def test_rebooted_holder_gets_its_volume_back_fencing_only_its_own_dead_client(lab: Lab) -> None:
    holder = wait_until(lambda: healthy_on(lab), 60, "MariaDB healthy before the reboot")
    other = next(n for n in sorted(lab.spec.nodes) if n != holder)
    vip = (service_row(lab) or {})["vip"]
    before = set(blocklisted(lab, other))
    old_client = volume_record(lab, other).get("client")
    writer = Writer(lab, vip)
    try:
        wait_until(lambda: len(writer.acks()) >= 30, 60, "30 acknowledged inserts before the reboot")
        rebooted_at, rebooted_wall = time.monotonic(), time.time()
        lab.reboot(holder)
        # The status says healthy until the dead node's health times out: the writer says when it is back.
        wait_until(lambda: writer.acked_after(rebooted_at) >= 20, SETTLE, "writes through the VIP again", interval=0.2)
        writes_after = write_gap(writer.acks(), rebooted_at)
        home = wait_until(lambda: healthy_on(lab), SETTLE, "MariaDB healthy again after the reboot", interval=0.2)
    finally:
        acked = writer.stop()
    gap = f"{writes_after:.1f}s" if writes_after is not None else "no gap"
    print(f"\nreboot of {holder} (MariaDB's node): writes through the VIP again after {gap}, "
          f"MariaDB healthy on {home}; {len(acked)} acknowledged rows")
    print(f"{home} attach steps: {steps_since(lab, home, rebooted_wall)}")
    print(f"event log: {volume_events(lab, other, rebooted_wall)}")

    missing = sorted(set(acked) - stored_ids(lab, vip))
    assert not missing, f"{len(missing)} acknowledged rows lost, first {missing[:10]}"
    new_client = volume_record(lab, other).get("client")
    added = set(blocklisted(lab, other)) - before
    print(f"old client {old_client}, new client {new_client}, blocklisted since: {sorted(added)}")
    holder_ip = lab.node(holder).ip
    assert all(address.split(":")[0] == holder_ip for address in added), \
        f"a client of another node was blocklisted: {sorted(added)} (the rebooted node is {holder_ip})"
    assert new_client and new_client not in blocklisted(lab, other), "the new incarnation's client is blocklisted"
    if home == holder:  # kept by the rebooted node: it fenced its dead client itself, and said so
        lines = cli("events", "--json", "--lab", lab.spec.name, "--lab-node", other).stdout.splitlines()
        attached = [e for e in map(json.loads, lines) if e["ts"] >= rebooted_wall and e["kind"] == "storage.volume_attached"]
        assert any(old_client in (e.get("fenced_own") or []) for e in attached), attached
