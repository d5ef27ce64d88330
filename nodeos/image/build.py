"""`nodeos image build`: manifest -> diskimage-builder rootfs -> disk image + PXE set.

Steps (each printed with its duration; the full log is in <output>/build.log):

1. validate the manifest, pick/create the cluster identity
2. stage the inputs the elements read ($NODEOS_IMAGE_INPUTS): wheels of the
   nodeos package and its dependencies (built on the host), identity, image
   config, catalog, firewall port list, SSH keys
3. diskimage-builder `-t tar` (no `vm` element: no device-mapper here), with
   its caches under images/cache/ (apt archives, debootstrap tarball)
4. unpack the tar, record the package list
5. disk: GPT raw (BIOS boot + ESP + ext4 root), then qcow2
6. PXE set: kernel, initrd, squashfs root, iPXE script
7. manifest.json: packages with versions, artifact sizes and sha256, elements, inputs
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

import yaml

from . import disk as diskmod
from . import pxe as pxemod
from .manifest import (ELEMENTS_DIR, IMAGES_DIR, REPO_ROOT, Manifest, ManifestError, catalog_ports, load_manifest,
                       with_config_settings)

BUILD_ROOT = IMAGES_DIR / "build"
CACHE_ROOT = IMAGES_DIR / "cache"
DEFAULT_IDENTITY = BUILD_ROOT / "identity.json"
# Files of the repository that make up the nodeos wheel.
_PACKAGE_FILES = ("pyproject.toml", "README.md", "README.rst", "LICENSE")


class BuildError(RuntimeError):
    """A failed build step; the message says which and where the log is."""


@dataclass
class BuildOptions:
    manifest: str | Path | None = None
    output: Path | None = None
    identity: Path | None = None
    cache: Path = CACHE_ROOT
    keep_work: bool = False
    qcow2_compress: bool = False
    dib_extra_args: tuple[str, ...] = ()
    # `KEY=VALUE` settings over the manifest's node config (manifest.with_config_settings).
    config_set: tuple[str, ...] = ()
    verbose: bool = False


@dataclass
class BuildResult:
    manifest: Manifest
    output: Path
    artifacts: dict[str, Path] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


class Progress:
    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stdout
        self.t0 = time.monotonic()
        self.timings: dict[str, float] = {}

    def say(self, text: str) -> None:
        elapsed = time.monotonic() - self.t0
        self.stream.write(f"[{int(elapsed) // 60:02d}:{int(elapsed) % 60:02d}] {text}\n")
        self.stream.flush()

    def step(self, name: str) -> "_Step":
        return _Step(self, name)


class _Step:
    def __init__(self, progress: Progress, name: str) -> None:
        self.progress, self.name = progress, name

    def __enter__(self) -> "_Step":
        self.start = time.monotonic()
        self.progress.say(f"{self.name} ...")
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        took = time.monotonic() - self.start
        self.progress.timings[self.name] = round(took, 1)
        if exc_type is None:
            self.progress.say(f"{self.name}: done in {took:.0f} s")


# ------------------------------------------------------------------ mirrors


def detect_mirrors() -> tuple[str, str]:
    """Debian mirror + security mirror: env overrides, else this host's apt sources, else BuildError.

    The security archive is taken from the sources too; if absent, it is
    assumed at /debian-security on the main mirror's host.
    """
    main = os.environ.get("NODEOS_DEBIAN_MIRROR") or os.environ.get("DIB_DISTRIBUTION_MIRROR")
    security = os.environ.get("NODEOS_DEBIAN_SECURITY_MIRROR") or os.environ.get("DIB_DEBIAN_SECURITY_MIRROR")
    if main and security:
        return main, security
    found_main, found_security = _apt_sources()
    main = main or found_main
    if not main:
        raise BuildError("no Debian mirror: this host's apt sources (/etc/apt/sources.list, /etc/apt/sources.list.d/) "
                         "name none; set NODEOS_DEBIAN_MIRROR to the URL of a Debian archive (and "
                         "NODEOS_DEBIAN_SECURITY_MIRROR to its security archive, if not at /debian-security on the same host)")
    if not security:
        if found_security:
            security = found_security
        else:
            parts = urlsplit(main)
            security = f"{parts.scheme}://{parts.netloc}/debian-security"
    return main, security


def _apt_sources() -> tuple[str | None, str | None]:
    entries: list[tuple[str, str]] = []  # (uri, suite)
    paths = [Path("/etc/apt/sources.list")] + sorted(Path("/etc/apt/sources.list.d").glob("*"))
    for path in paths:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line:
                        continue
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
                if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes") == "no":
                    continue
                for uri in fields.get("uris", "").split():
                    for suite in fields.get("suites", "").split():
                        entries.append((uri, suite))
        elif path.suffix == ".list" or path.name == "sources.list":
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line).split()
                if len(words) >= 3 and words[0] == "deb":
                    entries.append((words[1], words[2]))
    main = next((u for u, s in entries if s == "bookworm" and "debian" in u), None)
    security = next((u for u, s in entries if s == "bookworm-security"), None)
    return (main.rstrip("/") if main else None), (security.rstrip("/") if security else None)


# ------------------------------------------------------------------ helpers


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(4 * 1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tree_digest(paths: list[Path], root: Path) -> str:
    """One sha256 over the listed files/dirs (names, modes, contents)."""
    digest = hashlib.sha256()
    for base in paths:
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for path in files:
            if "__pycache__" in path.parts:
                continue
            rel = path.relative_to(root)
            digest.update(f"{rel}\0{path.stat().st_mode & 0o777:o}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def ensure_identity(path: Path | None, progress: Progress) -> tuple[Path, bool]:
    """The cluster identity to bake; create the default one once."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise BuildError(f"--identity {path}: no such file (create one with `nodeos identity init --out {path}`)")
        _check_identity(path)
        return path, False
    path = DEFAULT_IDENTITY
    if path.exists():
        _check_identity(path)
        return path, False
    from nodeos.cluster.identity import init_identity

    path.parent.mkdir(parents=True, exist_ok=True)
    init_identity(path)
    progress.say(f"identity: created a new cluster identity at {path} (reused by later builds; "
                 "every image built with it joins the same cluster)")
    return path, True


