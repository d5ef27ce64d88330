"""Network namespace helpers for labs and tests: a bridge, namespaces on it.

Plain `ip` commands (iproute2) so what the lab does can be repeated by hand;
every failure raises `NetnsError` with the command and its stderr.
`enter_netns` moves only the CURRENT thread into a namespace (raw sockets,
netlink sockets and child processes created there belong to it).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import subprocess
from pathlib import Path
from typing import Any, Iterator, Sequence

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
IFNAMSIZ = 15  # Linux interface names: at most 15 characters
_IP_TIMEOUT = 30.0
_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(RuntimeError):
    """An `ip` command failed; the message holds the command and its stderr."""


def unique_name(prefix: str, length: int = 6) -> str:
    """`prefix` + random hex, short enough for an interface name."""
    name = prefix + secrets.token_hex(length // 2 + 1)[:length]
    if len(name) > IFNAMSIZ:
        raise ValueError(f"{name!r} is longer than {IFNAMSIZ} characters")
    return name


def _ip(*args: str, ns: str | None = None) -> str:
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=_IP_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"'{' '.join(argv)}': {exc}") from exc
    if result.returncode != 0:
        raise NetnsError(f"'{' '.join(argv)}' failed: {result.stderr.strip() or result.returncode}")
    return result.stdout


def _check_ifname(name: str) -> None:
    if not name or len(name) > IFNAMSIZ or "/" in name or any(c.isspace() for c in name):
        raise NetnsError(f"bad interface name {name!r} (1-{IFNAMSIZ} characters, no '/' or spaces)")


def link_exists(name: str, ns: str | None = None) -> bool:
    try:
        _ip("link", "show", "dev", name, ns=ns)
        return True
    except NetnsError:
        return False


def create_bridge(name: str, address_cidr: str | None = None) -> None:
    """A bridge that forwards at once (no STP delay) and floods multicast (no snooping)."""
    _check_ifname(name)
    _ip("link", "add", name, "type", "bridge", "stp_state", "0", "forward_delay", "0", "mcast_snooping", "0")
    try:
        if address_cidr:
            _ip("addr", "add", address_cidr, "dev", name)
        _ip("link", "set", name, "up")
    except NetnsError:
        delete_link(name)
        raise


def delete_link(name: str, ns: str | None = None) -> None:
    """Delete a link; no error if it is already gone."""
    if link_exists(name, ns):
        try:
            _ip("link", "del", name, ns=ns)
        except NetnsError:
            if link_exists(name, ns):
                raise


def create_namespace(
    ns: str, bridge: str, veth_host: str, address_cidr: str, ifname: str = "eth0"
) -> None:
    """Namespace `ns` with `ifname` (a veth) on `bridge`, addressed, up, multicast routed."""
    _check_ifname(veth_host)
    _check_ifname(ifname)
    _ip("netns", "add", ns)
    veth_created = False
    try:
        # Created directly inside the namespace: no temporary name can collide.
        _ip("link", "add", veth_host, "type", "veth", "peer", "name", ifname, "netns", ns)
        veth_created = True
        _ip("link", "set", "lo", "up", ns=ns)
        _ip("addr", "add", address_cidr, "dev", ifname, ns=ns)
        _ip("link", "set", ifname, "up", ns=ns)
        _ip("route", "add", "224.0.0.0/4", "dev", ifname, ns=ns)
        _ip("link", "set", veth_host, "master", bridge)
        _ip("link", "set", veth_host, "up")
    except NetnsError:
        if veth_created:  # never delete a same-named link someone else owns
            delete_link(veth_host)
        delete_namespace(ns)
        raise


def delete_namespace(ns: str) -> None:
    """Delete a namespace; no error if it is already gone. Its veth ends go with it."""
    if ns in list_namespaces():
        _ip("netns", "del", ns)


def list_namespaces() -> list[str]:
    if not NETNS_DIR.is_dir():
        return []
    return sorted(entry.name for entry in NETNS_DIR.iterdir())


def namespace_pids(ns: str) -> list[int]:
    """Pids of the processes in `ns` ([] if the namespace does not exist)."""
    if ns not in list_namespaces():
        return []
    return sorted(int(word) for word in _ip("netns", "pids", ns).split())


def set_link(ns: str | None, ifname: str, up: bool) -> None:
    """Link up/down inside `ns` (None: the host namespace)."""
    _ip("link", "set", ifname, "up" if up else "down", ns=ns)


def link_mac(ns: str | None, ifname: str) -> str:
    text = _ip("-o", "link", "show", "dev", ifname, ns=ns)
    words = text.split()
    if "link/ether" not in words:
        raise NetnsError(f"{ifname}: no Ethernet address in {text.strip()!r}")
    return words[words.index("link/ether") + 1].lower()


def run_in_ns(ns: str, argv: Sequence[str], **popen_kwargs: Any) -> "subprocess.Popen[Any]":
    """Start `argv` inside `ns` (`ip netns exec`)."""
    return subprocess.Popen(["ip", "netns", "exec", ns, *argv], **popen_kwargs)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def enter_netns(ns: str) -> Iterator[None]:
    """Run the body with the CURRENT thread in network namespace `ns`.

    Only this thread moves (setns is per thread); it is always moved back,
    also when the body raises. Use a dedicated thread where other threads
    must not see sockets opened here.
    """
    target = NETNS_DIR / ns
    try:
        target_fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise NetnsError(f"no network namespace {ns!r}: {exc.strerror}") from None
    try:
        original_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target_fd)
            try:
                yield
            finally:
                _setns(original_fd)
        finally:
            os.close(original_fd)
    finally:
        os.close(target_fd)
