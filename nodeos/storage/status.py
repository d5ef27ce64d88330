"""What `ceph -s -f json` says, reduced to what nodeos shows and decides on; pure.

`settled` is the bar for "Ceph is up": HEALTH_OK alone is not enough right
after a change, because health lags the maps: a pool made a moment ago reads
HEALTH_OK with 0 pools and 0 PGs in the pgmap until the mgr has seen it
(measured with Ceph 16.2.15: a test passed on 2 of 3 OSDs that way).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CephSummary:
    health: str  # HEALTH_OK | HEALTH_WARN | HEALTH_ERR | HEALTH_UNKNOWN
    mons: int
    quorum: tuple[str, ...]
    osds: int
    osds_up: int
    osds_in: int
    pools: int
    pgs: int
    pgs_active_clean: int
    mgr_available: bool

    def settled(self, osds: int, pools: int = 1) -> bool:
        """HEALTH_OK, `osds` OSDs up and in, the mgr has seen `pools` pools and all their PGs are active+clean."""
        return (self.health == "HEALTH_OK" and self.osds == self.osds_up == self.osds_in == osds
                and self.pools >= pools and self.pgs_active_clean == self.pgs > 0
                and self.mgr_available and len(self.quorum) == self.mons)

    def line(self) -> str:
        """One line for `nodeos status`."""
        return (f"{self.health}; mons {len(self.quorum)}/{self.mons} in quorum; OSDs {self.osds_up} up, "
                f"{self.osds_in} in of {self.osds}; {self.pools} pools, "
                f"PGs {self.pgs_active_clean}/{self.pgs} active+clean; "
                f"mgr {'available' if self.mgr_available else 'missing'}")


def _int(data: dict[str, Any], key: str) -> int:
    value = data.get(key, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def summarize(status: dict[str, Any]) -> CephSummary:
    """A CephSummary of parsed `ceph -s -f json` (Ceph 16); missing parts read as zero."""
    osdmap = status.get("osdmap") or {}
    osdmap = osdmap.get("osdmap", osdmap)  # before Ceph 15 the counts were one level deeper
    pgmap = status.get("pgmap") or {}
    clean = sum(_int(s, "count") for s in pgmap.get("pgs_by_state") or [] if s.get("state_name") == "active+clean")
    return CephSummary(
        health=str((status.get("health") or {}).get("status", "HEALTH_UNKNOWN")),
        mons=_int(status.get("monmap") or {}, "num_mons"),
        quorum=tuple(status.get("quorum_names") or ()),
        osds=_int(osdmap, "num_osds"), osds_up=_int(osdmap, "num_up_osds"), osds_in=_int(osdmap, "num_in_osds"),
        pools=_int(pgmap, "num_pools"), pgs=_int(pgmap, "num_pgs"), pgs_active_clean=clean,
        mgr_available=bool((status.get("mgrmap") or {}).get("available", False)),
    )
