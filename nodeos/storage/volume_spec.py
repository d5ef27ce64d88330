"""Volumes, the pure part: names, addresses, argv and parsers for volumes.py.

Everything here is a function of its arguments (no I/O, no clock), so the
commands volumes.py runs, in particular the kernel back-end that this lab
cannot run, are pinned by unit tests.

Why the address check is strict: Ceph treats a blocklist entry whose nonce
is 0 (`10.77.0.1:0/0`) as "every client of that IP" (OSDMap::is_blocklisted
clears port and nonce on a second look), which would fence the node's own
OSDs, mon and every other volume. `profile rbd` lets a node client add such
an entry (its cap only asks for `IP/digits`; measured on Ceph 16.2.15), so
nodeos refuses it itself: only a client instance (`IP:port/nonce`, nonce not
0) is ever blocklisted.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Iterable, Mapping, Sequence

KRBD = "krbd"  # kernel `rbd device map`: real nodes
FUSE = "fuse"  # rbd-fuse + a loop device: hosts without the rbd module (this lab)
BACKENDS = (KRBD, FUSE)
FILESYSTEMS = ("ext4", "xfs")

TEN_YEARS = 10 * 365 * 24 * 3600  # a fence must outlive any node that may come back
BLOCKLIST_EXPIRE = TEN_YEARS
LOCK_TIMEOUT = 30  # s: krbd waits forever for the exclusive lock without it (lock_timeout=0)
MOUNT_TIMEOUT = 20  # s: rbd-fuse's rados_connect waits 300 s for the mons by default

# Pool and image names as nodeos makes them: no '/', '@' or spaces (specs, paths, argv stay plain).
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_ADDRESS = re.compile(r"^(?:(?P<v4>\d{1,3}(?:\.\d{1,3}){3})|\[(?P<v6>[0-9A-Fa-f:.]+)\])"
                      r":(?P<port>\d{1,5})/(?P<nonce>\d{1,10})$")


class VolumeError(RuntimeError):
    """A volume step failed; the message names the step and quotes the command's stderr."""


def check_name(kind: str, name: str) -> str:
    """A pool or image name nodeos accepts, else VolumeError."""
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
        raise VolumeError(f"bad {kind} name {name!r}: letters, digits, '.', '_', '-'; at most 100")
    return name


def check_instance_address(address: str) -> str:
    """A Ceph client instance address (`IP:port/nonce`, nonce not 0), as `ceph osd blocklist` takes it.

    A bare IP or a nonce of 0 would fence every client of the node; refused.
    """
    match = _ADDRESS.match(address) if isinstance(address, str) else None
    if match is None:
        raise VolumeError(f"{address!r} is not a client instance address (IP:port/nonce)")
    try:
        ipaddress.ip_address(match["v4"] or match["v6"])
    except ValueError:
        raise VolumeError(f"{address!r}: not an IP address before the port") from None
    if int(match["port"]) > 65535:
        raise VolumeError(f"{address!r}: port out of range")
    if int(match["nonce"]) == 0:
        raise VolumeError(f"{address!r} has nonce 0: Ceph would fence every client of that IP, "
                          "not one instance")
    return address


def address_ip(address: str) -> str:
    """The IP part of an instance address."""
    match = _ADDRESS.match(address)
    if match is None:
        raise VolumeError(f"{address!r} is not a client instance address (IP:port/nonce)")
    return match["v4"] or match["v6"]


