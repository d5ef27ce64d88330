"""Cephx keys and keyrings, pure: randomness and time are arguments.

A cephx key as Ceph writes it (`ceph-authtool --gen-print-key`) is the
base64 of a 12-byte header and the secret:

    u16 type (1 = AES) | u32 created secs | u32 created nsecs | u16 length (16) | 16 secret bytes

all little-endian. The Monitor makes the cluster's keys once and keeps them
in the replicated state; they never reach a log: `CephKeys` hides them in
its repr, and keyrings are written only to files of mode 0600 (daemons.py).
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

RandomBytes = Callable[[int], bytes]

KEY_TYPE_AES = 1
SECRET_LEN = 16
_HEADER = struct.Struct("<HIIH")  # type, created secs, created nsecs, secret length

# Ceph entity ids built from node ids: keep them to characters every Ceph tool takes.
_NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")

MON = "mon."
ADMIN = "client.admin"
BOOTSTRAP_OSD = "client.bootstrap-osd"

Caps = Mapping[str, str]
MON_CAPS: Caps = {"mon": "allow *"}
ADMIN_CAPS: Caps = {"mds": "allow *", "mgr": "allow *", "mon": "allow *", "osd": "allow *"}
BOOTSTRAP_OSD_CAPS: Caps = {"mgr": "allow r", "mon": "profile bootstrap-osd"}
# A node's own client: RBD volumes only (map, lock, snapshot), nothing cluster-wide.
NODE_CAPS: Caps = {"mgr": "profile rbd", "mon": "profile rbd", "osd": "profile rbd"}
MGR_CAPS: Caps = {"mds": "allow *", "mon": "allow profile mgr", "osd": "allow *"}


def check_node_id(node_id: str) -> str:
    """A node id usable as a Ceph entity id (mon, mgr, client name); else ValueError."""
    if not isinstance(node_id, str) or not _NODE_ID.match(node_id):
        raise ValueError(f"node id {node_id!r} cannot name a Ceph daemon (letters, digits, '-', '_'; at most 63)")
    return node_id


def node_entity(node_id: str) -> str:
    """The cephx entity of a node's own client (prefixed: a node named 'admin' stays harmless)."""
    return f"client.node-{check_node_id(node_id)}"


def make_key(random_bytes: RandomBytes, created: float = 0.0) -> str:
    """One cephx key in Ceph's own format, from 16 bytes of `random_bytes`."""
    secret = random_bytes(SECRET_LEN)
    if not isinstance(secret, bytes) or len(secret) != SECRET_LEN:
        raise ValueError(f"random_bytes({SECRET_LEN}) must return {SECRET_LEN} bytes")
    if created < 0:
        raise ValueError("a key's creation time cannot be negative")
    secs = int(created)
    nsecs = min(int(round((created - secs) * 1e9)), 999_999_999)
    header = _HEADER.pack(KEY_TYPE_AES, secs & 0xFFFFFFFF, nsecs, SECRET_LEN)
    return base64.b64encode(header + secret).decode("ascii")


def is_valid_key(text: Any) -> bool:
    """Is `text` a cephx AES key as Ceph reads it (header and length included)?"""
    if not isinstance(text, str):
        return False
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return False
    if len(raw) != _HEADER.size + SECRET_LEN:
        return False
    kind, _secs, nsecs, length = _HEADER.unpack_from(raw)
    return bool(kind == KEY_TYPE_AES and length == SECRET_LEN and nsecs < 1_000_000_000)


