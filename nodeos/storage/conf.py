"""ceph.conf and the fsid, rendered from the replicated state, pure.

Every node renders the same [global] settings from the same state (the
fsid from the cluster id, the mons, the pool sizes); only the paths and the
node's CRUSH host differ. Real nodes keep Ceph's default paths; lab nodes,
several on one host, pass `CephPaths` so that nothing of the host's
/var/lib/ceph, /etc/ceph or /var/run/ceph is used.
"""

from __future__ import annotations

import ipaddress
import uuid
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Mapping

from .keys import check_node_id
from .pools import pool_size

# Fixed forever: changing it would give every existing cluster a new fsid.
FSID_NAMESPACE = uuid.UUID("5d0c6c1e-8f3a-4b8e-9a57-6e6f64656f73")
MON_V2_PORT = 3300
MON_V1_PORT = 6789


def fsid_for(cluster_id: str) -> str:
    """The Ceph fsid of a nodeos cluster: the same on every node, no exchange needed."""
    if not isinstance(cluster_id, str) or not cluster_id:
        raise ValueError("the cluster id must be a non-empty string")
    return str(uuid.uuid5(FSID_NAMESPACE, cluster_id))


def mon_addrs(ip: str) -> str:
    """A mon's address vector: msgr2 and the legacy port (rbd-fuse, kernel clients)."""
    ipaddress.ip_address(ip)  # ValueError on a non-address
    return f"[v2:{ip}:{MON_V2_PORT},v1:{ip}:{MON_V1_PORT}]"


@dataclass(frozen=True)
class CephPaths:
    """Everything of one node's Ceph under `root` (several lab nodes on one host)."""

    root: str

    def _at(self, *parts: str) -> str:
        return str(PurePosixPath(self.root, *parts))

    @property
    def conf(self) -> str:
        return self._at("ceph.conf")

    @property
    def run_dir(self) -> str:
        return self._at("run")

    @property
    def log_dir(self) -> str:
        return self._at("log")

    @property
    def keys_dir(self) -> str:
        return self._at("keys")

    def keyring(self, entity: str) -> str:
        """A client keyring, where the conf's [client] `keyring` finds it."""
        return self._at("keys", f"ceph.{entity}.keyring")

    def data(self, kind: str, daemon_id: str) -> str:
        """mon, osd or mgr data directory of one daemon."""
        return self._at(kind, f"ceph-{daemon_id}")

    def block_file(self, osd_id: int) -> str:
        return self._at("osd", f"block-{osd_id}")

    def pid_file(self, kind: str, daemon_id: str) -> str:
        return self._at("run", f"ceph-{kind}.{daemon_id}.pid")

    def dirs(self) -> list[str]:
        return [self.run_dir, self.log_dir, self.keys_dir, self._at("mon"), self._at("osd"), self._at("mgr"),
                self._at("crash")]


@dataclass(frozen=True)
class Tuning:
    """Small-node settings: nodes also run OpenStack, so Ceph stays modest."""

    osd_memory_target: int = 1 << 30  # Ceph's default is 4 GiB per OSD
    bluestore_block_size: int = 8 << 30  # file-backed OSDs (no blank disk)
    down_out_interval: int = 600  # s before a down OSD is marked out and data moves
    mon_data_avail_warn: int = 30  # % free on the mon's filesystem before HEALTH_WARN
    pg_num: int = 32  # default pg_num of new pools; the autoscaler adjusts it
    # Failover speed. A dead peon stalls every mon commit (a volume's fence, a
    # map change) until its lease ack times out (lease x 2) and an election
    # drops it: 4 s instead of Ceph's 10 s. A dead OSD blocks the PGs it leads
    # until it is marked down; the Monitor marks a lost node's OSDs down at
    # once, the heartbeat grace is the fallback (Ceph: 6 s / 20 s).
    mon_lease: float = 2.0
    mon_election_timeout: float = 2.0
    osd_heartbeat_interval: int = 2
    osd_heartbeat_grace: int = 8


# The lab: 1 GiB OSD files, a faster out, and no warning for a full build disk.
LAB_TUNING = Tuning(osd_memory_target=512 << 20, bluestore_block_size=1 << 30, down_out_interval=60,
                    mon_data_avail_warn=5, pg_num=8)


def _section(name: str, options: Mapping[str, object]) -> str:
    return "\n".join([f"[{name}]", *(f"{key} = {value}" for key, value in options.items())])


def _path_options(paths: CephPaths) -> dict[str, dict[str, object]]:
    """Per-node paths; `$cluster`, `$name`, `$id` are expanded by Ceph itself."""
    root = paths.root
    daemon = {"pid_file": f"{root}/run/$cluster-$name.pid"}
    return {
        "global": {"run_dir": paths.run_dir, "log_file": f"{root}/log/$cluster-$name.log",
                   "crash_dir": f"{root}/crash", "mon_cluster_log_file": f"{root}/log/$cluster.log"},
        "mon": {**daemon, "mon_data": f"{root}/mon/$cluster-$id"},
        "mgr": {**daemon, "mgr_data": f"{root}/mgr/$cluster-$id"},
        "osd": {**daemon, "osd_data": f"{root}/osd/$cluster-$id"},
        "client": {"keyring": f"{root}/keys/$cluster.$name.keyring"},
    }


