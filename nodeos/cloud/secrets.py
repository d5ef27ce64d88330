"""Every OpenStack password, derived from the cluster secret: one per purpose, nothing stored.

A password is HKDF(cluster secret, "cloud/<purpose>") in hex, so every node
computes the same one without a replicated copy, and two purposes (or two
clusters) never share one. Hex needs no quoting in an SQLAlchemy URL, an ini
file or a shell. Fernet keys are the exception: keystone rotates them, so they
are random and live in the replicated state (made elsewhere); this module only
makes and checks one.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable

from nodeos.cluster.identity import ClusterIdentity

_PURPOSE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
PASSWORD_BYTES = 16  # 32 hex characters, 128 bits
FERNET_KEY_BYTES = 32


def cloud_password(identity: ClusterIdentity, purpose: str) -> str:
    """The password for one purpose (e.g. "db/nova"), the same on every node of the cluster."""
    for part in purpose.split("/"):
        if not _PURPOSE.match(part):
            raise ValueError(f"password purpose {purpose!r}: each '/'-separated part must match {_PURPOSE.pattern}")
    return identity.derive_key(f"cloud/{purpose}", length=PASSWORD_BYTES).hex()


def db_password(identity: ClusterIdentity, service: str) -> str:
    """The MariaDB user of an OpenStack service (keystone, glance, nova, ...)."""
    return cloud_password(identity, f"db/{service}")


def service_password(identity: ClusterIdentity, service: str) -> str:
    """The keystone user a service authenticates as (glance, nova, placement, ...)."""
    return cloud_password(identity, f"keystone/{service}")


def admin_password(identity: ClusterIdentity) -> str:
    """The keystone admin user, the one `nodeos credentials` hands to operators."""
    return cloud_password(identity, "keystone/admin")


def mq_password(identity: ClusterIdentity) -> str:
    return cloud_password(identity, "rabbitmq/openstack")


def mq_password_salt(identity: ClusterIdentity) -> bytes:
    """The salt of the openstack user's hash in RabbitMQ's definitions: fixed per cluster,
    so every node renders the same file (the password itself is 128 random bits)."""
    return identity.derive_key("cloud/rabbitmq/openstack-salt", length=4)


def erlang_cookie(identity: ClusterIdentity) -> str:
    """RabbitMQ's Erlang cookie: whoever has it may run code in the broker (rabbitmqctl)."""
    return cloud_password(identity, "rabbitmq/erlang-cookie")


def db_root_password(identity: ClusterIdentity) -> str:
    return cloud_password(identity, "db/root")


def health_password(identity: ClusterIdentity) -> str:
    """The MariaDB user of the heartbeat-table check (rights on nodeos_health only)."""
    return cloud_password(identity, "db/nodeos-health")


def horizon_secret_key(identity: ClusterIdentity) -> str:
    """horizon's Django SECRET_KEY (signs its CSRF tokens and cookies): the same on every node, so a
    horizon that moved keeps its users' sessions (in memcached). 256 bits: Django's deploy check
    asks for at least 50 characters, more than a password's 32."""
    return identity.derive_key("cloud/horizon/secret-key", length=2 * PASSWORD_BYTES).hex()


def make_fernet_key(random_bytes: Callable[[int], bytes]) -> str:
    """A new Fernet key (randomness passed in, e.g. os.urandom, as Fernet.generate_key does)."""
    return base64.urlsafe_b64encode(random_bytes(FERNET_KEY_BYTES)).decode()


def is_fernet_key(text: str) -> bool:
    """Whether keystone would accept this as a key: url-safe base64 of exactly 32 bytes."""
    try:
        raw = base64.urlsafe_b64decode(text.encode("ascii"))
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return False
    return len(raw) == FERNET_KEY_BYTES and base64.urlsafe_b64encode(raw).decode() == text
