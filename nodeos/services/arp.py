"""ARP over AF_PACKET raw sockets: announce a VIP, probe for conflicts, ask who has it.

No scapy and no subprocess: a node moving a VIP must send its gratuitous ARP
within milliseconds, also when the system is under stress. Sockets are
opened in the network namespace of the calling thread.
"""

from __future__ import annotations

import fcntl
import ipaddress
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass

ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
ARP_REQUEST = 1
ARP_REPLY = 2
BROADCAST_MAC = "ff:ff:ff:ff:ff:ff"
ZERO_MAC = "00:00:00:00:00:00"
ZERO_IP = "0.0.0.0"

_ETH_HEADER = struct.Struct("!6s6sH")
# htype, ptype, hlen, plen, op, sha, spa, tha, tpa
_ARP_BODY = struct.Struct("!HHBBH6s4s6s4s")
_FRAME_MIN = 60  # minimum Ethernet frame without FCS; shorter frames are padded
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_SIOCGIFHWADDR = 0x8927
_SIOCGIFADDR = 0x8915
_PACKET_OUTGOING = 4  # sll_pkttype of frames this host sent


class ArpError(ValueError):
    """A malformed ARP frame or argument."""


@dataclass(frozen=True)
class ArpPacket:
    op: int
    sender_mac: str
    sender_ip: str
    target_mac: str
    target_ip: str
    eth_src: str
    eth_dst: str


# ---------------------------------------------------------------- codec


def mac_to_bytes(mac: str) -> bytes:
    text = mac.strip().lower().replace("-", ":")
    if not _MAC.match(text):
        raise ArpError(f"not a MAC address: {mac!r}")
    return bytes.fromhex(text.replace(":", ""))


