"""cinder in the lab-cloud catalog: cinder-api, cinder-scheduler and cinder-volume (RBD), kept healthy.

On the package's cloud (conftest.py): the Monitor makes the Ceph pool `cinder`
and the cephx user client.cinder, the jobs make cinder's database and schema
and register the `volumev3` service in keystone, and Debian's cinder-api
answers under uWSGI at its VIP. The real `openstack` client lists cinder's
services (both `up`) and creates a volume from the lab's client namespace;
Ceph is asked directly that the volume is an RBD image in the pool. Then
cinder-volume is killed: it is restarted, reported `up` again by cinder
itself, still manages the volume made before, and makes a second one.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from typing import Any

import pytest

from nodeos.cloud.registry import CINDER_VOLUME_HOST, CONTROL_HOST
from nodeos.lab.lab import Lab

from ..cluster_helpers import lab_marks, status_json, wait_until
from ..test_storage_agent import ceph_dir
from .helpers import answers, killed_and_restarted, live_node, openstack, openstack_do, rows, up_in

pytestmark = lab_marks("cinder-volume", what="cinder")

DAEMONS = ("cinder-scheduler", "cinder-volume")
POOL = "cinder"


@pytest.fixture(scope="module")
def volume(lab: Lab) -> dict[str, Any]:
    """A 1 GiB volume made with the real client, `available` (cinder-volume made its RBD image)."""
    started = time.monotonic()
    made = create_volume(lab, f"vol-{int(time.time())}")
    print(f"\nvolume of 1 GiB available {time.monotonic() - started:.1f}s after `volume create`")
    return made


def create_volume(lab: Lab, name: str) -> dict[str, Any]:
    created = openstack(lab, "volume", "create", "--size", "1", name)
    wait_until(lambda: status_of(lab, created["id"]) == "available", 120, f"volume {name} available", interval=1.0)
    return created


def status_of(lab: Lab, volume_id: str) -> str | None:
    shown = answers(lab, "volume", "show", volume_id)
    if shown and shown["status"] == "error":
        raise AssertionError(f"volume {volume_id} failed: {shown}")
    return shown["status"] if shown else None


def rbd_images(lab: Lab, node: str) -> list[str]:
    conf = ceph_dir(lab, node) / "ceph.conf"
    argv = ["ip", "netns", "exec", lab.node(node).ns, "rbd", "--conf", str(conf), "--name", "client.admin",
            "-p", POOL, "ls", "--format", "json"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"rbd ls: {result.stderr[-500:]}"
    return json.loads(result.stdout)


def test_scheduler_and_volume_are_up_in_cinder(lab: Lab) -> None:
    placed = rows(lab)
    assert up_in(lab, "volume", "cinder-scheduler", CONTROL_HOST), \
        openstack(lab, "volume", "service", "list")
    # cinder-volume reports under its fixed backend host, whatever node runs it.
    assert up_in(lab, "volume", "cinder-volume", CINDER_VOLUME_HOST), openstack(lab, "volume", "service", "list")
    entry = next(e for e in openstack(lab, "catalog", "list") if e["Type"] == "volumev3")
    assert f"http://{placed['cinder-api']['vip']}:8776/v3/" in json.dumps(entry["Endpoints"])
    view = status_json(lab, live_node(lab))
    jobs = {name: (job["state"], job["attempt"]) for name, job in view["cloud"]["jobs"].items()}
    for job in ("cinder-db", "cinder-db-sync", "keystone-register-cinder"):
        assert jobs[job] == ("done", 1), jobs
    client = view["storage"]["service_clients"]["cinder"]
    assert client["registered"] and POOL in view["storage"]["pools"]
    assert not re.search(r"AQ[A-Za-z0-9+/]{38}==", json.dumps(view))  # no cephx key


def test_a_volume_is_available_and_an_rbd_image_in_the_cinder_pool(lab: Lab, volume: dict[str, Any]) -> None:
    shown = openstack(lab, "volume", "show", volume["id"])
    assert shown["size"] == 1 and shown["os-vol-host-attr:host"].startswith(f"{CINDER_VOLUME_HOST}#"), shown
    assert f"volume-{volume['id']}" in rbd_images(lab, live_node(lab))


def test_volume_killed_is_restarted_and_keeps_managing_its_volumes(lab: Lab, volume: dict[str, Any]) -> None:
    before, after, _ = killed_and_restarted(lab, "cinder-volume")
    healthy_again = time.monotonic()
    assert after["node"] == before["node"]
    assert up_in(lab, "volume", "cinder-volume", CINDER_VOLUME_HOST)
    assert volume["id"] in {v["ID"] for v in openstack(lab, "volume", "list")}
    second = create_volume(lab, f"vol2-{int(time.time())}")
    print(f"a second volume available {time.monotonic() - healthy_again:.1f}s after cinder-volume was healthy again")
    assert {f"volume-{volume['id']}", f"volume-{second['id']}"} <= set(rbd_images(lab, live_node(lab)))
    # The restarted cinder-volume manages the volume made before it: it deletes its RBD image.
    openstack_do(lab, "volume", "delete", volume["id"])
    wait_until(lambda: f"volume-{volume['id']}" not in rbd_images(lab, live_node(lab)), 60,
               "the first volume's RBD image deleted", interval=1.0)
