"""`nodeos chaos` on the running cloud (issue 10): a seeded campaign with every fault kind on the
package's lab-cloud, checked the whole time by the neutral observers (one lease holder, one MAC
per VIP, one writer per volume, every acknowledged keystone write read back, every fault
recovered within its bound). A violation fails the test. Then a VIP planted on a second host,
which the ARP observer must report (the checker is honest).

Seed 196 draws every fault kind in 9 rounds on the lab-cloud catalog's services
(test_the_schedule_covers_every_fault); one round costs 0.5-2 minutes on 2 cores. A long
campaign is `nodeos chaos run --rounds 1000` (README, Chaos).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from nodeos.chaos.history import History
from nodeos.chaos.invariants import check, one_mac_per_vip
from nodeos.chaos.runner import Campaign, Options, write_outputs
from nodeos.chaos.schedule import FAULTS, plan
from nodeos.lab import netns
from nodeos.lab.lab import PREFIXLEN, SUBNET_PREFIX, Lab

from ..cluster_helpers import lab_marks
from .helpers import rows

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
    campaign = Campaign(lab, Options(seed=0, rounds=1, faults=["load"]))
    rogue, veth = f"nodeos-{lab.spec.name}-rogue", f"nlv-{lab.spec.name}-r"
    samplers, client = campaign.observers("planted-")
    try:
        netns.create_namespace(rogue, lab.spec.bridge, veth, f"{SUBNET_PREFIX}.6/{PREFIXLEN}")
        time.sleep(1.5)
        subprocess.run(["ip", "-n", rogue, "addr", "add", f"{vip}/32", "dev", "eth0"], check=True)
        time.sleep(2.0)
    finally:
        netns.delete_namespace(rogue)
        for sampler in samplers:
            sampler.stop()
        client.stop(campaign.history)
        client.close()
    found = one_mac_per_vip(campaign.history)
    assert found and vip in found[0].detail, [r for r in campaign.history.of("arp") if r["vip"] == vip][-5:]
    assert any(v.invariant == "one-mac-per-vip" for v in check(campaign.history))
    # Before the plant, the VIP had one MAC: the checker found an episode, not a standing condition.
    assert found[0].at > campaign.history.of("arp")[0]["t"]
