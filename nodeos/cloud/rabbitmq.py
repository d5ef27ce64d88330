"""RabbitMQ as a singleton that moves: its node name, its users, and the URL clients use.

The node name must be the same wherever the broker runs: Mnesia keeps its
database in a directory named after the node and records the node name in its
schema, so a host-bound name (rabbit@n1) restarted on n2 would find an empty
directory, or refuse the one on the volume. `rabbit@localhost` resolves on
every node, to that node's own loopback, so the name belongs to the service
and its volume, not to a host; and Erlang distribution (port 25672, epmd 4369)
is bound to loopback, so the cookie is never offered on the LAN. Clients reach
the broker at its VIP (AMQP, 5672), never by node name.

Users, the vhost and permissions are a definitions file loaded at every boot
(no rabbitmqctl after start, no race with the first client); it holds only a
salted hash of the password, as RabbitMQ's own export does.
"""

from __future__ import annotations

import base64
import hashlib
import json
from urllib.parse import quote

NODE_NAME = "rabbit@localhost"
AMQP_PORT, DIST_PORT = 5672, 25672
USER, VHOST = "openstack", "/"
SALT_BYTES = 4  # rabbit_password_hashing_sha256: a 32-bit salt


def password_hash(password: str, salt: bytes) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))."""
    if len(salt) != SALT_BYTES:
        raise ValueError(f"the salt must be {SALT_BYTES} bytes, got {len(salt)}")
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def definitions(password: str, salt: bytes) -> dict[str, object]:
    """The openstack user with every right on vhost "/", and nothing else (no guest)."""
    return {
        "users": [{"name": USER, "password_hash": password_hash(password, salt),
                   "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ""}],
        "vhosts": [{"name": VHOST}],
        "permissions": [{"user": USER, "vhost": VHOST, "configure": ".*", "write": ".*", "read": ".*"}],
    }


def definitions_json(password: str, salt: bytes) -> str:
    return json.dumps(definitions(password, salt), indent=2, sort_keys=True) + "\n"


def transport_url(vip: str, password: str, port: int = AMQP_PORT) -> str:
    """oslo.messaging's transport_url for the OpenStack services: the broker at its VIP."""
    return f"rabbit://{USER}:{quote(password, safe='')}@{vip}:{port}/"
