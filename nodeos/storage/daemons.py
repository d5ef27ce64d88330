"""Real Ceph daemons as plain processes, each node's under its own directory.

The lab's process model: `ceph-mon --mkfs` then `ceph-mon -f`, `ceph-mgr -f`,
`ceph-osd --mkfs` on a file or a blank disk then `ceph-osd -f`, every one
with `--conf` in the node's directory, so several nodes (one network
namespace each, `CephNode.prefix`) run on one host and nothing of the host's
/etc/ceph, /var/lib/ceph or /var/run/ceph is used. Real nodes run the same
steps, or the packaged systemd units on the same data directories.

Secrets never appear on a command line (other users read argv in /proc):
keys reach Ceph through 0600 files or stdin, and errors quote stderr only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from nodeos import log

from .conf import CephPaths, mon_addrs
from .keys import (ADMIN, BOOTSTRAP_OSD, MGR_CAPS, CephKeys, RandomBytes, admin_keyring, bootstrap_osd_keyring,
                   daemon_keyring, make_key, mon_keyring, node_entity, node_keyring)

CLI_TIMEOUT = 30.0
CONNECT_TIMEOUT = 10  # the ceph CLI waits forever for a quorum without it


def connect_timeout(command_timeout: float) -> int:
    """The CLI's wait for the mons: 10 s, or a sixth of a raised `storage.command_timeout`
    (emulated CPUs: under TCG, `auth import` timed out connecting after 10 s, again and again)."""
    return max(CONNECT_TIMEOUT, int(command_timeout / 6))
MKFS_TIMEOUT = 600.0  # a mon store or a bluestore on a slow disk; only the launcher waits
OSD_READY = "nodeos-ready"  # written after a complete mkfs (a crash mid-way leaves none)


class CephError(RuntimeError):
    """A Ceph command failed or timed out; the message holds the command and its stderr."""


@dataclass(frozen=True)
class CephNode:
    """One node's Ceph: its id (mon/mgr name, CRUSH host), address, paths, and where commands run."""

    node_id: str
    ip: str
    paths: CephPaths
    prefix: tuple[str, ...] = ()  # e.g. ("ip", "netns", "exec", NS) in the lab
    command_timeout: float = CLI_TIMEOUT  # a ceph/rados command (storage.command_timeout)

    @property
    def conf(self) -> str:
        return self.paths.conf

    @property
    def admin_keyring(self) -> str:
        return self.paths.keyring(ADMIN)


@dataclass
class Daemon:
    """A started daemon; `pid` is the daemon itself (`ip netns exec` execs, it does not fork)."""

    kind: str  # mon | mgr | osd
    daemon_id: str
    proc: "subprocess.Popen[bytes]" = field(repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def name(self) -> str:
        return f"{self.kind}.{self.daemon_id}"

    def alive(self) -> bool:
        return self.proc.poll() is None


# -- files and commands ----------------------------------------------------------

def write_private(path: str | Path, text: str) -> None:
    """Write a file only root can read (keyrings), atomically."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, target)


def run(node: CephNode, argv: Sequence[str], *, stdin: str | None = None, timeout: float | None = None) -> str:
    """Run a command on `node` (in its namespace); its stdout, or CephError."""
    full = [*node.prefix, *argv]
    timeout = node.command_timeout if timeout is None else timeout
    try:
        result = subprocess.run(full, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise CephError(f"'{' '.join(argv)}' on {node.node_id}: no answer in {timeout:.0f}s") from None
    except OSError as exc:
        raise CephError(f"'{' '.join(argv)}' on {node.node_id}: {exc}") from None
    if result.returncode != 0:
        raise CephError(f"'{' '.join(argv)}' on {node.node_id} failed ({result.returncode}): "
                        f"{result.stderr.strip()[-800:]}")
    return result.stdout


def ceph(node: CephNode, *args: str, name: str = ADMIN, stdin: str | None = None,
         timeout: float | None = None) -> str:
    """The `ceph` CLI on `node` as `name`, whose keyring the conf's [client] section names."""
    return run(node, ["ceph", "--conf", node.conf, "--name", name, "--connect-timeout",
                      str(connect_timeout(node.command_timeout)), *args],
               stdin=stdin, timeout=timeout)


def _start(node: CephNode, kind: str, daemon_id: str, argv: Sequence[str]) -> Daemon:
    out = Path(node.paths.log_dir) / f"ceph-{kind}.{daemon_id}.out"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "ab") as sink:  # the child keeps its own descriptor
        proc = subprocess.Popen([*node.prefix, *argv], stdin=subprocess.DEVNULL, stdout=sink,
                                stderr=subprocess.STDOUT, start_new_session=True)
    log.event("ceph.daemon_started", node=node.node_id, daemon=f"{kind}.{daemon_id}", pid=proc.pid)
    return Daemon(kind, daemon_id, proc)


