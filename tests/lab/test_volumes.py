"""RBD volumes on a real 3-node Ceph 16: move with data, fence, crash cleanup.

One Ceph cluster (3 namespaces, one mon, one OSD each, an rbd pool sized by
pool_size) is shared by the module; each test uses its own image and
detaches what it attached in its own finalizer, so the tests stay
independent. The module's root is made a shared mount (as / is on a
systemd node) so that namespaces made meanwhile by anyone's `ip netns exec`
see our unmounts instead of pinning the filesystems. Every daemon, rbd-fuse,
mount and loop device is ended by PID or exact path in finalizers, also on
failure. Timings are printed (run with -s), never asserted.
"""

from __future__ import annotations

import mmap
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import psutil
import pytest

from nodeos.lab import netns
from nodeos.storage import CephPaths, fsid_for, initial_mons, make_keys, pool_size, render_ceph_conf
from nodeos.storage import daemons, volumed, volumes
from nodeos.storage.conf import LAB_TUNING
from nodeos.storage.daemons import CephNode, Daemon
from nodeos.storage.keys import node_entity
from nodeos.storage.status import summarize
from nodeos.storage.volumes import Attachment, VolumeError

from .conftest import kill_namespace_processes, require_root, wait_for

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(shutil.which("ceph-mon") is None, reason="Ceph is not installed (scripts/apt-packages.txt)"),
    pytest.mark.skipif(shutil.which("rbd-fuse") is None or shutil.which("losetup") is None
                       or not Path("/dev/fuse").exists(), reason="needs rbd-fuse, losetup and /dev/fuse"),
]

POOL = "volumes"
PUBLIC_NETWORK = "10.77.0.0/24"
SIZE = 128 << 20
XFS_SIZE = 320 << 20  # mkfs.xfs wants 300 MiB at least
NODES = 3


@dataclass
class VolumeLab:
    root: Path
    nodes: list[CephNode] = field(default_factory=list)
    namespaces: list[tuple[str, str]] = field(default_factory=list)  # (namespace, host veth)
    daemons: list[Daemon] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)


def short_root() -> Path:
    # Admin sockets (rbd-fuse's too) live under the root: a Unix socket path has at most 107 bytes.
    return Path(tempfile.mkdtemp(prefix="nvol-", dir="/tmp"))


@pytest.fixture(scope="module")
def vlab() -> Iterator[VolumeLab]:
    require_root()
    lab = VolumeLab(short_root())
    bridge = netns.unique_name("nbr")
    shared = False
    try:
        netns.create_bridge(bridge)
        shared = volumes.share_mounts(str(lab.root))
        for i in range(NODES):
            ns, veth = netns.unique_name("nns"), netns.unique_name("nve")
            lab.namespaces.append((ns, veth))  # before creating: a half-made one is cleaned too
            ip = f"10.77.0.{i + 1}"
            netns.create_namespace(ns, bridge, veth, f"{ip}/24")
            lab.nodes.append(CephNode(f"node{i + 1}", ip, CephPaths(str(lab.root / f"node{i + 1}")),
                                      ("ip", "netns", "exec", ns)))
        bring_up(lab)
        yield lab
    finally:
        teardown(lab, bridge, shared)


def bring_up(lab: VolumeLab) -> None:
    """Mons (one shared first monmap), a mgr, one file-backed OSD per node, an rbd pool."""
    start = time.monotonic()
    names = [n.node_id for n in lab.nodes]
    fsid = fsid_for(f"lab-{lab.root.name}")
    keys = make_keys(os.urandom, names, created=time.time())
    mons = initial_mons(names)
    mon_ips = {m: next(n.ip for n in lab.nodes if n.node_id == m) for m in mons}
    for node in lab.nodes:
        daemons.prepare_node(node, render_ceph_conf(fsid, mon_ips, PUBLIC_NETWORK, hosts=NODES, node=node.node_id,
                                                    paths=node.paths, tuning=LAB_TUNING), keys)
    first = lab.nodes[0]
    monmap = str(Path(first.paths.run_dir) / "initial.monmap")
    daemons.build_monmap(first, fsid, mon_ips, monmap)
    mon_nodes = [n for n in lab.nodes if n.node_id in mons]
    threads = [threading.Thread(target=daemons.create_mon, args=(n, keys, monmap)) for n in mon_nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for node in mon_nodes:
        lab.daemons.append(daemons.start_mon(node))
    assert wait_for(lambda: daemons.quorum(first) == sorted(mons), 60.0, 0.2), f"no quorum: {daemons.quorum(first)}"
    lab.marks["quorum"] = time.monotonic() - start
    lab.daemons.append(daemons.start_mgr(first))
    errors: list[BaseException] = []

    def osd(node: CephNode) -> None:
        try:
            lab.daemons.append(daemons.start_osd(node, daemons.create_osd(node, os.urandom)))
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=osd, args=(n,)) for n in lab.nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    size, min_size = pool_size(NODES)
    daemons.create_pool(first, POOL, size, min_size, application="rbd")

    def ready() -> bool:
        summary = summarize(daemons.ceph_status(first.conf, first.admin_keyring, prefix=first.prefix))
        return summary.osds_up == NODES and summary.pools >= 1 and summary.pgs_active_clean == summary.pgs > 0

    assert wait_for(ready, 120.0, 0.5), "the pool's PGs never became active+clean"
    lab.marks["pool ready"] = time.monotonic() - start
    print(f"\nCeph for volumes: {', '.join(f'{k} {v:.1f}s' for k, v in lab.marks.items())}")


