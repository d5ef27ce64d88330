"""Real Ceph 16 from the pure model, one network namespace per node.

The conf, fsid and keys come from nodeos.storage (randomness from
os.urandom); mons, the mgr and bluestore OSDs on sparse files are processes
of ours in their node's namespace, killed by their PIDs in the fixture's
finalizer, also on failure, before the namespaces go. Timings and RSS are
printed (run with -s to see them), never asserted.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import psutil
import pytest

from nodeos.storage import CephKeys, CephPaths, choose_mons, fsid_for, initial_mons, make_keys, pool_size
from nodeos.storage import daemons, render_ceph_conf
from nodeos.storage.conf import LAB_TUNING
from nodeos.storage.daemons import CephError, CephNode, Daemon
from nodeos.storage.status import summarize

from .conftest import wait_for

if TYPE_CHECKING:
    from tests.lab.conftest import LabNode, LabTools

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(shutil.which("ceph-mon") is None, reason="Ceph is not installed (scripts/apt-packages.txt)"),
]

POOL = "nodeos-lab"
PUBLIC_NETWORK = "10.77.0.0/24"
HEALTH_WAIT = 120.0
QUORUM_WAIT = 60.0


@dataclass
class LabCeph:
    fsid: str
    keys: CephKeys
    nodes: list[CephNode]
    mons: list[str]  # node ids in the monmap, as this test changed it
    daemons: list[Daemon] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)  # phase -> seconds since the start

    def started(self, daemon: Daemon) -> Daemon:
        self.daemons.append(daemon)  # at once: the finalizer kills whatever got started
        return daemon

    def node(self, node_id: str) -> CephNode:
        return next(n for n in self.nodes if n.node_id == node_id)

    def health(self, node: CephNode | None = None) -> dict[str, Any]:
        node = node or self.nodes[0]
        return daemons.health(node.conf, node.admin_keyring, prefix=node.prefix)

    def status(self, node: CephNode | None = None) -> dict[str, Any]:
        node = node or self.nodes[0]
        return daemons.ceph_status(node.conf, node.admin_keyring, prefix=node.prefix)

    def render_confs(self) -> None:
        """Every node's ceph.conf from the current mons, as the agents will do from the state."""
        mons = {m: self.node(m).ip for m in self.mons}
        for node in self.nodes:
            daemons.write_conf(node, conf_for(self.fsid, mons, len(self.nodes), node))


def conf_for(fsid: str, mons: dict[str, str], hosts: int, node: CephNode) -> str:
    return render_ceph_conf(fsid, mons, PUBLIC_NETWORK, hosts=hosts, node=node.node_id, paths=node.paths,
                            tuning=LAB_TUNING)


def short_root() -> Path:
    # Not tmp_path: the daemons' admin sockets live under the root, a Unix
    # socket path has at most 107 bytes, and tmp_path alone takes about 60
    # (quorum() asks the mon over that socket).
    return Path(tempfile.mkdtemp(prefix="nceph-", dir="/tmp"))


@pytest.fixture
def lab_ceph(lab_node: Callable[[int], LabNode], request: pytest.FixtureRequest) -> Callable[[int], LabCeph]:
    """Factory: lab_ceph(n) -> n prepared nodes (namespaces, confs, keyrings); nothing started yet."""
    root = short_root()
    clusters: list[LabCeph] = []
    request.addfinalizer(lambda: shutil.rmtree(root, ignore_errors=True))
    request.addfinalizer(lambda: [kill_all(c) for c in clusters])  # runs first, and before lab_node's cleanup

    def make(count: int) -> LabCeph:
        hosts = [lab_node(i + 1) for i in range(count)]
        names = [f"node{i + 1}" for i in range(count)]
        nodes = [CephNode(name, host.ip, CephPaths(str(root / name)), ("ip", "netns", "exec", host.ns))
                 for name, host in zip(names, hosts)]
        cluster = LabCeph(fsid_for(f"lab-{root.name}"), make_keys(os.urandom, names, created=time.time()), nodes,
                          initial_mons(names))
        clusters.append(cluster)
        mons = {m: cluster.node(m).ip for m in cluster.mons}
        for node in nodes:
            daemons.prepare_node(node, conf_for(cluster.fsid, mons, count, node), cluster.keys)
        return cluster

    return make


def kill_all(cluster: LabCeph) -> None:
    """SIGKILL every daemon we started, by PID, and reap it."""
    for daemon in cluster.daemons:
        daemons.kill(daemon)


