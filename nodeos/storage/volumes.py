"""Volumes: an RBD image attached read-write on one node, formatted, mounted, fenced.

A stateful singleton keeps its data on an RBD image that follows it
(DESIGN.md, invariant 3). This module is the node-side I/O for that:

* `ensure_image`: create the image once (idempotent);
* `attach` / `detach`: one code path, two back-ends probed on the node:
  the kernel client (`rbd device map --exclusive`, real nodes) where
  /sys/bus/rbd exists or `modprobe rbd` works, else rbd-fuse and a loop
  device (hosts without the rbd module, like this lab's);
* `mount` / `unmount`: mkfs only on a blank device, fsck, mount;
* `client_address` / `holders`: who holds an image, as Ceph names clients;
* `blocklist_add` / `blocklist_ls` / `blocklist_rm`: the fence;
* `fence_own_stale`: a node's own dead earlier clients, fenced by itself.

The fence, in the order the Monitor and the agents must keep: the previous
holder's client INSTANCE (`IP:port/nonce`, recorded at attach) is
blocklisted with a long explicit expiry, then the new holder attaches.
Never the node's IP (`IP:0/0` fences the node's OSDs and every volume).
A node that comes back from a reboot before it is declared lost keeps its
singletons, so nobody else fences its previous boot's client: `attach`
first blocklists the holders at the node's own IP (once nothing of this
boot holds the image, what does is dead), never a client of another IP
(`volume_spec.own_stale_holders` holds the argument).

Every attachment has a directory of its own (`volume_dir`), whose
state.json names what was made, step by step, before the next step runs:
`detach` (or `detach_volume` after an agent crash, with no Attachment at
hand) finds leftovers there and by exact paths (the FUSE directory in a
process's argv, the backing file of a loop device), and ends only the
processes it started, by PID checked against their start time. Secrets stay
off command lines: every client reads its key from the keyring the node's
ceph.conf names.

Measured on this lab (Ceph 16.2.15, rbd-fuse with libfuse 2.9, Linux 6.18,
three nodes in network namespaces of one host), the facts the design rests on:

* rbd-fuse has no --id option (its options: -c, -p, -r, and libfuse's); its
  librados reads CEPH_ARGS, and `--id node-<id>` there makes it connect as
  the node's own client (`profile rbd`): its admin socket is named
  `ceph-client.node-node1.<pid>...asok` and `config show` says so.
  client.admin is not needed to attach.
* `ip netns exec` also unshares the mount namespace, so an rbd-fuse started
  under it mounts where the host cannot see: it is started with
  `nsenter --net=/run/netns/NS` (network namespace only).
* rbd-fuse opens the image (and registers its watch) at the first lookup
  of the image's file; the exclusive lock is taken at the first write and
  shows in `rbd lock ls` as `auto <cookie>` with the instance address.
* Exclusive-lock is no fence with rbd-fuse: a second rbd-fuse on another
  node opened the same image while the first held the lock, and both wrote
  (4 KiB O_DIRECT on node2, then an fsynced file on node1): the lock moved
  to whoever wrote, each time, cooperatively.
* After `ceph osd blocklist add <node1 instance> <10 years>`, node1's next
  fsync failed with EIO 0.8-1.2 s after the command started, before the
  CLI returned (1.1-1.4 s); O_DIRECT reads of the loop device failed with
  EIO too, and ext4 went read-only. (rbd-fuse answers a failed rbd_write
  with a short write, which the loop driver turns into EIO.) A SIGTERMed
  fenced rbd-fuse exited and unmounted its FUSE directory at once; its
  detach took 0.03 s.
* The next holder took over at once (attach, e2fsck -p replaying the
  journal, mount: 0.25 s) and found every record node1 had fsynced: the
  OSDs drop a blocklisted instance's watch with the new osdmap, and librbd
  on node2 broke the stale lock. Breaking it, librbd blocklists the old
  holder again without an expiry (the mon's default, 1 h); that did not
  shorten our entry: a re-add keeps a listed address's first expiry (the
  OSDMap inserts, it does not overwrite, though the mon's reply says
  "until <new>"). Hence fence first. The flip side: an address blocklisted
  for 1 h first (a lock break without our fence) is not lengthened by a
  re-add; `blocklist_add` then removes and re-adds it.
* rbd_blocklist_expire_seconds must stay unset: set, librbd sends the
  expiry to the mon as a JSON string, the mon answers EINVAL, the lock is
  never broken, and all the new holder's writes fail (its e2fsck then left
  the journal unreplayed, and `mount` refused).
* rbd-fuse's fsync calls rbd_flush and ignores its result: with librbd's
  cache (the default, write-back after the first flush) an fsync could
  succeed for data still in the cache. Attachments run with rbd_cache=false,
  so a write returns only once the OSDs have it.
* After a SIGKILLed rbd-fuse, the ext4 or xfs mount, the loop device and a
  dead FUSE mount stay; `detach_volume` cleaned them in 0.03 s. The dead
  instance still owned the lock; fenced, the image came back on the same
  node at once (xfs replayed its log, the fsynced file was there).
* A helper that stops answering (SIGSTOP, as I/O stuck when cut off from
  the OSDs) left syncfs hanging on dirty pages; `detach` killed it after
  `stuck_after` (2 s in the test), the pending I/O failed, and the rest
  was cleaned as usual: 2.05 s in all.
* `profile rbd` may `osd blocklist add` (with an expiry) and `ls`, not
  `rm`; its cap also accepts `IP:0/0`, so volume_spec refuses nonce 0.
* Where / is a private mount (containers; this host), every namespace made
  while a volume is mounted (anyone's `ip netns exec`) keeps a private copy
  of the mount: our umount then only detached ours, the filesystem lived
  on (its final write-back failed later, "comm ceph"), and the loop device
  stayed bound. `share_mounts` gives a directory the propagation systemd
  gives / on real nodes; `unmount` runs syncfs first in any case, and
  `pinned_by` names namespaces that still hold a device.
* A reboot (everything of the node SIGKILLed, its agent started again at
  once, the node never declared lost): the new attach's `losetup
  --direct-io=on` on the rbd-fuse file gave no answer until 36-38 s after the
  reboot (two runs; its 5 s try could not end it: the killed losetup stayed
  blocked in the FUSE call), while the OSDs kept the dead client's watch
  (osd_client_watch_timeout, 30 s) and librbd would not break the lock of an
  owner still watching (most likely waited on by the flush that switching to
  direct I/O makes); librbd then broke it, blocklisting the dead client. With
  that client blocklisted first (`fence_own_stale`: 2.2-3.6 s for rbd status,
  rbd lock ls and the blocklist add), losetup took 0.6 s (the lock break) and
  MariaDB took writes 5.3-6.5 s after the reboot instead of 37.7-38.9 s.
* Times on this 2-core host: attach 0.2 s, mkfs.ext4 (128 MiB) and mount
  0.35 s, mkfs.xfs (320 MiB) and mount 2 s, unmount and detach 0.1 s.

The kernel back-end (`rbd device map --exclusive`, `noshare`,
`lock_timeout`; the address from /sys/bus/rbd/devices/N/client_addr;
`rbd device unmap [-o force]`; leftovers from `rbd device list`) is written
from Ceph's and the kernel's documentation and is UNTESTED here (no rbd
module on this host); unit tests pin its commands and parsers. On real
nodes the kernel client, too, breaks a dead holder's lock with the mon's
default blocklist expiry: fencing first keeps ours.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Sequence

import psutil

from nodeos import log

from .daemons import CephNode, connect_timeout
from .keys import ADMIN, node_entity
from .volume_spec import (BLOCKLIST_EXPIRE, FILESYSTEMS, FUSE, KRBD, LOCK_TIMEOUT, MOUNT_TIMEOUT, Attachment,
                          BlocklistEntry, Leftovers, MountEntry, VolumeError, Watcher, blocklist_reply_until,
                          check_instance_address, check_name, choose_backend, create_argv, find_mapping, fsck_argv,
                          fsck_ok, fuse_argv, fuse_ceph_args, fuse_prefix, krbd_list_argv, krbd_map_argv,
                          krbd_unmap_argv, looks_blank, losetup_argv, mkfs_argv, mount_of, mount_options,
                          own_stale_holders, parse_blkid, parse_blocklist, parse_lockers, parse_mountinfo,
                          parse_showmapped, parse_watchers, rbd_argv, until_seconds)

__all__ = ["Attachment", "BlocklistEntry", "VolumeError", "attach", "blocklist_add", "blocklist_ls", "blocklist_rm",
           "client_address", "detach", "detach_volume", "ensure_image", "fence_own_stale", "holders", "mount",
           "pinned_by", "probe_backend", "share_mounts", "unmount", "unshare_mounts", "volume_dir", "watchers"]

CLI_TIMEOUT = 30.0
ATTACH_TIMEOUT = MOUNT_TIMEOUT + 15.0  # rbd-fuse gives up connecting after MOUNT_TIMEOUT
MKFS_TIMEOUT = 300.0
# Right after the holder's node died, a Ceph client whose first op went to the dead OSD
# stays stuck long after that OSD is marked down (measured: one `rbd status` 20 s),
# while a fresh one succeeds at once (+0.4 s after the mark). So attach asks in short
# tries: ATTACH_TRY each, for ATTACH_PATIENCE in all.
ATTACH_TRY = 2.5
ATTACH_PATIENCE = 30.0
# The same holds for rbd-fuse: losetup's open of the image file is rbd-fuse's first
# op, and a client stuck on the dead OSD held losetup for its whole 30 s time-out
# (bench cloud, each Monitor crash). So a new rbd-fuse is tried every LOSETUP_TRY.
LOSETUP_TRY = 5.0
# The self-fence (`fence_own_stale`) is an optimisation: it gives up sooner than the attach,
# so a Ceph that does not answer costs the volume helper's call less of its CALL_TIMEOUT.
FENCE_PATIENCE = 10.0
UMOUNT_TIMEOUT = 15.0  # then the helper is killed (FUSE I/O fails) and the unmount is lazy
STOP_TIMEOUT = 5.0  # SIGTERM to SIGKILL
HEAD_BYTES = 1 << 20  # read before mkfs: must be zeros
STATE = "state.json"

# Popen objects of helpers this process started, so they are reaped, not left as zombies.
_children: dict[int, "subprocess.Popen[Any]"] = {}


# -- commands ------------------------------------------------------------------------

def _run(argv: Sequence[str], *, what: str, prefix: Sequence[str] = (), timeout: float = CLI_TIMEOUT,
         ok: Sequence[int] = (0,)) -> subprocess.CompletedProcess[str]:
    """Run a command; VolumeError naming `what` and quoting stderr unless its exit code is in `ok`."""
    full = [*prefix, *argv]
    try:
        result = subprocess.run(full, capture_output=True, text=True, timeout=timeout, check=False,
                                stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise VolumeTimeout(f"{what}: '{' '.join(argv)}' gave no answer in {timeout:.0f}s") from None
    except OSError as exc:
        raise VolumeError(f"{what}: '{' '.join(argv)}': {exc}") from None
    if result.returncode not in ok:
        raise VolumeError(f"{what}: '{' '.join(argv)}' failed ({result.returncode}): "
                          f"{(result.stderr.strip() or result.stdout.strip())[-800:]}")
    return result


def _rbd(node: CephNode, name: str, *args: str, what: str, ok: Sequence[int] = (0,),
         timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return _run(rbd_argv(node.conf, name, *args), what=f"{what} on {node.node_id}", prefix=node.prefix,
                timeout=timeout, ok=ok)


def _ceph(node: CephNode, name: str, *args: str, what: str) -> subprocess.CompletedProcess[str]:
    argv = ["ceph", "--conf", node.conf, "--name", name, "--connect-timeout", str(connect_timeout(node.command_timeout)), *args]
    return _run(argv, what=f"{what} on {node.node_id}", prefix=node.prefix)


# -- images ------------------------------------------------------------------------------

def ensure_image(node: CephNode, pool: str, image: str, size_bytes: int, *, name: str | None = None) -> bool:
    """Create pool/image of `size_bytes` unless it exists; True if this call created it.

    An existing image is left as it is (never resized or recreated: it holds
    a service's data). Two nodes racing to create it both succeed.
    """
    name = name or node_entity(node.node_id)
    argv = create_argv(node.conf, name, pool, image, size_bytes)  # validates before any I/O
    info = _rbd(node, name, "info", f"{pool}/{image}", "--format", "json", what="rbd info", ok=(0, 2))
    if info.returncode == 0:
        return False
    created = _run(argv, what=f"rbd create on {node.node_id}", prefix=node.prefix, ok=(0, errno.EEXIST))
    if created.returncode == errno.EEXIST:
        return False
    log.event("volume.image_created", node=node.node_id, image=f"{pool}/{image}", size=size_bytes)
    return True


# -- who holds an image ------------------------------------------------------------------

def watchers(node: CephNode, pool: str, image: str, *, name: str | None = None,
             timeout: float = CLI_TIMEOUT) -> list[Watcher]:
    """Clients with the image open read-write (`rbd status`), with their instance addresses."""
    name = name or node_entity(node.node_id)
    out = _rbd(node, name, "status", f"{check_name('pool', pool)}/{check_name('image', image)}", "--format", "json",
               what="rbd status", timeout=timeout)
    return parse_watchers(out.stdout)


def _watchers_patiently(node: CephNode, pool: str, image: str, name: str,
                        patience: float = ATTACH_PATIENCE) -> list[Watcher]:
    """`watchers` in short tries (a fresh client each), until `patience` runs out."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return watchers(node, pool, image, name=name, timeout=ATTACH_TRY)
        except VolumeError:
            if time.monotonic() + ATTACH_TRY > deadline:
                raise
            time.sleep(0.2)


def _lock_owners(node: CephNode, pool: str, image: str, name: str, timeout: float = CLI_TIMEOUT) -> list[str]:
    out = _rbd(node, name, "lock", "ls", f"{pool}/{image}", "--format", "json", what="rbd lock ls", timeout=timeout)
    return [locker.address for locker in parse_lockers(out.stdout)]


def _lock_owners_patiently(node: CephNode, pool: str, image: str, name: str, patience: float) -> list[str]:
    """`_lock_owners` in short tries, as `_watchers_patiently`."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return _lock_owners(node, pool, image, name, timeout=ATTACH_TRY)
        except VolumeError:
            if time.monotonic() + ATTACH_TRY > deadline:
                raise
            time.sleep(0.2)


def holders(node: CephNode, pool: str, image: str, *, name: str | None = None) -> list[str]:
    """Every instance that may write the image: lock owner and watchers. What a move must fence."""
    name = name or node_entity(node.node_id)
    found = {w.address for w in watchers(node, pool, image, name=name)}
    found.update(_lock_owners(node, pool, image, name))
    return sorted(found)


def client_address(node: CephNode, pool: str, image: str, *, name: str | None = None) -> str | None:
    """The instance address of the image's current holder (for the replicated state), or None.

    The exclusive-lock owner if there is one (it is the writer), else the one
    watcher; several watchers and no lock owner is ambiguous (VolumeError:
    fence them all, see `holders`).
    """
    name = name or node_entity(node.node_id)
    owners = _lock_owners(node, pool, image, name)
    live = sorted({w.address for w in watchers(node, pool, image, name=name)})
    writing = [a for a in owners if a in live]
    if len(writing) == 1:
        return writing[0]  # the lock owner, alive
    if len(live) == 1 and not writing:
        return live[0]  # attached, not written yet (the lock is taken at the first write)
    if not live and len(owners) <= 1:
        return next(iter(owners), None)  # a dead holder's lock, or nobody
    raise VolumeError(f"{pool}/{image} has several possible holders: {sorted(set(owners) | set(live))}")


# -- fencing -------------------------------------------------------------------------------

def blocklist_ls(node: CephNode, *, name: str = ADMIN) -> list[BlocklistEntry]:
    """The cluster's blocklist (`profile rbd` may read it too)."""
    out = _ceph(node, name, "osd", "blocklist", "ls", "--format", "json", what="blocklist ls")
    return parse_blocklist(out.stdout)


def blocklist_add(node: CephNode, address: str, expire_seconds: int = BLOCKLIST_EXPIRE, *,
                  name: str = ADMIN) -> BlocklistEntry:
    """Fence one client instance for `expire_seconds`; returns the entry as the OSDMap holds it.

    Idempotent. A re-add never changes a listed entry's expiry (measured), so
    an entry found shorter than asked by more than a minute (someone's lock
    break with the default 1 h) is removed and added again; that needs a
    client allowed to remove (admin), and leaves the address unfenced for
    one osdmap epoch: the lesser risk than an expiry after which a
    partitioned old holder could write again.
    """
    check_instance_address(address)
    if expire_seconds < 1:
        raise VolumeError("a fence needs a positive expiry (0 would mean the mon's default, 1 h)")
    reply = _ceph(node, name, "osd", "blocklist", "add", address, str(int(expire_seconds)), what="blocklist add")
    wanted = blocklist_reply_until(reply.stderr)
    entry = _listed(node, address, name)
    if entry is not None and wanted is not None and until_seconds(entry.until) < wanted - 60:
        log.event("volume.blocklist_extend", level="warning", node=node.node_id, address=address,
                  until=entry.until)
        _ceph(node, name, "osd", "blocklist", "rm", address, what="blocklist rm (to extend)")
        _ceph(node, name, "osd", "blocklist", "add", address, str(int(expire_seconds)), what="blocklist add")
        entry = _listed(node, address, name)
    if entry is None:
        raise VolumeError(f"blocklist add on {node.node_id}: {address} is not listed afterwards")
    log.event("volume.fenced", node=node.node_id, address=address, until=entry.until)
    return entry


def blocklist_rm(node: CephNode, address: str, *, name: str = ADMIN) -> None:
    """Lift a fence (an operator's repair, never part of a move); no error if not listed."""
    if not isinstance(address, str) or "/" not in address:
        raise VolumeError(f"{address!r} is not a blocklist address (IP:port/nonce)")
    _ceph(node, name, "osd", "blocklist", "rm", address, what="blocklist rm")
    log.event("volume.unfenced", node=node.node_id, address=address)


def _listed(node: CephNode, address: str, name: str) -> BlocklistEntry | None:
    return next((e for e in blocklist_ls(node, name=name) if e.address == address), None)


def fence_own_stale(node: CephNode, pool: str, image: str, *, name: str | None = None) -> list[str]:
    """Blocklist this node's earlier client instances still holding pool/image; the addresses fenced.

    A rebooted node keeps its singleton when it comes back before it is
    declared lost, so nobody fences its dead client, whose watch and lock
    Ceph keeps until the OSDs' watch timeout: a new attach waited that out
    (about 30 s). `own_stale_holders` says which holders are safe to fence.
    Best effort: a failure is logged and the attach goes on, waiting as
    before (librbd breaks the dead holder's lock once its watch is gone).
    """
    name = name or node_entity(node.node_id)
    try:
        found = {w.address for w in _watchers_patiently(node, pool, image, name, FENCE_PATIENCE)}
        found.update(_lock_owners_patiently(node, pool, image, name, FENCE_PATIENCE))
        stale = own_stale_holders(found, node.ip, _recorded_addresses(node))
    except VolumeError as exc:
        log.event("volume.self_fence_failed", level="warning", node=node.node_id, image=f"{pool}/{image}",
                  error=str(exc))
        return []
    fenced = []
    for address in stale:
        try:
            blocklist_add(node, address, BLOCKLIST_EXPIRE, name=name)
        except VolumeError as exc:
            log.event("volume.self_fence_failed", level="warning", node=node.node_id, image=f"{pool}/{image}",
                      address=address, error=str(exc))
            continue
        fenced.append(address)
    if fenced:
        log.event("volume.self_fenced", level="warning", node=node.node_id, image=f"{pool}/{image}", addresses=fenced)
    return fenced


def _recorded_addresses(node: CephNode) -> set[str]:
    """Client addresses this node's attachment records name (any image): never its own fence's target."""
    found = set()
    for path in (Path(node.paths.run_dir) / "volumes").glob(f"*/*/{STATE}"):
        try:
            current = json.loads(path.read_text()).get("attachment") or {}
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(current, dict) and isinstance(current.get("address"), str):
            found.add(current["address"])
    return found


# -- the per-volume directory and its state file ------------------------------------------

def volume_dir(node: CephNode, pool: str, image: str) -> Path:
    """Where one volume's attachment keeps its state, FUSE directory and helper log."""
    return Path(node.paths.run_dir) / "volumes" / check_name("pool", pool) / check_name("image", image)


def _write_state(vdir: Path, header: dict[str, object], left: Leftovers, attachment: Attachment | None) -> None:
    vdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = vdir / f".{STATE}.tmp"
    tmp.write_text(json.dumps({**header, "leftovers": left.to_wire(),
                               "attachment": attachment.to_wire() if attachment else None}, indent=1))
    os.replace(tmp, vdir / STATE)


def _read_state(vdir: Path) -> dict[str, object] | None:
    try:
        data = json.loads((vdir / STATE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise VolumeError(f"{vdir / STATE}: unreadable ({exc}); clean it up by hand") from None
    return data if isinstance(data, dict) else None


# -- attach --------------------------------------------------------------------------------

def probe_backend() -> str:
    """KRBD where the kernel has (or loads) the rbd module, else FUSE where /dev/fuse and the tools are."""
    has_bus = Path("/sys/bus/rbd").exists()
    modprobe_ok = False
    if not has_bus and shutil.which("modprobe"):
        try:
            modprobe_ok = subprocess.run(["modprobe", "rbd"], capture_output=True, timeout=10,
                                         check=False).returncode == 0 and Path("/sys/bus/rbd").exists()
        except (OSError, subprocess.TimeoutExpired):
            modprobe_ok = False
    has_fuse = (Path("/dev/fuse").exists() and shutil.which("rbd-fuse") is not None
                and shutil.which("losetup") is not None)
    return choose_backend(has_bus, modprobe_ok, has_fuse)


def attach(node: CephNode, pool: str, image: str, *, name: str | None = None,
           backend: str | None = None, fence_own: bool = False) -> Attachment:
    """Attach pool/image read-write on `node` as the node's own client; the Attachment names the holder.

    Safe to call again: an intact attachment of this image on this node is
    returned as it is, unless its instance was fenced since (one `blocklist
    ls`); leftovers of a broken or fenced one are cleaned up first. The
    caller must have fenced every other holder (`holders`) before: with
    rbd-fuse, exclusive-lock hands the image over to any writer.

    `fence_own`: this node held the image before (a reboot, a crash of its
    helper): its dead earlier clients are blocklisted first (`fence_own_stale`).
    Only then: two more Ceph calls on every attach would slow every failover.
    """
    name = name or node_entity(node.node_id)
    vdir = volume_dir(node, pool, image)
    state = _read_state(vdir)
    if state is not None:
        current = state.get("attachment")
        if isinstance(current, dict):
            attachment = Attachment.from_wire(current)
            if _intact(attachment) and _listed(node, attachment.address, name) is None:
                return attachment
        _detach_state(vdir, state, force=True)
    backend = backend or probe_backend()
    if backend not in (KRBD, FUSE):
        raise VolumeError(f"unknown attach back-end {backend!r}")
    started = time.monotonic()
    # Nothing of ours holds it now: what holds it at our IP is dead.
    fenced = fence_own_stale(node, pool, image, name=name) if fence_own else []
    attachment = (_attach_krbd if backend == KRBD else _attach_fuse)(node, pool, image, name, vdir)
    attachment = dataclasses.replace(attachment, fenced_own=tuple(fenced))
    log.event("volume.attached", node=node.node_id, image=attachment.spec, backend=backend,
              device=attachment.device, address=attachment.address, seconds=round(time.monotonic() - started, 3))
    return attachment


def _header(node: CephNode, pool: str, image: str, name: str, backend: str) -> dict[str, object]:
    return {"node_id": node.node_id, "pool": pool, "image": image, "client": name, "backend": backend,
            "conf": node.conf}


class VolumeTimeout(VolumeError):
    """A command gave no answer in its time."""


def _attach_fuse(node: CephNode, pool: str, image: str, name: str, vdir: Path) -> Attachment:
    """rbd-fuse + loop, in tries with a fresh rbd-fuse each (LOSETUP_TRY says why)."""
    deadline = time.monotonic() + ATTACH_PATIENCE
    attempt = 1
    while True:
        try:
            return _attach_fuse_once(node, pool, image, name, vdir)
        except VolumeTimeout as exc:
            if time.monotonic() + LOSETUP_TRY > deadline:
                raise
            log.event("volume.attach_retry", level="warning", image=f"{pool}/{image}", attempt=attempt, error=str(exc))
            attempt += 1


def _attach_fuse_once(node: CephNode, pool: str, image: str, name: str, vdir: Path) -> Attachment:
    header = _header(node, pool, image, name, FUSE)
    fuse_dir = vdir / "fuse"
    fuse_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    left = Leftovers(fuse_dir=str(fuse_dir))
    _write_state(vdir, header, left, None)  # before anything exists: a crash from here on is found
    marks = [time.monotonic()]
    before = {w.address for w in _watchers_patiently(node, pool, image, name)}
    marks.append(time.monotonic())
    env = {**os.environ, "CEPH_ARGS": fuse_ceph_args(name)}
    try:
        with open(vdir / "rbd-fuse.log", "ab") as sink:
            proc = subprocess.Popen([*fuse_prefix(node.prefix), *fuse_argv(node.conf, pool, image, str(fuse_dir))],
                                    env=env, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        _children[proc.pid] = proc
        left.pids, left.pid_starts = [proc.pid], [_start_time(proc.pid) or 0.0]
        _write_state(vdir, header, left, None)
        _wait_fuse(proc, fuse_dir, image, vdir)
        marks.append(time.monotonic())
        loop = _run(losetup_argv(str(fuse_dir / image)), what=f"losetup on {node.node_id}", timeout=LOSETUP_TRY).stdout.strip()
        left.loop = loop
        _write_state(vdir, header, left, None)
        marks.append(time.monotonic())
        address = _new_holder(node, pool, image, name, before)
        marks.append(time.monotonic())
        log.event("volume.attach_phases", image=f"{pool}/{image}",
                  **{step: round(b - a, 3) for step, a, b in zip(("status", "fuse_open", "losetup", "holder"),
                                                                 marks, marks[1:])})
        attachment = Attachment(node.node_id, pool, image, name, FUSE, loop, address, str(vdir),
                                tuple(left.pids), tuple(left.pid_starts), str(fuse_dir))
        _write_state(vdir, header, left, attachment)
        return attachment
    except BaseException:
        _cleanup(left, force=True)
        (vdir / STATE).unlink(missing_ok=True)
        raise


def _wait_fuse(proc: "subprocess.Popen[bytes]", fuse_dir: Path, image: str, vdir: Path) -> None:
    """Until rbd-fuse has mounted and opened the image (the lookup opens it and registers the watch)."""
    deadline = time.monotonic() + ATTACH_TIMEOUT
    while not _mounted(str(fuse_dir)):
        if proc.poll() is not None:
            raise VolumeError(f"rbd-fuse exited ({proc.returncode}) before mounting: {_tail(vdir / 'rbd-fuse.log')}")
        if time.monotonic() > deadline:
            raise VolumeError(f"rbd-fuse did not mount {fuse_dir} in {ATTACH_TIMEOUT:.0f}s")
        time.sleep(0.02)
    try:
        # Blocks until rbd-fuse has connected: at most MOUNT_TIMEOUT, then it exits and this fails.
        os.stat(fuse_dir / image)
    except OSError as exc:
        raise VolumeError(f"rbd-fuse cannot open {image}: {exc}; {_tail(vdir / 'rbd-fuse.log')}") from None


def _new_holder(node: CephNode, pool: str, image: str, name: str, before: set[str]) -> str:
    """Our client's instance address: the watcher that was not there before we attached."""
    deadline = time.monotonic() + 10.0
    while True:
        new = [w.address for w in _watchers_patiently(node, pool, image, name) if w.address not in before]
        if len(new) == 1:
            return new[0]
        if len(new) > 1:
            raise VolumeError(f"{pool}/{image}: several new watchers {new}, cannot tell which is ours")
        if time.monotonic() > deadline:
            raise VolumeError(f"{pool}/{image}: attached, but no watcher of ours in rbd status")
        time.sleep(0.2)


def _attach_krbd(node: CephNode, pool: str, image: str, name: str, vdir: Path) -> Attachment:
    """UNTESTED here (no rbd module): `rbd device map --exclusive`, the address from sysfs."""
    header = _header(node, pool, image, name, KRBD)
    left = Leftovers()
    _write_state(vdir, header, left, None)
    try:
        out = _run(krbd_map_argv(node.conf, name, pool, image), what=f"rbd device map on {node.node_id}",
                   prefix=node.prefix, timeout=LOCK_TIMEOUT + CLI_TIMEOUT)
        device = out.stdout.strip().splitlines()[-1].strip() if out.stdout.strip() else ""
        if not device.startswith("/dev/rbd"):
            raise VolumeError(f"rbd device map on {node.node_id}: no device in its output {out.stdout!r}")
        left.rbd_device = device
        _write_state(vdir, header, left, None)
        sysfs = Path("/sys/bus/rbd/devices") / device[len("/dev/rbd"):] / "client_addr"
        address = check_instance_address(sysfs.read_text().strip())
        attachment = Attachment(node.node_id, pool, image, name, KRBD, device, address, str(vdir))
        _write_state(vdir, {**header}, left, attachment)
        return attachment
    except BaseException:
        _cleanup_krbd(node.conf, name, pool, image, left, force=True)
        (vdir / STATE).unlink(missing_ok=True)
        raise


def _intact(attachment: Attachment) -> bool:
    """Is everything of this attachment still there (helper alive, device bound, mounts in place)?"""
    if attachment.mount_point and _mount_source(attachment.mount_point) != attachment.device:
        return False
    if attachment.backend == KRBD:
        dev_id = attachment.device[len("/dev/rbd"):]
        return Path(f"/sys/bus/rbd/devices/{dev_id}").exists()
    return (all(_is_ours(pid, start, attachment.fuse_dir or "")
                for pid, start in zip(attachment.pids, attachment.pid_starts))
            and bool(attachment.pids) and _mounted(attachment.fuse_dir or "")
            and _loop_backing(attachment.device) == str(Path(attachment.fuse_dir or "") / attachment.image))


# -- detach --------------------------------------------------------------------------------

def detach(attachment: Attachment, *, force: bool = False, stuck_after: float = UMOUNT_TIMEOUT) -> None:
    """Unmount, release the device, end the helper; idempotent, bounded in time.

    Works from the state file, so whatever the attachment got to make is
    found. A sync or unmount that does not finish in `stuck_after` seconds
    (a helper cut off from the OSDs, or hung) gets the helper SIGKILLed,
    which fails the pending I/O, and is tried again, lazily at last. A busy
    mount point (a process still using it) is an error unless `force`, which
    unmounts it lazily.
    """
    vdir = Path(attachment.state_dir)
    state = _read_state(vdir) or {"backend": attachment.backend, "client": attachment.client,
                                  "pool": attachment.pool, "image": attachment.image,
                                  "leftovers": _leftovers_of(attachment).to_wire()}
    _detach_state(vdir, state, force=force, stuck_after=stuck_after)


def detach_volume(node: CephNode, pool: str, image: str, *, force: bool = True,
                  stuck_after: float = UMOUNT_TIMEOUT) -> bool:
    """Detach whatever its state file says of pool/image on `node` (after an agent crash); True if any."""
    vdir = volume_dir(node, pool, image)
    state = _read_state(vdir)
    if state is None:
        return False
    _detach_state(vdir, state, force=force, stuck_after=stuck_after)
    return True


def _leftovers_of(attachment: Attachment) -> Leftovers:
    return Leftovers(pids=list(attachment.pids), pid_starts=list(attachment.pid_starts),
                     loop=attachment.device if attachment.backend == FUSE else None,
                     rbd_device=attachment.device if attachment.backend == KRBD else None,
                     fuse_dir=attachment.fuse_dir, mount_point=attachment.mount_point)


def _detach_state(vdir: Path, state: dict[str, object], *, force: bool, stuck_after: float = UMOUNT_TIMEOUT) -> None:
    started = time.monotonic()
    _reap_all()
    left = Leftovers.from_wire(state.get("leftovers") or {})  # type: ignore[arg-type]
    if state.get("backend") == KRBD:
        _cleanup_krbd(str(state.get("conf", "")), str(state.get("client", "")), str(state.get("pool", "")),
                      str(state.get("image", "")), left, force=force, stuck_after=stuck_after)
    else:
        _cleanup(left, force=force, stuck_after=stuck_after)
    (vdir / STATE).unlink(missing_ok=True)
    log.event("volume.detached", image=f"{state.get('pool')}/{state.get('image')}", dir=str(vdir),
              seconds=round(time.monotonic() - started, 3))


def _cleanup(left: Leftovers, *, force: bool, stuck_after: float = UMOUNT_TIMEOUT) -> None:
    """FUSE back-end, in order: filesystem, loop device, rbd-fuse, its FUSE mount."""
    fuse_dir = left.fuse_dir
    backing = fuse_dir.rstrip("/") + "/" if fuse_dir else None
    pids = list(zip(left.pids, left.pid_starts))
    if fuse_dir:  # a helper started just before a crash, not yet recorded: found by its exact argv
        pids += [(pid, start) for pid, start in _helpers_by_argv(fuse_dir) if pid not in left.pids]
    loops = [left.loop] if left.loop else []
    if backing:
        loops += [d for d in _loops_backed_under(backing) if d not in loops]
    loops = [d for d in loops if backing is None or (_loop_backing(d) or "").startswith(backing)]
    mount_points = _our_mount_points(loops)

    killed = False
    for mount_point in mount_points:
        killed = _umount(mount_point, pids, force=force, stuck_after=stuck_after) or killed
    for loop in loops:  # still backed by our file: a released and reused one was dropped above
        _run(["losetup", "--detach", loop], what="losetup --detach", ok=(0, 1))
        if _loop_backing(loop) is not None:  # still open (a pinned mount): cleared when the last user goes
            log.event("volume.loop_pending", level="warning", device=loop)
    for pid, start in pids:
        _stop(pid, start, fuse_dir or "", signal.SIGKILL if killed else signal.SIGTERM)
    if fuse_dir and _mounted(fuse_dir):  # rbd-fuse SIGKILLed: its mount stays, "not connected"
        _run(["umount", "--lazy", fuse_dir], what="umount FUSE", ok=(0, 32))


def _umount(mount_point: str, pids: list[tuple[int, float]], *, force: bool,
            stuck_after: float = UMOUNT_TIMEOUT) -> bool:
    """syncfs, then unmount, bounded; True if the helpers had to be SIGKILLed to get there.

    The syncfs makes a clean unmount durable even where another mount
    namespace still holds a copy of the mount (then umount only detaches
    ours, and the filesystem is written back whenever the last copy goes).
    A step that hangs (I/O stuck in a helper cut off from the OSDs) gets the
    helpers SIGKILLed, which fails the pending FUSE I/O, and is tried again.
    """
    source = _mount_source(mount_point)
    if source is None:
        return False
    killed = False
    for step in (["sync", "--file-system", mount_point], ["umount", mount_point]):
        outcome = _bounded(step, stuck_after)
        if outcome is None and pids:
            for pid, start in pids:
                _stop(pid, start, None, signal.SIGKILL)
            killed = True
            log.event("volume.helper_killed", level="warning", step=step[0], mount_point=mount_point)
            outcome = _bounded(step, stuck_after)
        if step[0] == "sync":
            continue  # a fenced or broken device cannot be synced; unmount all the same
        if outcome is not None and (outcome[0] == 0 or not _mounted(mount_point)):
            _warn_pinned(source)
            return killed
        if outcome is not None and not force:
            raise VolumeError(f"umount {mount_point} failed ({outcome[0]}): {outcome[1].strip()[-400:]}")
    if _mounted(mount_point):
        _run(["umount", "--lazy", mount_point], what="umount --lazy", ok=(0, 32))
        log.event("volume.umount_lazy", level="warning", mount_point=mount_point)
    return killed


def _warn_pinned(device: str) -> None:
    if device.startswith("/dev/"):
        pins = pinned_by(device)
        if pins:
            log.event("volume.pinned", level="warning", device=device, namespaces=len(pins), pids=pins[:5])


def _bounded(argv: Sequence[str], timeout: float) -> tuple[int, str] | None:
    """(exit code, stderr), or None if it did not finish in `timeout` (it is killed, reaped later)."""
    proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        _out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # a task in uninterruptible sleep dies when its I/O fails
        _children[proc.pid] = proc
        return None
    return proc.returncode, err


def _cleanup_krbd(conf: str, name: str, pool: str, image: str, left: Leftovers, *, force: bool,
                  stuck_after: float = UMOUNT_TIMEOUT) -> None:
    """Kernel back-end (UNTESTED here): filesystem, then `rbd device unmap`, forced if it must."""
    devices = [left.rbd_device] if left.rbd_device else []
    if not devices and pool and image and Path("/sys/bus/rbd").exists():
        rows = parse_showmapped(_run(krbd_list_argv(conf, name), what="rbd device list").stdout)
        found = find_mapping(rows, pool, image)
        devices = [found] if found else []
    for mount_point in _our_mount_points(devices):
        _umount(mount_point, [], force=force, stuck_after=stuck_after)
    for device in devices:
        if not Path(f"/sys/bus/rbd/devices/{device[len('/dev/rbd'):]}").exists():
            continue
        try:
            _run(krbd_unmap_argv(conf, name, device), what="rbd device unmap", timeout=stuck_after)
        except VolumeError:
            _run(krbd_unmap_argv(conf, name, device, force=True), what="rbd device unmap -o force")


# -- processes, mounts, loop devices: found by exact PID, path, device ----------------------

def _start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _is_ours(pid: int, start: float, fuse_dir: str | None) -> bool:
    """Is `pid` still the process we started (same start time; our FUSE directory in its argv)?"""
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - start) > 0.05 or proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return fuse_dir is None or fuse_dir in proc.cmdline()
    except psutil.Error:
        return False


def _helpers_by_argv(fuse_dir: str) -> list[tuple[int, float]]:
    """rbd-fuse processes whose argv holds exactly this FUSE directory (none of anyone else's)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "create_time"]):
        cmdline = proc.info.get("cmdline") or []
        # nsenter execs rbd-fuse: for a moment argv[0] is nsenter, with the same argv after it.
        if (cmdline and os.path.basename(cmdline[0]) in ("rbd-fuse", "nsenter") and "rbd-fuse" in
                [os.path.basename(word) for word in cmdline] and fuse_dir in cmdline[1:]):
            found.append((proc.info["pid"], proc.info["create_time"]))
    return found


def _stop(pid: int, start: float, fuse_dir: str | None, first: signal.Signals) -> None:
    """`first` (SIGTERM: rbd-fuse closes the image, releasing lock and watch), SIGKILL after STOP_TIMEOUT."""
    if _is_ours(pid, start, fuse_dir):
        for signum in [first] if first == signal.SIGKILL else [first, signal.SIGKILL]:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                break
            if _gone(pid, start, STOP_TIMEOUT):
                break
            log.event("volume.helper_killed", level="warning", pid=pid, after=signum.name)
    _reap(pid)


def _gone(pid: int, start: float, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _is_ours(pid, start, None):
        _reap(pid)
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _reap_all() -> None:
    """Reap helpers and stuck commands of ours that have ended since."""
    for pid in list(_children):
        _reap(pid)


def _reap(pid: int) -> None:
    proc = _children.pop(pid, None)
    if proc is not None:
        if proc.poll() is None:
            _children[pid] = proc  # still running: keep it for the next call
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _mountinfo() -> dict[str, MountEntry]:
    return parse_mountinfo(Path("/proc/self/mountinfo").read_text())


def _mounted(path: str) -> bool:
    return bool(path) and os.path.normpath(path) in _mountinfo()


def _mount_source(path: str) -> str | None:
    entry = _mountinfo().get(os.path.normpath(path))
    return entry.source if entry else None


def _our_mount_points(devices: list[str]) -> list[str]:
    """Where our devices are mounted (the recorded mount point, or any other): never someone else's mount."""
    return [point for point, entry in _mountinfo().items() if entry.source in devices]


def pinned_by(device: str) -> list[int]:
    """One PID per OTHER mount namespace that still has `device` mounted (empty: fully unmounted).

    A namespace made (`ip netns exec`, `unshare -m`) while the volume was
    mounted holds a copy of the mount; where the copy does not receive our
    unmount (a private host /, as in containers), the filesystem lives on
    there, the loop device stays bound, and it is written back only when
    that namespace goes. See `share_mounts`.
    """
    try:
        own = os.readlink("/proc/self/ns/mnt")
    except OSError:
        return []
    seen, found = {own}, []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ns = os.readlink(entry / "ns" / "mnt")
            if ns in seen:
                continue
            seen.add(ns)
            text = (entry / "mountinfo").read_text()
        except OSError:
            continue
        if any(m.source == device for m in parse_mountinfo(text).values()):
            found.append(int(entry.name))
    return found


def share_mounts(directory: str) -> bool:
    """Make `directory` a shared mount (a bind onto itself if need be); True if this made the bind.

    systemd makes / shared on real nodes, so the copies other mount
    namespaces take of a volume's mount are slaves that receive its unmount.
    A host whose / is private (a container, this lab's host) gives them
    private copies that pin the filesystem after our umount (measured: a
    copy in another lab's ceph-mon kept the ext4 alive and the loop device
    bound). Volumes mounted under a shared `directory` behave as on a node.
    """
    directory = os.path.normpath(os.path.abspath(directory))
    entry = _mountinfo().get(directory)
    if entry is not None and entry.shared:
        return False
    made = entry is None
    if made:
        _run(["mount", "--bind", directory, directory], what="mount --bind")
    _run(["mount", "--make-shared", directory], what="mount --make-shared")
    return made


def unshare_mounts(directory: str) -> None:
    """Undo `share_mounts`' bind (after every volume under it is detached)."""
    directory = os.path.normpath(os.path.abspath(directory))
    if directory in _mountinfo():
        _run(["umount", "--lazy", directory], what="umount --lazy")


def _loop_backing(device: str) -> str | None:
    """A loop device's backing file from sysfs (never touches the file, which may sit on a dead FUSE)."""
    try:
        text = Path(f"/sys/block/{os.path.basename(device)}/loop/backing_file").read_text().strip()
    except OSError:
        return None
    return text.removesuffix(" (deleted)")


def _loops_backed_under(directory: str) -> list[str]:
    found = []
    for entry in sorted(Path("/sys/block").glob("loop*")):
        backing = _loop_backing(f"/dev/{entry.name}")
        if backing and backing.startswith(directory):
            found.append(f"/dev/{entry.name}")
    return found


def _tail(path: Path, size: int = 600) -> str:
    try:
        return path.read_bytes()[-size:].decode(errors="replace").strip()
    except OSError:
        return ""


# -- filesystem ------------------------------------------------------------------------------

def mount(attachment: Attachment, fs: str, mount_point: str, make_fs_if_blank: bool = False) -> Attachment:
    """Mount the attached device at `mount_point`; mkfs first only if it is blank and asked to.

    Blank means: blkid finds nothing AND the first MiB reads as zeros. A
    filesystem of another type is never reformatted. ext4 gets e2fsck -p
    (journal replay and a check), xfs replays its log at mount. Idempotent.
    """
    if fs not in FILESYSTEMS:
        raise VolumeError(f"filesystem {fs!r}: one of {', '.join(FILESYSTEMS)}")
    mount_point = os.path.normpath(os.path.abspath(mount_point))
    device = attachment.device
    current = _mount_source(mount_point)
    if current == device:
        return _record(dataclasses.replace(attachment, mount_point=mount_point, fs=fs))
    if current is not None:
        raise VolumeError(f"{mount_point} already has {current} mounted, not {device}")
    found = _blkid(device)
    if not found:
        if not _blank(device):
            raise VolumeError(f"{device} ({attachment.spec}): no filesystem signature but data in its first MiB; "
                              "refusing mkfs")
        if not make_fs_if_blank:
            raise VolumeError(f"{device} ({attachment.spec}) is blank and mkfs was not asked for")
        started = time.monotonic()
        _run(mkfs_argv(fs, device), what=f"mkfs.{fs} {attachment.spec}", timeout=MKFS_TIMEOUT)
        log.event("volume.mkfs", image=attachment.spec, fs=fs, seconds=round(time.monotonic() - started, 3))
        found = _blkid(device)
    if found.get("TYPE") != fs:
        raise VolumeError(f"{device} ({attachment.spec}) holds {found.get('TYPE') or found}, not {fs}; "
                          "never reformatted")
    check = fsck_argv(fs, device)
    if check is not None:
        result = _run(check, what=f"fsck {attachment.spec}", timeout=MKFS_TIMEOUT, ok=range(0, 256))
        if not fsck_ok(fs, result.returncode):
            raise VolumeError(f"fsck {attachment.spec} found errors it left ({result.returncode}): "
                              f"{(result.stdout + result.stderr).strip()[-600:]}")
    Path(mount_point).mkdir(parents=True, exist_ok=True, mode=0o700)
    parent = mount_of(_mountinfo(), mount_point)
    if parent is not None and not parent.shared:  # copies made in other namespaces will pin it: share_mounts
        log.event("volume.private_mount", level="warning", mount_point=mount_point, on=parent.mount_point)
    mounted = _record(dataclasses.replace(attachment, mount_point=mount_point, fs=fs))  # before: a crash finds it
    _run(["mount", "-t", fs, "-o", mount_options(fs), device, mount_point],
         what=f"mount {attachment.spec}", timeout=MKFS_TIMEOUT)
    log.event("volume.mounted", image=attachment.spec, device=device, mount_point=mount_point)
    return mounted


def unmount(attachment: Attachment, *, force: bool = False, stuck_after: float = UMOUNT_TIMEOUT) -> Attachment:
    """Unmount the attachment's filesystem (no error if not mounted); bounded like `detach`."""
    if attachment.mount_point:
        _umount(attachment.mount_point, list(zip(attachment.pids, attachment.pid_starts)), force=force,
                stuck_after=stuck_after)
    return _record(dataclasses.replace(attachment, mount_point=None))


def _record(attachment: Attachment) -> Attachment:
    """Save the attachment (its mount point) in its state file."""
    vdir = Path(attachment.state_dir)
    state = _read_state(vdir)
    if state is None:
        raise VolumeError(f"{attachment.spec}: no state in {vdir}: not attached (detached already?)")
    left = Leftovers.from_wire(state.get("leftovers") or {})  # type: ignore[arg-type]
    left.mount_point = attachment.mount_point
    header = {k: v for k, v in state.items() if k not in ("leftovers", "attachment")}
    _write_state(vdir, header, left, attachment)
    return attachment


def _blkid(device: str) -> dict[str, str]:
    """Signatures on `device` ({} when blkid finds none, its exit code 2)."""
    result = _run(["blkid", "-p", "-o", "export", device], what=f"blkid {device}", ok=(0, 2))
    return parse_blkid(result.stdout) if result.returncode == 0 else {}


def _blank(device: str) -> bool:
    with open(device, "rb", buffering=0) as handle:
        return looks_blank(handle.read(HEAD_BYTES))


def drop_mounts_under(directory: str) -> list[str]:
    """A power cut's effect on mounts, for the lab: every mount strictly under `directory`
    unmounted lazily (deepest first) and every loop device backed by a file under it
    released. Real nodes lose these with their kernel; a lab node shares the host's."""
    directory = os.path.normpath(os.path.abspath(directory))
    dropped = []
    # Found before the unmounts: once its FUSE mount is detached, a loop device's backing
    # path reads relative ("/svc-x") and no longer shows where it came from.
    loops = _loops_backed_under(directory + "/")
    for point in sorted((p for p in _mountinfo() if p.startswith(directory + "/")), key=len, reverse=True):
        if _bounded(["umount", "--lazy", point], UMOUNT_TIMEOUT) is not None:
            dropped.append(point)
    for loop in loops:
        _bounded(["losetup", "-d", loop], UMOUNT_TIMEOUT)
        dropped.append(loop)
    return dropped
