"""QEMU helpers: boot a built image (UEFI/OVMF, BIOS or PXE) and keep its serial log.

KVM: /dev/kvm may exist but hang guests on some hosts, so `probe_accel()`
boots a tiny guest with a timeout and falls back to TCG (software emulation).
Processes are tracked by PID: only what this module started is ever stopped.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

OVMF_CODE_CANDIDATES = ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_CODE.fd")
OVMF_VARS_CANDIDATES = ("/usr/share/OVMF/OVMF_VARS_4M.fd", "/usr/share/OVMF/OVMF_VARS.fd")
QEMU = "qemu-system-x86_64"

_accel_cache: str | None = None


class QemuError(RuntimeError):
    pass


def ovmf_paths() -> tuple[Path, Path]:
    for code, vars_ in zip(OVMF_CODE_CANDIDATES, OVMF_VARS_CANDIDATES):
        if Path(code).exists() and Path(vars_).exists():
            return Path(code), Path(vars_)
    raise QemuError("OVMF firmware not found (apt-get install ovmf)")


def _probe_kernel() -> Path | None:
    env = os.environ.get("NODEOS_PROBE_KERNEL")
    if env and Path(env).is_file():
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
    for candidate in sorted((repo / "images" / "build").glob("*/pxe/vmlinuz")) + sorted(Path("/boot").glob("vmlinuz-*")):
        if candidate.is_file():
            return candidate
    return None


def probe_accel(timeout: float = 20.0, kernel: Path | None = None) -> str:
    """'kvm' only if a KVM guest really runs a Linux kernel here, else 'tcg'.

    /dev/kvm may exist while KVM guests hang or abort (nested virtualisation),
    so the probe boots a kernel (no initrd, no root: it must reach the
    "VFS: Unable to mount root fs" panic) with a timeout. No kernel to probe
    with -> 'tcg'. NODEOS_QEMU_ACCEL=kvm|tcg overrides.
    """
    global _accel_cache
    forced = os.environ.get("NODEOS_QEMU_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced
    if _accel_cache is not None:
        return _accel_cache
    kernel = kernel or _probe_kernel()
    if kernel is None or not os.access("/dev/kvm", os.R_OK | os.W_OK) or shutil.which(QEMU) is None:
        _accel_cache = "tcg"
        return _accel_cache
    works = False
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "serial.log"
        proc = subprocess.Popen(
            [QEMU, "-accel", "kvm", "-cpu", "host", "-machine", "q35", "-m", "256", "-display", "none",
             "-nodefaults", "-no-reboot", "-serial", f"file:{log}", "-kernel", str(kernel),
             "-append", "console=ttyS0 panic=-1 root=/dev/nonexistent rootwait=0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = log.read_bytes() if log.exists() else b""
            if b"Kernel panic" in text or b"VFS:" in text:
                works = True
                break
            if proc.poll() is not None:
                break
            time.sleep(0.3)
        _stop_process(proc)
    _accel_cache = "kvm" if works else "tcg"
    return _accel_cache


def _stop_process(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def make_overlay(base: Path, overlay: Path, size: str | None = None) -> Path:
    """A qcow2 copy-on-write overlay over a built image (raw or qcow2)."""
    fmt = "qcow2" if base.suffix == ".qcow2" else "raw"
    cmd = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base.resolve()), "-F", fmt, str(overlay)]
    if size:
        cmd.append(size)
    subprocess.run(cmd, check=True, capture_output=True)
    return overlay


def make_blank_disk(path: Path, size: str) -> Path:
    """A blank (sparse) qcow2 disk: no partition table, no signature."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True, capture_output=True)
    return path


@dataclass
class VM:
    """One QEMU guest. `start()` launches it; `stop()`/`kill()` end only this PID."""

    name: str
    workdir: Path
    memory_mb: int = 1024
    cpus: int = 1
    disk: Path | None = None
    firmware: str = "uefi"  # "uefi" | "bios"
    netdev: str | None = None  # e.g. "tap,id=n0,ifname=tap0,script=no,downscript=no"
    mac: str | None = None
    nic_model: str = "virtio-net-pci"
    kernel: Path | None = None
    initrd: Path | None = None
    append: str | None = None
    boot_network: bool = False
    accel: str | None = None
    data_disks: list[Path] = field(default_factory=list)  # more virtio disks (qcow2), e.g. blank OSD disks
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def serial_log(self) -> Path:
        return self.workdir / f"{self.name}.serial.log"

    def command(self) -> list[str]:
        accel = self.accel or probe_accel()
        cmd = [QEMU, "-name", self.name, "-accel", accel, "-machine", "q35", "-m", str(self.memory_mb),
               "-smp", str(self.cpus), "-display", "none", "-nodefaults", "-no-user-config",
               "-serial", f"file:{self.serial_log}", "-rtc", "base=utc",
               "-device", "virtio-rng-pci"]
        if accel == "tcg":
            cmd[cmd.index("-accel") + 1] = "tcg,thread=multi"
            cmd += ["-cpu", "max"]
        else:
            cmd += ["-cpu", "host"]
        if self.firmware == "uefi":
            code, vars_template = ovmf_paths()
            vars_copy = self.workdir / f"{self.name}.OVMF_VARS.fd"
            if not vars_copy.exists():
                shutil.copyfile(vars_template, vars_copy)
            cmd += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
                    "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}"]
        if self.disk is not None:
            fmt = "qcow2" if self.disk.suffix == ".qcow2" else "raw"
            cmd += ["-drive", f"if=none,id=disk0,format={fmt},file={self.disk},cache=unsafe,discard=unmap",
                    "-device", "virtio-blk-pci,drive=disk0,bootindex=1"]
        for index, data in enumerate(self.data_disks, start=1):
            cmd += ["-drive", f"if=none,id=disk{index},format=qcow2,file={data},cache=unsafe,discard=unmap",
                    "-device", f"virtio-blk-pci,drive=disk{index},serial=nodeos-data{index}"]
        if self.netdev:
            netid = dict(p.split("=", 1) for p in self.netdev.split(",")[1:] if "=" in p).get("id", "net0")
            nic = f"{self.nic_model},netdev={netid}"
            if self.mac:
                nic += f",mac={self.mac}"
            if self.boot_network:
                nic += ",bootindex=0"
            cmd += ["-netdev", self.netdev, "-device", nic]
        if self.kernel is not None:
            cmd += ["-kernel", str(self.kernel)]
            if self.initrd is not None:
                cmd += ["-initrd", str(self.initrd)]
            if self.append:
                cmd += ["-append", self.append]
        if self.boot_network:
            cmd += ["-boot", "order=n"]
        return cmd + self.extra_args

    def start(self) -> "VM":
        if self.proc is not None and self.proc.poll() is None:
            raise QemuError(f"{self.name}: already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = self.command()
        (self.workdir / f"{self.name}.cmdline").write_text(" ".join(cmd) + "\n")
        stderr = open(self.workdir / f"{self.name}.qemu.log", "ab")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
                                     start_new_session=True)
        stderr.close()
        self.started_at = time.monotonic()
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """Hard power-off (SIGKILL of this VM's QEMU only)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None:
            _stop_process(self.proc)

    def console(self) -> str:
        try:
            return self.serial_log.read_text(errors="replace")
        except OSError:
            return ""

    def wait_console(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.console():
                return True
            if not self.running():
                return False
            time.sleep(1)
        return False


def mac_for(index: int, prefix: str = "52:54:00:4e:4f") -> str:
    return f"{prefix}:{index:02x}"