def in_parallel(fn: Callable[[CephNode], Any], nodes: list[CephNode]) -> list[Any]:
    """fn(node) for every node at once (mkfs and OSD creation dominate bring-up)."""
    results: dict[int, Any] = {}

    def work(i: int, node: CephNode) -> None:
        try:
            results[i] = fn(node)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            results[i] = exc

    threads = [threading.Thread(target=work, args=(i, n)) for i, n in enumerate(nodes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i in range(len(nodes)):
        if isinstance(results.get(i), BaseException):
            raise results[i]
    return [results[i] for i in range(len(nodes))]


def start_mons(cluster: LabCeph, start: float) -> None:
    """One shared first monmap, mkfs everywhere, start, wait for the full quorum."""
    first = cluster.nodes[0]
    monmap = str(Path(first.paths.run_dir) / "initial.monmap")
    daemons.build_monmap(first, cluster.fsid, {m: cluster.node(m).ip for m in cluster.mons}, monmap)
    mon_nodes = [cluster.node(m) for m in cluster.mons]
    in_parallel(lambda n: daemons.create_mon(n, cluster.keys, monmap), mon_nodes)
    for node in mon_nodes:
        cluster.started(daemons.start_mon(node))
    # Mons started a moment apart often need an election timeout (5 s) or two: 0.5-12 s measured.
    formed = wait_for(lambda: daemons.quorum(first) == sorted(cluster.mons), QUORUM_WAIT, 0.2)
    assert formed, f"no quorum of {cluster.mons}: {daemons.quorum(first)}"
    cluster.marks["quorum"] = time.monotonic() - start


def bring_up(cluster: LabCeph) -> None:
    """Mons, then the mgr, then one OSD per node, then a pool sized for the hosts; waits until settled."""
    start = time.monotonic()
    first = cluster.nodes[0]
    start_mons(cluster, start)
    cluster.started(daemons.start_mgr(first))

    def osd(node: CephNode) -> int:
        osd_id = daemons.create_osd(node, os.urandom)
        cluster.started(daemons.start_osd(node, osd_id))
        return osd_id

    in_parallel(osd, cluster.nodes)
    cluster.marks["osds"] = time.monotonic() - start
    size, min_size = pool_size(len(cluster.nodes))
    daemons.create_pool(first, POOL, size, min_size, application="rados")
    settled = wait_for(lambda: summarize(cluster.status()).settled(osds=len(cluster.nodes)), HEALTH_WAIT, 1.0)
    assert settled, f"not settled after {HEALTH_WAIT:.0f}s: {summarize(cluster.status()).line()}; {cluster.health()}"
    cluster.marks["health_ok"] = time.monotonic() - start


def put_get(node: CephNode, name: str, payload: bytes | None = None) -> bytes:
    """Write `payload` (if given) as object `name`, then read it back through rados."""
    scratch = Path(node.paths.root) / "scratch"
    scratch.mkdir(exist_ok=True)
    if payload is not None:
        (scratch / f"{name}.in").write_bytes(payload)
        daemons.rados(node, "-p", POOL, "put", name, str(scratch / f"{name}.in"))
    daemons.rados(node, "-p", POOL, "get", name, str(scratch / f"{name}.out"))
    return (scratch / f"{name}.out").read_bytes()


def report(title: str, cluster: LabCeph) -> None:
    marks = ", ".join(f"{phase} {t:.1f}s" for phase, t in cluster.marks.items())
    print(f"\n{title}: {marks}")
    for daemon in cluster.daemons:
        if daemon.alive():
            rss = psutil.Process(daemon.pid).memory_info().rss / (1 << 20)
            print(f"  {daemon.name:10} pid {daemon.pid:7}  RSS {rss:6.1f} MiB")


def test_three_nodes_form_healthy_ceph_and_survive_an_osd_kill(lab_ceph: Callable[[int], LabCeph],
                                                               lab: type[LabTools]) -> None:
    cluster = lab_ceph(3)
    bring_up(cluster)
    status = cluster.status(cluster.nodes[1])
    assert status["fsid"] == cluster.fsid
    assert sorted(status["quorum_names"]) == ["node1", "node2", "node3"]
    assert status["osdmap"]["num_up_osds"] == 3 and status["osdmap"]["num_in_osds"] == 3

    payload = os.urandom(256 * 1024)
    assert put_get(cluster.nodes[0], "greeting", payload) == payload
    assert put_get(cluster.nodes[2], "greeting") == payload  # read from another node
    report("3-node bring-up", cluster)

    # An OSD crash: the cluster says which one is down, and the data stays readable.
    victim = cluster.nodes[2]
    osd = next(d for d in cluster.daemons if d.kind == "osd" and Path(victim.paths.data("osd", d.daemon_id)).exists())
    killed = time.monotonic()
    os.kill(osd.pid, signal.SIGKILL)
    osd.proc.wait(10)

    def down_reported() -> dict[str, Any] | None:
        health = cluster.health()
        detail = health["checks"].get("OSD_DOWN", {}).get("detail", [])
        return health if any(line.startswith(f"{osd.name} ") for line in detail) else None

    health = wait_for(down_reported, 60.0, 0.5)
    assert health, f"{osd.name} not reported down: {cluster.health()}"
    print(f"  {osd.name} SIGKILLed: reported down after {time.monotonic() - killed:.1f}s: "
          f"{health['checks']['OSD_DOWN']['detail']}")
    assert health["status"] == "HEALTH_WARN"
    assert put_get(cluster.nodes[0], "greeting") == payload


def test_a_single_node_cloud_is_healthy_with_one_copy(lab_ceph: Callable[[int], LabCeph], lab: type[LabTools]) -> None:
    cluster = lab_ceph(1)
    bring_up(cluster)  # settled means HEALTH_OK: no "no redundancy" or "size 1" warning
    pools = daemons.ceph(cluster.nodes[0], "osd", "pool", "ls", "detail")
    assert f"'{POOL}' replicated size 1 min_size 1" in pools
    payload = os.urandom(4096)
    assert put_get(cluster.nodes[0], "solo", payload) == payload
    report("1-node bring-up", cluster)

    # An OSD whose mkfs fails gives its id back instead of leaving a down OSD behind.
    with pytest.raises(CephError, match="ceph-osd"):
        daemons.create_osd(cluster.nodes[0], os.urandom, block="/nonexistent/nodeos/block")
    assert daemons.ceph(cluster.nodes[0], "osd", "ls").split() == ["0"]


def test_a_lost_mon_is_replaced_one_step_at_a_time(lab_ceph: Callable[[int], LabCeph], lab: type[LabTools]) -> None:
    """choose_mons' steps applied to real mons: add on the spare node, then remove the dead one."""
    cluster = lab_ceph(4)
    assert cluster.mons == ["node1", "node2", "node3"]
    start = time.monotonic()
    start_mons(cluster, start)
    first, spare = cluster.nodes[0], cluster.node("node4")

    mon3 = next(d for d in cluster.daemons if d.name == "mon.node3")
    step = time.monotonic()
    daemons.kill(mon3)
    # The survivors notice at the next lease (mon_lease 5 s) and re-elect: the state a
    # replacement meets after mon_replace_after; joining earlier only waits for this.
    dropped = wait_for(lambda: daemons.quorum(first) == ["node1", "node2"], QUORUM_WAIT, 0.2)
    assert dropped, f"the quorum still counts the dead mon: {daemons.quorum(first)}"
    cluster.marks["dead mon out of quorum"] = time.monotonic() - step
    lost_at = 1000.0  # cluster time: arguments, so the test need not wait mon_replace_after
    up = ["node1", "node2", "node4"]
    assert choose_mons(up, cluster.mons, {"node3": lost_at}, lost_at + 60.0) is None  # not yet

    change = choose_mons(up, cluster.mons, {"node3": lost_at}, lost_at + 120.0)
    assert change is not None and (change.action, change.node) == ("add", "node4")
    step = time.monotonic()
    cluster.started(daemons.join_mon(spare, via=first, keys=cluster.keys))
    joined = wait_for(lambda: daemons.quorum(first) == ["node1", "node2", "node4"], QUORUM_WAIT, 0.2)
    assert joined, f"node4's mon did not join: {daemons.quorum(first)}"
    cluster.marks["add"] = time.monotonic() - step
    cluster.mons.append("node4")
    assert cluster.status()["monmap"]["num_mons"] == 4  # the dead one is still in the map: 3 of 4 in quorum

    change = choose_mons(up, cluster.mons, {"node3": lost_at}, lost_at + 130.0)
    assert change is not None and (change.action, change.node) == ("remove", "node3")
    step = time.monotonic()
    daemons.remove_mon(first, "node3")
    cluster.mons.remove("node3")
    cluster.render_confs()
    shrunk = wait_for(lambda: cluster.status()["monmap"]["num_mons"] == 3
                      and daemons.quorum(first) == ["node1", "node2", "node4"], QUORUM_WAIT, 0.5)
    assert shrunk, f"node3 still in the monmap: {cluster.status()['monmap']}"
    cluster.marks["remove"] = time.monotonic() - step
    assert choose_mons(up, cluster.mons, {"node3": lost_at}, lost_at + 140.0) is None
    report("mon replacement", cluster)
