"""The cloud image booting into the OpenStack control plane on three QEMU VMs (issue 9, item 7;
marker `image_cloud`, too long for CI: `./run tests -m image_cloud -k openstack`).

The image is built as shipped (`images/cloud.yaml`, its own `cloud` catalog: Debian's units
started by the agent through the image's drop-ins), with Ceph's small-node settings and, under
TCG, the slow-machine timings. Three VMs, each with a blank second disk, power on with no
configuration: they form the cluster, Ceph settles on the blank disks, MariaDB and RabbitMQ
start on their RBD volumes (kernel rbd), the Monitor hands out the one-time jobs, and every API
answers at its VIP. Then the checks the lab's cloud package runs pass from the host, through
the VIPs, with the real `openstack` client: token issue, the catalog, a project, an image
uploaded (glance, in Ceph), a 1 GiB volume `available` (cinder, in Ceph), the network list.

Figures (build time, image size, power-on to formed, HEALTH_OK, keystone healthy, the first
token, every service healthy) are printed and written to bench-results/image-openstack.json,
never asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from nodeos.bench.cluster import wait_for
from nodeos.cloud.credentials import admin_environment, keystone_auth_url
from nodeos.cloud.secrets import admin_password
from nodeos.cluster.identity import load_identity
from nodeos.image.build import DEFAULT_IDENTITY
from nodeos.image.qemu import make_blank_disk

from .conftest import REPO, VM, BuiltImage, dump_json, formed, mac_for, make_lan, make_overlay, probe_accel, status
from .test_image_cloud import _settled

pytestmark = [pytest.mark.image_cloud, pytest.mark.timeout(4 * 3600)]  # with the image build

VM_COUNT = 3
MEMORY_MB = 5120  # Ceph (mon, mgr, OSD) plus a third of the control plane: 1.5-2.5 GiB per node in the lab
DATA_DISK = "10G"
SETTLE = 3600.0  # each stage under TCG on 2 cores: formation, Ceph, the jobs, every service
CLIENT_TIMEOUT = 600.0  # one `openstack` call against emulated CPUs


def _majority(ips: list[str]) -> list[dict[str, Any]]:
    """The statuses of the VMs that answer (a busy VM under TCG can miss a status timeout)."""
    return [s for s in (status(ip, timeout=15.0) for ip in ips) if s is not None]


def _services(st: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in st.get("services", [])}


def _all_healthy(st: dict[str, Any]) -> bool:
    return bool(st.get("services")) and all(str(s.get("health", "")).startswith("healthy") for s in st["services"])


def _client_env(auth_url: str) -> dict[str, str]:
    """The admin's OS_* variables, and no proxy: the VIPs are on the test LAN."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_") and "proxy" not in k.lower()}
    env.update(admin_environment(auth_url, admin_password(load_identity(DEFAULT_IDENTITY))))
    return env


def openstack(env: dict[str, str], *args: str) -> Any:
    result = subprocess.run(["openstack", *args, "-f", "json"], capture_output=True, text=True,
                            timeout=CLIENT_TIMEOUT, env=env)
    assert result.returncode == 0, f"openstack {' '.join(args)}: {result.stderr[-800:]}"
    return json.loads(result.stdout)


def answers(env: dict[str, str], *args: str) -> Any:
    try:
        return openstack(env, *args)
    except (AssertionError, subprocess.TimeoutExpired, json.JSONDecodeError):
        return None


def test_the_cloud_image_boots_into_the_openstack_control_plane(openstack_image: BuiltImage, artifacts_dir: Path,
                                                                 vms: list[VM], request: pytest.FixtureRequest) -> None:
    lan = make_lan(artifacts_dir, VM_COUNT)
    request.addfinalizer(lan.down)
    accel = probe_accel()
    figures: dict[str, Any] = {"accel": accel, "vms": VM_COUNT, "memory_mb": MEMORY_MB,
                               "build_s": round(openstack_image.seconds),
                               "qcow2_mib": round(openstack_image.qcow2.stat().st_size / 2**20)}
    start = time.monotonic()
    for i in range(VM_COUNT):
        overlay = make_overlay(openstack_image.qcow2, artifacts_dir / f"vm{i}.qcow2", "16G")
        data = make_blank_disk(artifacts_dir / f"vm{i}-data.qcow2", DATA_DISK)
        vm = VM(f"vm{i}", artifacts_dir, memory_mb=MEMORY_MB, cpus=1, disk=overlay, data_disks=[data],
                firmware="uefi", netdev=f"tap,id=n0,ifname={lan.tap(i)},script=no,downscript=no", mac=mac_for(i),
                accel=accel)
        vms.append(vm.start())
    ips = [lan.vm_ip(i) for i in range(VM_COUNT)]

    def stage(name: str, done: Any, timeout: float = SETTLE) -> Any:
        found = wait_for(done, timeout, 10.0)
        dump_json(artifacts_dir / f"status-{name}.json", [status(ip, timeout=15.0) for ip in ips])
        assert found, f"{name}: not reached in {timeout:.0f} s (statuses in status-{name}.json)"
        figures[f"{name}_s"] = round(time.monotonic() - start)
        print(f"\n{accel}: {name} {figures[f'{name}_s']} s after power-on", flush=True)
        return found

    stage("formed", lambda: (sts := [status(ip) for ip in ips]) and formed(sts, VM_COUNT) and sts)
    stage("health_ok", lambda: (sts := _majority(ips)) and len(sts) > VM_COUNT // 2 and all(_settled(s) for s in sts)
          and sts)
    keystone = stage("keystone_healthy", lambda: next(
        (s for s in _majority(ips) if (row := _services(s).get("keystone")) and row.get("health") == "healthy"
         and row.get("vip")), None))
    auth_url = keystone_auth_url(keystone)
    assert auth_url, _services(keystone).get("keystone")
    env = _client_env(auth_url)
    stage("token", lambda: (answers(env, "token", "issue") or {}).get("id"))
    settled = stage("every_service_healthy", lambda: next((s for s in _majority(ips) if _all_healthy(s)), None))
    figures["services"] = {name: row.get("node") for name, row in _services(settled).items()}

    # The lab's checks, from the host through the VIPs.
    catalog = {entry["Type"] for entry in openstack(env, "catalog", "list")}
    assert {"identity", "image", "placement", "compute", "volumev3", "network"} <= catalog, catalog
    project = f"img-{int(time.time())}"
    openstack(env, "project", "create", project)
    assert project in {p["Name"] for p in openstack(env, "project", "list")}
    small = artifacts_dir / "small.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(small), "64M"], check=True)
    image = openstack(env, "image", "create", "--file", str(small), "--disk-format", "qcow2",
                      "--container-format", "bare", project)
    assert {i["ID"]: i["Status"] for i in openstack(env, "image", "list")}.get(image["id"]) == "active"
    volume = openstack(env, "volume", "create", "--size", "1", project)
    assert wait_for(lambda: (answers(env, "volume", "show", volume["id"]) or {}).get("status") == "available",
                    1800, 10.0), openstack(env, "volume", "show", volume["id"])
    assert openstack(env, "network", "list") is not None
    for kind in ("compute", "volume"):
        listed = openstack(env, kind, "service", "list")
        assert listed and all(s["State"] == "up" for s in listed), listed
    figures["checks_passed_s"] = round(time.monotonic() - start)
    print(f"every CLI check passed {figures['checks_passed_s']} s after power-on")
    out = REPO / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "image-openstack.json").write_text(json.dumps(figures, indent=2) + "\n")