def _check_identity(path: Path) -> None:
    try:
        from nodeos.cluster.identity import IdentityError, load_identity
    except ImportError:
        return
    try:
        load_identity(path)
    except (IdentityError, ValueError, OSError) as exc:
        raise BuildError(f"identity {path}: {exc}") from exc


def render_config(manifest: Manifest) -> str:
    config = dict(manifest.config)
    if manifest.catalog is not None:
        config.setdefault("catalog", "/etc/nodeos/catalog.yaml")
    config.setdefault("runtime", "systemd")
    header = (f"# nodeos image config, baked by `nodeos image build` from {manifest.path.name}.\n"
              "# The same on every node; see nodeos/config.py for the fields.\n")
    return header + yaml.safe_dump(config, sort_keys=True)


def firewall_env(manifest: Manifest) -> str:
    from nodeos.cluster.config import parse_config

    cfg = parse_config(manifest.config, str(manifest.path))
    cat_tcp, cat_udp = catalog_ports(manifest.catalog)
    # A node config naming a packaged catalog (`--set catalog=storage`) runs that one instead of
    # /etc/nodeos/catalog.yaml: its services' ports are opened too.
    other = _packaged_catalog_of(cfg.catalog)
    if other is not None:
        other_tcp, other_udp = catalog_ports(other)
        cat_tcp, cat_udp = [*cat_tcp, *other_tcp], [*cat_udp, *other_udp]
    tcp = _ports(["22", str(cfg.raft_port), str(cfg.status_port), *cat_tcp, *manifest.firewall_tcp])
    udp = _ports([str(cfg.discovery_port), *cat_udp, *manifest.firewall_udp])
    return (f'NODEOS_FW_TCP="{" ".join(tcp)}"\n'
            f'NODEOS_FW_UDP="{" ".join(udp)}"\n'
            f'NODEOS_FW_MCAST_GROUP="{cfg.multicast_group}"\n'
            f'NODEOS_FW_MCAST_PORT="{cfg.discovery_port}"\n')


