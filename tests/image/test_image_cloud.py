"""The cloud image on three QEMU VMs, each with a blank second disk (marker
`image_cloud`: too long for CI; `./run tests -m image_cloud`).

With no configuration, the agents form the cluster, the Monitor initialises
Ceph, and each node runs its Ceph daemons as Debian's packaged template units
(ceph-mon@nodeos, ceph-mgr@nodeos, ceph-osd@nodeos, through the image's
drop-ins): three mons, one mgr, one OSD per VM on its blank disk (never the
boot disk), the volumes pool at size 3, HEALTH_OK. The storage catalog's
ledger runs on an RBD volume mapped by the volume helper (kernel rbd) and
takes entries through its VIP. Then the VM holding the ledger is killed:
Ceph reports the loss, the ledger starts on another VM with every entry
acknowledged, and the mgr runs on a survivor (moved, if it was there too).

Figures (time to HEALTH_OK, to the mgr's move) are printed and written to
bench-results/image-cloud.json, never asserted.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from nodeos.bench.cluster import wait_for
from nodeos.image.qemu import make_blank_disk
from nodeos.storage.ops import POOL_VOLUMES

from .conftest import (REPO, BuiltImage, VM, dump_json, formed, http_get, http_post, mac_for, make_lan, make_overlay,
                       probe_accel, status)

pytestmark = [pytest.mark.image_cloud, pytest.mark.timeout(3600)]  # with the image build

VM_COUNT = 3
DATA_DISK = "10G"
TIMEOUT = 1800.0  # TCG on 2 cores: boot, formation, mon/mgr start and three bluestore mkfs


def _storage(st: dict[str, Any] | None) -> dict[str, Any]:
    return (st or {}).get("storage") or {}


def _service(st: dict[str, Any] | None, name: str) -> dict[str, Any]:
    return next((s for s in (st or {}).get("services", []) if s.get("name") == name), {})


def _settled(st: dict[str, Any] | None) -> bool:
    """The volumes pool made, HEALTH_OK with every OSD up and in, and every PG active+clean (storage/status.py's line).

    The mgr's own pool (device_health_metrics) has PGs before nodeos made its pool."""
    if POOL_VOLUMES not in (_storage(st).get("pools") or {}):
        return False
    health = _storage(st).get("health") or {}
    pgs = re.search(r"PGs (\d+)/(\d+) active\+clean", health.get("line", ""))
    return (health.get("status") == "HEALTH_OK" and f"OSDs {VM_COUNT} up, {VM_COUNT} in of {VM_COUNT}" in health["line"]
            and pgs is not None and pgs.group(1) == pgs.group(2) != "0")


class RootFs:
    """The image's root file system, read from its PXE squashfs (the same tree as the disk's)."""

    def __init__(self, squashfs: Path) -> None:
        self.squashfs = squashfs
        listing = subprocess.run(["unsquashfs", "-lls", "-d", "", str(squashfs)], capture_output=True, text=True,
                                 check=True).stdout
        self.entries: dict[str, tuple[str, str | None]] = {}  # path -> (mode string, symlink target)
        for line in listing.splitlines():
            fields = line.split(None, 5)
            if len(fields) < 6 or not fields[5].startswith("/"):
                continue
            name, _, target = fields[5].partition(" -> ")
            self.entries[name] = (fields[0], target or None)

    def read(self, path: str) -> str:
        return subprocess.run(["unsquashfs", "-cat", str(self.squashfs), path.lstrip("/")], capture_output=True,
                              text=True, check=True).stdout

    def link(self, path: str) -> str | None:
        return self.entries[path][1] if path in self.entries else None


def test_cloud_image_ships_the_cloud_catalog_and_its_units_as_the_agent_runs_them(cloud_image: BuiltImage) -> None:
    """/etc/nodeos/catalog.yaml is the cloud catalog; every unit it names has the image's drop-in
    (Restart=no, the lab's start), none starts at boot, epmd is masked, memcached never restarts itself."""
    import configparser

    from nodeos.services.catalog import load_catalog, packaged_catalog

    if shutil.which("unsquashfs") is None:
        pytest.skip("unsquashfs not installed (run scripts/setup.sh)")
    root = RootFs(cloud_image.pxe / "rootfs.squashfs")
    assert root.read("/etc/nodeos/catalog.yaml") == packaged_catalog("cloud").read_text()
    # This tier's own build runs the storage catalog (conftest's STORAGE_CONFIG): the node config says so.
    config = yaml.safe_load(root.read("/etc/nodeos/config.yaml"))
    assert config["catalog"] == "storage" and config["runtime"] == "systemd"
    catalog = load_catalog(packaged_catalog("cloud"))
    wants = [path for path in root.entries if "/etc/systemd/system/" in path and ".wants/" in path]
    for spec in catalog:
        assert spec.unit is not None
        unit = spec.unit.replace("@nodeos.service", "@.service")  # Ceph's template units (nodeos-ceph's drop-ins)
        dropin = f"/etc/systemd/system/{unit}.d/nodeos.conf"
        assert dropin in root.entries, f"{spec.name}: no drop-in {dropin}"
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.read_string(root.read(dropin))
        assert parser["Service"]["Restart"] == "no", f"{dropin}: the agent's Monitor restarts, not systemd"
        assert not [w for w in wants if w.endswith("/" + spec.unit)], f"{spec.unit} starts at boot"
        assert root.link(f"/etc/systemd/system/{spec.unit}") is None, f"{spec.unit} is masked"
    for unit in ("epmd.socket", "epmd.service"):
        assert root.link(f"/etc/systemd/system/{unit}") == "/dev/null", f"{unit} is not masked"
    for script in ("mariadb-prepare", "mariadb-start", "rabbitmq-prepare", "rabbitmq-start"):
        mode, _ = root.entries[f"/usr/local/lib/nodeos/{script}"]
        assert mode.startswith("-rwxr-xr-x"), f"{script}: {mode}"
    # The agent's sandbox is unchanged: config writes and job steps are transient units (nodeos/cloud/host.py).
    agent = root.read("/etc/systemd/system/nodeos-agent.service")
    assert "ProtectSystem=strict" in agent and "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW CAP_KILL CAP_SYS_NICE" in agent


def test_cloud_image_runs_ceph_on_three_vms(cloud_image: BuiltImage, artifacts_dir: Path, vms: list[VM],
                                            request: pytest.FixtureRequest) -> None:
    lan = make_lan(artifacts_dir, VM_COUNT)
    request.addfinalizer(lan.down)
    accel = probe_accel()
    start = time.monotonic()
    for i in range(VM_COUNT):
        overlay = make_overlay(cloud_image.qcow2, artifacts_dir / f"vm{i}.qcow2", "12G")
        data = make_blank_disk(artifacts_dir / f"vm{i}-data.qcow2", DATA_DISK)
        vm = VM(f"vm{i}", artifacts_dir, memory_mb=2048, cpus=1, disk=overlay, data_disks=[data], firmware="uefi",
                netdev=f"tap,id=n0,ifname={lan.tap(i)},script=no,downscript=no", mac=mac_for(i), accel=accel)
        vms.append(vm.start())
    ips = [lan.vm_ip(i) for i in range(VM_COUNT)]
    figures: dict[str, Any] = {"accel": accel, "vms": VM_COUNT, "memory_mb": 2048}

    def all_formed() -> list[dict[str, Any] | None] | None:
        sts = [status(ip) for ip in ips]
        return sts if formed(sts, VM_COUNT) else None

    statuses = wait_for(all_formed, TIMEOUT, 5.0)
    assert statuses, f"no formed cluster: {[status(ip) for ip in ips]}"
    node_ids = [s["node_id"] for s in statuses]  # in the order of `ips`
    figures["formed_s"] = round(time.monotonic() - start)

    def healthy() -> list[dict[str, Any]] | None:
        # HEALTH_OK alone is not enough: Ceph says so with mons only, before any OSD or pool exists.
        # The storage view is replicated state: a majority that answers is enough (a VM busy as the
        # mon leader under TCG can miss the 3 s status timeout, measured).
        sts = [s for s in (status(ip, timeout=10.0) for ip in ips) if s is not None]
        return sts if len(sts) > VM_COUNT // 2 and all(_settled(s) for s in sts) else None

    statuses = wait_for(healthy, TIMEOUT, 5.0)
    final = [status(ip) for ip in ips]
    dump_json(artifacts_dir / "status-ceph.json", final)
    assert statuses, f"Ceph never reported HEALTH_OK: {[_storage(s).get('health') for s in final]}"
    figures["health_ok_s"] = round(time.monotonic() - start)
    storage = _storage(statuses[0])
    print(f"\n{accel}: formed after {figures['formed_s']} s, HEALTH_OK after {figures['health_ok_s']} s")

    # Three mons, one OSD per VM on its blank disk, never the boot disk.
    assert len(storage["mons"]) == VM_COUNT, storage
    osds = storage["osds"]
    assert len(osds) == VM_COUNT, osds
    for node, report in osds.items():
        assert len(report["ids"]) == 1, (node, report)
        assert report["taken"] == ["/dev/vdb"], (node, report)
        assert "/dev/vda" in report["skipped"], (node, report)
    assert storage["pools"][POOL_VOLUMES]["size"] == VM_COUNT, storage["pools"]
    for name in ("ceph-mon", "ceph-osd"):
        assert _service(statuses[0], name).get("health") == f"healthy {VM_COUNT}/{VM_COUNT}", _service(statuses[0], name)
    mgr = _service(statuses[0], "ceph-mgr")
    assert mgr.get("health") == "healthy" and mgr.get("node"), mgr

    # The ledger, a singleton on an RBD volume the volume helper maps with the kernel
    # client (the agent's sandbox cannot): entries acknowledged through its VIP.
    def ledger_ready() -> dict[str, Any] | None:
        sts = [s for s in (status(ip, timeout=10.0) for ip in ips) if s is not None]
        ledger = _service(sts[0], "ledger") if sts else {}
        return ledger if ledger.get("health") == "healthy" and ledger.get("vip") else None

    ledger = wait_for(ledger_ready, 900, 5.0)
    assert ledger, f"ledger never healthy: {_service(status(ips[0], timeout=10.0), 'ledger')}"
    figures["ledger_healthy_s"] = round(time.monotonic() - start)
    url = f"http://{ledger['vip']}:8091/entries"
    written = [f"entry {i} before the crash" for i in range(5)]
    for entry in written:
        assert http_post(url, entry.encode()) == 201
    assert (http_get(url) or "").splitlines() == written

    # The VM holding the ledger dies: the others see it lost, the ledger starts on
    # another VM with every acknowledged entry (its old client fenced first), and
    # Ceph's health says so. If the mgr ran there too, it moves as well.
    victim = node_ids.index(ledger["node"])
    killed = time.monotonic()
    vms[victim].kill()
    survivors = [ip for i, ip in enumerate(ips) if i != victim]

    def ledger_moved() -> dict[str, Any] | None:
        sts = [s for s in (status(ip, timeout=10.0) for ip in survivors) if s is not None]
        moved = _service(sts[0], "ledger") if sts else {}
        return moved if moved.get("health") == "healthy" and moved.get("node") != ledger["node"] else None

    moved = wait_for(ledger_moved, 1200, 5.0)
    after = [status(ip) for ip in survivors]
    dump_json(artifacts_dir / "status-after-kill.json", after)
    assert moved, f"ledger not moved: {_service(after[0], 'ledger')}, health {_storage(after[0]).get('health')}"
    figures["ledger_moved_s"] = round(time.monotonic() - killed)
    assert (http_get(url, timeout=10.0) or "").splitlines() == written  # every acknowledged entry, at the same VIP
    assert http_post(url, b"entry after the move") == 201
    print(f"ledger moved {figures['ledger_moved_s']} s after its VM was killed, its entries intact")

    def mgr_placed() -> dict[str, Any] | None:
        sts = [s for s in (status(ip, timeout=10.0) for ip in survivors) if s is not None]
        if not sts:
            return None
        now_mgr = _service(sts[0], "ceph-mgr")
        warned = all(_storage(s).get("health", {}).get("status") in ("HEALTH_WARN", "HEALTH_ERR") for s in sts)
        return now_mgr if warned and now_mgr.get("health") == "healthy" and now_mgr.get("node") != ledger["node"] else None

    placed = wait_for(mgr_placed, 1200, 5.0)  # a new mgr loads its modules for minutes under TCG
    after = [status(ip) for ip in survivors]
    assert placed, f"mgr not healthy on a survivor: {_service(after[0], 'ceph-mgr')}, health {_storage(after[0]).get('health')}"
    if mgr["node"] == ledger["node"]:
        figures["mgr_moved_s"] = round(time.monotonic() - killed)
    figures["health_after_kill"] = _storage(after[0]).get("health", {}).get("line")
    print(f"mgr {'moved' if mgr['node'] == ledger['node'] else 'stayed'}; health: {figures['health_after_kill']}")
    out = REPO / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "image-cloud.json").write_text(json.dumps(figures, indent=2) + "\n")
