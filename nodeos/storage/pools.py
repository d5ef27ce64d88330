"""Pool replication from the number of hosts, pure.

Failure domain is the host (CRUSH `chooseleaf` type host), so a pool can
keep at most one copy per host: size min(3, hosts). min_size 2 keeps a
single surviving copy from taking writes it could lose; a one-node cloud has
only one copy to offer, so it takes writes with 1.
"""

from __future__ import annotations


def pool_size(hosts: int) -> tuple[int, int]:
    """(size, min_size) of a replicated pool on `hosts` hosts with OSDs."""
    if hosts < 1:
        raise ValueError("a pool needs at least one host with an OSD")
    size = min(3, hosts)
    return size, 1 if size == 1 else 2
