"""Cephx clients of the cloud's services (client.glance, later client.cinder ...), pure.

A service that keeps its data in Ceph itself (glance's images, cinder's
volumes) gets its own cephx user, limited to its pools, and the pools. The
cloud layer says which (`ServiceClient`, from nodeos/cloud/registry.py); the
Monitor makes each key once (randomness is an argument) and keeps it in the
replicated state with the other cephx keys (never shown), creates the pools
with the volumes pool's size rules, and imports the key with its caps
(`ceph auth import`: idempotent, and it converges changed caps).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

from .keys import Caps, render_keyring

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
_POOL = re.compile(r"^[a-z][a-z0-9_.-]{0,62}$")


@dataclass(frozen=True)
class ServiceClient:
    """`client.<name>` with `caps`, and the pools it needs (made by the Monitor)."""

    name: str
    caps: Mapping[str, str] = field(default_factory=dict)
    pools: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"service client {self.name!r}: lower-case letters, digits and '-'")
        for pool in self.pools:
            if not _POOL.match(pool):
                raise ValueError(f"service client {self.name}: bad pool name {pool!r}")

    @property
    def entity(self) -> str:
        return service_entity(self.name)

    def caps_wire(self) -> dict[str, str]:
        return dict(sorted(self.caps.items()))


def service_entity(name: str) -> str:
    """client.glance: the name the service's librados uses (rbd_store_user = glance)."""
    return f"client.{name}"


def rbd_caps(*pools: str) -> dict[str, str]:
    """RBD images in `pools` only (Ceph's `profile rbd` on the mons: blocklisting dead clients' locks)."""
    return {"mon": "profile rbd", "osd": ", ".join(f"profile rbd pool={pool}" for pool in pools)}


def service_keyring(name: str, key: str, caps: Caps | None = None) -> str:
    """The service's keyring (caps included only for `ceph auth import`; the service needs the key alone)."""
    return render_keyring({service_entity(name): (key, caps or {})})
