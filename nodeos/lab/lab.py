"""The lab: N real agents, each in its own network namespace on one bridge.

Layout of a lab named NAME (default "lab"):

    /run/nodeos-lab/NAME/lab.json       what exists (written BEFORE anything is made,
                                        so `down` can clean up after a crash)
    /run/nodeos-lab/NAME/identity.json  the lab cluster's identity
    /run/nodeos-lab/NAME/config.yaml    node config (process runtime, lab catalog)
    /run/nodeos-lab/NAME/nodes/nK/      each node's state dir (node id, Raft journal,
                                        agent.log, agent.sock, services/, root/)
    /run/nodeos-mntns/NAME/nK           node nK's mount namespace: its services see
                                        root/etc/keystone at /etc/keystone, ... (mountns.py)

Network: bridge `nlb-NAME`, node nK in namespace `nodeos-NAME-nK` with eth0 =
10.77.0.(10+K)/24, host side `nlv-NAME-K`. The bridge has no host address:
lab traffic never leaves it. Faults act on exactly what the lab made: the
processes inside a node's namespace, its host-side link, nftables rules on
the lab's own bridge table.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import mountns, netns
from nodeos import log
from nodeos.cluster.control import ControlError, request
from nodeos.storage.volumes import drop_mounts_under, share_mounts, unshare_mounts
from nodeos.cluster.identity import init_identity

LAB_ROOT = Path(os.environ.get("NODEOS_LAB_ROOT", "/run/nodeos-lab"))
LOAD_ROOT = Path("/var/tmp/nodeos-lab-load")  # real disk, for the `load` fault
# Outside the lab dir: namespace files need a private mount, the lab dir is shared.
MNTNS_ROOT = Path("/run/nodeos-mntns")
# The nodes' Raft journals live in memory (a symlink from the state dir). All lab
# nodes share this host's one disk: a writer that saturates it (the `load` fault,
# Ceph's OSDs) makes the kernel throttle every process that dirties its pages,
# so pysyncobj's mmapped journals stalled all three agents at once for about a
# second (fences and a lease change in CI's `load all`). Real nodes each have
# their own disk; there the journal stays in the state dir (README, limits).
JOURNAL_ROOT = Path(os.environ.get("NODEOS_LAB_JOURNAL_ROOT", "/dev/shm/nodeos-lab"))
SUBNET_PREFIX = "10.77.0"
PREFIXLEN = 24
CLIENT_IP = f"{SUBNET_PREFIX}.5"


class LabError(RuntimeError):
    pass


@dataclass
class LabNode:
    name: str
    index: int
    ns: str
    veth: str
    ip: str
    state_dir: str
    pid: int | None = None
    disconnected: bool = False  # cable pulled by `disconnect` (survives reboots)
    guard_pid: int | None = None  # the node's fencing guard (inside the namespace)
    watchdog_pid: int | None = None  # its emulated watchdog device (host namespace)
    mount_ns: str | None = None  # its services' mount namespace file (None: a lab from before them)


@dataclass
class LabSpec:
    name: str
    bridge: str
    expect: int
    catalog: str | None
    nodes: dict[str, LabNode] = field(default_factory=dict)
    client: dict[str, str] | None = None
    partitioned: list[list[str]] | None = None
    timing: dict[str, float] = field(default_factory=dict)
    storage: dict[str, Any] = field(default_factory=dict)  # overrides of LAB_STORAGE
    loads: list[int] = field(default_factory=list)  # pids of running `load` faults


# Ceph in the lab (catalog lab-storage): OSDs on files only (the namespaces see
# the host's disks, which are never the lab's), small targets. 4 GiB, sparse: a
# file OSD is hdd-class, so MariaDB's small fsynced writes are deferred through
# RocksDB's WAL (up to about 1 GiB of memtables); on 1 GiB files the whole cloud
# catalog's schema syncs filled them (bluefs 854 MiB used, OSD_FULL, every write
# blocked) with under 130 MiB of data stored.
LAB_STORAGE: dict[str, Any] = {"osd_disks": "file", "tuning": "lab", "osd_file_size": 4 << 30}


def _check_name(name: str) -> None:
    if not name.isalnum() or len(name) > 6:
        raise LabError(f"lab name {name!r}: use 1-6 letters or digits (it becomes part of interface names)")


class Lab:
    def __init__(self, spec: LabSpec) -> None:
        self.spec = spec
        self.dir = LAB_ROOT / spec.name

    # -- persistence -------------------------------------------------------
    @classmethod
    def load(cls, name: str = "lab") -> "Lab":
        path = LAB_ROOT / name / "lab.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise LabError(f"no lab named {name!r} is up (no {path})") from None
        nodes = {k: LabNode(**v) for k, v in data.pop("nodes").items()}
        return cls(LabSpec(nodes=nodes, **data))

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        data = asdict(self.spec)
        tmp = self.dir / "lab.json.tmp"
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, self.dir / "lab.json")

    @property
    def identity_path(self) -> Path:
        return self.dir / "identity.json"

    @property
    def config_path(self) -> Path:
        return self.dir / "config.yaml"

    def node(self, name: str) -> LabNode:
        try:
            return self.spec.nodes[name]
        except KeyError:
            raise LabError(f"lab {self.spec.name!r} has no node {name!r} (nodes: {', '.join(sorted(self.spec.nodes))})") from None

    def names_by_id(self) -> dict[str, str]:
        """node id -> lab node name, from the nodes' state dirs (no agent asked)."""
        found = {}
        for name, node in self.spec.nodes.items():
            path = Path(node.state_dir) / "node_id"
            if path.exists():
                found[path.read_text().strip()] = name
        return found

    def node_socket(self, name: str) -> Path:
        return Path(self.node(name).state_dir) / "agent.sock"

    def mount_ns(self, name: str) -> Path:
        node = self.node(name)
        return Path(node.mount_ns or MNTNS_ROOT / self.spec.name / name)

    def node_exec_argv(self, name: str) -> list[str]:
        """Prefix that runs a command inside the node: its network and mount namespaces."""
        return [*_enter(self.node(name).ns), f"--mount={self.mount_ns(name)}"]

    # -- creation ------------------------------------------------------------
    @classmethod
    def create(cls, name: str, nodes: int, expect: int | None = None, catalog: str | None = "lab",
               timing: dict[str, float] | None = None, storage: dict[str, Any] | None = None) -> "Lab":
        _check_name(name)
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces, bridges)")
        if (LAB_ROOT / name / "lab.json").exists():
            raise LabError(f"lab {name!r} is already up; run 'nodeos lab down --name {name}' first")
        if nodes < 1 or nodes > 60:
            raise LabError("--nodes must be between 1 and 60")
        spec = LabSpec(name=name, bridge=f"nlb-{name}", expect=expect or nodes, catalog=catalog, timing=timing or {},
                       storage=storage or {})
        lab = cls(spec)
        for index in range(1, nodes + 1):
            lab._plan_node(index)
        lab.save()  # intent first: `down` can undo a half-made lab
        lab._write_config()
        share_mounts(str(lab.dir))  # volumes mounted under it behave as on a node (systemd's shared /)
        init_identity(lab.identity_path, force=True)
        netns.create_bridge(spec.bridge)
        for node in spec.nodes.values():
            lab._make_node_network(node)
        return lab

    def _plan_node(self, index: int) -> LabNode:
        name = f"n{index}"
        node = LabNode(name=name, index=index, ns=f"nodeos-{self.spec.name}-{name}", veth=f"nlv-{self.spec.name}-{index}",
                       ip=f"{SUBNET_PREFIX}.{10 + index}", state_dir=str(self.dir / "nodes" / name),
                       mount_ns=str(MNTNS_ROOT / self.spec.name / name))
        self.spec.nodes[name] = node
        return node

    def _write_config(self) -> None:
        config: dict[str, Any] = {"bootstrap_expect": self.spec.expect, "interface": "eth0", "runtime": "process",
                                  "watchdog": "lab"}
        if self.spec.catalog:
            config["catalog"] = self.spec.catalog
        if self.spec.timing:
            config["timing"] = dict(self.spec.timing)
        config["storage"] = {**LAB_STORAGE, **self.spec.storage}
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(config))

    def _make_node_network(self, node: LabNode) -> None:
        netns.create_namespace(node.ns, self.spec.bridge, node.veth, f"{node.ip}/{PREFIXLEN}")
        Path(node.state_dir).mkdir(parents=True, exist_ok=True)

    def add_node(self, identity: Path | None = None) -> LabNode:
        """One more node on the bridge; `identity` overrides the lab's (tests: a rogue node)."""
        index = max((n.index for n in self.spec.nodes.values()), default=0) + 1
        node = self._plan_node(index)
        self.save()
        self._make_node_network(node)
        self.start_agent(node.name, identity)
        return node

    def add_client(self) -> str:
        """A namespace on the lab bridge that is not a node: tests probe VIPs from it."""
        if self.spec.client is None:
            self.spec.client = {"ns": f"nodeos-{self.spec.name}-client", "veth": f"nlv-{self.spec.name}-c", "ip": CLIENT_IP}
            self.save()
            netns.create_namespace(self.spec.client["ns"], self.spec.bridge, self.spec.client["veth"], f"{CLIENT_IP}/{PREFIXLEN}")
        return self.spec.client["ns"]

    # -- agents ----------------------------------------------------------------
    def start_agent(self, name: str, identity: Path | None = None) -> int:
        """Boot a node: its watchdog and guard (if not running), then its agent."""
        node = self.node(name)
        if node.pid is not None and _alive(node.pid):
            raise LabError(f"{name}: agent already running (pid {node.pid})")
        state_dir = Path(node.state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        self._journal_in_memory(node)
        self._boot_network(node)
        self._boot_mounts(node)
        self._ensure_watchdog(node)
        self._ensure_guard(node)
        argv = [*_enter(node.ns), sys.executable, "-m", "nodeos.cli", "agent",
                "--config", str(self.config_path), "--identity", str(identity or self.identity_path), "--state-dir", str(state_dir),
                "--node-root", str(mountns.node_root(state_dir)), "--mount-ns", str(self.mount_ns(name))]
        node.pid = _spawn(argv, state_dir / "agent.log")
        self.save()
        return node.pid

    def _journal_in_memory(self, node: LabNode) -> None:
        """Point the node's raft.journal at a file on tmpfs (JOURNAL_ROOT says why); once, before its first start."""
        link = Path(node.state_dir) / "raft.journal"
        if link.is_symlink() or link.exists() or not JOURNAL_ROOT.parent.is_dir():
            return  # already made (a restart keeps its journal), or replaced by hand (tests do)
        target = JOURNAL_ROOT / self.spec.name / node.name
        target.mkdir(parents=True, exist_ok=True)
        os.chmod(target, 0o700)
        # A new file each time: a journal moved aside (the remedy for a damaged one) keeps
        # its file behind the moved link, and the node starts with an empty one.
        link.symlink_to(target / f"raft.journal.{time.time_ns()}")

    def _boot_mounts(self, node: LabNode) -> None:
        """The node's mount namespace (made once, kept across reboots); a node that is
        off (nothing runs in it) boots with an empty /run, as a machine does."""
        root = mountns.node_root(Path(node.state_dir))
        try:
            mountns.create(self.mount_ns(node.name), root)
        except mountns.MountNsError as exc:
            raise LabError(f"{node.name}: {exc}") from None
        if not netns.namespace_pids(node.ns):  # not after kill-agent: its services still run
            mountns.clear_run(root)

    def _ensure_guard(self, node: LabNode) -> None:
        if node.guard_pid is not None and _alive(node.guard_pid):
            return
        state_dir = Path(node.state_dir)
        argv = [*_enter(node.ns), sys.executable, "-m", "nodeos.cli", "guard",
                "--config", str(self.config_path), "--state-dir", str(state_dir)]
        node.guard_pid = _spawn(argv, state_dir / "guard.log")
        self.save()
        # The agent takes no holding before the guard answers; waiting here saves it a retry.
        deadline = time.monotonic() + 10.0
        while not _answers(state_dir / "guard.sock") and time.monotonic() < deadline and _alive(node.guard_pid):
            time.sleep(0.02)

    def _ensure_watchdog(self, node: LabNode) -> None:
        if node.watchdog_pid is not None and _alive(node.watchdog_pid):
            return
        argv = [sys.executable, "-m", "nodeos.lab.watchdog", "--lab", self.spec.name, "--node", node.name,
                "--state-dir", node.state_dir]
        node.watchdog_pid = _spawn(argv, Path(node.state_dir) / "watchdog.log")
        self.save()

    def agent_alive(self, name: str) -> bool:
        node = self.node(name)
        return node.pid is not None and _alive(node.pid)

    def kill_agent(self, name: str) -> int:
        """SIGKILL the agent only: its services, VIPs, guard and network stay (a crashed daemon)."""
        node = self.node(name)
        if node.pid is None or not _alive(node.pid):
            raise LabError(f"{name}: no agent running")
        pid = node.pid
        os.kill(pid, signal.SIGKILL)
        _wait_dead(pid)
        node.pid = None
        self.save()
        return pid

    def hang_agent(self, name: str, seconds: float) -> int:
        """SIGSTOP the agent for `seconds`, then SIGCONT (a hung daemon); blocks meanwhile."""
        node = self.node(name)
        if node.pid is None or not _alive(node.pid):
            raise LabError(f"{name}: no agent running")
        os.kill(node.pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            if _alive(node.pid):
                os.kill(node.pid, signal.SIGCONT)
        return node.pid

    def start_load(self, names: list[str], seconds: float) -> list[int]:
        """A CPU hog per core plus heavy disk writes on each node, for `seconds` (lab/load.py)."""
        pids = []
        for name in names:
            node = self.node(name)
            directory = LOAD_ROOT / f"{self.spec.name}-{name}"
            argv = ["ip", "netns", "exec", node.ns, sys.executable, "-m", "nodeos.lab.load", "--seconds", str(seconds),
                    "--dir", str(directory)]
            pids.append(_spawn(argv, Path(node.state_dir) / "load.log"))
        self.spec.loads = [p for p in self.spec.loads if _alive(p)] + pids
        self.save()
        return pids

    def start_all(self) -> None:
        for name in sorted(self.spec.nodes, key=lambda n: self.spec.nodes[n].index):
            self.start_agent(name)

    def _boot_network(self, node: LabNode) -> None:
        """Like a machine booting: only its own address, and its cable as it was left."""
        result = subprocess.run(["ip", "-n", node.ns, "-j", "-4", "addr", "show", "dev", "eth0"], capture_output=True, text=True, check=True)
        for entry in json.loads(result.stdout or "[]"):
            for addr in entry.get("addr_info", []):
                if addr["local"] != node.ip:
                    subprocess.run(["ip", "-n", node.ns, "addr", "del", f"{addr['local']}/{addr['prefixlen']}", "dev", "eth0"], check=True)
        netns.set_link(None, node.veth, up=not node.disconnected)

    def crash(self, name: str) -> list[int]:
        """A node crash: SIGKILL everything in its namespace, and it falls silent on the wire.

        The namespace's kernel would otherwise keep answering ARP for the
        dead node's VIPs, which a crashed machine does not.
        """
        node = self.node(name)
        netns.set_link(None, node.veth, up=False)
        killed = _kill_namespace(node.ns, signal.SIGKILL)
        _drop_node_mounts(node)  # its kernel's mounts (volumes) die with it
        _disarm_watchdog(node)  # a machine that lost power does not reset itself again later
        for pid in (node.pid, node.guard_pid):
            if pid is not None:
                _reap(pid)
        node.pid = node.guard_pid = None
        self.save()
        return killed

    def stop_agent(self, name: str, timeout: float = 10.0) -> None:
        """Graceful stop: SIGTERM the agent, wait, then kill what is left in the namespace."""
        node = self.node(name)
        if node.pid is not None and _alive(node.pid):
            os.kill(node.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _alive(node.pid) and time.monotonic() < deadline:
                _reap(node.pid)
                time.sleep(0.05)
        self.crash(name)

    def reboot(self, name: str) -> int:
        self.crash(name)
        return self.start_agent(name)

    # -- network faults ------------------------------------------------------
    def disconnect(self, name: str) -> None:
        node = self.node(name)
        node.disconnected = True
        self.save()
        netns.set_link(None, node.veth, up=False)

    def reconnect(self, name: str) -> None:
        node = self.node(name)
        node.disconnected = False
        self.save()
        if node.pid is not None:  # a crashed node stays silent until it is started
            netns.set_link(None, node.veth, up=True)

    def partition(self, side: list[str]) -> None:
        """Cut `side` off from every other node (and the client stays with the majority)."""
        for name in side:
            self.node(name)
        rest = [n for n in self.spec.nodes if n not in side]
        if not side or not rest:
            raise LabError("a partition needs nodes on both sides")
        ports_a = [self.node(n).veth for n in side]
        ports_b = [self.node(n).veth for n in rest] + ([self.spec.client["veth"]] if self.spec.client else [])
        rules = []
        for a in ports_a:
            for b in ports_b:
                rules.append(f'iifname "{a}" oifname "{b}" drop')
                rules.append(f'iifname "{b}" oifname "{a}" drop')
        script = (f"table bridge {self._nft_table()}\ndelete table bridge {self._nft_table()}\n"
                  f"table bridge {self._nft_table()} {{\n chain forward {{\n  type filter hook forward priority 0; policy accept;\n"
                  + "".join(f"  {r}\n" for r in rules) + " }\n}\n")
        _nft(script)
        self.spec.partitioned = [sorted(side), sorted(rest)]
        self.save()

    def heal(self) -> None:
        _nft(f"table bridge {self._nft_table()}\ndelete table bridge {self._nft_table()}\n")
        self.spec.partitioned = None
        self.save()

    def _nft_table(self) -> str:
        return f"nodeos_lab_{self.spec.name}"

    # -- views -------------------------------------------------------------------
    def node_status(self, name: str, timeout: float = 2.0) -> dict[str, Any] | None:
        try:
            code, status = request(self.node_socket(name), "GET", "/status", timeout=timeout)
        except ControlError:
            return None
        return status if code == 200 else None

    def status(self) -> dict[str, Any]:
        nodes = []
        for name in sorted(self.spec.nodes, key=lambda n: self.spec.nodes[n].index):
            node = self.spec.nodes[name]
            running = node.pid is not None and _alive(node.pid)
            nodes.append({"name": name, "namespace": node.ns, "address": node.ip, "agent_pid": node.pid if running else None,
                          "state_dir": node.state_dir, "status": self.node_status(name) if running else None})
        return {"lab": self.spec.name, "bridge": self.spec.bridge, "bootstrap_expect": self.spec.expect,
                "partitioned": self.spec.partitioned, "client": self.spec.client, "nodes": nodes}

    def wait_formed(self, timeout: float = 60.0, names: list[str] | None = None, progress: Any = None) -> dict[str, Any]:
        """Wait until the named (default: all running) nodes are members of one group with one leader."""
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            view = self.cluster_view(names)
            if view["formed"]:
                return view
            if progress is not None and view["summary"] != last:
                progress(view["summary"])
                last = view["summary"]
            if time.monotonic() > deadline:
                raise LabError(f"cluster not formed after {timeout:.0f}s: {view['summary']}")
            time.sleep(0.1)

    def cluster_view(self, names: list[str] | None = None) -> dict[str, Any]:
        names = names or [n for n, node in self.spec.nodes.items() if node.pid is not None]
        statuses = {n: self.node_status(n, timeout=1.0) for n in names}
        phases = {n: (s["formation"] if s else "down") for n, s in statuses.items()}
        groups = {s["group_id"] for s in statuses.values() if s}
        leaders = {s["leader"] for s in statuses.values() if s}
        member_counts = {len(s["members"]) for s in statuses.values() if s}
        named = all(m["node_id"] and m["status"] == "up" for s in statuses.values() if s for m in s["members"])
        formed = (all(p == "member" for p in phases.values()) and len(groups) == 1 and len(leaders) == 1
                  and None not in leaders and member_counts == {len(names)} and named)
        summary = ", ".join(f"{n}={p}" for n, p in sorted(phases.items()))
        return {"formed": formed, "statuses": statuses, "summary": summary,
                "leader": next(iter(leaders)) if len(leaders) == 1 else None}

    def wait_services(self, timeout: float = 60.0, progress: Any = None) -> list[dict[str, Any]]:
        """Wait until every catalog service is placed and healthy (as the first running node sees it)."""
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            rows = self._services_view()
            if rows and all(fully_healthy(r["health"]) for r in rows):
                return rows
            summary = ", ".join(f"{r['name']}={r['health']}" for r in rows) or "no catalog applied yet"
            if progress is not None and summary != last:
                progress(summary)
                last = summary
            if time.monotonic() > deadline:
                raise LabError(f"services not healthy after {timeout:.0f}s: {summary}")
            time.sleep(0.2)

    def _services_view(self) -> list[dict[str, Any]]:
        for name in sorted(self.spec.nodes):
            if self.spec.nodes[name].pid is not None:
                status = self.node_status(name)
                if status is not None:
                    return status["services"]
        return []

    def node_name_of(self, node_id: str) -> str | None:
        for name, node in self.spec.nodes.items():
            try:
                if (Path(node.state_dir) / "node_id").read_text().strip() == node_id:
                    return name
            except FileNotFoundError:
                continue
        return None

    # -- teardown ----------------------------------------------------------------
    def down(self) -> None:
        destroy(self.spec.name)


def _spawn(argv: list[str], logfile_path: Path) -> int:
    """Start a lab process in its own session, logging to `logfile_path`."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("NOTIFY_SOCKET", None)
    with open(logfile_path, "ab") as logfile:
        proc = subprocess.Popen(argv, stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
    return proc.pid


def _answers(socket_path: Path) -> bool:
    """Does a process listen on this Unix socket?"""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(socket_path))
            return True
        except OSError:
            return False


def _disarm_watchdog(node: LabNode) -> None:
    import socket

    from nodeos.fencing.watchdog import LAB_SOCKET

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(b"disarm", str(Path(node.state_dir) / LAB_SOCKET))
        except OSError:
            pass  # no watchdog running: nothing armed


def _wait_dead(pid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)


def fully_healthy(health: str) -> bool:
    """'healthy' for a singleton, 'healthy N/N' for an every-node service."""
    if health == "healthy":
        return True
    word, _, counts = health.partition(" ")
    done, _, total = counts.partition("/")
    return word == "healthy" and done == total and done != "0"


def destroy(name: str) -> list[str]:
    """Remove everything a lab made, from its record and by its names (also after a crash)."""
    removed: list[str] = []
    _kill_recorded_host_processes(name)
    prefix = f"nodeos-{name}-"
    spaces = set(ns for ns in netns.list_namespaces() if ns.startswith(prefix))
    for ns in sorted(spaces):
        _kill_namespace(ns, signal.SIGKILL)
        netns.delete_namespace(ns)
        removed.append(ns)
    # Before the lab dir's mounts: nothing runs in the nodes' mount namespaces any more,
    # and once gone they hold no copies of the volumes about to be unmounted.
    try:
        removed += mountns.destroy_dir(MNTNS_ROOT / name)
    except mountns.MountNsError as exc:
        raise LabError(str(exc)) from None
    root = LAB_ROOT / name
    if root.is_dir():
        removed += drop_mounts_under(str(root))
        unshare_mounts(str(root))
        if any(p.startswith(str(root)) for p in _mount_points()):
            raise LabError(f"{root}: still mounted after the lab's processes were killed; not removing it")
    try:
        _nft(f"table bridge nodeos_lab_{name}\ndelete table bridge nodeos_lab_{name}\n")
    except LabError:
        pass
    for link in _list_links(f"nlv-{name}-") + _list_links(f"nlb-{name}"):
        netns.delete_link(link)
        removed.append(link)
    shutil.rmtree(LAB_ROOT / name, ignore_errors=True)
    shutil.rmtree(JOURNAL_ROOT / name, ignore_errors=True)
    for leftover in LOAD_ROOT.glob(f"{name}-*") if LOAD_ROOT.is_dir() else []:
        shutil.rmtree(leftover, ignore_errors=True)
    return removed


def _enter(ns: str) -> list[str]:
    """Run in the node's network namespace but the host's mount namespace: `ip netns exec`
    would give every agent start a private mount namespace, and a volume mounted by one
    agent process would be invisible to the next one (and to tests)."""
    return ["nsenter", f"--net=/run/netns/{ns}"]


def _drop_node_mounts(node: LabNode) -> None:
    for dropped in drop_mounts_under(node.state_dir):
        log.event("lab.mount_dropped", node=node.name, what=dropped)


def _mount_points() -> list[str]:
    return [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]


def _kill_recorded_host_processes(name: str) -> None:
    """The lab's processes outside its namespaces (emulated watchdogs), by their recorded pids."""
    try:
        data = json.loads((LAB_ROOT / name / "lab.json").read_text())
    except (OSError, ValueError):
        return
    for node in data.get("nodes", {}).values():
        pid = node.get("watchdog_pid")
        if isinstance(pid, int) and _alive(pid) and _cmdline_has(pid, "nodeos.lab.watchdog"):
            os.kill(pid, signal.SIGKILL)
            _wait_dead(pid)


def _cmdline_has(pid: int, word: str) -> bool:
    try:
        return word.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _kill_namespace(ns: str, sig: int) -> list[int]:
    pids = netns.namespace_pids(ns)
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        for pid in pids:
            _reap(pid)
        time.sleep(0.02)
    return pids


def _alive(pid: int) -> bool:
    _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _reap(pid: int) -> None:
    """Collect our own exited children so they do not linger as zombies."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _nft(script: str) -> None:
    result = subprocess.run(["nft", "-f", "-"], input=script, text=True, capture_output=True)
    if result.returncode != 0:
        raise LabError(f"nft failed: {result.stderr.strip()}")


def _list_links(prefix: str) -> list[str]:
    result = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True)
    names = [link["ifname"] for link in json.loads(result.stdout or "[]")]
    return sorted(n for n in names if n == prefix or n.startswith(prefix))
