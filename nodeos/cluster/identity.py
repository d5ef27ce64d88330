"""Cluster identity (baked into the image) and per-node identity (made on first boot).

The cluster identity is one JSON file, mode 0600: a random 256-bit secret, a
cluster id and a CA (made with `cryptography`). Every key the agent uses is
derived from the secret with HKDF under a distinct label, so the beacon key,
the join key and the Raft password are independent.
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import NameOID

IDENTITY_VERSION = 1


class IdentityError(ValueError):
    """An identity file that is missing, unreadable, too open or malformed."""


@dataclass(frozen=True)
class ClusterIdentity:
    cluster_id: str
    secret: bytes
    ca_cert_pem: str
    ca_key_pem: str

    def derive_key(self, label: str, length: int = 32) -> bytes:
        """A key for one purpose (label), bound to this cluster."""
        hkdf = HKDF(
            algorithm=hashes.SHA256(),
            length=length,
            salt=self.cluster_id.encode(),
            info=f"nodeos/{label}".encode(),
        )
        return hkdf.derive(self.secret)

    @property
    def beacon_key(self) -> bytes:
        return self.derive_key("beacon")

    @property
    def raft_password(self) -> str:
        return self.derive_key("raft").hex()

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": IDENTITY_VERSION,
                "cluster_id": self.cluster_id,
                "secret": self.secret.hex(),
                "ca_cert_pem": self.ca_cert_pem,
                "ca_key_pem": self.ca_key_pem,
            },
            indent=2,
        )


def _make_ca(cluster_id: str) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"nodeos cluster {cluster_id}")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return cert_pem, key_pem


def new_identity() -> ClusterIdentity:
    cluster_id = uuid.uuid4().hex[:16]
    cert_pem, key_pem = _make_ca(cluster_id)
    return ClusterIdentity(cluster_id, secrets.token_bytes(32), cert_pem, key_pem)


def write_private(path: Path, text: str) -> None:
    """Write a file that only root may read, atomically (never briefly world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def init_identity(path: Path, force: bool = False) -> ClusterIdentity:
    if path.exists() and not force:
        raise IdentityError(f"{path}: already exists; use --force to replace the cluster identity")
    identity = new_identity()
    write_private(path, identity.to_json())
    return identity


def load_identity(path: Path) -> ClusterIdentity:
    try:
        mode = path.stat().st_mode & 0o777
        text = path.read_text()
    except FileNotFoundError as exc:
        raise IdentityError(f"{path}: no cluster identity (create one with 'nodeos identity init')") from exc
    except OSError as exc:
        raise IdentityError(f"{path}: cannot read: {exc.strerror}") from exc
    if mode & 0o077:
        raise IdentityError(f"{path}: permissions {mode:o} are too open; the secret must be 0600")
    try:
        data = json.loads(text)
        secret = bytes.fromhex(data["secret"])
        identity = ClusterIdentity(
            cluster_id=str(data["cluster_id"]),
            secret=secret,
            ca_cert_pem=str(data["ca_cert_pem"]),
            ca_key_pem=str(data["ca_key_pem"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise IdentityError(f"{path}: malformed identity file ({exc})") from exc
    if len(secret) < 32:
        raise IdentityError(f"{path}: secret shorter than 256 bits")
    return identity


def load_or_create_node_id(state_dir: Path) -> str:
    """The node's own id: created once on first start, then read from disk."""
    path = state_dir / "node_id"
    try:
        node_id = path.read_text().strip()
        if node_id:
            return node_id
    except FileNotFoundError:
        pass
    node_id = uuid.uuid4().hex[:12]
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".node_id.tmp")
    tmp.write_text(node_id + "\n")
    os.replace(tmp, path)
    return node_id


# -- one node id on two machines (a cloned disk or VM) ------------------------

CloneVerdict = Literal["stay", "leave", "unsure"]


def clone_verdict(me: str, other: str, registered: str | None, members: Collection[str] | None,
                  other_is_member: bool) -> CloneVerdict:
    """Which of two machines announcing one node id must leave (seen from `me`).

    `me`/`other` are the two Raft addresses; `registered` is the id's address
    in the replicated state and `members` the Raft member addresses, both as
    this node knows them (None before it runs consensus). The newcomer leaves:
    the one not registered for the id, else the one not a member; two fresh
    machines (neither a member yet) break the tie by address, so one stays.
    """
    if registered == me:
        return "stay"
    if registered == other:
        return "leave"
    if members is not None:
        if me in members and other not in members:
            return "stay"
        if other in members and me not in members:
            return "leave"
        return "unsure"
    if other_is_member:
        return "leave"
    return "leave" if _addr_key(me) > _addr_key(other) else "stay"


def _addr_key(addr: str) -> tuple[int, ...]:
    host, _, port = addr.rpartition(":")
    try:
        return (*(int(part) for part in host.split(".")), int(port))
    except ValueError:
        return (sum(map(ord, addr)),)  # not ip:port; any fixed order will do


def clone_refusal(node_id: str, me: str, other: str, state_dir: Path) -> str:
    """What the newcomer tells the operator before it exits."""
    return (f"node id {node_id} is already in use by the node at {other} (this machine is {me}): "
            f"this machine's {state_dir / 'node_id'} (state dir) was copied from another node (a cloned disk or VM); "
            f"remove node_id and raft.* / membership.json from {state_dir} to join as a new node, then start the agent again")


def clone_warning(node_id: str, original: str, clone: str) -> str:
    """What the original (and any observer) logs about the clone."""
    return (f"{clone} announces node id {node_id}, which belongs to the node at {original}: its state dir was copied "
            f"from that node; on {clone.rpartition(':')[0] or clone}, remove node_id and raft.* / membership.json from the state dir "
            f"to join as a new node")


def clone_ambiguous(node_id: str, one: str, other: str) -> str:
    """What a node logs when it cannot tell which of two machines is the original."""
    return (f"node id {node_id} is announced from both {one} and {other}: one machine's state dir was copied from the other's; "
            f"on the copy, remove node_id and raft.* / membership.json from the state dir to join as a new node")