def _packaged_catalog_of(setting: str | None) -> Path | None:
    """The packaged catalog a node config names (as the agent resolves it), if it names one."""
    if not setting or "/" in setting or setting.endswith(".yaml"):
        return None
    from nodeos.services.catalog import packaged_catalog

    path = packaged_catalog(setting)
    return path if path.exists() else None


def _ports(items: list[str]) -> list[str]:
    seen: list[str] = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return sorted(seen, key=lambda p: int(p.split("-")[0]))


def authorized_keys(manifest: Manifest) -> str:
    lines = []
    for key in manifest.ssh_authorized_keys:
        if re.match(r"^(ssh-|ecdsa-|sk-)\S+ \S+", key):
            lines.append(key.strip())
        else:
            path = Path(key) if Path(key).is_absolute() else REPO_ROOT / key
            lines.extend(l.strip() for l in path.read_text().splitlines() if l.strip() and not l.startswith("#"))
    return "".join(f"{line}\n" for line in lines)


def build_wheels(inputs: Path, cache: Path, log: Path, progress: Progress) -> list[str]:
    """Wheels of nodeos (from a clean copy of the repo) and its deps, on the host."""
    wheels = inputs / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    wheel_cache = cache / "wheels"
    wheel_cache.mkdir(parents=True, exist_ok=True)
    src = inputs / "src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir()
    for name in _PACKAGE_FILES:
        if (REPO_ROOT / name).is_file():
            shutil.copy2(REPO_ROOT / name, src / name)
    shutil.copytree(REPO_ROOT / "nodeos", src / "nodeos", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    with open(log, "a") as out:
        out.write("\n==> pip wheel (nodeos + dependencies)\n")
        out.flush()
        # Dependencies: cached wheels are reused (find-links), new ones built once.
        rc = subprocess.run([*pip, "wheel", "--quiet", "--wheel-dir", str(wheel_cache),
                             "--find-links", str(wheel_cache), str(src)], stdout=out, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            raise BuildError(f"building the nodeos wheels failed (see {log})")
    shutil.rmtree(src, ignore_errors=True)
    names = []
    for wheel in sorted(wheel_cache.glob("*.whl")):
        if wheel.name.startswith("nodeos-"):
            continue
        shutil.copy2(wheel, wheels / wheel.name)
        names.append(wheel.name)
    nodeos_wheels = sorted(wheel_cache.glob("nodeos-*.whl"), key=lambda p: p.stat().st_mtime)
    if not nodeos_wheels:
        raise BuildError(f"no nodeos wheel was built (see {log})")
    shutil.copy2(nodeos_wheels[-1], wheels / nodeos_wheels[-1].name)
    for wheel in nodeos_wheels:  # always rebuilt from the working tree
        wheel.unlink()
    names.append(nodeos_wheels[-1].name)
    return names


def stream(cmd: list[str], env: dict[str, str], log: Path, progress: Progress,
           interesting: Callable[[str], str | None]) -> int:
    with open(log, "a") as out:
        out.write(f"\n==> {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", start_new_session=True)
        assert proc.stdout is not None
        tail: list[str] = []
        try:
            for line in proc.stdout:
                out.write(line)
                tail = (tail + [line.rstrip()])[-30:]
                note = interesting(line)
                if note:
                    progress.say(f"  {note}")
            return proc.wait()
        except BaseException:
            _kill_group(proc)
            raise
        finally:
            if proc.poll() is None:
                _kill_group(proc)
            stream.tail = tail  # type: ignore[attr-defined]


def _kill_group(proc: subprocess.Popen[str]) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


_DIB_STEP = re.compile(r"dib-run-parts Running \S*/([a-z-]+\.d)/(\S+)")


def _dib_interesting(line: str) -> str | None:
    match = _DIB_STEP.search(line)
    if match:
        return f"dib {match.group(1)}/{match.group(2)}"
    if "Building elements:" in line or "Build completed successfully" in line:
        return line.split("|", 1)[-1].strip()
    if "Can not write log" in line:  # apt inside the chroot without /dev/pts: harmless
        return None
    if re.search(r"\b(ERROR|FATAL)\b|E: ", line):
        return line.split("|", 1)[-1].strip()[:200]
    return None


def dib_env(manifest: Manifest, inputs: Path, cache: Path) -> dict[str, str]:
    main, security = detect_mirrors()
    env = dict(os.environ)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = f"{venv_bin}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    env.update({
        "ELEMENTS_PATH": str(ELEMENTS_DIR),
        "DIB_RELEASE": manifest.release,
        "DIB_DISTRIBUTION_MIRROR": main,
        "DIB_DEBIAN_SECURITY_MIRROR": security,
        "DIB_IMAGE_CACHE": str(cache / "dib"),
        # Reuse the debootstrap result on the next build (apt archives are cached too).
        "DIB_DEBOOTSTRAP_CACHE": "1",
        "DIB_DEBIAN_USE_DEBOOTSTRAP_CACHE": "1",
        "DIB_DEBUG_TRACE": env.get("DIB_DEBUG_TRACE", "0"),
        "NODEOS_IMAGE_INPUTS": str(inputs),
        "DEBIAN_FRONTEND": "noninteractive",
        "LC_ALL": "C.UTF-8",
        "TMPDIR": env.get("NODEOS_IMAGE_TMPDIR", "/tmp"),
    })
    return env