def teardown(lab: VolumeLab, bridge: str, shared: bool) -> None:
    """Volumes, daemons, namespaces, mounts, directory: ours only, by PID and exact path; every step tried."""
    problems: list[str] = []

    def attempt(step: Callable[[], object]) -> None:
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - reported below, after the other steps ran
            problems.append(repr(exc))

    for node in lab.nodes:
        for state in sorted(Path(node.paths.run_dir, "volumes").glob("*/*/state.json")):
            attempt(lambda n=node, s=state: volumes.detach_volume(n, s.parent.parent.name, s.parent.name))
    for daemon in lab.daemons:
        attempt(lambda d=daemon: daemons.kill(d))
    for ns, veth in reversed(lab.namespaces):
        attempt(lambda n=ns: kill_namespace_processes(n))  # all ours: rbd-fuse runs in its node's namespace too
        attempt(lambda n=ns: netns.delete_namespace(n))
        attempt(lambda v=veth: netns.delete_link(v))
    attempt(lambda: netns.delete_link(bridge))
    left = [m for m in mounts_under(lab.root) if m != str(lab.root)]
    for point in sorted(left, key=len, reverse=True):  # our own exact paths
        subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)
    if shared:
        attempt(lambda: volumes.unshare_mounts(str(lab.root)))
    if not mounts_under(lab.root):
        shutil.rmtree(lab.root, ignore_errors=True)
    assert not problems and not left, f"teardown: {problems}, still mounted: {left}"


def mounts_under(root: Path) -> list[str]:
    text = Path("/proc/self/mountinfo").read_text()
    points = [line.split()[4] for line in text.splitlines()]
    return [p for p in points if p == str(root) or p.startswith(f"{root}/")]


@pytest.fixture
def track(vlab: VolumeLab) -> Iterator[Callable[[Attachment], Attachment]]:
    """Register an attachment: detached (forced) after the test, whatever happened."""
    made: list[Attachment] = []

    def add(attachment: Attachment) -> Attachment:
        made.append(attachment)
        return attachment

    yield add
    errors = []
    for attachment in made:
        try:
            volumes.detach(attachment, force=True)
        except VolumeError as exc:
            errors.append(str(exc))  # the module's teardown tries again from the state file
    assert not errors, errors


# -- helpers ------------------------------------------------------------------------

def write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def loop_released(device: str, root: Path) -> bool:
    """The loop device no longer serves a file of ours (unbound, or reused by someone else)."""
    backing = Path(f"/sys/block/{os.path.basename(device)}/loop/backing_file")
    try:
        return not backing.read_text().strip().startswith(str(root))
    except OSError:
        return True


def helper_gone(attachment: Attachment) -> bool:
    for pid, start in zip(attachment.pids, attachment.pid_starts):
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - start) < 0.05 and proc.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.Error:
            pass
    return True


def assert_clean(attachment: Attachment, root: Path, mount_point: str) -> None:
    """No helper, loop device, mount (in any namespace) or state file of this attachment is left."""
    assert helper_gone(attachment), f"rbd-fuse {attachment.pids} still runs"
    assert loop_released(attachment.device, root), f"{attachment.device} still bound to our file"
    assert volumes.pinned_by(attachment.device) == [], "another mount namespace still holds the filesystem"
    still = mounts_under(Path(attachment.state_dir)) + mounts_under(Path(mount_point))
    assert not still, f"still mounted: {still}"
    assert not (Path(attachment.state_dir) / "state.json").exists()


