"""Discovery transport: signed UDP multicast beacons and unicast join requests.

The codec (beacon.py) decides what is valid; this module owns the sockets,
the receive thread and the drop counters. Every dropped datagram is counted
by reason, and logged at most a few times per reason per 10 s.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import netifaces

from nodeos import log
from .beacon import BeaconCodec, BeaconRejected, Message


class InterfaceError(RuntimeError):
    pass


@dataclass(frozen=True)
class Interface:
    name: str
    ip: str
    prefixlen: int

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Interface(f"{self.ip}/{self.prefixlen}").network


def detect_interface(wanted: str | None) -> Interface:
    """The cluster interface: as configured, else the default route's, else the only one."""
    if wanted is None:
        gateways = netifaces.gateways().get("default", {})
        if netifaces.AF_INET in gateways:
            wanted = gateways[netifaces.AF_INET][1]
    candidates = [wanted] if wanted else [i for i in netifaces.interfaces() if i != "lo"]
    found = []
    for name in candidates:
        try:
            addrs = netifaces.ifaddresses(name).get(netifaces.AF_INET, [])
        except ValueError:
            raise InterfaceError(f"interface {name!r} does not exist") from None
        for addr in addrs:
            if "addr" in addr and "netmask" in addr:
                prefix = ipaddress.ip_network(f"0.0.0.0/{addr['netmask']}").prefixlen
                found.append(Interface(name, addr["addr"], prefix))
                break
    if not found:
        raise InterfaceError("no interface with an IPv4 address (set 'interface' in the config)")
    if wanted is None and len(found) > 1:
        names = ", ".join(i.name for i in found)
        raise InterfaceError(f"several interfaces and no default route ({names}): set 'interface' in the config")
    return found[0]


class Discovery:
    """Sends beacons, receives beacons and join requests, hands valid ones to `on_message`.

    Messages carrying this node's own id reach `on_message` too when they come
    from another address (a cloned node id); the agent tells them apart.
    """

    def __init__(self, codec: BeaconCodec, node_id: str, iface: Interface, group: str, port: int,
                 on_message: Callable[[Message, str], None]) -> None:
        self.codec = codec
        self.node_id = node_id
        self.iface = iface
        self.group = group
        self.port = port
        self.on_message = on_message
        self.sent = 0
        self.received = 0
        self.dropped: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._log_limit = log.RateLimiter(period=10.0, burst=3)
        self._stop = threading.Event()
        self._rx = self._open_receiver()
        self._tx = self._open_sender()
        self._thread = threading.Thread(target=self._receive_loop, name="discovery", daemon=True)

    def _open_receiver(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("", self.port))
        membership = struct.pack("4s4s", socket.inet_aton(self.group), socket.inet_aton(self.iface.ip))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        sock.settimeout(0.2)
        return sock

    def _open_sender(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)  # never leaves the LAN
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(self.iface.ip))
        return sock

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._rx.close()
        self._tx.close()

    def _encode(self, kind: str, body: dict) -> bytes:
        return self.codec.encode(kind, self.node_id, body, time.time(), secrets.token_hex(8))

    def send_beacon(self, body: dict) -> None:
        self._send(self._encode("beacon", body), (self.group, self.port))

    def send_join(self, body: dict, to_ip: str) -> None:
        self._send(self._encode("join", body), (to_ip, self.port))

    def _send(self, datagram: bytes, dest: tuple[str, int]) -> None:
        try:
            self._tx.sendto(datagram, dest)
            with self._lock:
                self.sent += 1
        except OSError as exc:
            self._drop("send_error", f"{dest[0]}: {exc.strerror}")

    def _receive_loop(self) -> None:
        while not self._stop.is_set():
            try:
                datagram, (src_ip, _port) = self._rx.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                time.sleep(0.05)
                continue
            self._handle(datagram, src_ip)

    def _handle(self, datagram: bytes, src_ip: str) -> None:
        try:
            message = self.codec.decode(datagram, time.time())
        except BeaconRejected as rejected:
            self._drop(rejected.reason, f"from {src_ip}: {rejected.detail}", quiet=rejected.reason == "foreign")
            return
        if message.node_id == self.node_id and src_ip == self.iface.ip:
            return  # our own (multicast loop is off, but a stray copy is not news)
        # Our id from another address is a machine with a copy of our state
        # dir: the agent must hear it (it decides which of the two leaves).
        with self._lock:
            self.received += 1
        try:
            self.on_message(message, src_ip)
        except Exception as exc:  # a valid-but-odd message must never kill the receiver
            self._drop("unusable", f"from {src_ip}: {exc!r}")

    def _drop(self, reason: str, detail: str, quiet: bool = False) -> None:
        with self._lock:
            self.dropped[reason] += 1
            total = self.dropped[reason]
        if quiet:
            return
        allowed, suppressed = self._log_limit.allow(reason)
        if allowed:
            log.event("discovery.dropped", level="warning", reason=reason, detail=detail, total=total, suppressed=suppressed)

    def counters(self) -> dict:
        with self._lock:
            return {"sent": self.sent, "received": self.received, "dropped": dict(self.dropped)}