@dataclass(frozen=True, repr=False)
class CephKeys:
    """The cluster's cephx keys: made once, kept in the replicated state, never shown."""

    mon: str
    admin: str
    bootstrap_osd: str
    clients: Mapping[str, str] = field(default_factory=dict)  # node id -> its client key

    def __post_init__(self) -> None:
        for name, key in (("mon", self.mon), ("admin", self.admin), ("bootstrap_osd", self.bootstrap_osd),
                          *((f"client of {n}", k) for n, k in self.clients.items())):
            if not is_valid_key(key):
                raise ValueError(f"{name}: not a cephx key")  # never echo the value
        for node in self.clients:
            check_node_id(node)

    def __repr__(self) -> str:
        return f"CephKeys(<4 kinds of keys hidden>, clients for {sorted(self.clients)})"

    __str__ = __repr__

    def with_node(self, random_bytes: RandomBytes, node_id: str, created: float = 0.0) -> "CephKeys":
        """The same keys plus a client key for `node_id` (a node that joined later); idempotent."""
        if check_node_id(node_id) in self.clients:
            return self
        clients = {**self.clients, node_id: make_key(random_bytes, created)}
        return CephKeys(self.mon, self.admin, self.bootstrap_osd, clients)

    def to_wire(self) -> dict[str, Any]:
        return {"mon": self.mon, "admin": self.admin, "bootstrap_osd": self.bootstrap_osd,
                "clients": dict(sorted(self.clients.items()))}

    @classmethod
    def from_wire(cls, data: Any) -> "CephKeys":
        if not isinstance(data, dict) or not isinstance(data.get("clients", {}), dict):
            raise ValueError("Ceph keys must be a mapping with a 'clients' mapping")
        return cls(str(data.get("mon", "")), str(data.get("admin", "")), str(data.get("bootstrap_osd", "")),
                   {str(node): str(key) for node, key in data.get("clients", {}).items()})


def make_keys(random_bytes: RandomBytes, node_ids: Iterable[str], created: float = 0.0) -> CephKeys:
    """The mon, client.admin, client.bootstrap-osd keys and one client key per node.

    Keys are drawn in a fixed order (sorted node ids) so the same random
    stream gives the same keys.
    """
    mon, admin, bootstrap = (make_key(random_bytes, created) for _ in range(3))
    clients = {node: make_key(random_bytes, created) for node in sorted({check_node_id(n) for n in node_ids})}
    return CephKeys(mon, admin, bootstrap, clients)


# -- keyrings ----------------------------------------------------------------

def render_keyring(entries: Mapping[str, tuple[str, Caps]]) -> str:
    """A keyring file: entity -> (key, caps), in Ceph's INI dialect."""
    sections = []
    for entity, (key, caps) in entries.items():
        lines = [f"[{entity}]", f"\tkey = {key}"]
        lines += [f'\tcaps {kind} = "{cap}"' for kind, cap in sorted(caps.items())]
        sections.append("\n".join(lines))
    return "\n".join(sections) + "\n"


def mon_keyring(keys: CephKeys) -> str:
    """What `ceph-mon --mkfs` seeds its auth database with: every key and its caps."""
    entries: dict[str, tuple[str, Caps]] = {
        MON: (keys.mon, MON_CAPS),
        ADMIN: (keys.admin, ADMIN_CAPS),
        BOOTSTRAP_OSD: (keys.bootstrap_osd, BOOTSTRAP_OSD_CAPS),
    }
    entries.update({node_entity(n): (k, NODE_CAPS) for n, k in sorted(keys.clients.items())})
    return render_keyring(entries)


def admin_keyring(keys: CephKeys) -> str:
    return render_keyring({ADMIN: (keys.admin, ADMIN_CAPS)})


def bootstrap_osd_keyring(keys: CephKeys) -> str:
    return render_keyring({BOOTSTRAP_OSD: (keys.bootstrap_osd, BOOTSTRAP_OSD_CAPS)})


def node_keyring(keys: CephKeys, node_id: str) -> str:
    if node_id not in keys.clients:
        raise ValueError(f"no client key for node {node_id!r}")
    return render_keyring({node_entity(node_id): (keys.clients[node_id], NODE_CAPS)})


def daemon_keyring(entity: str, key: str) -> str:
    """A daemon's own keyring (osd.N, mgr.ID): the key only, caps live in the mons."""
    return render_keyring({entity: (key, {})})