def mount_point(node: CephNode, image: str) -> str:
    return str(Path(node.paths.root) / "mnt" / image)


# -- tests ----------------------------------------------------------------------------

def test_a_volume_moves_between_nodes_with_its_data(vlab: VolumeLab, track: Callable[[Attachment], Attachment]) -> None:
    node1, node2 = vlab.nodes[0], vlab.nodes[1]
    assert volumes.ensure_image(node1, POOL, "move", SIZE) is True
    assert volumes.ensure_image(node2, POOL, "move", SIZE) is False  # idempotent, from any node

    started = time.monotonic()
    first = track(volumes.attach(node1, POOL, "move"))
    t_attach = time.monotonic() - started
    assert first.backend == volumes.probe_backend() == "fuse"
    assert first.address.startswith(f"{node1.ip}:0/") and first.client == node_entity("node1")
    assert volumes.client_address(node1, POOL, "move") == first.address
    # rbd-fuse connected as the node's own client (profile rbd), not client.admin: its admin socket says so.
    assert list(Path(node1.paths.run_dir).glob(f"ceph-{node_entity('node1')}.{first.pids[0]}.*.asok"))
    assert volumes.attach(node1, POOL, "move") == first  # intact: returned as it is

    started = time.monotonic()
    first = volumes.mount(first, "ext4", mount_point(node1, "move"), make_fs_if_blank=True)
    t_mkfs_mount = time.monotonic() - started
    payload = os.urandom(1 << 20)
    write_synced(Path(first.mount_point or "") / "data", payload)
    assert volumes.mount(first, "ext4", first.mount_point or "") == first  # mounted already: as it is

    started = time.monotonic()
    first = volumes.unmount(first)
    volumes.detach(first)
    t_detach = time.monotonic() - started
    volumes.detach(first)  # again: nothing left to do, no error
    assert_clean(first, vlab.root, mount_point(node1, "move"))
    assert volumes.watchers(node1, POOL, "move") == []  # rbd-fuse closed the image on SIGTERM

    started = time.monotonic()
    second = track(volumes.attach(node2, POOL, "move"))
    t_attach2 = time.monotonic() - started
    with pytest.raises(VolumeError, match="holds ext4, not xfs"):
        volumes.mount(second, "xfs", mount_point(node2, "move"), make_fs_if_blank=True)  # never reformatted
    started = time.monotonic()
    second = volumes.mount(second, "ext4", mount_point(node2, "move"))  # no mkfs: the filesystem is found
    t_mount = time.monotonic() - started
    assert (Path(second.mount_point or "") / "data").read_bytes() == payload
    assert volumes.client_address(node2, POOL, "move") == second.address
    print(f"\nmove: attach {t_attach:.2f}s, mkfs+mount {t_mkfs_mount:.2f}s, unmount+detach {t_detach:.2f}s, "
          f"attach on node2 {t_attach2:.2f}s, fsck+mount {t_mount:.2f}s")


def write_block(device: str, offset: int, data: bytes) -> None:
    """One O_DIRECT write (the page cache would hide whether it reached the helper)."""
    buffer = mmap.mmap(-1, len(data))
    buffer.write(data)
    fd = os.open(device, os.O_WRONLY | os.O_DIRECT)
    try:
        assert os.pwritev(fd, [buffer], offset) == len(data)
        os.fsync(fd)
    finally:
        os.close(fd)


def test_exclusive_lock_alone_is_no_fence(vlab: VolumeLab, track: Callable[[Attachment], Attachment]) -> None:
    """Two nodes attached: the lock follows whoever writes, and both writes land (why we blocklist)."""
    node1, node3 = vlab.nodes[0], vlab.nodes[2]
    volumes.ensure_image(node1, POOL, "twice", SIZE)
    first = track(volumes.attach(node1, POOL, "twice"))
    write_block(first.device, 0, b"1" * 4096)
    assert volumes.client_address(node1, POOL, "twice") == first.address  # the lock owner
    second = track(volumes.attach(node3, POOL, "twice"))  # no error: nothing stops a second holder
    write_block(second.device, 4096, b"3" * 4096)
    assert volumes.client_address(node1, POOL, "twice") == second.address  # the lock moved
    write_block(first.device, 8192, b"1" * 4096)  # and back, without a word
    assert volumes.client_address(node1, POOL, "twice") == first.address
    assert sorted(volumes.holders(node1, POOL, "twice")) == sorted([first.address, second.address])
    volumes.detach(second)
    fd = os.open(first.device, os.O_RDONLY | os.O_DIRECT)
    buffer = mmap.mmap(-1, 3 * 4096)
    try:
        os.preadv(fd, [buffer], 0)
    finally:
        os.close(fd)
    assert bytes(buffer) == b"1" * 4096 + b"3" * 4096 + b"1" * 4096


