"""A lab node's own mount namespace: packaged services at their usual paths.

Lab nodes share the host's filesystem, so two nodes' MariaDB would both use
/var/lib/mysql. Each node gets a private root (`node_root`) holding its own
/etc/<x>, /var/lib/<x>, /var/log/<x> and /run/<x>, and a persistent mount
namespace (a namespace file, like `ip netns`' /run/netns/NAME) in which those
directories are bind-mounted over the host's. Only the services enter it
(`enter_argv`); the agent stays in the host's mount namespace, so the volumes
it mounts stay visible to its next process and to tests.

Propagation (checked by tests/lab/test_mountns.py): the namespace is made
with `--propagation slave`, so every mount in it is a slave of the host's.
The node root lies under the lab directory, a shared mount (`share_mounts`);
a bind of a slave mount is a slave of the same master, so a volume the
agent mounts on the host at root/var/lib/mysql appears at /var/lib/mysql in
the node, and its unmount too, while nothing mounted inside leaks out.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

from nodeos import log
from nodeos.services.runtime import mount_namespace_argv
from nodeos.storage.volume_spec import MountEntry, parse_mountinfo

# A node image carries exactly these packages, so the node's own directories
# are a fixed list (Debian's paths; /run/<x> where the package uses one).
NODE_PATHS: tuple[str, ...] = (
    "/etc/keystone", "/var/lib/keystone", "/var/log/keystone", "/run/keystone",
    "/etc/mysql", "/var/lib/mysql", "/var/log/mysql", "/run/mysqld",
    "/etc/rabbitmq", "/var/lib/rabbitmq", "/var/log/rabbitmq", "/run/rabbitmq",
    "/etc/glance", "/var/lib/glance", "/var/log/glance", "/run/glance",
    "/etc/placement", "/var/lib/placement", "/var/log/placement", "/run/placement",
    "/etc/nova", "/var/lib/nova", "/var/log/nova", "/run/nova",
    "/etc/neutron", "/var/lib/neutron", "/var/log/neutron", "/run/neutron",
    "/etc/cinder", "/var/lib/cinder", "/var/log/cinder", "/run/cinder",
    # horizon: its settings only. /var/lib/openstack-dashboard is the host's: it holds the static
    # files the package collected and compressed at install (an empty node directory hid them).
    "/etc/openstack-dashboard",
    "/etc/ceph",  # the Ceph clients' (glance's) conf and keyrings; the daemons' files are under the node's state dir
)
_TIMEOUT = 30.0


class MountNsError(RuntimeError):
    """A mount namespace could not be made or removed; the message says why."""


def node_root(state_dir: Path) -> Path:
    return Path(state_dir) / "root"


enter_argv = mount_namespace_argv  # the runtime's prefix, named for the lab


def create(ns_file: Path, root: Path, paths: Sequence[str] = NODE_PATHS) -> None:
    """Make the node's directories and its namespace with them bound in; idempotent."""
    ns_file, root = Path(os.path.abspath(ns_file)), Path(os.path.abspath(root))
    for path in paths:
        _make_node_dir(root, path)
    _private_dir(ns_file.parent)
    if not is_namespace(ns_file):
        ns_file.touch()
        _run(["unshare", f"--mount={ns_file}", "--propagation", "slave", "true"])
        log.event("lab.mountns_created", ns_file=str(ns_file))
    _bind_missing(ns_file, root, paths)


def clear_run(root: Path) -> None:
    """Empty the node's /run directories (kept: they are bind sources): a boot starts
    with no pid files or sockets of the services that ran before."""
    run = Path(root) / "run"
    for directory in sorted(run.iterdir()) if run.is_dir() else []:
        for entry in directory.iterdir() if directory.is_dir() else []:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def destroy(ns_file: Path) -> None:
    """Unmount the namespace file (lazily if need be) and remove it; idempotent."""
    ns_file = Path(os.path.abspath(ns_file))
    for _ in range(8):  # a namespace mounted twice over the same file (a race) stacks
        if not is_namespace(ns_file):
            break
        if _call(["umount", str(ns_file)]).returncode != 0:
            _run(["umount", "--lazy", str(ns_file)])
    else:
        raise MountNsError(f"{ns_file}: still mounted after 8 unmounts")
    try:
        ns_file.unlink()
    except FileNotFoundError:
        pass


