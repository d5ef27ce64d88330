"""A lab node's mount namespace (nodeos/lab/mountns.py): its services see the
node's own /etc/keystone, /var/lib/mysql, ...; the agent's mounts on the host
reach them, nothing mounted inside reaches the host.

Each test gets a node root under a shared directory (as the lab dir is) and
a namespace file in a directory of its own; finalizers remove both, also
when a test fails half-way.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import psutil
import pytest

from nodeos.lab import mountns
from nodeos.services.catalog import Catalog
from nodeos.services.runtime import ProcessRuntime, ServiceContext
from nodeos.storage import volumes

pytestmark = pytest.mark.lab
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root (mount namespaces)")


@dataclass(frozen=True)
class Node:
    ns_file: Path
    root: Path


def inside(node: Node, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*mountns.enter_argv(node.ns_file), *argv], capture_output=True, text=True, timeout=30)


def mount_points(text: str) -> list[str]:
    return [line.split()[4] for line in text.splitlines()]


def host_mounts() -> str:
    return Path("/proc/self/mountinfo").read_text()


def attempt_all(*steps: Callable[[], object]) -> None:
    """Run every cleanup step, then raise the first failure."""
    errors = []
    for step in steps:
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def node(tmp_path: Path, request: pytest.FixtureRequest) -> Node:
    if os.geteuid() != 0:
        pytest.skip("lab tests need root (mount namespaces)")
    if not Path("/etc/keystone").is_dir() or not Path("/var/lib/mysql").is_dir():
        pytest.skip("needs keystone and mariadb-server installed on the host (the lab's node image)")
    lab_dir, ns_dir = tmp_path / "lab", tmp_path / "mntns"
    lab_dir.mkdir()
    request.addfinalizer(lambda: attempt_all(lambda: mountns.destroy_dir(ns_dir),
                                             lambda: volumes.drop_mounts_under(str(lab_dir)),
                                             lambda: volumes.unshare_mounts(str(lab_dir))))
    volumes.share_mounts(str(lab_dir))  # as Lab.create does with the lab dir
    made = Node(ns_dir / "n1", mountns.node_root(lab_dir / "nodes" / "n1"))
    mountns.create(made.ns_file, made.root)
    return made


@needs_root
def test_the_node_reads_its_own_etc_and_the_hosts_stays_untouched(node: Node) -> None:
    word = secrets.token_hex(4)
    (node.root / "etc/keystone/x").write_text(word)
    assert inside(node, "cat", "/etc/keystone/x").stdout == word
    assert not Path("/etc/keystone/x").exists()
    # Seeded from the host's: package defaults, owners and modes kept.
    for name in ("keystone-uwsgi.ini", "logging.conf", "policy.d"):
        assert inside(node, "test", "-e", f"/etc/keystone/{name}").returncode == 0, name
    for path in ("/etc/keystone", "/var/lib/keystone", "/var/log/keystone", "/var/lib/mysql"):
        mine, host = (node.root / path.lstrip("/")).stat(), Path(path).stat()
        assert (mine.st_uid, mine.st_gid, mine.st_mode) == (host.st_uid, host.st_gid, host.st_mode), path
    assert inside(node, "ls", "-A", "/var/lib/mysql").stdout == ""  # not the host's databases


@needs_root
def test_a_mount_the_agent_makes_on_the_host_reaches_the_node_and_so_does_its_unmount(node: Node) -> None:
    source = f"nodeos-test-{secrets.token_hex(3)}"
    target = node.root / "var/lib/mysql"
    subprocess.run(["mount", "-t", "tmpfs", source, str(target)], check=True)
    try:
        (target / "ibdata1").write_text("volume")
        assert inside(node, "cat", "/var/lib/mysql/ibdata1").stdout == "volume"
    finally:
        subprocess.run(["umount", str(target)], check=True)
    seen = inside(node, "cat", "/proc/self/mountinfo").stdout
    assert source not in seen
    assert inside(node, "ls", "-A", "/var/lib/mysql").stdout == ""


@needs_root
def test_a_mount_made_inside_stays_inside(node: Node) -> None:
    source = f"nodeos-test-{secrets.token_hex(3)}"
    for point in ("/var/lib/mysql", str(node.root / "var/lib/keystone")):
        result = inside(node, "mount", "-t", "tmpfs", source, point)
        assert result.returncode == 0, result.stderr
    assert source in inside(node, "cat", "/proc/self/mountinfo").stdout
    assert source not in host_mounts()


@needs_root
def test_create_again_binds_nothing_twice(node: Node) -> None:
    mountns.create(node.ns_file, node.root)
    points = mount_points(inside(node, "cat", "/proc/self/mountinfo").stdout)
    assert points.count("/etc/keystone") == 1 and points.count("/var/lib/mysql") == 1


@needs_root
def test_clear_run_empties_the_nodes_run_and_keeps_its_directories(node: Node) -> None:
    (node.root / "run/mysqld/mysqld.pid").write_text("1234")
    (node.root / "run/keystone/sub").mkdir()
    mountns.clear_run(node.root)
    assert list((node.root / "run/mysqld").iterdir()) == [] and list((node.root / "run/keystone").iterdir()) == []
    (node.root / "run/mysqld/new").write_text("still bound")
    assert inside(node, "cat", "/run/mysqld/new").stdout == "still bound"


@needs_root
def test_a_service_runs_in_the_node_with_its_own_pid_recorded(node: Node, request: pytest.FixtureRequest) -> None:
    (node.root / "etc/keystone/x").write_text("node's")
    run_root = node.root.parent / "services"  # under the lab dir, as an agent's state dir
    runtime = ProcessRuntime(run_root, enter=mountns.enter_argv(node.ns_file))
    request.addfinalizer(lambda: ProcessRuntime(run_root).stop_all(timeout=2.0))
    catalog = Catalog.from_dict({"services": {"reader": {
        "placement": "every-node", "start": {"command": ["sh", "-c", "cat /etc/keystone/x > out; exec sleep 60"]}}}})
    runtime.start(catalog["reader"], ServiceContext(node_id="n1"))

    pid = runtime.main_pid("reader")
    assert pid is not None
    run_dir = runtime.run_dir("reader")
    deadline = time.monotonic() + 10
    while psutil.Process(pid).cmdline() != ["sleep", "60"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert psutil.Process(pid).cmdline() == ["sleep", "60"]  # nsenter and env exec'd: the pid is the service's
    assert os.getpgid(pid) == pid
    assert os.stat(f"/proc/{pid}/ns/mnt").st_ino == os.stat(node.ns_file).st_ino
    assert os.readlink(f"/proc/{pid}/cwd") == str(run_dir)  # the fencer finds it by its run dir
    assert (run_dir / "out").read_text() == "node's"

    runtime.stop("reader", timeout=2.0)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


@needs_root
def test_destroy_leaves_no_namespace_file_and_no_mount(node: Node) -> None:
    mountns.destroy(node.ns_file)
    assert not node.ns_file.exists()
    assert str(node.ns_file) not in mount_points(host_mounts())
    mountns.destroy(node.ns_file)  # idempotent
    mountns.destroy_dir(node.ns_file.parent)
    assert not node.ns_file.parent.exists()
    assert str(node.ns_file.parent) not in mount_points(host_mounts())


# ---------------------------------------------------------------- a lab node


@needs_root
def test_a_lab_agent_gets_its_mount_namespace_and_destroy_removes_it() -> None:
    from nodeos.lab.lab import MNTNS_ROOT, destroy

    from .cluster_helpers import new_lab, teardown

    lab = new_lab(1)
    try:
        ns_file = lab.mount_ns("n1")
        assert mountns.is_namespace(ns_file)
        pid = lab.node("n1").pid
        assert pid is not None
        cmdline = psutil.Process(pid).cmdline()
        assert cmdline[cmdline.index("--mount-ns") + 1] == str(ns_file)
        assert lab.wait_formed(timeout=60)["formed"]  # the agent accepted the options
        word = secrets.token_hex(4)
        root = mountns.node_root(Path(lab.node("n1").state_dir))
        (root / "etc/keystone/x").write_text(word)
        shown = subprocess.run([*lab.node_exec_argv("n1"), "sh", "-c", "cat /etc/keystone/x; ip -brief addr show eth0"],
                               capture_output=True, text=True, timeout=30)
        assert shown.stdout.startswith(word) and lab.node("n1").ip in shown.stdout
    finally:
        teardown(lab)
    assert not (MNTNS_ROOT / lab.spec.name).exists()
    assert not [p for p in mount_points(host_mounts()) if p.startswith(str(MNTNS_ROOT / lab.spec.name))]
    destroy(lab.spec.name)  # again: nothing left to fail on
