"""Beacon codec: valid messages decode; every kind of bad datagram is rejected by reason."""

from __future__ import annotations

import json

import pytest

from nodeos.cluster.beacon import HEADER_LEN, MAX_DATAGRAM, BeaconCodec, BeaconRejected

KEY = b"k" * 32


def codec(key: bytes = KEY, cluster: str = "c1") -> BeaconCodec:
    return BeaconCodec(key, cluster, max_age=30.0)


def reason(c: BeaconCodec, datagram: bytes, now: float = 1000.0) -> str:
    with pytest.raises(BeaconRejected) as info:
        c.decode(datagram, now)
    return info.value.reason


def test_round_trip():
    data = codec().encode("beacon", "node1", {"phase": "waiting", "addr": "10.0.0.1:7371"}, 1000.0, "n1")
    message = codec().decode(data, 1000.5)
    assert (message.kind, message.node_id, message.body["phase"]) == ("beacon", "node1", "waiting")


def test_forged_signature_is_rejected():
    data = codec(key=b"x" * 32).encode("beacon", "node1", {}, 1000.0, "n1")
    assert reason(codec(), data) == "forged"


def test_tampered_body_is_rejected():
    data = bytearray(codec().encode("beacon", "node1", {"phase": "waiting"}, 1000.0, "n1"))
    data[-5] ^= 0x01
    assert reason(codec(), bytes(data)) == "forged"


def test_other_cluster_is_foreign():
    data = codec(cluster="c2").encode("beacon", "node1", {}, 1000.0, "n1")
    assert reason(codec(), data) == "foreign"


def test_replayed_beacon_is_rejected():
    receiver = codec()
    data = codec().encode("beacon", "node1", {}, 1000.0, "n1")
    receiver.decode(data, 1000.0)
    assert reason(receiver, data, 1001.0) == "replayed"


@pytest.mark.parametrize("skew", [-31.0, 31.0])
def test_stale_or_future_beacon_is_rejected(skew: float):
    data = codec().encode("beacon", "node1", {}, 1000.0 + skew, "n1")
    assert reason(codec(), data) == "stale"


@pytest.mark.parametrize("datagram", [b"", b"NOS1", b"garbage" * 10, b"NOS2" + b"\0" * 60, b"\xff" * 80])
def test_malformed_datagrams_are_rejected(datagram: bytes):
    assert reason(codec(), datagram) in ("malformed", "foreign")


def test_signed_but_unparsable_body_is_malformed():
    c = codec()
    raw = b"{not json"
    datagram = b"NOS1" + b"c1".ljust(16, b"\0") + c._tag(raw) + raw
    assert reason(c, datagram) == "malformed"


def test_signed_body_with_wrong_types_is_malformed():
    c = codec()
    raw = json.dumps({"kind": "beacon", "node": 5, "ts": 1000.0, "nonce": "a", "body": {}}).encode()
    datagram = b"NOS1" + b"c1".ljust(16, b"\0") + c._tag(raw) + raw
    assert reason(c, datagram) == "malformed"


def test_oversized_datagram_is_rejected_unread():
    assert reason(codec(), b"NOS1" + b"x" * MAX_DATAGRAM) == "oversized"


def test_encoder_refuses_oversized_body():
    with pytest.raises(ValueError):
        codec().encode("beacon", "node1", {"pad": "x" * MAX_DATAGRAM}, 1000.0, "n1")


def test_header_length_is_what_the_wire_format_says():
    data = codec().encode("beacon", "n", {}, 1000.0, "n1")
    assert data[HEADER_LEN:].startswith(b"{")


def test_a_member_beacon_of_a_large_rack_fits():
    from nodeos.cluster.formation import Group, Member

    group = Group("g1", tuple(Member(f"{i:012x}", f"10.0.{i // 250}.{i % 250 + 1}:7371") for i in range(150)))
    body = {"phase": "member", "addr": "10.0.0.1:7371", "ip": "10.0.0.1", "group": group.to_wire()}
    data = codec().encode("beacon", "node1", body, 1000.0, "n1")
    assert Group.from_wire(codec().decode(data, 1000.0).body["group"]) == group
