"""Signed discovery messages (beacons and join requests): a pure codec.

Wire format (one UDP datagram):

    b"NOS1" | cluster_id (16 ASCII bytes) | HMAC-SHA256 tag (32 bytes) | JSON body

The tag covers the cluster id and the body. The cluster id travels in clear so
that a node can tell "another cluster's beacon" (ignored quietly) from "a
forgery claiming to be ours" (dropped and logged). The body carries the
sender's wall-clock timestamp and a random nonce: stale, future-dated and
replayed messages are rejected. Time is always an argument, never read here.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

MAGIC = b"NOS1"
CLUSTER_ID_LEN = 16
TAG_LEN = 32
HEADER_LEN = len(MAGIC) + CLUSTER_ID_LEN + TAG_LEN
# A member beacon lists the group (~40 bytes a member): 8 KiB covers ~200
# nodes; larger datagrams are refused unread.
MAX_DATAGRAM = 8192
KINDS = ("beacon", "join")


class BeaconRejected(Exception):
    """Why a datagram was dropped; `reason` is a short stable word for counters."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Message:
    kind: str
    node_id: str
    ts: float
    nonce: str
    body: dict[str, Any]


def _cluster_field(cluster_id: str) -> bytes:
    raw = cluster_id.encode("ascii")
    if len(raw) > CLUSTER_ID_LEN:
        raise ValueError("cluster id longer than 16 characters")
    return raw.ljust(CLUSTER_ID_LEN, b"\0")


class BeaconCodec:
    """Encode and verify messages of one cluster; remembers nonces to stop replays."""

    def __init__(self, key: bytes, cluster_id: str, max_age: float = 30.0, nonce_memory: int = 4096) -> None:
        self._key = key
        self._cluster = _cluster_field(cluster_id)
        self.max_age = max_age
        self._nonce_memory = nonce_memory
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._last_ts: dict[str, float] = {}

    def _tag(self, body: bytes) -> bytes:
        return hmac.new(self._key, self._cluster + body, hashlib.sha256).digest()

    def encode(self, kind: str, node_id: str, body: dict[str, Any], now: float, nonce: str) -> bytes:
        if kind not in KINDS:
            raise ValueError(f"unknown message kind {kind!r}")
        payload = {"kind": kind, "node": node_id, "ts": now, "nonce": nonce, "body": body}
        raw = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
        datagram = MAGIC + self._cluster + self._tag(raw) + raw
        if len(datagram) > MAX_DATAGRAM:
            raise ValueError(f"message of {len(datagram)} bytes exceeds {MAX_DATAGRAM}")
        return datagram

    def decode(self, datagram: bytes, now: float) -> Message:
        """Verify and decode, or raise BeaconRejected. Never raises anything else."""
        if len(datagram) > MAX_DATAGRAM:
            raise BeaconRejected("oversized", f"{len(datagram)} bytes")
        if len(datagram) < HEADER_LEN or not datagram.startswith(MAGIC):
            raise BeaconRejected("malformed", "bad header")
        cluster = datagram[len(MAGIC) : len(MAGIC) + CLUSTER_ID_LEN]
        if cluster != self._cluster:
            raise BeaconRejected("foreign", cluster.rstrip(b"\0").decode("ascii", "replace"))
        tag = datagram[len(MAGIC) + CLUSTER_ID_LEN : HEADER_LEN]
        raw = datagram[HEADER_LEN:]
        if not hmac.compare_digest(tag, self._tag(raw)):
            raise BeaconRejected("forged", "bad signature")
        message = self._parse(raw)
        self._check_fresh(message, now)
        return message

    def _parse(self, raw: bytes) -> Message:
        try:
            payload = json.loads(raw)
            kind, node_id = payload["kind"], payload["node"]
            ts, nonce, body = float(payload["ts"]), payload["nonce"], payload["body"]
        except (ValueError, KeyError, TypeError) as exc:
            raise BeaconRejected("malformed", f"signed but unparsable: {exc}") from None
        if kind not in KINDS or not isinstance(node_id, str) or not isinstance(nonce, str):
            raise BeaconRejected("malformed", "bad field types")
        if not isinstance(body, dict) or not node_id or len(node_id) > 64 or len(nonce) > 64:
            raise BeaconRejected("malformed", "bad field values")
        return Message(kind, node_id, ts, nonce, body)

    def _check_fresh(self, message: Message, now: float) -> None:
        if abs(now - message.ts) > self.max_age:
            raise BeaconRejected("stale", f"timestamp {message.ts:.3f} is {now - message.ts:+.1f}s off")
        key = (message.node_id, message.nonce)
        if key in self._seen:
            raise BeaconRejected("replayed", f"nonce {message.nonce} from {message.node_id}")
        if message.ts <= self._last_ts.get(message.node_id, float("-inf")) - self.max_age:
            raise BeaconRejected("replayed", "older than the replay window")
        self._remember(key, now)
        self._last_ts[message.node_id] = max(message.ts, self._last_ts.get(message.node_id, message.ts))

    def _remember(self, key: tuple[str, str], now: float) -> None:
        self._seen[key] = now
        # Nonces older than the age window cannot be replayed (they would be stale).
        while self._seen and (len(self._seen) > self._nonce_memory or next(iter(self._seen.values())) < now - 2 * self.max_age):
            self._seen.popitem(last=False)
