"""Assemble a bootable GPT disk image from an unpacked root file system.

No device-mapper, no partitioned loop devices: everything is done on files.

    disk.raw (GPT, 1 MiB aligned)
      p1  BIOS boot  1 MiB   GRUB i386-pc core.img (legacy BIOS boot)
      p2  ESP       64 MiB   FAT, \\EFI\\BOOT\\BOOTX64.EFI (GRUB x86_64-efi, standalone)
      p3  root      rest     ext4 made with `mkfs.ext4 -d` from the tree; grows on first boot

Both GRUB images carry a small embedded config that finds the root file
system by its UUID and reads /boot/grub/grub.cfg from it; that config boots
/vmlinuz + /initrd.img (Debian's symlinks, so kernel upgrades keep working).
The BIOS path writes GRUB's boot.img into the protective MBR (first 440
bytes) and core.img into the BIOS boot partition, patching the two sector
pointers `grub-bios-setup` would patch.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

MiB = 1024 * 1024
SECTOR = 512
BIOS_BOOT_GUID = "21686148-6E6F-704E-6565-644946490000"
ESP_GUID = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_ROOT_X86_64_GUID = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
GRUB_EFI_DIR = Path("/usr/lib/grub/x86_64-efi")
GRUB_PC_DIR = Path("/usr/lib/grub/i386-pc")
KERNEL_CMDLINE = "ro console=tty0 console=ttyS0,115200n8"

EFI_MODULES = ("part_gpt part_msdos ext2 fat search search_fs_uuid search_label normal configfile "
               "linux echo test serial terminal gzio sleep ls cat halt reboot efi_gop efi_uga "
               "all_video").split()
PC_MODULES = ("biosdisk part_gpt part_msdos ext2 search search_fs_uuid search_label normal "
              "configfile linux echo test serial terminal gzio sleep ls cat halt reboot").split()


class DiskError(RuntimeError):
    pass


@dataclass(frozen=True)
class DiskLayout:
    bios_start: int  # all in bytes
    bios_size: int
    esp_start: int
    esp_size: int
    root_start: int
    root_size: int
    total: int


def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, check=True, text=True, capture_output=True, **kwargs)  # type: ignore[call-overload]
    except FileNotFoundError as exc:
        raise DiskError(f"{cmd[0]}: not installed (run scripts/setup.sh)") from exc
    except subprocess.CalledProcessError as exc:
        raise DiskError(f"{' '.join(cmd)} failed ({exc.returncode}): {(exc.stderr or exc.stdout).strip()[-2000:]}") from exc


def tree_size(tree: Path) -> int:
    """Apparent size of a tree in bytes (du), counting each hard link once."""
    out = run(["du", "-s", "--block-size=1", "-x", str(tree)]).stdout
    return int(out.split()[0])


def plan_layout(root_bytes: int, disk_size: int | None) -> DiskLayout:
    bios_start, bios_size = 1 * MiB, 1 * MiB
    esp_start, esp_size = 2 * MiB, 64 * MiB
    root_start = esp_start + esp_size
    # Content + 25 % + 256 MiB headroom (ext4 metadata, journal, first-boot
    # writes); the file system grows to the disk on first boot anyway.
    auto_root = _round_up(int(root_bytes * 1.25) + 256 * MiB, 64 * MiB)
    if disk_size is None:
        total = root_start + auto_root + 1 * MiB  # + backup GPT
    else:
        total = _round_up(disk_size, MiB)
        if total - root_start - MiB < int(root_bytes * 1.1) + 64 * MiB:
            raise DiskError(f"disk.size {disk_size} bytes is too small for {root_bytes} bytes of root file system")
    root_size = total - root_start - 1 * MiB
    return DiskLayout(bios_start, bios_size, esp_start, esp_size, root_start, root_size, total)


def _round_up(value: int, step: int) -> int:
    return (value + step - 1) // step * step


def grub_cfg(root_uuid: str, extra_cmdline: str = "") -> str:
    cmdline = f"root=UUID={root_uuid} {KERNEL_CMDLINE} {extra_cmdline}".strip()
    return f"""# nodeos boot configuration (written by `nodeos image build`).
serial --unit=0 --speed=115200 --word=8 --parity=no --stop=1
terminal_input serial console
terminal_output serial console
set timeout=2
set default=0

menuentry 'nodeos' {{
    search --no-floppy --fs-uuid --set=root {root_uuid}
    echo 'nodeos: loading kernel'
    linux /vmlinuz {cmdline}
    initrd /initrd.img
}}

