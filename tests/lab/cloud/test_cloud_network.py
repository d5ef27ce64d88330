"""neutron-server (the networking API) in the lab-cloud catalog, kept healthy.

On the package's cloud (conftest.py): the jobs make neutron's database
and schema and register the `network` service in keystone; Debian's neutron-api answers
under uWSGI at its VIP. The real `openstack` client creates a VXLAN network and a subnet
with no agent anywhere (ML2's linuxbridge driver needs one only to bind ports). Then
neutron-server is killed: it is restarted, and the network is still listed.
"""

from __future__ import annotations

import json
import time

from nodeos.lab.lab import Lab

from ..cluster_helpers import lab_marks, status_json
from .helpers import answers, killed_and_restarted, live_node, openstack, rows

pytestmark = lab_marks("neutron-db-manage", what="neutron")

NETWORK, SUBNET = "lab-net", "lab-subnet"


def names(lab: Lab, *args: str) -> set[str]:
    return {row["Name"] for row in openstack(lab, *args)}


def test_the_network_service_is_in_keystones_catalog_at_neutrons_vip(lab: Lab) -> None:
    vip = rows(lab)["neutron-server"]["vip"]
    entry = next(e for e in openstack(lab, "catalog", "list") if e["Type"] == "network")
    assert entry["Name"] == "neutron" and f"http://{vip}:9696" in json.dumps(entry["Endpoints"]), entry
    jobs = {name: (job["state"], job["attempt"]) for name, job in status_json(lab, live_node(lab))["cloud"]["jobs"].items()}
    for job in ("neutron-db", "neutron-db-sync", "keystone-register-neutron"):
        assert jobs[job] == ("done", 1), jobs


def test_network_and_subnet_are_created_without_agents(lab: Lab) -> None:
    started = time.monotonic()
    network = openstack(lab, "network", "create", NETWORK)
    subnet = openstack(lab, "subnet", "create", SUBNET, "--network", NETWORK, "--subnet-range", "192.168.77.0/24")
    print(f"\nnetwork and subnet created in {time.monotonic() - started:.1f}s")
    assert network["provider:network_type"] == "vxlan" and network["status"] == "ACTIVE", network
    assert subnet["cidr"] == "192.168.77.0/24" and subnet["network_id"] == network["id"]
    assert NETWORK in names(lab, "network", "list") and SUBNET in names(lab, "subnet", "list")


def test_neutron_server_killed_is_restarted_and_the_network_stays(lab: Lab) -> None:
    if NETWORK not in names(lab, "network", "list"):  # this test alone
        openstack(lab, "network", "create", NETWORK)
    before, after, listed = killed_and_restarted(lab, "neutron-server", lambda: answers(lab, "network", "list"),
                                                 "a network list")
    assert NETWORK in {row["Name"] for row in listed}
    assert (after["node"], after["vip"]) == (before["node"], before["vip"])