def stop(daemon: Daemon, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `timeout`; reaps the process. Safe to call twice."""
    if daemon.alive():
        _signal(daemon, signal.SIGTERM)
        try:
            daemon.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill(daemon)
    daemon.proc.poll()


def kill(daemon: Daemon) -> None:
    """SIGKILL (a crash), reaped."""
    _signal(daemon, signal.SIGKILL)
    try:
        daemon.proc.wait(10.0)
    except subprocess.TimeoutExpired:
        pass


def _signal(daemon: Daemon, signum: int) -> None:
    try:
        os.kill(daemon.pid, signum)
    except ProcessLookupError:
        pass


# -- a node's directory ------------------------------------------------------------

def prepare_node(node: CephNode, conf_text: str, keys: CephKeys) -> None:
    """The node's directories, its ceph.conf, and the admin, bootstrap-osd and node client keyrings."""
    for directory in node.paths.dirs():
        Path(directory).mkdir(parents=True, exist_ok=True, mode=0o700)
    write_conf(node, conf_text)
    write_private(node.paths.keyring(ADMIN), admin_keyring(keys))
    write_private(node.paths.keyring(BOOTSTRAP_OSD), bootstrap_osd_keyring(keys))
    if node.node_id in keys.clients:
        write_private(node.paths.keyring(node_entity(node.node_id)), node_keyring(keys, node.node_id))


def write_conf(node: CephNode, conf_text: str) -> None:
    """(Re)write ceph.conf: daemons read it at start, clients at every call."""
    target = Path(node.conf)
    tmp = target.with_name(".ceph.conf.tmp")
    tmp.write_text(conf_text)
    os.replace(tmp, target)


# -- monitors ------------------------------------------------------------------------

def build_monmap(node: CephNode, fsid: str, mons: Mapping[str, str], path: str) -> None:
    """A first monmap naming every initial mon: they form a quorum without a join step."""
    argv = ["monmaptool", "--create", "--clobber", "--fsid", fsid]
    for mon_id in sorted(mons):
        argv += ["--addv", mon_id, mon_addrs(mons[mon_id])]
    run(node, [*argv, path])


def create_mon(node: CephNode, keys: CephKeys, monmap: str) -> None:
    """`ceph-mon --mkfs` with the given monmap; the auth database is seeded with every key."""
    seed = Path(node.paths.keys_dir) / ".mon-mkfs.keyring"
    write_private(seed, mon_keyring(keys))
    try:
        mkfs_mon(node, monmap, str(seed))
    finally:
        seed.unlink(missing_ok=True)


def mon_exists(node: CephNode) -> bool:
    return (Path(node.paths.data("mon", node.node_id)) / "store.db").exists()


def mkfs_mon(node: CephNode, monmap: str, seed_keyring: str) -> None:
    """`ceph-mon --mkfs` from a monmap and a keyring of every key; never over an existing mon."""
    if mon_exists(node):
        return  # made before: mkfs again would lose the mon's state
    data = Path(node.paths.data("mon", node.node_id))
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        run(node, ["ceph-mon", "--conf", node.conf, "--mkfs", "-i", node.node_id, "--monmap", monmap,
                   "--keyring", seed_keyring], timeout=MKFS_TIMEOUT)
    except CephError:
        shutil.rmtree(data, ignore_errors=True)  # half-made: the next try starts clean
        raise


def mon_argv(node: CephNode) -> list[str]:
    # --public-addr: a joining mon is not in its own monmap yet, so it must be told where to bind.
    return ["ceph-mon", "--conf", node.conf, "-f", "-i", node.node_id, "--public-addr", node.ip]


def start_mon(node: CephNode) -> Daemon:
    return _start(node, "mon", node.node_id, mon_argv(node))


def join_mon(node: CephNode, via: CephNode, keys: CephKeys) -> Daemon:
    """A new mon on `node` for a running cluster: today's monmap from `via`, mkfs, start.

    The mon enters the monmap when it joins, alive (see mons.py for why this keeps quorum).
    """
    monmap = str(Path(node.paths.run_dir) / "join.monmap")
    Path(monmap).parent.mkdir(parents=True, exist_ok=True)
    ceph(via, "mon", "getmap", "-o", monmap)
    create_mon(node, keys, monmap)
    return start_mon(node)


def remove_mon(via: CephNode, mon_id: str) -> None:
    """Drop a (dead) mon from the monmap."""
    ceph(via, "mon", "remove", mon_id)


def mon_status(node: CephNode) -> dict[str, Any]:
    """The local mon's own view (state, quorum ranks, monmap), over its admin socket."""
    out = run(node, ["ceph", "--conf", node.conf, "daemon", f"mon.{node.node_id}", "mon_status"], timeout=10.0)
    data = json.loads(out)
    if not isinstance(data, dict):
        raise CephError(f"mon.{node.node_id} mon_status gave no object")
    return data


def quorum(node: CephNode) -> list[str]:
    """Mon names in quorum as the mon on `node` sees them ([] when it has none or does not answer).

    Asked over the admin socket, not the network: a `ceph` CLI call made
    while the mons are still starting hunts for a mon and took 6 s
    (measured), though the quorum formed 0.5 s after the start.
    """
    try:
        status = mon_status(node)
    except (CephError, json.JSONDecodeError):
        return []
    if status.get("state") not in ("leader", "peon"):
        return []
    ranks = set(status.get("quorum") or [])
    return sorted(m["name"] for m in (status.get("monmap") or {}).get("mons", []) if m.get("rank") in ranks)


# -- manager ---------------------------------------------------------------------------

def prepare_mgr(node: CephNode) -> list[str]:
    """The mgr's keyring on `node` (made or fetched from the mons, so the mgr moves freely); its argv."""
    data = Path(node.paths.data("mgr", node.node_id))
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    keyring = data / "keyring"
    if not keyring.exists():
        caps = [word for kind, cap in sorted(MGR_CAPS.items()) for word in (kind, cap)]
        ceph(node, "auth", "get-or-create", f"mgr.{node.node_id}", *caps, "-o", str(keyring))
        keyring.chmod(0o600)
    return ["ceph-mgr", "--conf", node.conf, "-f", "-i", node.node_id]


def start_mgr(node: CephNode) -> Daemon:
    return _start(node, "mgr", node.node_id, prepare_mgr(node))


# -- OSDs ----------------------------------------------------------------------------

def create_osd(node: CephNode, random_bytes: RandomBytes, block: str | None = None,
               block_size: int | None = None) -> int:
    """Register a new OSD with the bootstrap-osd key and make its bluestore; returns its id.

    `block`: a blank disk, or a file to create (default: a file in the node's
    directory, sparse, of `block_size` or the conf's bluestore_block_size).
    Registering first (`ceph osd new`) is what ceph-volume does: the id and
    the cephx key are the mons', the disk only holds a copy.
    """
    osd_uuid = str(uuid.uuid4())
    secret = make_key(random_bytes, time.time())
    osd_id = int(ceph(node, "osd", "new", osd_uuid, "-i", "-", name=BOOTSTRAP_OSD,
                      stdin=json.dumps({"cephx_secret": secret})).strip())
    block_path = block or node.paths.block_file(osd_id)
    try:
        _mkfs_osd(node, osd_id, osd_uuid, secret, block_path, block_size)
    except (CephError, OSError):
        # Like ceph-volume: an id that never got its disk is given back, not left down forever.
        ceph(node, "osd", "purge-new", f"osd.{osd_id}", "--yes-i-really-mean-it", name=BOOTSTRAP_OSD)
        raise
    (Path(node.paths.data("osd", str(osd_id))) / OSD_READY).write_text(block_path + "\n")
    log.event("ceph.osd_created", node=node.node_id, osd=osd_id, block=block_path)
    return osd_id


def local_osds(node: CephNode) -> tuple[list[int], list[int]]:
    """(OSDs made completely on this node, ids whose making was cut short, e.g. by a crash)."""
    ready, broken = [], []
    for data in sorted(Path(node.paths.root, "osd").glob("ceph-*")):
        osd_id = data.name[len("ceph-"):]
        if osd_id.isdigit():
            (ready if (data / OSD_READY).exists() else broken).append(int(osd_id))
    return sorted(ready), sorted(broken)


def purge_osd(node: CephNode, osd_id: int) -> None:
    """Remove an OSD whose data is gone from the cluster (down first: Ceph refuses to purge an up OSD)."""
    ceph(node, "osd", "down", str(osd_id))
    try:
        ceph(node, "osd", "purge", str(osd_id), "--yes-i-really-mean-it")
    except CephError as exc:
        if "does not exist" not in str(exc) and "ENOENT" not in str(exc):
            raise
    shutil.rmtree(node.paths.data("osd", str(osd_id)), ignore_errors=True)
    log.event("ceph.osd_purged", node=node.node_id, osd=osd_id)


def discard_osd(node: CephNode, osd_id: int) -> None:
    """Give back an id whose OSD was never finished, and remove what was made of it."""
    try:
        ceph(node, "osd", "purge-new", f"osd.{osd_id}", "--yes-i-really-mean-it", name=BOOTSTRAP_OSD)
    except CephError as exc:
        if "does not exist" not in str(exc) and "ENOENT" not in str(exc):
            raise
    shutil.rmtree(node.paths.data("osd", str(osd_id)), ignore_errors=True)
    block = Path(node.paths.block_file(osd_id))
    if block.is_file():
        block.unlink()
    log.event("ceph.osd_discarded", node=node.node_id, osd=osd_id)


def _mkfs_osd(node: CephNode, osd_id: int, osd_uuid: str, secret: str, block_path: str,
              block_size: int | None) -> None:
    data = Path(node.paths.data("osd", str(osd_id)))
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(data / "keyring", daemon_keyring(f"osd.{osd_id}", secret))
    monmap = str(data / "activate.monmap")
    ceph(node, "mon", "getmap", "-o", monmap, name=BOOTSTRAP_OSD)
    argv = ["ceph-osd", "--conf", node.conf, "--mkfs", "-i", str(osd_id), "--monmap", monmap,
            "--osd-uuid", osd_uuid, "--osd-objectstore", "bluestore", "--bluestore_block_path", block_path]
    if block_size is not None:
        argv += ["--bluestore_block_size", str(block_size)]
    run(node, argv, timeout=MKFS_TIMEOUT)


def osd_argv(node: CephNode, osd_id: int) -> list[str]:
    return ["ceph-osd", "--conf", node.conf, "-f", "-i", str(osd_id)]


def start_osd(node: CephNode, osd_id: int) -> Daemon:
    return _start(node, "osd", str(osd_id), osd_argv(node, osd_id))


# -- pools and objects -----------------------------------------------------------------

def create_pool(node: CephNode, pool: str, size: int, min_size: int, application: str = "rbd") -> None:
    """A replicated pool (default pg_num from the conf) tagged for `application`; idempotent."""
    ceph(node, "osd", "pool", "create", pool, "replicated")
    if size == 1:
        ceph(node, "osd", "pool", "set", pool, "size", "1", "--yes-i-really-mean-it")
    else:
        ceph(node, "osd", "pool", "set", pool, "size", str(size))
    ceph(node, "osd", "pool", "set", pool, "min_size", str(min_size))
    ceph(node, "osd", "pool", "application", "enable", pool, application)


def rados(node: CephNode, *args: str, timeout: float | None = None) -> str:
    return run(node, ["rados", "--conf", node.conf, "--name", ADMIN, *args], timeout=timeout)


# -- status ------------------------------------------------------------------------------

def _json(conf: str, keyring: str, args: Sequence[str], name: str, prefix: Sequence[str],
          timeout: float) -> dict[str, Any]:
    argv = [*prefix, "ceph", "--conf", conf, "--keyring", keyring, "--name", name,
            "--connect-timeout", str(connect_timeout(timeout)), *args, "-f", "json"]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise CephError(f"'ceph {' '.join(args)}': no answer in {timeout:.0f}s") from None
    if result.returncode != 0:
        raise CephError(f"'ceph {' '.join(args)}' failed ({result.returncode}): {result.stderr.strip()[-800:]}")
    try:
        data = json.loads(result.stdout)
    except json.JSONDecodeError as exc:
        raise CephError(f"'ceph {' '.join(args)}' gave no JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CephError(f"'ceph {' '.join(args)}' gave {type(data).__name__}, not an object")
    return data


def ceph_status(conf: str, keyring: str, *, name: str = ADMIN, prefix: Sequence[str] = (),
                timeout: float = CLI_TIMEOUT) -> dict[str, Any]:
    """`ceph -s -f json`, parsed (fsid, health, monmap, quorum_names, osdmap, pgmap, ...)."""
    return _json(conf, keyring, ["status"], name, prefix, timeout)


def health(conf: str, keyring: str, *, name: str = ADMIN, prefix: Sequence[str] = (),
           timeout: float = CLI_TIMEOUT) -> dict[str, Any]:
    """`ceph health detail`, flattened: {"status": HEALTH_*, "checks": {code: {severity, summary, detail}}}."""
    data = _json(conf, keyring, ["health", "detail"], name, prefix, timeout)
    checks = {}
    for code, check in (data.get("checks") or {}).items():
        checks[code] = {
            "severity": check.get("severity"),
            "summary": (check.get("summary") or {}).get("message", ""),
            "detail": [d.get("message", "") for d in check.get("detail") or []],
        }
    return {"status": data.get("status", "HEALTH_UNKNOWN"), "checks": checks}
