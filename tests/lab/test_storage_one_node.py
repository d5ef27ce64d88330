"""A one-node cloud runs Ceph and a volume through its agent (issue 8, part 4:
"1-node lab works (size 1)").

One node, the `lab-storage` catalog, no configuration: the agent forms a
cluster of one, the Monitor initialises Ceph with one mon and one OSD, makes
the volumes pool at size 1 / min_size 1 (size 3 would never be clean on one
host), and MariaDB runs on its volume. A killed MariaDB is restarted in place
on the same volume with every acknowledged row.
"""

from __future__ import annotations

import subprocess
import time
from typing import Iterator

import pytest

from nodeos.bench.stateful import Writer, healthy_on, service_row, stored_ids
from nodeos.lab.lab import Lab
from nodeos.lab.services import kill_service
from nodeos.storage.ops import POOL_VOLUMES

from .cluster_helpers import is_root, status_json, wait_until
from .test_storage_agent import ceph_json, settled_storage_lab

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(not is_root(), reason="needs root for namespaces"),
    pytest.mark.skipif(subprocess.run(["which", "ceph-mon"], capture_output=True).returncode != 0,
                       reason="Ceph is not installed (scripts/apt-packages.txt)"),
]

SETTLE = 150.0  # MariaDB's first start on its new volume


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from settled_storage_lab(1, expect=1)


def test_one_node_runs_ceph_with_a_size_one_pool(lab: Lab) -> None:
    status = ceph_json(lab, "n1", "status")
    assert len(status["quorum_names"]) == 1
    pool = ceph_json(lab, "n1", "osd", "pool", "get", POOL_VOLUMES, "all")
    assert (pool["size"], pool["min_size"]) == (1, 1)
    view = wait_until(lambda: (lambda v: v if v["storage"]["health"].get("status") == "HEALTH_OK" else None)(
        status_json(lab, "n1")), 60, "nodeos status: HEALTH_OK", interval=1.0)
    assert view["storage"]["pools"][POOL_VOLUMES] == {"size": 1, "min_size": 1}
    rows = {r["name"]: r for r in view["services"]}
    assert rows["ceph-mon"]["health"] == "healthy 1/1" and rows["ceph-osd"]["health"] == "healthy 1/1"


def test_mariadb_on_its_volume_restarts_in_place_with_every_row(lab: Lab) -> None:
    wait_until(lambda: healthy_on(lab), SETTLE, "MariaDB healthy on its volume")
    vip = service_row(lab)["vip"]
    writer = Writer(lab, vip)
    try:
        wait_until(lambda: len(writer.acks()) >= 20, 60, "20 acknowledged inserts")
        killed = time.monotonic()
        kill_service(lab, "mariadb")
        wait_until(lambda: writer.acked_after(killed) >= 10, 120, "inserts acknowledged again after the kill",
                   interval=0.2)
    finally:
        acked = writer.stop()
    missing = sorted(set(acked) - stored_ids(lab, vip))
    assert not missing, f"{len(missing)} acknowledged rows lost, first {missing[:10]}"
    wait_until(lambda: healthy_on(lab) == "n1", 60, "MariaDB healthy again on n1")
    assert service_row(lab)["restarts"] >= 1
