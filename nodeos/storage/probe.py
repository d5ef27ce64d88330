"""A node's disks as they are (I/O): lsblk, the boot disk, and a second look before use.

disks.py decides from lsblk alone; lsblk's FSTYPE comes from udev, which a
container or an early boot may lack (this build VM shows its mounted root
with no FSTYPE). So every disk disks.py would take is checked again here,
on the device itself: nobody holds it open exclusively (mounts, dm, md,
a running OSD), `wipefs` finds no signature of any kind, and its first and
last MiB are zeros. A disk that once held data and had only its signatures
wiped is refused: the operator zeroes it (`blkdiscard`, `dd`) to offer it.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from typing import Sequence

from .disks import LSBLK_ARGV, DiskChoice, choose_osd_disks, parse_lsblk

EDGE = 1 << 20  # bytes read at each end of a disk for the zero check
_TIMEOUT = 30.0


class ProbeError(RuntimeError):
    """A host tool failed; the message holds the command and its stderr."""


def _run(argv: Sequence[str]) -> str:
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ProbeError(f"'{' '.join(argv)}': {exc}") from None
    if result.returncode != 0:
        raise ProbeError(f"'{' '.join(argv)}' failed ({result.returncode}): {result.stderr.strip()[-300:]}")
    return result.stdout


def boot_disk() -> str | None:
    """The whole disk that holds `/` (e.g. nvme0n1 for /dev/nvme0n1p2), or None if `/` is on no disk."""
    source = _run(["findmnt", "-n", "-o", "SOURCE", "/"]).strip().split("[", 1)[0]  # btrfs: /dev/sda2[/@]
    if not source.startswith("/dev/"):
        return None  # overlay, tmpfs, nfs: a live or network boot
    parents = _run(["lsblk", "-n", "-s", "-o", "NAME,TYPE", "-r", source]).split("\n")
    disks = [line.split()[0] for line in parents if line.split()[1:] == ["disk"]]
    return disks[0] if disks else os.path.basename(source)


def blank_reason(path: str) -> str | None:
    """Why the device at `path` is not provably blank, or None when it is."""
    try:
        # O_EXCL on a block device fails with EBUSY while the kernel has it in use.
        fd = os.open(path, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
    except OSError as exc:
        return "in use (busy)" if exc.errno == errno.EBUSY else f"cannot be opened: {exc.strerror}"
    try:
        kinds = _signatures(path)
        if kinds:
            return f"has a {', '.join(kinds)} signature"
        return _data_at_edges(fd)
    except ProbeError as exc:
        return f"cannot be probed: {exc}"
    finally:
        os.close(fd)


def _signatures(path: str) -> list[str]:
    """Every signature wipefs knows (filesystems, RAID, LVM, partition tables, bluestore)."""
    try:
        found = json.loads(_run(["wipefs", "--no-act", "--json", path]) or '{"signatures": []}')
    except json.JSONDecodeError as exc:
        raise ProbeError(f"wipefs gave no JSON: {exc}") from None
    return sorted({str(s.get("type")) for s in found.get("signatures", [])})


def _data_at_edges(fd: int) -> str | None:
    size = os.lseek(fd, 0, os.SEEK_END)
    for offset in sorted({0, max(0, size - EDGE)}):
        if os.pread(fd, EDGE, offset).strip(b"\0"):
            return f"holds data (non-zero bytes in the MiB at offset {offset}); zero it to offer it"
    return None


def osd_disks() -> DiskChoice:
    """This node's OSD disks: lsblk's choice, each one probed again on the device."""
    choice = choose_osd_disks(parse_lsblk(_run(LSBLK_ARGV)), boot_disk())
    taken = []
    for disk in choice.taken:
        reason = blank_reason(disk.path)
        if reason is None:
            taken.append(disk)
        else:
            choice.skipped[disk.path] = reason
    return DiskChoice(taken, choice.skipped)