def mac_to_str(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def _ip_to_bytes(ip: str) -> bytes:
    try:
        return ipaddress.IPv4Address(ip).packed
    except ValueError:
        raise ArpError(f"not an IPv4 address: {ip!r}") from None


def build_arp(
    op: int,
    sender_mac: str,
    sender_ip: str,
    target_mac: str,
    target_ip: str,
    eth_dst: str | None = None,
) -> bytes:
    """A full Ethernet frame carrying one ARP packet, padded to 60 bytes.

    The Ethernet destination defaults to broadcast for requests and to
    `target_mac` for replies (broadcast if that is all-zero).
    """
    if op not in (ARP_REQUEST, ARP_REPLY):
        raise ArpError(f"ARP op must be 1 (request) or 2 (reply), got {op!r}")
    sha, tha = mac_to_bytes(sender_mac), mac_to_bytes(target_mac)
    if eth_dst is None:
        eth_dst = BROADCAST_MAC if op == ARP_REQUEST or tha == bytes(6) else target_mac
    header = _ETH_HEADER.pack(mac_to_bytes(eth_dst), sha, ETH_P_ARP)
    body = _ARP_BODY.pack(1, ETH_P_IP, 6, 4, op, sha, _ip_to_bytes(sender_ip), tha, _ip_to_bytes(target_ip))
    return (header + body).ljust(_FRAME_MIN, b"\x00")


def parse_arp(frame: bytes) -> ArpPacket:
    """Decode an Ethernet/ARP (IPv4 over Ethernet) frame; ArpError if it is not one."""
    if len(frame) < _ETH_HEADER.size + _ARP_BODY.size:
        raise ArpError(f"frame too short for ARP: {len(frame)} bytes")
    eth_dst, eth_src, ethertype = _ETH_HEADER.unpack_from(frame, 0)
    if ethertype != ETH_P_ARP:
        raise ArpError(f"not an ARP frame: ethertype 0x{ethertype:04x}")
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP_BODY.unpack_from(frame, _ETH_HEADER.size)
    if (htype, ptype, hlen, plen) != (1, ETH_P_IP, 6, 4):
        raise ArpError(f"not IPv4-over-Ethernet ARP: htype={htype} ptype=0x{ptype:04x} hlen={hlen} plen={plen}")
    if op not in (ARP_REQUEST, ARP_REPLY):
        raise ArpError(f"unknown ARP op {op}")
    return ArpPacket(
        op=op,
        sender_mac=mac_to_str(sha),
        sender_ip=str(ipaddress.IPv4Address(spa)),
        target_mac=mac_to_str(tha),
        target_ip=str(ipaddress.IPv4Address(tpa)),
        eth_src=mac_to_str(eth_src),
        eth_dst=mac_to_str(eth_dst),
    )


# ---------------------------------------------------------------- interface facts


def _ifreq(ifname: str, request: int) -> bytes:
    name = ifname.encode()
    if not name or len(name) > 15:
        raise ArpError(f"bad interface name: {ifname!r}")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            return fcntl.ioctl(sock.fileno(), request, struct.pack("256s", name))
        except OSError as exc:
            raise OSError(exc.errno, f"{ifname}: {exc.strerror}") from None


def interface_mac(ifname: str) -> str:
    return mac_to_str(_ifreq(ifname, _SIOCGIFHWADDR)[18:24])


def interface_ipv4(ifname: str) -> str | None:
    """The interface's primary IPv4 address, None if it has none."""
    try:
        return socket.inet_ntoa(_ifreq(ifname, _SIOCGIFADDR)[20:24])
    except OSError:
        return None


def _open(ifname: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    try:
        sock.bind((ifname, ETH_P_ARP))
    except OSError:
        sock.close()
        raise
    return sock


def _receive(sock: socket.socket, deadline: float) -> list[ArpPacket]:
    """ARP packets received (not sent by us) until `deadline` (monotonic)."""
    packets: list[ArpPacket] = []
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            frame, address = sock.recvfrom(2048)
        except (socket.timeout, BlockingIOError):
            break
        if address[2] == _PACKET_OUTGOING:
            continue
        try:
            packets.append(parse_arp(frame))
        except ArpError:
            continue  # garbage on the wire is not our problem
    return packets


# ---------------------------------------------------------------- operations


def send_gratuitous(ifname: str, ip: str, count: int = 2, interval: float = 0.05) -> None:
    """Announce `ip` at this interface's MAC: a request-style and a reply-style
    gratuitous ARP per round. Linux neighbours override an existing entry on
    either (reply-style needs target MAC == sender MAC)."""
    announcer = Announcer(ifname)
    try:
        announcer.announce(ip, count, interval)
    finally:
        announcer.close()


class Announcer:
    """Gratuitous ARP (send_gratuitous) for one interface, its socket and MAC kept between calls: the node
    re-announces each VIP every second, and opening a packet socket each time was a
    visible part of an idle agent's CPU (profiled). Reopened after an error."""

    def __init__(self, ifname: str) -> None:
        self.ifname = ifname
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._mac: str | None = None

    def announce(self, ip: str, count: int = 2, interval: float = 0.05) -> None:
        with self._lock:
            try:
                if self._sock is None:
                    self._mac, self._sock = interface_mac(self.ifname), _open(self.ifname)
                announce = build_arp(ARP_REQUEST, self._mac, ip, ZERO_MAC, ip)
                reply = build_arp(ARP_REPLY, self._mac, ip, self._mac, ip, eth_dst=BROADCAST_MAC)
                for round_number in range(count):
                    if round_number:
                        time.sleep(interval)
                    self._sock.send(announce)
                    self._sock.send(reply)
            except OSError:
                self.close()
                raise

    def close(self) -> None:
        sock, self._sock, self._mac = self._sock, None, None
        if sock is not None:
            sock.close()


def probe_in_use(ifname: str, ip: str, timeout: float = 0.3) -> bool:
    """RFC 5227 probe: is `ip` used by another host on this link?

    In use if any host answers, announces it, or probes for it at the same time.
    """
    mac = interface_mac(ifname)
    with _open(ifname) as sock:
        sock.send(build_arp(ARP_REQUEST, mac, ZERO_IP, ZERO_MAC, ip))
        for packet in _receive(sock, time.monotonic() + timeout):
            if packet.sender_mac == mac:
                continue
            if packet.sender_ip == ip:
                return True  # a reply or an announcement from the holder
            if packet.op == ARP_REQUEST and packet.sender_ip == ZERO_IP and packet.target_ip == ip:
                return True  # a conflicting probe
    return False


def who_has(ifname: str, ip: str, timeout: float = 0.2) -> set[str]:
    """MACs of every host answering an ordinary ARP request for `ip` within `timeout`."""
    mac = interface_mac(ifname)
    sender_ip = interface_ipv4(ifname) or ZERO_IP
    macs: set[str] = set()
    with _open(ifname) as sock:
        sock.send(build_arp(ARP_REQUEST, mac, sender_ip, ZERO_MAC, ip))
        for packet in _receive(sock, time.monotonic() + timeout):
            if packet.op == ARP_REPLY and packet.sender_ip == ip and packet.sender_mac != mac:
                macs.add(packet.sender_mac)
    return macs
