"""Virtual IPs: add and remove a service's VIP on this node's interface.

`VipManager` is idempotent in both directions, so the agent's reconcile loop
can call it again at any time. Adding announces the VIP with gratuitous ARP
so clients' neighbour caches move to this node at once. The pure helpers
pick VIP candidates from a subnet or an operator's range.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import threading
import time
from typing import Iterator

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from nodeos import log
from . import arp
from .addrwatch import AddressWatch

# A range or subnet with more addresses than this is surely a typo.
MAX_RANGE = 65536


class VipError(RuntimeError):
    """A VIP could not be added or removed."""


class VipRangeError(ValueError):
    """A VIP range or subnet that cannot be used; the message names it."""


# A listing of the interface's addresses is reused until the kernel reports an address
# change in the namespace (addrwatch.py), or for at most this many seconds: listing costs
# about 2 ms of netlink and parsing and the node pass asks 10 times a second. Our own adds
# and removes refresh it at once; someone else's (the guard's fence) is reported by the kernel.
PRESENT_TTL = 5.0


class VipManager:
    def __init__(self, ifname: str, announce_count: int = 2) -> None:
        self.ifname = ifname
        self.announce_count = announce_count
        self._added: dict[str, int] = {}  # ip -> prefixlen, added by this manager
        self._lock = threading.Lock()
        self._ipr: IPRoute | None = None  # opened on first use, in the caller's network namespace
        self._ifindex: int | None = None
        self._listing: tuple[float, dict[str, list[int]]] | None = None  # (when, ip -> prefix lengths)
        self._changes = AddressWatch()

    def add(self, ip: str, prefixlen: int = 32, announce: bool = True) -> None:
        """Put `ip/prefixlen` on the interface (no error if already there), then announce it."""
        ip = _valid_ipv4(ip)
        if not 0 <= prefixlen <= 32:
            raise VipError(f"{ip}: prefix length must be 0-32, got {prefixlen}")
        with self._lock, self._netlink() as (ipr, index):
            self._listing = None
            try:
                ipr.addr("add", index=index, address=ip, prefixlen=prefixlen)
                log.event("vip.added", ip=ip, prefixlen=prefixlen, ifname=self.ifname)
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise VipError(f"{self.ifname}: cannot add {ip}/{prefixlen}: {exc}") from exc
            self._added[ip] = prefixlen
        if announce:
            arp.send_gratuitous(self.ifname, ip, count=self.announce_count)

    def remove(self, ip: str) -> None:
        """Take `ip` off the interface if present, whoever added it."""
        ip = _valid_ipv4(ip)
        with self._lock, self._netlink() as (ipr, index):
            self._listing = None
            for prefixlen in self._present(ipr, index).get(ip, []):
                try:
                    ipr.addr("del", index=index, address=ip, prefixlen=prefixlen)
                    log.event("vip.removed", ip=ip, prefixlen=prefixlen, ifname=self.ifname)
                except NetlinkError as exc:
                    if exc.code not in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ESRCH):
                        raise VipError(f"{self.ifname}: cannot remove {ip}: {exc}") from exc
            self._added.pop(ip, None)
            self._listing = None

    def held(self) -> set[str]:
        """The VIPs this manager added that are still on the interface (listed now)."""
        with self._lock, self._netlink() as (ipr, index):
            present = self._present(ipr, index)
            return {ip for ip in self._added if ip in present}

    def present(self, max_age: float = PRESENT_TTL) -> set[str]:
        """Every IPv4 address on the interface (the node's own included), listed at most `max_age` ago."""
        now = time.monotonic()
        with self._lock:
            changed = self._changes.changed()  # before listing: a change after it is seen next time
            if changed or self._listing is None or now - self._listing[0] >= max_age:
                with self._netlink() as (ipr, index):
                    self._listing = (now, self._present(ipr, index))
            return set(self._listing[1])

    def remove_all(self) -> None:
        for ip in sorted(self._added):
            self.remove(ip)

    @contextlib.contextmanager
    def _netlink(self) -> Iterator[tuple[IPRoute, int]]:
        """The manager's netlink socket and the interface's index (lock held), opened again after a failure."""
        try:
            if self._ipr is None:
                self._ipr = IPRoute()
            if self._ifindex is None:
                self._ifindex = self._index(self._ipr)
            yield self._ipr, self._ifindex
        except (OSError, VipError):  # a broken socket, the interface gone: not the kernel refusing a request
            self._close()
            raise

    def _close(self) -> None:
        ipr, self._ipr, self._ifindex, self._listing = self._ipr, None, None, None
        if ipr is not None:
            try:
                ipr.close()
            except Exception:  # noqa: BLE001 - a broken socket: nothing more to do with it
                pass

    def _index(self, ipr: IPRoute) -> int:
        found = ipr.link_lookup(ifname=self.ifname)
        if not found:
            raise VipError(f"no interface {self.ifname!r} in this network namespace")
        return int(found[0])

    def _present(self, ipr: IPRoute, index: int) -> dict[str, list[int]]:
        addresses: dict[str, list[int]] = {}
        for message in ipr.get_addr(family=2, index=index):
            address = message.get_attr("IFA_ADDRESS")
            if address:
                addresses.setdefault(address, []).append(int(message["prefixlen"]))
        return addresses


def _valid_ipv4(ip: str) -> str:
    try:
        return str(ipaddress.IPv4Address(ip))
    except ValueError:
        raise VipError(f"not an IPv4 address: {ip!r}") from None


def candidate_vips(subnet_cidr: str, exclude: set[str], count: int) -> list[str]:
    """Up to `count` free host addresses of the subnet, from the top down.

    The top of a subnet is where operators rarely put hosts; skipping the
    network and broadcast addresses and everything in `exclude`.
    """
    if count < 0:
        raise VipRangeError(f"count must be >= 0, got {count}")
    network = _ipv4_network(subnet_cidr, strict=False)
    first, last = _host_bounds(network)
    picked: list[str] = []
    address = last
    while address >= first and len(picked) < count:
        text = str(ipaddress.IPv4Address(address))
        if text not in exclude:
            picked.append(text)
        address -= 1
    return picked


def parse_vip_range(text: str) -> list[str]:
    """'10.0.0.200-10.0.0.220' (inclusive), '10.0.0.192/28' (its hosts) or one address."""
    spec = text.strip() if isinstance(text, str) else ""
    if not spec:
        raise VipRangeError(f"empty VIP range: {text!r}")
    if "/" in spec:
        network = _ipv4_network(spec, strict=True)
        first, last = _host_bounds(network)
    elif "-" in spec:
        low_text, _, high_text = spec.partition("-")
        first, last = int(_ipv4(low_text, spec)), int(_ipv4(high_text, spec))
        if first > last:
            raise VipRangeError(f"VIP range {spec!r}: start is after end")
    else:
        first = last = int(_ipv4(spec, spec))
    if last - first + 1 > MAX_RANGE:
        raise VipRangeError(f"VIP range {spec!r}: more than {MAX_RANGE} addresses")
    return [str(ipaddress.IPv4Address(value)) for value in range(first, last + 1)]


def _ipv4(text: str, whole: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text.strip())
    except ValueError:
        raise VipRangeError(f"VIP range {whole!r}: {text.strip()!r} is not an IPv4 address") from None


def _ipv4_network(text: str, strict: bool) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(text.strip(), strict=strict)
    except ValueError as exc:
        hint = " (host bits set; use the network address)" if "host bits" in str(exc) else ""
        raise VipRangeError(f"not an IPv4 subnet: {text!r}{hint}") from None


def _host_bounds(network: ipaddress.IPv4Network) -> tuple[int, int]:
    """First and last usable host as integers (/31 and /32 have no network/broadcast)."""
    first, last = int(network.network_address), int(network.broadcast_address)
    if network.prefixlen < 31:
        first, last = first + 1, last - 1
    return first, last