def destroy_dir(directory: Path) -> list[str]:
    """Every namespace file in `directory`, then the private bind `create` made of it."""
    directory = Path(os.path.abspath(directory))
    removed = []
    for ns_file in sorted(directory.iterdir()) if directory.is_dir() else []:
        destroy(ns_file)
        removed.append(str(ns_file))
    if str(directory) in _mounts():
        _run(["umount", "--lazy", str(directory)])
    try:
        directory.rmdir()
    except FileNotFoundError:
        pass
    return removed


def is_namespace(ns_file: Path) -> bool:
    entry = _mounts().get(os.path.abspath(ns_file))
    return entry is not None and entry.fs == "nsfs"


# -- helpers


def _make_node_dir(root: Path, path: str) -> None:
    """root/<path>: /etc/<x> seeded from the host's (package defaults), the rest empty
    with the host's owner and mode (/var/lib/keystone belongs to keystone)."""
    target = root / path.lstrip("/")
    if target.exists():
        return
    _make_parents(root, target.parent)
    host = Path(path)
    if path.startswith("/etc/") and host.is_dir():
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        _run(["cp", "-a", str(host), str(tmp)])
        os.replace(tmp, target)  # a half copy is never mistaken for a seeded one
        return
    target.mkdir()
    try:
        st = host.stat()
    except FileNotFoundError:
        os.chmod(target, 0o755)
        return
    os.chown(target, st.st_uid, st.st_gid)
    os.chmod(target, st.st_mode & 0o7777)


def _make_parents(root: Path, directory: Path) -> None:
    """root/etc, root/var/lib, ...: root's, 0755 (whatever the umask: services traverse them)."""
    root.mkdir(parents=True, exist_ok=True)
    path = root
    for part in directory.relative_to(root).parts:
        path = path / part
        if not path.exists():
            path.mkdir()
            os.chmod(path, 0o755)


def _private_dir(directory: Path) -> None:
    """Namespace files need a private mount under them (as /run/netns for `ip netns`):
    the kernel refuses to bind one where the bind would propagate (EINVAL), and the
    lab directory is shared on purpose. So `directory` is bound onto itself, private."""
    directory.mkdir(parents=True, exist_ok=True)
    entry = _mounts().get(str(directory))
    if entry is not None and not entry.shared:
        return
    if entry is None:
        _run(["mount", "--bind", str(directory), str(directory)])
    _run(["mount", "--make-private", str(directory)])


def _bind_missing(ns_file: Path, root: Path, paths: Sequence[str]) -> None:
    """Bind root/<p> over <p> inside, where <p> is not already the node's directory.

    A path the host lacks is skipped: its mount point would have to be made in
    the host's /etc or /var, and a package that made none has no use for it.
    """
    for path in paths:
        if path.startswith(("/run/", "/var/log/")):
            # A package's /run/<x> (and some /var/log/<x>) exist only once its daemon ran on
            # the host: make the empty mount point, or a node's `mkdir -p` would make it on
            # the host, shared by every node.
            os.makedirs(path, exist_ok=True)
    present = [p for p in paths if os.path.isdir(p)]
    if not present:
        return
    inside = _identities_inside(ns_file, present)
    commands = []
    for path in present:
        source = root / path.lstrip("/")
        if inside.get(path) != _identity(source):
            commands.append(f"mount --bind {shlex.quote(str(source))} {shlex.quote(path)}")
    if commands:
        _run([*enter_argv(ns_file), "sh", "-ec", "\n".join(commands)])
        log.event("lab.mountns_bound", ns_file=str(ns_file), count=len(commands))


def _identities_inside(ns_file: Path, paths: Sequence[str]) -> dict[str, str]:
    """path -> "device:inode" of each path as the namespace sees it."""
    result = _call([*enter_argv(ns_file), "stat", "-c", "%n %d:%i", "--", *paths])
    found = {}
    for line in result.stdout.splitlines():
        name, _, identity = line.rpartition(" ")
        found[name] = identity
    return found


def _identity(path: Path) -> str:
    st = path.stat()
    return f"{st.st_dev}:{st.st_ino}"


def _mounts() -> dict[str, MountEntry]:
    return parse_mountinfo(Path("/proc/self/mountinfo").read_text())


def _call(argv: list[str]) -> "subprocess.CompletedProcess[str]":
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MountNsError(f"'{' '.join(argv)}': {exc}") from exc


def _run(argv: list[str]) -> "subprocess.CompletedProcess[str]":
    result = _call(argv)
    if result.returncode != 0:
        raise MountNsError(f"'{' '.join(argv)}' failed: {result.stderr.strip() or result.returncode}")
    return result