def own_stale_holders(holders: Iterable[str], node_ip: str, live: Iterable[str] = ()) -> list[str]:
    """The holders of an image that the node about to attach it fences itself first: its own dead clients.

    Asked once the node has no attachment of the image left (its leftovers
    detached): a watcher or lock owner at the node's own IP is then a client
    instance of an earlier boot (or a helper killed since) that Ceph keeps
    until the OSDs' watch timeout (30 s), and nobody else fences it when the
    node came back before it was declared lost. The safety argument:

    * a live client carries the IP of the machine it runs on, and IPs are
      unique among live nodes, so an address at another IP (another node's
      client, or a holder the Monitor has still to fence) is never chosen;
    * `live` (addresses this node's attachment records name, of any image)
      is never chosen, nor is the client the node is about to start (it does
      not exist yet);
    * only client instances (`IP:port/nonce`, nonce not 0) are returned: a
      fence of the node's IP would fence its own OSDs and every volume.
    """
    keep = set(live)
    try:
        own = ipaddress.ip_address(node_ip)
    except ValueError:
        return []
    chosen = []
    for address in sorted(set(holders) - keep):
        try:
            ip = ipaddress.ip_address(address_ip(check_instance_address(address)))
        except (VolumeError, ValueError):
            continue  # not one client instance: never fenced
        if ip == own:
            chosen.append(address)
    return chosen


def client_id(entity: str) -> str:
    """`client.node-a` -> `node-a` (what --id and the kernel's name= take)."""
    if not entity.startswith("client.") or len(entity) == len("client."):
        raise VolumeError(f"{entity!r} is not a cephx client entity (client.ID)")
    return entity[len("client."):]


def choose_backend(has_sys_bus_rbd: bool, modprobe_ok: bool, has_fuse: bool) -> str:
    """The kernel client where the rbd module is (or loads), else rbd-fuse + loop where FUSE is."""
    if has_sys_bus_rbd or modprobe_ok:
        return KRBD
    if has_fuse:
        return FUSE
    raise VolumeError("no way to attach an RBD image here: no kernel rbd module and no /dev/fuse")


# -- the attachment record (the per-volume state file) ---------------------------

@dataclass(frozen=True)
class Attachment:
    """An image attached read-write on one node, as the state file records it.

    `address` is the client instance that holds the image (what fencing
    blocklists); `pids` are helper processes we started (rbd-fuse), killed by
    PID on detach; `state_dir` is the per-volume directory where detach finds
    leftovers after a crash.
    """

    node_id: str
    pool: str
    image: str
    client: str  # cephx entity, e.g. client.node-node1
    backend: str  # KRBD | FUSE
    device: str  # /dev/rbdN or /dev/loopN
    address: str
    state_dir: str
    pids: tuple[int, ...] = ()
    pid_starts: tuple[float, ...] = ()  # process start times: a reused PID is never killed
    fuse_dir: str | None = None  # rbd-fuse's mount point (FUSE back-end)
    mount_point: str | None = None
    fs: str | None = None
    fenced_own: tuple[str, ...] = ()  # this node's dead earlier clients blocklisted before attaching

    @property
    def spec(self) -> str:
        return f"{self.pool}/{self.image}"

    def to_wire(self) -> dict[str, Any]:
        data = asdict(self)
        data["pids"], data["pid_starts"] = list(self.pids), list(self.pid_starts)
        data["fenced_own"] = list(self.fenced_own)
        return data

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> "Attachment":
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        values["pids"] = tuple(int(p) for p in values.get("pids", ()))
        values["pid_starts"] = tuple(float(t) for t in values.get("pid_starts", ()))
        values["fenced_own"] = tuple(str(a) for a in values.get("fenced_own", ()))
        return cls(**values)


@dataclass
class Leftovers:
    """What a (possibly half-made) attachment left on the node: the state file's view."""

    pids: list[int] = field(default_factory=list)
    pid_starts: list[float] = field(default_factory=list)
    loop: str | None = None
    rbd_device: str | None = None
    fuse_dir: str | None = None
    mount_point: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> "Leftovers":
        return cls(pids=[int(p) for p in data.get("pids", [])],
                   pid_starts=[float(t) for t in data.get("pid_starts", [])],
                   loop=data.get("loop"), rbd_device=data.get("rbd_device"), fuse_dir=data.get("fuse_dir"),
                   mount_point=data.get("mount_point"))


# -- commands ----------------------------------------------------------------------

