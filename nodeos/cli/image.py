"""`nodeos image ...`: build node images and boot them in QEMU.

Wired into `nodeos` by `nodeos.cli` (`register(sub)`); also runnable alone:
`python -m nodeos.image.cli image build minimal`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from nodeos.image.manifest import DEFAULT_MANIFEST, IMAGES_DIR, ManifestError, load_manifest, with_config_settings

BUILD_HELP = """\
Build a node image from a manifest (images/*.yaml; default: the cloud manifest).

Runs diskimage-builder for the root file system (elements/ of this
repository), then assembles, without device-mapper:
  nodeos-<name>.raw / .qcow2   GPT disk booting with UEFI (and legacy BIOS);
                               the root file system grows to the disk on first boot
  pxe/                         vmlinuz, initrd.img, rootfs.squashfs, boot.ipxe
  manifest.json                packages + versions, artifact sizes and sha256,
                               elements, inputs (identity, config, mirrors...)
  build.log                    the full log
into images/build/<name>/ (or --output). The cluster identity baked in is
--identity, else images/build/identity.json (created on the first build and
reused, so every image built here joins the same cluster).

Caches (reused by the next build): images/cache/dib (apt archives, debootstrap
tarball), images/cache/wheels (Python wheels). Debian mirrors: this host's
apt sources, or NODEOS_DEBIAN_MIRROR / NODEOS_DEBIAN_SECURITY_MIRROR.
Needs root. Exit status: 0 built, 1 build failed, 2 bad manifest/arguments.
"""

BOOT_HELP = """\
Boot a built image in QEMU with the serial console on this terminal
(Ctrl-a x quits). Networking is QEMU user mode; the node's status port is
forwarded to 127.0.0.1:--status-port. KVM is used only if a probe guest
actually runs, else TCG software emulation.
"""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    image = subparsers.add_parser(
        "image", help="build node images (disk + PXE set) and boot them in QEMU",
        description="Node image pipeline: diskimage-builder elements -> GPT disk image (UEFI + BIOS), "
                    "qcow2, PXE set. See docs/image.md.")
    sub = image.add_subparsers(dest="image_command", metavar="ACTION")
    sub.required = True

    build = sub.add_parser("build", help="build an image from a manifest (default: images/cloud.yaml)",
                           description=BUILD_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    build.add_argument("manifest", nargs="?", default=None,
                       help=f"manifest path or name in images/ (default: {DEFAULT_MANIFEST.name})")
    build.add_argument("--output", "-o", type=Path, help="output directory (default: images/build/<name>/)")
    build.add_argument("--identity", type=Path,
                       help="cluster identity to bake in (from `nodeos identity init`); "
                            "default: images/build/identity.json, created once")
    build.add_argument("--cache", type=Path, default=IMAGES_DIR / "cache",
                       help="build cache directory (default: %(default)s)")
    build.add_argument("--set", dest="config_set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a field of the manifest's node config, e.g. --set timing.fence_after=4 "
                            "--set realtime=false (repeatable; validated like the manifest)")
    build.add_argument("--compress-qcow2", action="store_true", help="compress the qcow2 (smaller, slower)")
    build.add_argument("--keep-work", action="store_true", help="keep the work directory after a failure")
    build.add_argument("--verbose", "-v", action="store_true", help="trace diskimage-builder scripts (-x)")
    build.set_defaults(func=cmd_build)

    check = sub.add_parser("validate", help="validate manifests without building",
                           description="Validate image manifests; errors name the file and the field.")
    check.add_argument("manifests", nargs="*", help="manifest paths or names (default: all in images/)")
    check.set_defaults(func=cmd_validate)

    info = sub.add_parser("info", help="show a built image's manifest.json summary")
    info.add_argument("manifest", nargs="?", default=None, help="manifest name or path (default: cloud)")
    info.add_argument("--output", "-o", type=Path, help="build directory (default: images/build/<name>/)")
    info.add_argument("--json", action="store_true", help="print the whole manifest.json")
    info.set_defaults(func=cmd_info)

    boot = sub.add_parser("boot", help="boot a built image in QEMU (serial console here)",
                          description=BOOT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    boot.add_argument("manifest", nargs="?", default=None, help="manifest name or path (default: cloud)")
    boot.add_argument("--output", "-o", type=Path, help="build directory (default: images/build/<name>/)")
    boot.add_argument("--bios", action="store_true", help="legacy BIOS (SeaBIOS) instead of UEFI (OVMF)")
    boot.add_argument("--pxe", action="store_true",
                      help="boot the PXE set (kernel+initrd given to QEMU, root squashfs over HTTP from this host)")
    boot.add_argument("--memory", type=int, default=1536, help="guest RAM in MiB (default: %(default)s)")
    boot.add_argument("--cpus", type=int, default=2, help="guest CPUs (default: %(default)s)")
    boot.add_argument("--disk-size", default="8G", help="virtual size of the throw-away overlay (default: %(default)s)")
    boot.add_argument("--status-port", type=int, default=17372,
                      help="host port forwarded to the node's status port 7372 (default: %(default)s)")
    boot.set_defaults(func=cmd_boot)


def cmd_build(args: argparse.Namespace) -> int:
    from nodeos.image.build import BuildError, BuildOptions, build

    try:
        with_config_settings(load_manifest(args.manifest), args.config_set)
    except ManifestError as exc:
        print(f"nodeos image build: {exc}", file=sys.stderr)
        return 2
    options = BuildOptions(manifest=args.manifest, config_set=tuple(args.config_set), output=args.output, identity=args.identity, cache=args.cache,
                           keep_work=args.keep_work, qcow2_compress=args.compress_qcow2, verbose=args.verbose)
    try:
        build(options)
    except BuildError as exc:
        print(f"nodeos image build: FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("nodeos image build: interrupted", file=sys.stderr)
        return 130
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    paths = args.manifests or sorted(str(p) for p in IMAGES_DIR.glob("*.yaml"))
    bad = 0
    for path in paths:
        try:
            manifest = load_manifest(path)
        except ManifestError as exc:
            print(f"INVALID {exc}", file=sys.stderr)
            bad += 1
            continue
        print(f"ok      {manifest.path}: {manifest.name} ({', '.join(manifest.elements)})")
    return 2 if bad else 0


def _build_dir(args: argparse.Namespace) -> Path:
    if args.output:
        return Path(args.output)
    manifest = load_manifest(args.manifest)
    return IMAGES_DIR / "build" / manifest.name


def cmd_info(args: argparse.Namespace) -> int:
    try:
        out = _build_dir(args)
    except ManifestError as exc:
        print(f"nodeos image info: {exc}", file=sys.stderr)
        return 2
    path = out / "manifest.json"
    if not path.exists():
        print(f"nodeos image info: {path}: not built yet (nodeos image build)", file=sys.stderr)
        return 1
    info = json.loads(path.read_text())
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['name']}: built {info['built_at']} in {info['build_seconds']:.0f} s; kernel {info['kernel']}")
    print(f"elements: {', '.join(info['elements'])}")
    print(f"packages: {len(info['packages'])} Debian, {len(info['python_packages'])} Python (agent venv)")
    print(f"cluster: {info['inputs'].get('identity_cluster_id')}")
    for key, meta in info["artifacts"].items():
        print(f"  {key:22s} {meta['size'] / 2**20:8.1f} MiB  sha256 {meta['sha256']}")
    return 0


def cmd_boot(args: argparse.Namespace) -> int:
    from nodeos.image.qemu import VM, QemuError, make_overlay, probe_accel
    from nodeos.image.pxe import cmdline

    try:
        out = _build_dir(args)
    except ManifestError as exc:
        print(f"nodeos image boot: {exc}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="nodeos-boot-"))
    netdev = f"user,id=net0,hostfwd=tcp:127.0.0.1:{args.status_port}-:7372"
    http = None
    try:
        if args.pxe:
            pxe = out / "pxe"
            if not (pxe / "rootfs.squashfs").exists():
                print(f"nodeos image boot: {pxe}: no PXE set built", file=sys.stderr)
                return 1
            http = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "18080",
                                     "--directory", str(pxe)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
            # QEMU user networking: the host is 10.0.2.2 from the guest.
            vm = VM("node", work, memory_mb=max(args.memory, 1536), cpus=args.cpus, firmware="bios",
                    netdev=netdev, kernel=pxe / "vmlinuz", initrd=pxe / "initrd.img",
                    append=cmdline("http://10.0.2.2:18080"))
        else:
            base = out / next((n for n in (f"nodeos-{out.name}.qcow2", f"nodeos-{out.name}.raw")
                               if (out / n).exists()), "missing")
            if not base.exists():
                print(f"nodeos image boot: no disk image in {out} (nodeos image build)", file=sys.stderr)
                return 1
            overlay = make_overlay(base, work / "disk.qcow2", args.disk_size)
            vm = VM("node", work, memory_mb=args.memory, cpus=args.cpus, disk=overlay,
                    firmware="bios" if args.bios else "uefi", netdev=netdev)
        cmd = vm.command()
        cmd[cmd.index("-serial") + 1] = "mon:stdio"
        print(f"nodeos image boot: {probe_accel()} acceleration; status: http://127.0.0.1:{args.status_port}/status;"
              " Ctrl-a x quits", file=sys.stderr)
        return subprocess.call(cmd)
    except QemuError as exc:
        print(f"nodeos image boot: {exc}", file=sys.stderr)
        return 1
    finally:
        if http is not None:
            http.terminate()
            http.wait(timeout=10)
        import shutil

        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nodeos", description="nodeos image pipeline")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    register(sub)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
