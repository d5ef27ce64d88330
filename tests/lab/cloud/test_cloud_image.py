"""glance-api in the lab-cloud catalog (issue 9): images in a Ceph pool, so they survive glance moving.

On the package's cloud (conftest.py): the Monitor makes the Ceph pool `images` and the cephx user client.glance,
the jobs make glance's database and schema and register it in keystone, and
glance-api answers at its VIP. The real `openstack` client uploads an image
from the lab's client namespace; Ceph is asked directly (the admin keyring
the agents wrote) that its data is in the pool; then glance is killed, and
the node holding it is crashed, and the image downloads byte for byte again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from nodeos.lab.lab import Lab
from nodeos.lab.services import kill_service

from ..cluster_helpers import cli, lab_marks, status_json, wait_until
from ..test_storage_agent import ceph_dir
from .helpers import (answers, healthy_at_vip, live_node, monitor_node, openrc_env, openstack, restored,
                      rows)

pytestmark = lab_marks("glance-wsgi-api", what="glance-api")

IMAGE_BYTES = 4 << 20  # random, so a wrong block anywhere changes the digest


def glance_healthy(lab: Lab) -> dict[str, Any] | None:
    return healthy_at_vip(lab, "glance-api")


@pytest.fixture(scope="module")
def image(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A few MiB of random bytes, uploaded as a raw image with the real client."""
    path = tmp_path_factory.mktemp("image") / "random.raw"
    path.write_bytes(os.urandom(IMAGE_BYTES))
    name = f"gl-{int(time.time())}"
    started = time.monotonic()
    created = openstack(lab, "image", "create", "--file", str(path), "--disk-format", "raw", "--container-format",
                        "bare", name, timeout=180.0)
    print(f"\nimage of {IMAGE_BYTES >> 20} MiB uploaded in {time.monotonic() - started:.1f}s")
    return {"name": name, "id": created["id"], "path": path, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def saved_digest(lab: Lab, image: dict[str, Any], timeout: float = 120.0) -> str:
    """`openstack image save` to a file; the SHA-256 of what came back."""
    out = image["path"].with_name(f"saved-{time.monotonic_ns()}.raw")
    argv = ["ip", "netns", "exec", lab.add_client(), "openstack", "image", "save", "--file", str(out), image["id"]]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=openrc_env(lab))
    assert result.returncode == 0, f"image save: {result.stderr[-800:]}"
    try:
        return hashlib.sha256(out.read_bytes()).hexdigest()
    finally:
        out.unlink()


def listed_active(lab: Lab, image: dict[str, Any]) -> bool:
    images = answers(lab, "image", "list")
    return bool(images) and any(i["ID"] == image["id"] and i["Status"] == "active" for i in images)


def rbd_images(lab: Lab, node: str) -> list[str]:
    conf = ceph_dir(lab, node) / "ceph.conf"
    argv = ["ip", "netns", "exec", lab.node(node).ns, "rbd", "--conf", str(conf), "--name", "client.admin",
            "-p", "images", "ls", "--format", "json"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"rbd ls: {result.stderr[-500:]}"
    return json.loads(result.stdout)


def test_an_uploaded_image_is_active_stored_in_ceph_and_downloads_identically(lab: Lab, image: dict[str, Any]) -> None:
    assert listed_active(lab, image)
    assert image["id"] in rbd_images(lab, live_node(lab))  # glance_store's rbd driver: one RBD image per image
    assert saved_digest(lab, image) == image["sha256"]
    catalog = openstack(lab, "catalog", "list")
    entry = next(e for e in catalog if e["Type"] == "image")
    vip = rows(lab)["glance-api"]["vip"]
    assert f"http://{vip}:9292" in json.dumps(entry["Endpoints"])


def test_jobs_ran_once_and_no_key_is_shown(lab: Lab) -> None:
    view = status_json(lab, live_node(lab))
    jobs = {name: (job["state"], job["attempt"]) for name, job in view["cloud"]["jobs"].items()}
    for job in ("glance-db", "glance-db-sync", "keystone-register-glance"):
        assert jobs[job] == ("done", 1), jobs
    client = view["storage"]["service_clients"]["glance"]
    assert client["registered"] and client["caps"] == {"mon": "profile rbd", "osd": "profile rbd pool=images"}
    assert "images" in view["storage"]["pools"]
    assert not re.search(r"AQ[A-Za-z0-9+/]{38}==", json.dumps(view))  # no cephx key
    keyring = Path(lab.node(lab.node_name_of(rows(lab)["glance-api"]["node"]) or "n1").state_dir) / \
        "root/etc/ceph/ceph.client.glance.keyring"
    assert oct(keyring.stat().st_mode & 0o777) == "0o640" and keyring.stat().st_gid != 0


def test_glance_killed_is_restarted_and_serves_the_image_again(lab: Lab, image: dict[str, Any]) -> None:
    before = rows(lab)["glance-api"]
    print(kill_service(lab, "glance-api"))
    killed = time.monotonic()
    wait_until(lambda: listed_active(lab, image), 120, "the image listed again after glance-api was killed",
               interval=0.5)
    print(f"image list answered {time.monotonic() - killed:.1f}s after the kill")
    after = wait_until(lambda: glance_healthy(lab), 60, "glance-api healthy again")
    print(f"glance-api healthy {time.monotonic() - killed:.1f}s after the kill")
    assert after["node"] == before["node"]
    assert saved_digest(lab, image) == image["sha256"]


def test_the_node_holding_glance_crashes_and_the_image_is_still_there(lab: Lab, image: dict[str, Any]) -> None:
    """glance on a node holding neither MariaDB nor the Monitor (moved there first), crashed."""
    view = rows(lab)
    spared = {lab.node_name_of(view["mariadb"]["node"]), monitor_node(lab)}
    target = next((n for n in sorted(lab.spec.nodes) if n not in spared), None) or \
        lab.node_name_of(view["glance-api"]["node"])
    assert target
    target_id = next(i for i, n in lab.names_by_id().items() if n == target)
    if view["glance-api"]["node"] != target_id:
        moved = cli("service", "move", "glance-api", "--to", target_id, "--lab", lab.spec.name,
                    "--lab-node", live_node(lab))
        assert moved.returncode == 0, moved.stderr
        wait_until(lambda: (row := glance_healthy(lab)) and row["node"] == target_id, 120,
                   f"glance-api healthy on {target}")
    lab.crash(target)
    crashed = time.monotonic()
    try:
        wait_until(lambda: listed_active(lab, image), 600, f"the image listed again after {target} crashed",
                   interval=1.0)
        print(f"\n{target} (glance-api) crashed: image listed again after {time.monotonic() - crashed:.1f}s")
        after = wait_until(lambda: glance_healthy(lab), 120, "glance-api healthy on another node")
        print(f"glance-api healthy elsewhere {time.monotonic() - crashed:.1f}s after the crash")
        assert lab.node_name_of(after["node"]) != target
        assert saved_digest(lab, image) == image["sha256"]
    finally:
        restored(lab)