def rbd_argv(conf: str, entity: str, *args: str) -> list[str]:
    """The `rbd` CLI as `entity`; the key comes from the keyring the conf names, never argv."""
    return ["rbd", "--conf", conf, "--id", client_id(entity), *args]


def create_argv(conf: str, entity: str, pool: str, image: str, size_bytes: int) -> list[str]:
    """`rbd create` with the features nodeos uses (rbd-fuse and krbd >= 4.9 open them)."""
    if not isinstance(size_bytes, int) or size_bytes <= 0 or size_bytes % 512:
        raise VolumeError(f"image size {size_bytes!r}: a positive multiple of 512 bytes")
    return rbd_argv(conf, entity, "create", f"{check_name('pool', pool)}/{check_name('image', image)}",
                    "--size", f"{size_bytes}B", "--image-feature", "layering,exclusive-lock,object-map,fast-diff")


def krbd_map_argv(conf: str, entity: str, pool: str, image: str, lock_timeout: int = LOCK_TIMEOUT) -> list[str]:
    """`rbd device map --exclusive`: the kernel takes the lock at map time and never hands it over.

    `noshare`: a client instance of its own per mapping, so blocklisting it
    fences this volume only (the kernel shares one instance between mappings
    of the same cluster and options by default). `lock_timeout`: the map
    fails instead of waiting forever for a lock another holder keeps.
    """
    options = f"noshare,lock_timeout={int(lock_timeout)}"
    return rbd_argv(conf, entity, "device", "map", "--device-type", "krbd", "--exclusive", "--options", options,
                    f"{check_name('pool', pool)}/{check_name('image', image)}")


def krbd_unmap_argv(conf: str, entity: str, device: str, force: bool = False) -> list[str]:
    """`rbd device unmap`; `force` fails in-flight I/O and unmaps an open device (since Linux 4.9)."""
    if not re.match(r"^/dev/rbd\d+$", device):
        raise VolumeError(f"{device!r} is not a kernel RBD device")
    return rbd_argv(conf, entity, "device", "unmap", "--device-type", "krbd",
                    *(["--options", "force"] if force else []), device)


def krbd_list_argv(conf: str, entity: str) -> list[str]:
    return rbd_argv(conf, entity, "device", "list", "--device-type", "krbd", "--format", "json")


def parse_showmapped(text: str) -> list[dict[str, str]]:
    """`rbd device list --format json` (Ceph 16: a list of {id, pool, namespace, name, snap, device})."""
    data = _load_json(text, "rbd device list")
    if isinstance(data, dict):
        data = data.get("devices", [])
    if not isinstance(data, list):
        raise VolumeError("rbd device list: not a list")
    rows = []
    for row in data:
        if isinstance(row, dict):
            rows.append({k: str(row.get(k, "")) for k in ("id", "pool", "namespace", "name", "snap", "device")})
    return rows


def find_mapping(rows: Iterable[Mapping[str, str]], pool: str, image: str) -> str | None:
    """The kernel device of pool/image (head, default namespace), or None."""
    for row in rows:
        if (row.get("pool") == pool and row.get("name") == image and row.get("namespace", "") == ""
                and row.get("snap", "-") in ("-", "")):
            return row.get("device") or None
    return None


def fuse_argv(conf: str, pool: str, image: str, fuse_dir: str) -> list[str]:
    """rbd-fuse in the foreground showing one image as one file (its options: rbd-fuse.cc, Ceph 16).

    rbd-fuse has no --id: the client name and options reach it through
    CEPH_ARGS (`fuse_env`), which its librados reads.
    """
    return ["rbd-fuse", "-f", "-p", check_name("pool", pool), "-r", check_name("image", image), "-c", conf, fuse_dir]