def test_a_fenced_holder_cannot_write_and_the_next_reads_all_it_acknowledged(
        vlab: VolumeLab, track: Callable[[Attachment], Attachment]) -> None:
    node1, node2, node3 = vlab.nodes
    volumes.ensure_image(node1, POOL, "fence", SIZE)
    held = volumes.mount(track(volumes.attach(node1, POOL, "fence")), "ext4", mount_point(node1, "fence"),
                         make_fs_if_blank=True)
    log_path = Path(held.mount_point or "") / "log"
    acknowledged: list[int] = []
    failure: dict[str, object] = {}

    def writer() -> None:
        """Append numbered records, each fsynced; a record counts once its fsync returned."""
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for i in range(1_000_000):
                try:
                    os.write(fd, f"{i:08d}\n".encode())
                    os.fsync(fd)
                except OSError as exc:
                    failure.update(at=time.monotonic(), error=exc)
                    return
                acknowledged.append(i)
                time.sleep(0.005)
        finally:
            try:
                os.close(fd)
            except OSError:
                pass

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    assert wait_for(lambda: len(acknowledged) >= 50, 20.0), f"the writer made no progress: {failure}"

    # The Monitor's side: who holds it, fence exactly that instance (from another node), then move.
    assert volumes.holders(node3, POOL, "fence") == [held.address]
    fenced_at = time.monotonic()
    entry = volumes.blocklist_add(node3, held.address)
    t_fence_cmd = time.monotonic() - fenced_at
    until = datetime.strptime(entry.until, "%Y-%m-%dT%H:%M:%S.%f%z")
    assert (until - datetime.now(timezone.utc)).days > 9 * 365
    thread.join(20.0)
    assert not thread.is_alive(), "node1's writer still writes after the fence"
    assert isinstance(failure.get("error"), OSError), failure
    t_fail = float(failure["at"]) - fenced_at  # type: ignore[arg-type]
    with pytest.raises(OSError):  # and so does any later write, whatever the path
        write_synced(Path(held.mount_point or "") / "after-fence", b"lost")

    started = time.monotonic()
    moved = track(volumes.attach(node2, POOL, "fence"))
    moved = volumes.mount(moved, "ext4", mount_point(node2, "fence"))
    t_move = time.monotonic() - started
    records = [int(line) for line in (Path(moved.mount_point or "") / "log").read_text().split()]
    missing = sorted(set(acknowledged) - set(records))
    assert not missing, f"{len(missing)} acknowledged records lost, first {missing[:5]}"
    assert not (Path(moved.mount_point or "") / "after-fence").exists()
    write_synced(Path(moved.mount_point or "") / "new-holder", b"ok")  # node2 took the lock over
    assert volumes.client_address(node2, POOL, "fence") == moved.address
    # librbd on node2 re-blocklisted the old holder when it broke its lock: our expiry stands.
    assert [e for e in volumes.blocklist_ls(node2) if e.address == held.address] == [entry]

    started = time.monotonic()
    volumes.detach(held, force=True)
    t_detach = time.monotonic() - started
    assert_clean(held, vlab.root, mount_point(node1, "fence"))
    print(f"\nfence: {len(acknowledged)} records acknowledged, all on node2; blocklist add {t_fence_cmd:.2f}s, "
          f"blocklist-to-failure {t_fail:.2f}s ({failure['error']!r}), attach+fsck+mount on node2 {t_move:.2f}s, "
          f"detach of the fenced holder {t_detach:.2f}s")