# ------------------------------------------------------------------ build


def build(options: BuildOptions, stream_out: Any = None) -> BuildResult:
    progress = Progress(stream_out)
    if os.geteuid() != 0:
        raise BuildError("image build must run as root (debootstrap, chroot, mkfs)")
    try:
        manifest = with_config_settings(load_manifest(options.manifest), options.config_set)
    except ManifestError as exc:
        raise BuildError(str(exc)) from exc
    output = Path(options.output) if options.output else BUILD_ROOT / manifest.name
    output.mkdir(parents=True, exist_ok=True)
    log = output / "build.log"
    log.write_text(f"nodeos image build {manifest.path} -> {output}\n")
    work = output / ".work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cache = Path(options.cache)
    (cache / "dib").mkdir(parents=True, exist_ok=True)
    progress.say(f"building image '{manifest.name}' from {manifest.path} into {output} (log: {log})")
    result = BuildResult(manifest=manifest, output=output)
    ok = False
    try:
        _build(manifest, options, output, work, cache, log, progress, result)
        ok = True
    except BuildError as exc:
        tail = "\n".join(getattr(stream, "tail", [])[-15:])
        if tail:
            exc.args = (f"{exc.args[0]}\n--- last lines of {log} ---\n{tail}",)
        raise
    except diskmod.DiskError as exc:
        raise BuildError(f"disk assembly failed: {exc}") from exc
    finally:
        if not options.keep_work or ok:
            _remove_work(work)
        result.timings = dict(progress.timings)
    return result


def _remove_work(work: Path) -> None:
    # DIB leaves nothing mounted on success/failure, but be careful anyway:
    # never rm -rf through a mount point.
    mounts = Path("/proc/mounts").read_text().split("\n")
    if any(f" {work}" in line for line in mounts):
        return
    shutil.rmtree(work, ignore_errors=True)