def fuse_ceph_args(entity: str, mount_timeout: int = MOUNT_TIMEOUT) -> str:
    """CEPH_ARGS for rbd-fuse: its identity, and the setting that keeps fsync honest.

    rbd_cache=false: rbd-fuse ignores rbd_flush's result in fsync, so with
    librbd's write-back cache an fsync could report success for data that
    never reached the OSDs. rbd_blocklist_expire_seconds stays unset: in
    16.2.15 librados then sends the expiry as a JSON string, the mon answers
    EINVAL, and the lock of a fenced holder can never be broken (measured:
    the new holder's writes all failed).
    """
    ident = client_id(entity)
    if any(c.isspace() for c in ident):  # Ceph splits CEPH_ARGS at spaces, quotes or not
        raise VolumeError(f"client {entity!r}: no spaces allowed")
    return " ".join(["--id", ident, "--rbd_cache=false", f"--client_mount_timeout={int(mount_timeout)}"])


def netns_of(prefix: Sequence[str]) -> str | None:
    """The namespace name in an `ip netns exec NS` prefix, else None."""
    if len(prefix) == 4 and tuple(prefix[:3]) == ("ip", "netns", "exec"):
        return prefix[3]
    return None


def fuse_prefix(prefix: Sequence[str]) -> list[str]:
    """How to start rbd-fuse on a node: in its network namespace but in the host's mount namespace.

    `ip netns exec` also unshares the mount namespace (to remount /sys), so a
    FUSE mount made under it is invisible to losetup and mount on the host
    (measured). nsenter --net enters only the network namespace.
    """
    ns = netns_of(prefix)
    if ns is not None:
        return ["nsenter", f"--net=/run/netns/{ns}"]
    if prefix:
        raise VolumeError(f"cannot start rbd-fuse under {' '.join(prefix)!r}: only 'ip netns exec NS' or none")
    return []


def losetup_argv(backing_file: str) -> list[str]:
    """A loop device on rbd-fuse's image file; direct I/O, so no page cache sits between it and librbd."""
    return ["losetup", "--find", "--show", "--direct-io=on", backing_file]


def mkfs_argv(fs: str, device: str) -> list[str]:
    if fs == "ext4":
        return ["mkfs.ext4", "-q", device]
    if fs == "xfs":
        return ["mkfs.xfs", "-q", device]
    raise VolumeError(f"filesystem {fs!r}: one of {', '.join(FILESYSTEMS)}")


def fsck_argv(fs: str, device: str) -> list[str] | None:
    """A check before mounting: e2fsck -p replays ext4's journal; xfs replays its log at mount.

    xfs_repair is never run by itself: on a dirty log it refuses, and -L
    would throw the log (acknowledged writes) away.
    """
    if fs == "ext4":
        return ["e2fsck", "-p", device]
    if fs == "xfs":
        return None
    raise VolumeError(f"filesystem {fs!r}: one of {', '.join(FILESYSTEMS)}")


def fsck_ok(fs: str, returncode: int) -> bool:
    """e2fsck: 0 clean, 1 errors corrected, 2 corrected (reboot advised); 4 and up: left uncorrected."""
    return returncode in (0, 1, 2) if fs == "ext4" else returncode == 0


def mount_options(fs: str) -> str:
    """ext4 stops writing at the first error instead of going on (its default is 'continue')."""
    if fs == "ext4":
        return "errors=remount-ro"
    if fs == "xfs":
        return "defaults"
    raise VolumeError(f"filesystem {fs!r}: one of {', '.join(FILESYSTEMS)}")


# -- parsers -------------------------------------------------------------------------

@dataclass(frozen=True)
class Watcher:
    address: str
    client: str  # client.<global id>
    cookie: int


@dataclass(frozen=True)
class Locker:
    address: str
    client: str
    lock_id: str  # "auto <cookie>" for the exclusive-lock feature


@dataclass(frozen=True)
class BlocklistEntry:
    address: str
    until: str  # the mon's clock, ISO 8601


