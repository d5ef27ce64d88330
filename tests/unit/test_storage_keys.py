"""Cephx keys (nodeos/storage/keys.py): Ceph's format, deterministic, never shown."""

from __future__ import annotations

import base64
import os
import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from nodeos.storage.keys import (ADMIN, BOOTSTRAP_OSD, CephKeys, admin_keyring, is_valid_key, make_key, make_keys,
                                 mon_keyring, node_entity, node_keyring)

# Printed by `ceph-authtool --gen-print-key` (Ceph 16.2.15).
AUTHTOOL_KEY = "AQAuOw1ruLOoARAAiW/NpvO7MykLNOj5PXS+bw=="


def seeded(seed: int = 7):
    rng = random.Random(seed)
    return lambda n: bytes(rng.getrandbits(8) for _ in range(n))


def test_a_key_has_cephx_header_and_16_secret_bytes() -> None:
    key = make_key(lambda n: b"\x01" * n, created=1700000000.25)
    raw = base64.b64decode(key)
    assert len(raw) == 28
    assert struct.unpack_from("<HIIH", raw) == (1, 1700000000, 250_000_000, 16)
    assert raw[12:] == b"\x01" * 16


def test_our_keys_look_like_ceph_authtools() -> None:
    ours = base64.b64decode(make_key(os.urandom, 1796029000.5))
    theirs = base64.b64decode(AUTHTOOL_KEY)
    assert len(ours) == len(theirs) and ours[:2] == theirs[:2] and ours[10:12] == theirs[10:12]
    assert is_valid_key(AUTHTOOL_KEY)


@pytest.mark.parametrize("bad", [None, "", "not base64!", base64.b64encode(b"x" * 28).decode(),
                                 base64.b64encode(struct.pack("<HIIH", 1, 0, 0, 16) + b"x" * 15).decode(),
                                 base64.b64encode(struct.pack("<HIIH", 0, 0, 0, 16) + b"x" * 16).decode()])
def test_invalid_keys_are_recognised(bad: object) -> None:
    assert not is_valid_key(bad)


def test_short_randomness_is_refused() -> None:
    with pytest.raises(ValueError):
        make_key(lambda n: b"\x00" * (n - 1))


def test_the_same_random_stream_gives_the_same_keys() -> None:
    one = make_keys(seeded(), ["b", "a"], created=5.0)
    two = make_keys(seeded(), ["a", "b"], created=5.0)
    assert one == two
    assert len({one.mon, one.admin, one.bootstrap_osd, *one.clients.values()}) == 5
    assert sorted(one.clients) == ["a", "b"]
    assert all(is_valid_key(k) for k in (one.mon, one.admin, one.bootstrap_osd, *one.clients.values()))


def test_keys_never_show_in_repr_str_or_format() -> None:
    keys = make_keys(os.urandom, ["node-1"])
    for shown in (repr(keys), str(keys), f"{keys}", f"{[keys]}", f"{ {'keys': keys} }"):
        for secret in (keys.mon, keys.admin, keys.bootstrap_osd, keys.clients["node-1"]):
            assert secret not in shown
    assert "node-1" in repr(keys)


def test_a_bad_key_is_refused_without_echoing_it() -> None:
    with pytest.raises(ValueError) as err:
        CephKeys("AQAsecretbutbroken", make_key(os.urandom), make_key(os.urandom))
    assert "AQAsecretbutbroken" not in str(err.value)


def test_wire_round_trip_and_a_late_node() -> None:
    keys = make_keys(seeded(), ["a"])
    assert CephKeys.from_wire(keys.to_wire()) == keys
    later = keys.with_node(seeded(9), "b")
    assert later.clients["a"] == keys.clients["a"] and is_valid_key(later.clients["b"])
    assert later.with_node(seeded(10), "b") is later  # idempotent
    with pytest.raises(ValueError):
        CephKeys.from_wire({"mon": "x"})


@pytest.mark.parametrize("node", ["", "a b", "a.b", "../x", "x" * 64, "-lead"])
def test_node_ids_that_cannot_name_a_ceph_entity_are_refused(node: str) -> None:
    with pytest.raises(ValueError):
        make_keys(os.urandom, [node])


def test_keyrings_name_entities_and_caps() -> None:
    keys = make_keys(seeded(), ["n1"])
    seed = mon_keyring(keys)
    for entity in ("[mon.]", f"[{ADMIN}]", f"[{BOOTSTRAP_OSD}]", f"[{node_entity('n1')}]"):
        assert entity in seed
    assert 'caps mon = "profile bootstrap-osd"' in seed and 'caps osd = "profile rbd"' in seed
    assert keys.admin in admin_keyring(keys) and keys.mon not in admin_keyring(keys)
    assert node_entity("n1") == "client.node-n1" and keys.clients["n1"] in node_keyring(keys, "n1")


@pytest.mark.skipif(shutil.which("ceph-authtool") is None, reason="needs ceph-authtool (ceph-common)")
def test_ceph_authtool_accepts_our_keys_and_keyrings(tmp_path: Path) -> None:
    keys = make_keys(os.urandom, ["n1"], created=1796029000.5)
    ring = tmp_path / "ring"
    subprocess.run(["ceph-authtool", str(ring), "--create-keyring", "--name", "client.x", "--add-key", keys.admin],
                   check=True, capture_output=True)
    assert keys.admin in ring.read_text()
    seed = tmp_path / "seed"
    seed.write_text(mon_keyring(keys))
    listed = subprocess.run(["ceph-authtool", str(seed), "--list"], check=True, capture_output=True, text=True).stdout
    for secret in (keys.mon, keys.admin, keys.bootstrap_osd, keys.clients["n1"]):
        assert f"key = {secret}" in listed
    assert 'caps mon = "allow *"' in listed
