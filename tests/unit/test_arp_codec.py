"""ARP frame encoding/decoding (no sockets)."""

from __future__ import annotations

import struct

import pytest

from nodeos.services.arp import (
    ARP_REPLY,
    ARP_REQUEST,
    BROADCAST_MAC,
    ArpError,
    ArpPacket,
    build_arp,
    parse_arp,
)

MAC_A = "02:00:00:00:00:0a"
MAC_B = "02:00:00:00:00:0b"
ZERO = "00:00:00:00:00:00"


def test_request_round_trip_is_broadcast() -> None:
    frame = build_arp(ARP_REQUEST, MAC_A, "10.0.0.1", ZERO, "10.0.0.2")
    assert len(frame) == 60  # padded to the Ethernet minimum
    assert frame[:6] == b"\xff" * 6 and frame[12:14] == b"\x08\x06"
    assert parse_arp(frame) == ArpPacket(
        op=ARP_REQUEST, sender_mac=MAC_A, sender_ip="10.0.0.1", target_mac=ZERO,
        target_ip="10.0.0.2", eth_src=MAC_A, eth_dst=BROADCAST_MAC,
    )


def test_reply_goes_to_the_target_mac() -> None:
    packet = parse_arp(build_arp(ARP_REPLY, MAC_B, "10.0.0.2", MAC_A, "10.0.0.1"))
    assert (packet.op, packet.eth_dst, packet.target_mac) == (ARP_REPLY, MAC_A, MAC_A)


def test_gratuitous_reply_can_be_broadcast() -> None:
    packet = parse_arp(build_arp(ARP_REPLY, MAC_A, "10.0.0.9", MAC_A, "10.0.0.9", eth_dst=BROADCAST_MAC))
    assert packet.eth_dst == BROADCAST_MAC and packet.sender_ip == packet.target_ip == "10.0.0.9"


def test_wire_layout_is_rfc826() -> None:
    frame = build_arp(ARP_REQUEST, MAC_A, "0.0.0.0", ZERO, "192.168.1.5")
    htype, ptype, hlen, plen, op = struct.unpack("!HHBBH", frame[14:22])
    assert (htype, ptype, hlen, plen, op) == (1, 0x0800, 6, 4, 1)
    assert frame[28:32] == bytes(4) and frame[38:42] == bytes([192, 168, 1, 5])


def test_unpadded_frames_parse_too() -> None:
    frame = build_arp(ARP_REQUEST, MAC_A, "10.0.0.1", ZERO, "10.0.0.2")[:42]
    assert parse_arp(frame).target_ip == "10.0.0.2"


def test_mac_spelling_is_normalised() -> None:
    packet = parse_arp(build_arp(ARP_REQUEST, "02-00-00-00-00-0A", "10.0.0.1", ZERO, "10.0.0.2"))
    assert packet.sender_mac == MAC_A


GOOD = build_arp(ARP_REQUEST, MAC_A, "10.0.0.1", ZERO, "10.0.0.2")


@pytest.mark.parametrize(
    ("frame", "words"),
    [
        (b"", "too short"),
        (GOOD[:41], "too short"),
        (GOOD[:12] + b"\x08\x00" + GOOD[14:], "not an ARP frame"),
        (GOOD[:14] + b"\x00\x06" + GOOD[16:], "not IPv4-over-Ethernet"),
        (GOOD[:16] + b"\x86\xdd" + GOOD[18:], "not IPv4-over-Ethernet"),
        (GOOD[:18] + b"\x08" + GOOD[19:], "not IPv4-over-Ethernet"),
        (GOOD[:20] + b"\x00\x07" + GOOD[22:], "unknown ARP op"),
    ],
)
def test_malformed_frames_are_rejected(frame: bytes, words: str) -> None:
    with pytest.raises(ArpError, match=words):
        parse_arp(frame)


@pytest.mark.parametrize(
    "args",
    [
        (3, MAC_A, "10.0.0.1", ZERO, "10.0.0.2"),
        (ARP_REQUEST, "02:00:00:00:00", "10.0.0.1", ZERO, "10.0.0.2"),
        (ARP_REQUEST, MAC_A, "10.0.0.256", ZERO, "10.0.0.2"),
        (ARP_REQUEST, MAC_A, "10.0.0.1", ZERO, "::1"),
    ],
)
def test_bad_arguments_are_rejected(args: tuple) -> None:
    with pytest.raises(ArpError):
        build_arp(*args)