def _load_json(text: str, what: str) -> Any:
    """The first JSON value of `text` (the ceph CLI may print more after it)."""
    try:
        value, _end = json.JSONDecoder().raw_decode(text.strip() or "null")
    except json.JSONDecodeError as exc:
        raise VolumeError(f"{what}: no JSON in its output ({exc})") from None
    return value


def parse_watchers(text: str) -> list[Watcher]:
    """`rbd status --format json`: {"watchers": [{"address", "client", "cookie"}]}."""
    data = _load_json(text, "rbd status")
    rows = data.get("watchers", []) if isinstance(data, dict) else []
    return [Watcher(str(w["address"]), f"client.{w.get('client', '?')}", int(w.get("cookie", 0)))
            for w in rows if isinstance(w, dict) and "address" in w]


def parse_lockers(text: str) -> list[Locker]:
    """`rbd lock ls --format json`: a list (Ceph 16) or a mapping id -> {locker, address} (older)."""
    data = _load_json(text, "rbd lock ls")
    if isinstance(data, dict):
        data = [{"id": key, **value} for key, value in data.items() if isinstance(value, dict)]
    if not isinstance(data, list):
        return []
    return [Locker(str(row["address"]), str(row.get("locker", "")), str(row.get("id", "")))
            for row in data if isinstance(row, dict) and "address" in row]


def parse_blocklist(text: str) -> list[BlocklistEntry]:
    """`ceph osd blocklist ls -f json`: [{"addr", "until"}] (16.2.15 prints the range list after it)."""
    data = _load_json(text, "ceph osd blocklist ls")
    if not isinstance(data, list):
        raise VolumeError("ceph osd blocklist ls: not a list")
    return [BlocklistEntry(str(row["addr"]), str(row.get("until", "")))
            for row in data if isinstance(row, dict) and "addr" in row]


def until_seconds(iso: str) -> float:
    """A blocklist expiry as Ceph prints it (2036-11-27T10:47:23.301055+0000) -> epoch seconds."""
    try:
        return datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
    except ValueError:
        raise VolumeError(f"blocklist expiry {iso!r}: not Ceph's timestamp format") from None


def blocklist_reply_until(stderr: str) -> float | None:
    """The expiry the mon answered `osd blocklist add` with (it says so on stderr), or None.

    `blocklisting ADDR until 2036-11-27T10:47:23.301055+0000 (3.1536e+08 sec)`
    """
    words = stderr.split()
    if "until" not in words or words.index("until") + 1 >= len(words):
        return None
    try:
        return until_seconds(words[words.index("until") + 1])
    except VolumeError:
        return None


def parse_blkid(text: str) -> dict[str, str]:
    """`blkid -p -o export DEV`: KEY=value lines."""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    return values


def looks_blank(head: bytes) -> bool:
    """The device's first bytes are zeros: a second look before mkfs, besides blkid finding nothing.

    A filesystem with a damaged superblock is "nothing" to blkid but still
    has metadata in its first MiB; only a never-written image reads as zeros.
    """
    return not head.strip(b"\0")


@dataclass(frozen=True)
class MountEntry:
    mount_point: str
    fs: str
    source: str
    shared: bool  # in a peer group: mounts and unmounts below it propagate to its copies


def parse_mountinfo(text: str) -> dict[str, MountEntry]:
    """/proc/PID/mountinfo: mount point -> its (top-most) mount; octal escapes decoded."""
    mounts: dict[str, MountEntry] = {}
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 6 or len(tail) < 2:
            continue
        point = _unescape(fields[4])
        mounts[point] = MountEntry(point, tail[0], _unescape(tail[1]),
                                   any(f.startswith("shared:") for f in fields[6:]))
    return mounts


def mount_of(mounts: Mapping[str, MountEntry], path: str) -> MountEntry | None:
    """The mount `path` lies on (the longest mount point above it)."""
    best = None
    for point, entry in mounts.items():
        if path == point or path.startswith(point.rstrip("/") + "/"):
            if best is None or len(point) > len(best.mount_point):
                best = entry
    return best


def _unescape(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)
