"""The second look at a disk before it becomes an OSD (nodeos/storage/probe.py), on plain files."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from nodeos.storage import probe

pytestmark = pytest.mark.skipif(shutil.which("wipefs") is None, reason="needs wipefs (util-linux)")
MiB = 1 << 20


def sparse(path: Path, size: int = 64 * MiB) -> Path:
    with open(path, "wb") as handle:
        handle.truncate(size)
    return path


def test_a_zeroed_device_is_blank(tmp_path: Path) -> None:
    assert probe.blank_reason(str(sparse(tmp_path / "new-disk"))) is None


@pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="needs mkfs.ext4 (e2fsprogs)")
def test_a_filesystem_is_named(tmp_path: Path) -> None:
    disk = sparse(tmp_path / "ext4-disk")
    subprocess.run(["mkfs.ext4", "-q", "-F", str(disk)], check=True, capture_output=True)
    assert probe.blank_reason(str(disk)) == "has a ext4 signature"


@pytest.mark.skipif(shutil.which("sfdisk") is None, reason="needs sfdisk (fdisk)")
def test_a_partition_table_is_named(tmp_path: Path) -> None:
    disk = sparse(tmp_path / "gpt-disk")
    subprocess.run(["sfdisk", "-q", str(disk)], input="label: gpt\n", text=True, check=True, capture_output=True)
    assert "gpt" in (probe.blank_reason(str(disk)) or "")


@pytest.mark.parametrize("offset", [4096, 64 * MiB - 100])
def test_data_without_a_signature_is_refused(tmp_path: Path, offset: int) -> None:
    # E.g. a disk whose signatures were wiped (wipefs -a) but whose data is still there.
    disk = sparse(tmp_path / "used-disk")
    with open(disk, "r+b") as handle:
        handle.seek(offset)
        handle.write(os.urandom(64))
    assert (probe.blank_reason(str(disk)) or "").startswith("holds data")


def test_a_missing_device_is_not_blank(tmp_path: Path) -> None:
    assert "cannot be opened" in (probe.blank_reason(str(tmp_path / "gone")) or "")


@pytest.mark.skipif(shutil.which("findmnt") is None, reason="needs findmnt (util-linux)")
def test_the_boot_disk_of_this_machine_is_found() -> None:
    disk = probe.boot_disk()
    assert disk is None or (disk and "/" not in disk)