def _build(manifest: Manifest, options: BuildOptions, output: Path, work: Path, cache: Path,
           log: Path, progress: Progress, result: BuildResult) -> None:
    inputs = work / "inputs"
    inputs.mkdir()
    with progress.step("inputs"):
        identity, created = ensure_identity(options.identity, progress)
        if not created:
            progress.say(f"identity: baking {identity}")
        shutil.copy2(identity, inputs / "identity.json")
        os.chmod(inputs / "identity.json", 0o600)
        (inputs / "config.yaml").write_text(render_config(manifest))
        if manifest.catalog is not None:
            shutil.copy2(manifest.catalog, inputs / "catalog.yaml")
        (inputs / "service-packages.txt").write_text("".join(f"{p}\n" for p in manifest.service_packages))
        (inputs / "firewall.env").write_text(firewall_env(manifest))
        keys = authorized_keys(manifest)
        if keys:
            (inputs / "authorized_keys").write_text(keys)
    with progress.step("wheels (nodeos + dependencies, built on the host)"):
        wheels = build_wheels(inputs, cache, log, progress)

    env = dib_env(manifest, inputs, cache)
    progress.say(f"mirrors: {env['DIB_DISTRIBUTION_MIRROR']} (security: {env['DIB_DEBIAN_SECURITY_MIRROR']})")
    dib = shutil.which("disk-image-create", path=env["PATH"])
    if dib is None:
        raise BuildError("disk-image-create not found (pip install -e '.[image]', or run scripts/setup.sh)")
    tar_base = work / "rootfs"
    cmd = [dib, "-x", "-t", "tar", "--no-tmpfs", "-o", str(tar_base), *options.dib_extra_args,
           *manifest.elements] if options.verbose else \
          [dib, "-t", "tar", "--no-tmpfs", "-o", str(tar_base), *options.dib_extra_args, *manifest.elements]
    with progress.step("diskimage-builder (root file system)"):
        rc = stream(cmd, env, log, progress, _dib_interesting)
        if rc != 0:
            raise BuildError(f"diskimage-builder failed (exit {rc}); full log: {log}")
    tar = tar_base.with_suffix(".tar")
    if not tar.is_file():
        raise BuildError(f"diskimage-builder produced no {tar}")

    tree = work / "tree"
    with progress.step("unpack root file system"):
        tree.mkdir()
        diskmod.run(["tar", "-C", str(tree), "--numeric-owner", "--xattrs", "--xattrs-include=*",
                     "-xpf", str(tar)])
        tar.unlink()
        packages = _packages(tree)
        python_packages = _python_packages(tree)
        kernel = os.readlink(tree / "vmlinuz") if (tree / "vmlinuz").is_symlink() else "vmlinuz"
        _check_firewall(tree)
    progress.say(f"  {len(packages)} Debian packages, {len(python_packages)} Python packages in the agent venv")

    artifacts: dict[str, Path] = {}
    raw = output / f"nodeos-{manifest.name}.raw"
    qcow2 = output / f"nodeos-{manifest.name}.qcow2"
    pxe_dir = output / "pxe"
    # Disk first: it writes /etc/fstab and /boot/grub/grub.cfg into the tree,
    # which the PXE squashfs then carries too (harmless there).
    disk_info: dict[str, Any] = {}
    if "raw" in manifest.outputs or "qcow2" in manifest.outputs:
        with progress.step("disk image (GPT: BIOS boot + ESP + ext4 root)"):
            disk_info = diskmod.assemble(tree, work / "disk", raw, disk_size=manifest.disk_size,
                                         bios=manifest.bios, log=lambda s: progress.say(f"  {s}"))
            artifacts["raw"] = raw
        if "qcow2" in manifest.outputs:
            with progress.step("qcow2"):
                diskmod.to_qcow2(raw, qcow2, compress=options.qcow2_compress)
                artifacts["qcow2"] = qcow2
    if "pxe" in manifest.outputs:
        with progress.step("PXE set (kernel, initrd, squashfs root, iPXE script)"):
            for path in pxemod.make_pxe_set(tree, pxe_dir, manifest.name):
                artifacts[f"pxe/{path.name}"] = path
    if "raw" not in manifest.outputs and raw.exists():
        raw.unlink()

    with progress.step("manifest.json (sizes, sha256)"):
        files = {}
        for key, path in artifacts.items():
            files[key] = {"path": str(path.relative_to(output)), "size": path.stat().st_size,
                          "allocated": path.stat().st_blocks * 512, "sha256": sha256_file(path)}
        main, security = env["DIB_DISTRIBUTION_MIRROR"], env["DIB_DEBIAN_SECURITY_MIRROR"]
        from importlib.metadata import version

        info = {
            "name": manifest.name,
            "description": manifest.description,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(time.monotonic() - progress.t0, 1),
            "step_seconds": dict(progress.timings),
            "elements": list(manifest.elements),
            "release": manifest.release,
            "kernel": kernel,
            "artifacts": files,
            "boot": {"uefi": bool(disk_info), "bios": bool(disk_info.get("bios")),
                     "kernel_cmdline": diskmod.KERNEL_CMDLINE, "netboot_cmdline": pxemod.NETBOOT_CMDLINE,
                     **{k: v for k, v in disk_info.items() if k in ("root_fs_uuid", "root_partuuid", "disk_guid")}},
            "inputs": {
                "manifest": str(manifest.path),
                "manifest_sha256": sha256_file(manifest.path),
                "elements_sha256": tree_digest([ELEMENTS_DIR / e for e in manifest.elements
                                                if (ELEMENTS_DIR / e).is_dir()], REPO_ROOT),
                "nodeos_source_sha256": tree_digest([REPO_ROOT / "nodeos", REPO_ROOT / "pyproject.toml"], REPO_ROOT),
                "git_commit": _git_commit(),
                "identity_cluster_id": _cluster_id(inputs / "identity.json"),
                "identity_sha256": sha256_file(inputs / "identity.json"),
                "config": yaml.safe_load(render_config(manifest)),
                "config_set": list(options.config_set),
                "catalog": str(manifest.catalog) if manifest.catalog else None,
                "catalog_sha256": sha256_file(manifest.catalog) if manifest.catalog else None,
                "service_packages": list(manifest.service_packages),
                "firewall": firewall_env(manifest).strip().splitlines(),
                "wheels": wheels,
                "mirrors": {"debian": main, "security": security},
                "diskimage_builder": version("diskimage-builder"),
            },
            "packages": [{"name": n, "version": v, "installed_size_kib": s} for n, v, s in packages],
            "python_packages": [{"name": n, "version": v} for n, v in python_packages],
        }
        (output / "manifest.json").write_text(json.dumps(info, indent=2) + "\n")
    result.artifacts = artifacts
    result.info = info
    progress.say(f"image '{manifest.name}' built in {info['build_seconds']:.0f} s:")
    for key, meta in files.items():
        progress.say(f"  {output / meta['path']}  {meta['size'] / 2**20:.0f} MiB"
                     f" ({meta['allocated'] / 2**20:.0f} MiB on disk)  sha256 {meta['sha256'][:16]}...")


