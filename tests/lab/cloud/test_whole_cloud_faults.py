"""Whole nodes faulted under the running cloud (issue 9), with data that must survive:
a project (MariaDB), an image (glance, Ceph) and a volume (cinder, Ceph) made first.

After each fault one clean pass of the real `openstack` CLI must succeed from the lab's
client namespace, through the VIPs, with nothing typed by an operator; once settled, every
record in nova's and cinder's service lists is `up`. Named test_whole_cloud_* so that it
runs after the package's other modules (conftest.py).
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import pytest

from nodeos.bench.cluster import wait_for
from nodeos.lab.lab import Lab

from ..cluster_helpers import lab_marks, wait_until
from .helpers import answers, holder, jobs_finished, monitor_node, openstack, restored, rows

pytestmark = lab_marks("keystone-manage", what="keystone")


@pytest.fixture(scope="module")
def data(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """What the faults below must not lose: a project (MariaDB), an image (glance, Ceph) and a volume (cinder, Ceph)."""
    jobs_finished(lab)  # the endpoints are in keystone's catalog
    restored(lab)  # and every service is healthy
    stamp = int(time.time())
    path = tmp_path_factory.mktemp("image") / "small.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    project = f"keep-{stamp}"
    openstack(lab, "project", "create", project)
    image = openstack(lab, "image", "create", "--file", str(path), "--disk-format", "qcow2", "--container-format",
                      "bare", f"keep-{stamp}", timeout=180.0)
    volume = openstack(lab, "volume", "create", "--size", "1", f"keep-{stamp}")
    wait_until(lambda: (answers(lab, "volume", "show", volume["id"]) or {}).get("status") == "available", 180,
               "the volume available", interval=1.0)
    return {"project": project, "image": image["id"], "volume": volume["id"]}


def answers_with_its_data(lab: Lab, data: dict[str, str]) -> None:
    """The checks the issue names after every fault: a token, and what was made before is all still there."""
    assert openstack(lab, "token", "issue")["id"]
    assert data["project"] in {p["Name"] for p in openstack(lab, "project", "list")}
    assert {i["ID"]: i["Status"] for i in openstack(lab, "image", "list")}.get(data["image"]) == "active"
    assert openstack(lab, "volume", "show", data["volume"])["status"] == "available"
    assert openstack(lab, "network", "list") is not None


def every_worker_up(lab: Lab) -> None:
    """nova's and cinder's own service lists: every record up, none left `down` by a worker that moved.

    Within a minute of nodeos calling every service healthy: a worker's record follows its reports
    (every 10 s), and nodeos's own check of that list runs every 5 s and fails after three misses."""
    for kind in ("compute", "volume"):
        last: list[Any] = []

        def all_up() -> bool:
            last[:] = answers(lab, kind, "service", "list") or []
            return bool(last) and all(s["State"] == "up" for s in last)

        if not wait_for(all_up, 60.0, 2.0):
            raise AssertionError(f"{kind} service list not all up a minute after the cloud was healthy: {last}")


def serves_its_data_again(lab: Lab, data: dict[str, str], what: str, started: float, timeout: float = 600.0) -> None:
    """Every CLI call of answers_with_its_data succeeds in one pass, within `timeout` of the fault.

    Recovery, not its speed, is asserted (bench cloud measures it). On 2 cores a node's worth of
    services starting at once makes the APIs slow, and a slow one may be restarted, for a while
    after the first token: one pass with no failure is the test."""
    last = ["nothing tried"]

    def one_pass() -> bool:
        try:
            answers_with_its_data(lab, data)
            return True
        except (AssertionError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
            last[0] = str(exc).splitlines()[0][:300]
            return False

    try:
        wait_until(one_pass, timeout, f"every CLI call answered with the data after {what}", interval=2.0)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last failure: {last[0]}") from None
    print(f"\n{what}: every CLI call answered with the data {time.monotonic() - started:.1f}s after the fault")


@pytest.mark.parametrize("victim", ["mariadb", "monitor"])
def test_a_crashed_node_and_the_cloud_answers_again_with_its_data(lab: Lab, data: dict[str, str], victim: str) -> None:
    """The node holding MariaDB, or the Monitor's node, crashes: tokens again, nothing lost, nothing typed."""
    node = holder(lab, "mariadb") if victim == "mariadb" else monitor_node(lab)
    lab.crash(node)
    crashed = time.monotonic()
    try:
        serves_its_data_again(lab, data, f"{node} ({victim}) crashed", crashed)
        after = rows(lab)
        for service in ("mariadb", "keystone"):
            assert lab.node_name_of(after[service]["node"]) != node, after[service]  # moved off the dead node
    finally:
        restored(lab)
    every_worker_up(lab)


def test_the_node_holding_mariadb_partitioned_off_and_the_majority_serves_with_its_data(
        lab: Lab, data: dict[str, str]) -> None:
    """Cut off, the node fences itself; the majority (and the client) takes MariaDB over; healed, it rejoins."""
    node = holder(lab, "mariadb")
    majority = next(name for name in sorted(lab.spec.nodes) if name != node)
    lab.partition([node])
    cut = time.monotonic()
    try:
        serves_its_data_again(lab, data, f"{node} (MariaDB) partitioned off", cut)
        assert holder(lab, "mariadb", seen_from=majority) != node
    finally:
        lab.heal()
        restored(lab)
    answers_with_its_data(lab, data)
    every_worker_up(lab)


def test_a_rebooted_node_comes_back_into_the_running_cloud(lab: Lab, data: dict[str, str]) -> None:
    """A reboot of the node holding MariaDB: down, then booted from its disk state at once."""
    node = holder(lab, "mariadb")
    lab.reboot(node)
    rebooted = time.monotonic()
    try:
        serves_its_data_again(lab, data, f"{node} (MariaDB) rebooted", rebooted)
    finally:
        restored(lab)
    assert lab.node_status(node) is not None  # a member again, answering
    every_worker_up(lab)


def test_a_power_cycle_of_every_node_brings_the_cloud_back_with_its_data(lab: Lab, data: dict[str, str]) -> None:
    """Every node loses power, then all boot: no operator step (a Galera cluster would need a bootstrap by hand)."""
    for name in sorted(lab.spec.nodes):
        lab.crash(name)
    lab.start_all()
    powered = time.monotonic()
    try:
        serves_its_data_again(lab, data, "power cycle of every node", powered, timeout=900.0)
    finally:
        restored(lab)
    every_worker_up(lab)
