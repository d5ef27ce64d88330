"""installer/flash on loop devices (root; seconds), and pxe-serve's argument checks.

Never touches a real disk: every target is a loop device over a file in tmp_path.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
FLASH = REPO / "installer" / "flash"
PXE_SERVE = REPO / "installer" / "pxe-serve"
MiB = 1024 * 1024

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("losetup") is None,
                                reason="needs root and losetup")


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "nodeos-test.raw"
    data = os.urandom(3 * MiB) + b"\0" * (5 * MiB)
    path.write_bytes(data)
    (tmp_path / "manifest.json").write_text(json.dumps({"artifacts": {"raw": {
        "path": path.name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}}}))
    return path


@pytest.fixture
def loopdev(tmp_path: Path) -> Iterator[str]:
    backing = tmp_path / "disk.img"
    with open(backing, "wb") as handle:
        handle.truncate(16 * MiB)
    dev = subprocess.run(["losetup", "--find", "--show", str(backing)], check=True, capture_output=True,
                         text=True).stdout.strip()
    yield dev
    subprocess.run(["umount", str(tmp_path / "mnt")], capture_output=True)
    subprocess.run(["losetup", "-d", dev], capture_output=True)


def flash(*args: str, stdin: str | None = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(FLASH), *args], capture_output=True, text=True, input=stdin, timeout=120)


def test_flash_writes_and_verifies(image: Path, loopdev: str) -> None:
    result = flash("--yes", str(image), loopdev)
    assert result.returncode == 0, result.stderr
    assert "read-back sha256 ok" in result.stdout
    with open(loopdev, "rb") as handle:
        assert handle.read(image.stat().st_size) == image.read_bytes()


def test_flash_asks_unless_yes(image: Path, loopdev: str) -> None:
    result = flash(str(image), loopdev)  # stdin is not a terminal
    assert result.returncode == 2
    assert "refusing without --yes" in result.stderr


def test_flash_refuses_bad_checksum(image: Path, loopdev: str) -> None:
    result = flash("--yes", "--sha256", "0" * 64, str(image), loopdev)
    assert result.returncode == 1
    assert "does not match" in result.stderr


def test_flash_refuses_mounted_disk(image: Path, loopdev: str, tmp_path: Path) -> None:
    subprocess.run(["mkfs.ext4", "-q", "-F", loopdev], check=True, capture_output=True)
    (tmp_path / "mnt").mkdir()
    subprocess.run(["mount", loopdev, str(tmp_path / "mnt")], check=True, capture_output=True)
    result = flash("--yes", str(image), loopdev)
    assert result.returncode == 2
    assert "is mounted" in result.stderr


def test_flash_refuses_non_block_device_and_small_disk(image: Path, tmp_path: Path) -> None:
    result = flash("--yes", str(image), str(tmp_path / "disk.img"))
    assert result.returncode == 2 and "not a block device" in result.stderr
    small = tmp_path / "small.img"
    with open(small, "wb") as handle:
        handle.truncate(1 * MiB)
    dev = subprocess.run(["losetup", "--find", "--show", str(small)], check=True, capture_output=True,
                         text=True).stdout.strip()
    try:
        result = flash("--yes", str(image), dev)
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True)
    assert result.returncode == 2 and "smaller than the image" in result.stderr


def test_pxe_serve_checks_arguments(tmp_path: Path) -> None:
    result = subprocess.run(["bash", str(PXE_SERVE), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "proxy" in result.stdout
    result = subprocess.run(["bash", str(PXE_SERVE), "--interface", "lo", "--pxe-dir", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "missing" in result.stderr
    result = subprocess.run(["bash", str(PXE_SERVE), "--interface", "nonexistent0"], capture_output=True, text=True)
    assert result.returncode == 2 and "no such interface" in result.stderr