menuentry 'nodeos (previous kernel)' {{
    search --no-floppy --fs-uuid --set=root {root_uuid}
    linux /vmlinuz.old {cmdline}
    initrd /initrd.img.old
}}
"""


def embedded_cfg(root_uuid: str) -> str:
    return f"""search --no-floppy --fs-uuid --set=root {root_uuid}
set prefix=($root)/boot/grub
configfile ($root)/boot/grub/grub.cfg
"""


def prepare_tree(tree: Path, root_uuid: str) -> None:
    """Boot files inside the root tree: mount points, fstab and GRUB's config."""
    # DIB's tar leaves out /proc and /sys entirely; the kernel needs the mount points.
    for name, mode in (("proc", 0o555), ("sys", 0o555), ("dev", 0o755), ("run", 0o755), ("tmp", 0o1777)):
        (tree / name).mkdir(exist_ok=True)
        os.chmod(tree / name, mode)
    # systemd-resolved (DNS from DHCP via networkd) serves its stub on 127.0.0.53.
    resolved = any((tree / d / "systemd" / "systemd-resolved").exists() for d in ("lib", "usr/lib"))
    resolv = tree / "etc" / "resolv.conf"
    if resolved:
        if resolv.exists() or resolv.is_symlink():
            resolv.unlink()
        resolv.symlink_to("../run/systemd/resolve/stub-resolv.conf")
    (tree / "etc" / "fstab").write_text(
        "# nodeos: written by `nodeos image build`\n"
        f"UUID={root_uuid} / ext4 defaults,errors=remount-ro 0 1\n")
    grub_dir = tree / "boot" / "grub"
    grub_dir.mkdir(parents=True, exist_ok=True)
    (grub_dir / "grub.cfg").write_text(grub_cfg(root_uuid))
    for link in ("vmlinuz", "initrd.img"):
        if not os.path.lexists(tree / link):
            raise DiskError(f"{tree}/{link}: missing (no kernel installed in the root file system?)")


def make_root_fs(tree: Path, image: Path, size: int, root_uuid: str, label: str = "nodeos-root") -> None:
    if image.exists():
        image.unlink()
    with open(image, "wb") as handle:
        handle.truncate(size)
    # -d: populate from the tree (ownership, modes, xattrs, hard links).
    run(["mkfs.ext4", "-q", "-F", "-L", label, "-U", root_uuid, "-d", str(tree),
         "-E", "lazy_itable_init=1,lazy_journal_init=1", str(image)])


def make_grub_images(workdir: Path, root_uuid: str, bios: bool) -> tuple[Path, Path | None]:
    cfg = workdir / "grub-embedded.cfg"
    cfg.write_text(embedded_cfg(root_uuid))
    efi = workdir / "BOOTX64.EFI"
    if not GRUB_EFI_DIR.is_dir():
        raise DiskError(f"{GRUB_EFI_DIR}: missing (apt-get install grub-efi-amd64-bin)")
    run(["grub-mkimage", "-O", "x86_64-efi", "-d", str(GRUB_EFI_DIR), "-p", "/boot/grub",
         "-c", str(cfg), "-o", str(efi), *EFI_MODULES])
    core = None
    if bios:
        if not GRUB_PC_DIR.is_dir():
            raise DiskError(f"{GRUB_PC_DIR}: missing (apt-get install grub-pc-bin)")
        core = workdir / "core.img"
        run(["grub-mkimage", "-O", "i386-pc", "-d", str(GRUB_PC_DIR), "-p", "/boot/grub",
             "-c", str(cfg), "-o", str(core), *PC_MODULES])
    return efi, core


def make_esp(image: Path, size: int, efi_binary: Path) -> None:
    if image.exists():
        image.unlink()
    with open(image, "wb") as handle:
        handle.truncate(size)
    run(["mkfs.vfat", "-n", "NODEOS-ESP", str(image)])
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    run(["mmd", "-i", str(image), "::/EFI", "::/EFI/BOOT"], env=env)
    run(["mcopy", "-i", str(image), str(efi_binary), "::/EFI/BOOT/BOOTX64.EFI"], env=env)


def partition(disk: Path, layout: DiskLayout, disk_guid: str, root_partuuid: str) -> None:
    with open(disk, "wb") as handle:
        handle.truncate(layout.total)
    s = SECTOR
    script = (
        "label: gpt\n"
        f"label-id: {disk_guid}\n"
        "unit: sectors\n"
        "first-lba: 2048\n"
        f"start={layout.bios_start // s}, size={layout.bios_size // s}, type={BIOS_BOOT_GUID}, name=\"bios\"\n"
        f"start={layout.esp_start // s}, size={layout.esp_size // s}, type={ESP_GUID}, name=\"esp\"\n"
        f"start={layout.root_start // s}, size={layout.root_size // s}, type={LINUX_ROOT_X86_64_GUID}, "
        f"uuid={root_partuuid}, name=\"root\"\n"
    )
    run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(disk)], input=script)