def _check_firewall(tree: Path) -> None:
    """The rendered nftables ruleset must load: a node whose firewall fails to
    start would run with no firewall at all."""
    conf = tree / "etc" / "nftables.conf"
    nft = shutil.which("nft")
    if not conf.exists() or nft is None:
        return
    check = subprocess.run([nft, "-c", "-f", str(conf)], capture_output=True, text=True)
    if check.returncode != 0:
        raise BuildError(f"the image's /etc/nftables.conf does not load: {check.stderr.strip()[-1500:]}")


def _packages(tree: Path) -> list[tuple[str, str, int]]:
    out = diskmod.run(["dpkg-query", f"--admindir={tree}/var/lib/dpkg", "-W",
                       "-f", "${Package}\t${Version}\t${Installed-Size}\t${db:Status-Abbrev}\n"]).stdout
    rows = []
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) == 4 and parts[3].startswith("ii"):
            rows.append((parts[0], parts[1], int(parts[2] or 0)))
    return rows


def _python_packages(tree: Path) -> list[tuple[str, str]]:
    rows = []
    for info in sorted((tree / "opt" / "nodeos" / "venv" / "lib").glob("python3*/site-packages/*.dist-info")):
        match = re.match(r"^(.+?)-([^-]+)\.dist-info$", info.name)
        if match:
            rows.append((match.group(1), match.group(2)))
    return rows


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain"], capture_output=True, text=True)
    except OSError:
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _cluster_id(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("cluster_id")
    except (OSError, ValueError, AttributeError):
        return None


def iter_artifacts(output: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    info = json.loads((output / "manifest.json").read_text())
    yield from info["artifacts"].items()