def test_detach_after_a_crashed_helper_cleans_up_and_the_volume_comes_back(
        vlab: VolumeLab, track: Callable[[Attachment], Attachment]) -> None:
    node3 = vlab.nodes[2]
    volumes.ensure_image(node3, POOL, "crash", XFS_SIZE)
    started = time.monotonic()
    held = volumes.mount(track(volumes.attach(node3, POOL, "crash")), "xfs", mount_point(node3, "crash"),
                         make_fs_if_blank=True)
    t_xfs = time.monotonic() - started
    payload = os.urandom(256 << 10)
    write_synced(Path(held.mount_point or "") / "data", payload)

    os.kill(held.pids[0], signal.SIGKILL)  # the agent's helper dies: mount, loop and FUSE mount stay behind
    assert wait_for(lambda: helper_gone(held), 10.0)
    assert held.mount_point in mounts_under(vlab.root)

    started = time.monotonic()
    assert volumes.detach_volume(node3, POOL, "crash") is True  # a restarted agent: no Attachment at hand
    t_detach = time.monotonic() - started
    assert_clean(held, vlab.root, mount_point(node3, "crash"))
    assert volumes.detach_volume(node3, POOL, "crash") is False

    # The dead instance's watch lingers (30 s) and it still owns the lock: fence it, then attach again.
    assert held.address in volumes.holders(node3, POOL, "crash")
    volumes.blocklist_add(node3, held.address)
    started = time.monotonic()
    again = volumes.mount(track(volumes.attach(node3, POOL, "crash")), "xfs", mount_point(node3, "crash"))
    t_again = time.monotonic() - started
    assert (Path(again.mount_point or "") / "data").read_bytes() == payload  # xfs replayed its log
    print(f"\ncrash: attach+mkfs.xfs+mount {t_xfs:.2f}s, detach after SIGKILL {t_detach:.2f}s, "
          f"fence+attach+mount again {t_again:.2f}s")


def test_detach_is_bounded_when_the_helper_hangs(vlab: VolumeLab, track: Callable[[Attachment], Attachment]) -> None:
    """A helper that stops answering (SIGSTOP: I/O stuck as when cut off from the OSDs) is killed."""
    node2 = vlab.nodes[1]
    volumes.ensure_image(node2, POOL, "hang", SIZE)
    held = volumes.mount(track(volumes.attach(node2, POOL, "hang")), "ext4", mount_point(node2, "hang"),
                         make_fs_if_blank=True)
    write_synced(Path(held.mount_point or "") / "before", b"kept")
    (Path(held.mount_point or "") / "dirty").write_bytes(os.urandom(1 << 20))  # in the page cache, not synced
    os.kill(held.pids[0], signal.SIGSTOP)  # after the write: the test itself never waits on the helper

    started = time.monotonic()
    volumes.detach(held, stuck_after=2.0)
    t_detach = time.monotonic() - started
    assert_clean(held, vlab.root, mount_point(node2, "hang"))
    print(f"\nhung helper: detach {t_detach:.2f}s (syncfs stuck for 2 s, then rbd-fuse SIGKILLed)")


def test_the_volume_helper_attaches_and_mounts_for_the_agent(
    vlab: VolumeLab, track: Callable[[Attachment], Attachment], tmp_path: Path
) -> None:
    """nodeos volumed (real nodes: the sandboxed agent's hands) over its socket, on this lab's real Ceph."""
    node1, node2 = vlab.nodes[0], vlab.nodes[1]
    volumes.ensure_image(node1, POOL, "helper", SIZE)
    socket_path = str(tmp_path / "volumed.sock")
    ready, stop = threading.Event(), threading.Event()
    server = threading.Thread(target=volumed.serve, args=(socket_path, ready, stop), daemon=True)
    server.start()
    try:
        assert ready.wait(30)
        remote = volumed.RemoteVolumes(socket_path)
        attached = track(remote.attach(node1, POOL, "helper"))
        assert volumes.client_address(node1, POOL, "helper") == attached.address
        mounted = remote.mount(attached, "ext4", mount_point(node1, "helper"), make_fs_if_blank=True)
        payload = os.urandom(1 << 16)
        write_synced(Path(mounted.mount_point or "") / "data", payload)
        remote.detach(remote.unmount(mounted), force=False)
        assert_clean(mounted, vlab.root, mount_point(node1, "helper"))
        with pytest.raises(VolumeError, match="holds ext4, not xfs"):  # the helper's refusal reaches the agent
            remote.mount(track(remote.attach(node2, POOL, "helper")), "xfs", mount_point(node2, "helper"))
        second = volumes.mount(volumes.attach(node2, POOL, "helper"), "ext4", mount_point(node2, "helper"))
        assert (Path(second.mount_point or "") / "data").read_bytes() == payload
    finally:
        stop.set()
        server.join(10)