def write_at(disk: Path, source: Path, offset: int) -> None:
    """`dd conv=notrunc,sparse` at a byte offset, in Python (keeps holes)."""
    block = 4 * MiB
    with open(source, "rb") as src, open(disk, "r+b") as dst:
        dst.seek(offset)
        while True:
            chunk = src.read(block)
            if not chunk:
                break
            if chunk.count(0) == len(chunk):
                dst.seek(len(chunk), os.SEEK_CUR)
            else:
                dst.write(chunk)


def install_bios_boot(disk: Path, core: Path, layout: DiskLayout) -> None:
    """What grub-bios-setup does for a GPT disk with a BIOS boot partition."""
    core_bytes = bytearray(core.read_bytes())
    if len(core_bytes) > layout.bios_size:
        raise DiskError(f"GRUB core.img ({len(core_bytes)} bytes) does not fit the BIOS boot partition")
    core_lba = layout.bios_start // SECTOR
    # diskboot.img (first sector of core.img) ends with a blocklist entry
    # {u64 start; u16 len; u16 segment} describing the rest of core.img.
    entry = SECTOR - 12
    start, length, segment = struct.unpack_from("<QHH", core_bytes, entry)
    expected = (len(core_bytes) + SECTOR - 1) // SECTOR - 1
    if length != expected or segment != 0x820:
        raise DiskError(f"unexpected GRUB core.img blocklist (len={length}, segment={segment:#x})")
    struct.pack_into("<Q", core_bytes, entry, core_lba + 1)
    boot = bytearray((GRUB_PC_DIR / "boot.img").read_bytes())
    if len(boot) != SECTOR:
        raise DiskError("unexpected GRUB boot.img size")
    struct.pack_into("<Q", boot, 0x5C, core_lba)  # GRUB_BOOT_MACHINE_KERNEL_SECTOR
    boot[0x66:0x68] = b"\x90\x90"  # hard disk: skip the buggy-BIOS drive check (like grub-bios-setup)
    with open(disk, "r+b") as handle:
        handle.seek(0)
        handle.write(bytes(boot[:440]))  # keep disk signature + protective MBR partition table
        handle.seek(layout.bios_start)
        handle.write(bytes(core_bytes))


def assemble(tree: Path, workdir: Path, disk: Path, *, disk_size: int | None, bios: bool,
             log: Callable[[str], None] = print) -> dict[str, object]:
    """Build `disk` (raw) from `tree`. Returns facts for manifest.json."""
    workdir.mkdir(parents=True, exist_ok=True)
    root_uuid = str(uuid.uuid4())
    root_partuuid = str(uuid.uuid4())
    disk_guid = str(uuid.uuid4())
    prepare_tree(tree, root_uuid)
    content = tree_size(tree)
    layout = plan_layout(content, disk_size)
    log(f"disk: root file system {content / MiB:.0f} MiB of content in a {layout.root_size / MiB:.0f} MiB ext4; "
        f"disk {layout.total / MiB:.0f} MiB")
    root_img = workdir / "root.ext4"
    make_root_fs(tree, root_img, layout.root_size, root_uuid)
    efi, core = make_grub_images(workdir, root_uuid, bios)
    esp_img = workdir / "esp.vfat"
    make_esp(esp_img, layout.esp_size, efi)
    partition(disk, layout, disk_guid, root_partuuid)
    write_at(disk, esp_img, layout.esp_start)
    write_at(disk, root_img, layout.root_start)
    if core is not None:
        install_bios_boot(disk, core, layout)
    root_img.unlink()
    esp_img.unlink()
    # Sanity: the partition table reads back as written.
    table = run(["sfdisk", "--json", str(disk)]).stdout
    if root_partuuid.upper() not in table.upper():
        raise DiskError(f"{disk}: partition table does not read back")
    return {"root_fs_uuid": root_uuid, "root_partuuid": root_partuuid, "disk_guid": disk_guid,
            "layout": layout.__dict__, "bios": bios, "uefi": True, "root_content_bytes": content}


def to_qcow2(raw: Path, qcow2: Path, compress: bool = False) -> None:
    if qcow2.exists():
        qcow2.unlink()
    cmd = ["qemu-img", "convert", "-O", "qcow2"]
    if compress:
        cmd.append("-c")
    run([*cmd, str(raw), str(qcow2)])


def cleanup_tree(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)
