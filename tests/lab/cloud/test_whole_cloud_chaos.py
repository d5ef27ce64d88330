"""`nodeos chaos` on the running cloud (issue 10): a seeded campaign with every fault kind on the
package's lab-cloud, checked the whole time by the neutral observers (one lease holder, one MAC
per VIP, one writer per volume, every acknowledged keystone write read back, every fault
recovered within its bound). A violation fails the test. Then the checker's honesty, each
violation planted on the running cloud and reported: a VIP on a second host (the ARP observer),
a lease a second node claims (the lease observer asks each node's own control socket), an
acknowledged keystone write dropped before the read-back.

Seed 196 draws every fault kind in 9 rounds on the lab-cloud catalog's services
(test_the_schedule_covers_every_fault); one round costs 0.5-2 minutes on 2 cores. A long
campaign is `nodeos chaos run --rounds 1000` (README, Chaos).
"""

from __future__ import annotations

import os
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from nodeos.chaos.history import History
from nodeos.chaos.invariants import check, no_acknowledged_write_lost, one_lease_holder, one_mac_per_vip
from nodeos.chaos.observers import ClientObserver, may_act
from nodeos.chaos.runner import Campaign, Options, write_outputs
from nodeos.chaos.schedule import FAULTS, plan
from nodeos.cluster.control import ControlServer
from nodeos.lab import netns
from nodeos.lab.lab import PREFIXLEN, SUBNET_PREFIX, Lab

from ..cluster_helpers import lab_marks
from .helpers import openstack_do, rows

pytestmark = lab_marks("keystone-manage", what="keystone")

SEED, ROUNDS = 196, 9


def test_the_schedule_covers_every_fault(lab: Lab) -> None:
    drawn = {f.fault for r in plan(SEED, ROUNDS, list(FAULTS), sorted(lab.spec.nodes), sorted(rows(lab)))
             for f in r.faults}
    assert drawn == set(FAULTS)


def test_a_campaign_on_the_cloud_violates_nothing_and_every_fault_recovers(lab: Lab, tmp_path: Path) -> None:
    campaign = Campaign(lab, Options(seed=SEED, rounds=ROUNDS, faults=list(FAULTS), overlap=0.25),
                        progress=lambda line: print(line, flush=True))
    report = campaign.run()
    history_path, _, html = write_outputs(campaign, report, tmp_path)
    print(f"\nper fault: {report['per_fault']}\nclient: {report['unavailability_s']}")
    assert report["ok"], report["violations"]
    assert sum(row["count"] for row in report["per_fault"].values()) == len(report["incidents"]) >= ROUNDS
    assert all("healthy" in incident["phases"] for incident in report["incidents"])
    history = History.load(history_path)
    # The observers watched the cloud: leases, ARP for its VIPs, the client's token and API reads, its writes.
    assert {r["k"] for r in history} >= {"lease", "arp", "poll", "fault", "event", "write", "readback"}
    assert any(not p["ok"] for p in history.of("poll"))  # some fault was felt by the client
    assert "<svg" in html.read_text()


def test_a_vip_planted_on_a_second_host_is_reported(lab: Lab) -> None:
    """A second host on the LAN answers ARP for keystone's VIP (what fencing exists to prevent).
    A rogue namespace, not a node: a node's agent removes a VIP it does not hold at its next look."""
    vip = rows(lab)["keystone"]["vip"]
    rogue, veth = f"nodeos-{lab.spec.name}-rogue", f"nlv-{lab.spec.name}-r"
    with observed(lab, "planted-") as (campaign, _):
        try:
            netns.create_namespace(rogue, lab.spec.bridge, veth, f"{SUBNET_PREFIX}.6/{PREFIXLEN}")
            time.sleep(1.5)
            subprocess.run(["ip", "-n", rogue, "addr", "add", f"{vip}/32", "dev", "eth0"], check=True)
            time.sleep(2.0)
        finally:
            netns.delete_namespace(rogue)
    found = one_mac_per_vip(campaign.history)
    assert found and vip in found[0].detail, [r for r in campaign.history.of("arp") if r["vip"] == vip][-5:]
    assert any(v.invariant == "one-mac-per-vip" for v in check(campaign.history))
    # Before the plant, the VIP had one MAC: the checker found an episode, not a standing condition.
    assert found[0].at > campaign.history.of("arp")[0]["t"]


@contextmanager
def observed(lab: Lab, prefix: str) -> Iterator[tuple[Campaign, ClientObserver]]:
    """The campaign's observers running (lease, ARP, volumes, the client's reads and writes)
    while the body plants something; their records are in the campaign's history afterwards."""
    campaign = Campaign(lab, Options(seed=0, rounds=1, faults=["load"]))
    samplers, client = campaign.observers(prefix)
    try:
        time.sleep(2.0)  # samples of the honest cluster first
        yield campaign, client
    finally:
        for sampler in samplers:
            sampler.stop()
        client.stop(campaign.history)
        client.close()


@contextmanager
def forged_lease(lab: Lab, node: str) -> Iterator[None]:
    """`node`'s control socket answers "may act" (a second Monitor, as a broken lease would
    make one). The agent's own socket is set aside, not closed, and put back."""
    path = lab.node_socket(node)
    aside = path.with_name(path.name + ".real")
    os.rename(path, aside)
    forger = None
    try:
        forger = ControlServer(path, None, {"/lease": lambda _query: (200, {"may_act": True})}, {}, set())
        forger.start()
        yield
    finally:
        if forger is not None:
            forger.stop()
        os.replace(aside, path)


def lease_holders(lab: Lab) -> list[str]:
    return [name for name in sorted(lab.spec.nodes) if may_act(lab, name, 2.0)]


def test_a_lease_forged_on_a_second_node_is_reported(lab: Lab) -> None:
    [holder] = lease_holders(lab)
    second = next(name for name in sorted(lab.spec.nodes) if name != holder)
    with observed(lab, "forged-") as (campaign, _):
        with forged_lease(lab, second):
            time.sleep(1.0)
        time.sleep(1.0)
    assert lease_holders(lab) == [holder]  # the agent's own socket is back
    found = one_lease_holder(campaign.history)
    assert len(found) == 1 and str(sorted([holder, second])) in found[0].detail, campaign.history.of("lease")[-5:]
    assert found[0].at > campaign.history.of("lease")[0]["t"]  # an episode, after honest samples
    print(f"\nforged lease on {second}: {found[0].detail}")


def test_an_acknowledged_write_dropped_is_reported(lab: Lab) -> None:
    """The client's acknowledged project creations (one a second) are read back after the run;
    one deleted behind its back, as a lost commit would be, is reported by name, and only it."""
    with observed(lab, f"dropped-{int(time.time())}-") as (campaign, client):
        time.sleep(6.0)
    written = [w["key"] for w in campaign.history.of("write")]
    assert len(written) >= 3, campaign.history.of("poll")[-5:]
    dropped = written[1]
    openstack_do(lab, "project", "delete", dropped)
    assert client.read_back(campaign.history) is None
    assert no_acknowledged_write_lost(campaign.history)[0].detail == \
        f"keystone-projects: 1 of {len(written)} acknowledged writes lost ({dropped})"
    print(f"\ndropped {dropped} of {len(written)}: reported")