# Manager modules nodeos never uses. Each costs start-up time and memory (the
# mgr loads every module it finds, about 300 MiB and seconds of imports; on an
# emulated CPU minutes). Ceph 16's always-on modules (balancer, crash,
# devicehealth, orchestrator, pg_autoscaler, progress, rbd_support, status,
# telemetry, volumes) and iostat (mgr_initial_modules) stay.
MGR_UNUSED_MODULES = ("alerts", "cephadm", "dashboard", "diskprediction_local", "influx", "insights", "k8sevents",
                      "localpool", "mds_autoscaler", "mirroring", "nfs", "osd_perf_query", "osd_support", "prometheus",
                      "restful", "rook", "selftest", "snap_schedule", "stats", "telegraf", "test_orchestrator",
                      "zabbix")


def render_ceph_conf(fsid: str, mons: Mapping[str, str], public_network: str, *, hosts: int,
                     node: str | None = None, paths: CephPaths | None = None, tuning: Tuning = Tuning()) -> str:
    """ceph.conf for one node. `mons`: node id -> IP; `hosts`: nodes with OSDs (pool sizes).

    `node` names this node's CRUSH host: namespaced lab nodes share the
    host's hostname, and OSDs of one CRUSH host never hold two copies.
    """
    if not mons:
        raise ValueError("ceph.conf needs at least one mon")
    uuid.UUID(fsid)  # ValueError on a bad fsid
    network = ipaddress.ip_network(public_network, strict=False)
    size, min_size = pool_size(hosts)
    sections = _path_options(paths) if paths is not None else {}

    glob: dict[str, object] = {
        "fsid": fsid,
        "mon_host": ",".join(mon_addrs(mons[m]) for m in sorted(mons, key=check_node_id)),
        "public_network": str(network),
        "auth_cluster_required": "cephx",
        "auth_service_required": "cephx",
        "auth_client_required": "cephx",
        # Every client is new (Ceph 16): refuse the insecure reclaim instead of warning about it.
        "auth_allow_insecure_global_id_reclaim": "false",
        "osd_pool_default_size": size,
        "osd_pool_default_min_size": min_size,
        "osd_pool_default_pg_num": tuning.pg_num,
        "osd_crush_chooseleaf_type": 1,  # failure domain: host
        "mon_allow_pool_delete": "false",
        "mon_osd_down_out_interval": tuning.down_out_interval,
        "mon_data_avail_warn": tuning.mon_data_avail_warn,
        "mgr_initial_modules": "iostat",  # read by the mons when they create the mgr map
        "mon_lease": tuning.mon_lease,
        "mon_election_timeout": tuning.mon_election_timeout,
        "osd_heartbeat_interval": tuning.osd_heartbeat_interval,
        "osd_heartbeat_grace": tuning.osd_heartbeat_grace,
        "mon_client_hunt_interval": 1.0,  # a client that picked a dead mon tries another after 1 s, not 3
        # Lock breaks done without our fence (librbd, the kernel client) blocklist for 10 years
        # too, not 1 h: a re-add never lengthens a listed entry (storage/volumes.py).
        "mon_osd_blocklist_default_expire": 315360000,
        **sections.get("global", {}),
    }
    if size == 1:  # a one-node cloud: one copy is all there is, not a warning
        glob.update({"mon_allow_pool_size_one": "true", "mon_warn_on_pool_no_redundancy": "false"})
    osd: dict[str, object] = {
        "osd_objectstore": "bluestore",
        # OSDs on files and small disks are class "hdd": Ceph then sleeps 0.1 s between
        # recovery ops, and the objects a new volume holder needs first wait for it.
        "osd_recovery_sleep_hdd": 0,
        "osd_memory_target": tuning.osd_memory_target,
        "bluestore_block_size": tuning.bluestore_block_size,
        **sections.get("osd", {}),
    }
    if node is not None:
        osd["crush_location"] = f"root=default host={check_node_id(node)}"
    parts = [_section("global", glob), _section("mon", sections.get("mon", {})),
             _section("mgr", {"mgr_disabled_modules": " ".join(MGR_UNUSED_MODULES), **sections.get("mgr", {})}),
             _section("osd", osd)]
    if "client" in sections:
        parts.append(_section("client", sections["client"]))
    return "# rendered by nodeos from the replicated state; edits are overwritten\n" + "\n\n".join(parts) + "\n"


def render_client_conf(fsid: str, mons: Mapping[str, str], keyring: str = "/etc/ceph/$cluster.$name.keyring") -> str:
    """/etc/ceph/ceph.conf of a node running a Ceph client service (glance, cinder): the mons, and each
    client's keyring by its name (ceph.client.glance.keyring), nothing else."""
    if not mons:
        raise ValueError("ceph.conf needs at least one mon")
    uuid.UUID(fsid)
    glob = {
        "fsid": fsid,
        "mon_host": ",".join(mon_addrs(mons[m]) for m in sorted(mons, key=check_node_id)),
        "auth_cluster_required": "cephx",
        "auth_service_required": "cephx",
        "auth_client_required": "cephx",
        "mon_client_hunt_interval": 1.0,  # a mon that died with its node: try another after 1 s
    }
    return ("# rendered by nodeos from the replicated state; edits are overwritten\n"
            + _section("global", glob) + "\n\n" + _section("client", {"keyring": keyring}) + "\n")
