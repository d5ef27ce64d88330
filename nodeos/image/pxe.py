"""The PXE set: boot a node from the network with no disk.

    pxe/vmlinuz            the image's kernel
    pxe/initrd.img         the image's initramfs (contains the nodeos-netboot script)
    pxe/rootfs.squashfs    the whole root file system, zstd-compressed
    pxe/boot.ipxe          iPXE script: kernel + initrd over HTTP, then the
                           initramfs fetches rootfs.squashfs into RAM and boots
                           it under a tmpfs overlay (boot=nodeos-netboot)

The iPXE script takes its HTTP base from `${nodeos-base}` if the DHCP server
or an earlier script set it, else http://${next-server}:8080/ (the layout
`installer/pxe-serve` uses: dnsmasq gives next-server = itself).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .disk import KERNEL_CMDLINE, run

NETBOOT_CMDLINE = "boot=nodeos-netboot ip=dhcp console=tty0 console=ttyS0,115200n8"

IPXE_SCRIPT = """#!ipxe
# nodeos diskless boot (written by `nodeos image build`, image {name}).
isset ${{nodeos-base}} || set nodeos-base http://${{next-server}}:8080
echo nodeos: booting from ${{nodeos-base}}
kernel ${{nodeos-base}}/vmlinuz initrd=initrd.img {cmdline} nodeos.rootfs=${{nodeos-base}}/rootfs.squashfs || goto failed
initrd ${{nodeos-base}}/initrd.img || goto failed
boot || goto failed
:failed
echo nodeos: network boot failed, retrying in 10 s
sleep 10
chain ${{nodeos-base}}/boot.ipxe
"""


def cmdline(base_url: str) -> str:
    """Kernel command line for a netboot with kernel+initrd given directly (e.g. QEMU -kernel)."""
    return f"{NETBOOT_CMDLINE} nodeos.rootfs={base_url.rstrip('/')}/rootfs.squashfs"


def make_pxe_set(tree: Path, outdir: Path, name: str, threads: int | None = None) -> list[Path]:
    outdir.mkdir(parents=True, exist_ok=True)
    # Symlinks in the tree are absolute-in-image or relative ("boot/vmlinuz-..."): resolve inside the tree.
    kernel = _in_tree(tree, "vmlinuz")
    initrd = _in_tree(tree, "initrd.img")
    shutil.copyfile(kernel, outdir / "vmlinuz")
    shutil.copyfile(initrd, outdir / "initrd.img")
    squash = outdir / "rootfs.squashfs"
    if squash.exists():
        squash.unlink()
    run(["mksquashfs", str(tree), str(squash), "-comp", "zstd", "-Xcompression-level", "9",
         "-noappend", "-no-progress", "-quiet", "-wildcards", "-e", "proc/*", "sys/*", "dev/*", "run/*",
         "tmp/*", "-processors", str(threads or os.cpu_count() or 2)])
    (outdir / "boot.ipxe").write_text(IPXE_SCRIPT.format(name=name, cmdline=NETBOOT_CMDLINE))
    return [outdir / "vmlinuz", outdir / "initrd.img", squash, outdir / "boot.ipxe"]


def _in_tree(tree: Path, link: str) -> Path:
    path = tree / link
    for _ in range(10):
        if not path.is_symlink():
            return path
        target = os.readlink(path)
        path = tree / target.lstrip("/") if target.startswith("/") else path.parent / target
    raise RuntimeError(f"{tree}/{link}: symlink loop")


__all__ = ["make_pxe_set", "cmdline", "NETBOOT_CMDLINE", "KERNEL_CMDLINE"]
