"""Which disks of a node become OSDs, pure: decided from `lsblk` output.

    lsblk -J -b -o NAME,PATH,TYPE,SIZE,RO,RM,MOUNTPOINTS,PKNAME,FSTYPE,PTTYPE

Only a whole, writable, fixed disk that is not the boot disk and shows no
partition table, no partition or holder, no filesystem (or LVM, RAID, swap)
signature and no mount is taken; everything else is skipped with the reason,
for `nodeos status`. Never touch a disk that has data on it: lsblk takes the
signatures from udev, which a container or an early boot may lack (FSTYPE
then reads null even for a mounted root), so the caller probes every taken
disk again with `blkid -p` before using it (probe.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NamedTuple

LSBLK_COLUMNS = "NAME,PATH,TYPE,SIZE,RO,RM,MOUNTPOINTS,PKNAME,FSTYPE,PTTYPE"
LSBLK_ARGV = ("lsblk", "-J", "-b", "-o", LSBLK_COLUMNS)
MIN_OSD_BYTES = 1 << 30  # smaller than bluestore's own metadata wants
# Block devices of type "disk" that are no disk: memory, network and virtual ones.
# rbd and nbd matter most: a freshly mapped, still empty volume looks like a blank disk.
VIRTUAL_PREFIXES = ("zram", "ram", "rbd", "nbd", "drbd", "loop", "fd", "sr", "md", "dm-")


class LsblkError(ValueError):
    """lsblk's JSON could not be read."""


@dataclass(frozen=True)
class DiskInfo:
    name: str
    path: str
    type: str
    size: int
    ro: bool
    rm: bool
    mountpoints: tuple[str, ...] = ()
    pkname: str | None = None
    fstype: str | None = None
    pttype: str | None = None
    children: tuple["DiskInfo", ...] = ()


class DiskChoice(NamedTuple):
    taken: list[DiskInfo]
    skipped: dict[str, str]  # path -> why it was not taken


def _flag(value: Any) -> bool:
    """RO/RM: booleans from util-linux 2.37 on, "0"/"1" strings before."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, str)) and str(value).strip() in ("0", "1"):
        return str(value).strip() == "1"
    raise LsblkError(f"bad flag {value!r}")


def _size(value: Any) -> int:
    try:
        size = int(value)  # a number with -b; a string on old util-linux
    except (TypeError, ValueError):
        raise LsblkError(f"bad size {value!r} (run lsblk with -b)") from None
    if size < 0:
        raise LsblkError(f"bad size {value!r}")
    return size


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _mountpoints(entry: dict[str, Any]) -> tuple[str, ...]:
    points = entry.get("mountpoints", [entry.get("mountpoint")])  # MOUNTPOINTS is 2.37+
    if not isinstance(points, list):
        points = [points]
    return tuple(p for p in points if isinstance(p, str) and p)


def _device(entry: Any) -> DiskInfo:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise LsblkError(f"a block device must be an object with a name, not {entry!r:.80}")
    name = entry["name"]
    try:
        return DiskInfo(
            name=name, path=_text(entry.get("path")) or f"/dev/{name}", type=str(entry.get("type", "")),
            size=_size(entry.get("size")), ro=_flag(entry.get("ro", False)), rm=_flag(entry.get("rm", False)),
            mountpoints=_mountpoints(entry), pkname=_text(entry.get("pkname")),
            fstype=_text(entry.get("fstype")), pttype=_text(entry.get("pttype")),
            children=tuple(_device(child) for child in entry.get("children", []) or []),
        )
    except LsblkError as exc:
        raise LsblkError(f"{name}: {exc}") from None


def parse_lsblk(json_text: str) -> list[DiskInfo]:
    """The top-level block devices (children nested) of `lsblk -J -b -o LSBLK_COLUMNS`."""
    try:
        data = json.loads(json_text)
    except json.JSONDecodeError as exc:
        raise LsblkError(f"lsblk output is not JSON: {exc}") from None
    devices = data.get("blockdevices") if isinstance(data, dict) else None
    if not isinstance(devices, list):
        raise LsblkError("lsblk output has no 'blockdevices' list")
    return [_device(entry) for entry in devices]


def _descendants(disk: DiskInfo) -> list[DiskInfo]:
    found = []
    for child in disk.children:
        found += [child, *_descendants(child)]
    return found


def _is_boot(disk: DiskInfo, boot_disk: str | None) -> bool:
    return boot_disk is not None and boot_disk in (disk.name, disk.path, f"/dev/{disk.name}")


def skip_reason(disk: DiskInfo, boot_disk: str | None, min_bytes: int = MIN_OSD_BYTES) -> str | None:
    """Why `disk` must not become an OSD, or None when it may (the first reason found)."""
    if disk.type != "disk":
        return f"a {disk.type or 'unknown'} device, not a whole disk"
    if disk.name.startswith(VIRTUAL_PREFIXES):
        return "a virtual block device"
    if _is_boot(disk, boot_disk):
        return "the boot disk"
    if disk.ro:
        return "read-only"
    if disk.rm:
        return "removable"
    if disk.size < min_bytes:
        return f"too small ({disk.size} bytes, at least {min_bytes})"
    if disk.pttype:
        return f"has a partition table ({disk.pttype})"
    if disk.fstype:
        return f"has a {disk.fstype} signature"
    if disk.children:
        return f"in use by {', '.join(c.name for c in disk.children)}"
    mounted = [p for d in (disk, *_descendants(disk)) for p in d.mountpoints]
    if mounted:
        return f"mounted at {', '.join(mounted)}"
    return None


def choose_osd_disks(disks: list[DiskInfo], boot_disk: str | None, min_bytes: int = MIN_OSD_BYTES) -> DiskChoice:
    """Split a node's block devices into OSD disks and skipped ones (path -> reason)."""
    taken: list[DiskInfo] = []
    skipped: dict[str, str] = {}
    for disk in disks:
        reason = skip_reason(disk, boot_disk, min_bytes)
        if reason is None:
            taken.append(disk)
        else:
            skipped[disk.path] = reason
    return DiskChoice(taken, skipped)
