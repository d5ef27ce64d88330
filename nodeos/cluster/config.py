"""Node configuration: the image config baked into every node.

Everything has a default, so a node with no config file works. The file is
YAML; unknown keys and wrong types are rejected with the file and field named.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nodeos.fencing.policy import ACT_BUDGET, APPLY_LAG, margin_is_safe

DEFAULT_CONFIG_PATH = Path("/etc/nodeos/config.yaml")
DEFAULT_IDENTITY_PATH = Path("/etc/nodeos/identity.json")
DEFAULT_STATE_DIR = Path("/var/lib/nodeos")


class ConfigError(ValueError):
    """A config file that cannot be used; the message names file and field."""


@dataclass(frozen=True)
class Timing:
    """Consensus and lease timings, in seconds (see DESIGN.md, invariants 1-2)."""

    raft_min_timeout: float = 0.4
    # 0.7, not 1.0: a leader's death is followed by an election after this time-out at worst,
    # then the new leader's first committed heartbeat; all of it must come within fence_after
    # of the followers' last evidence, or every node fences its singletons (lab-cloud, 2026-12-02:
    # a Monitor crash with a 0.96 s time-out fenced both survivors 10-30 ms after the election).
    raft_max_timeout: float = 0.7
    append_entries_period: float = 0.1
    # The leader commits a heartbeat entry this often; its commit renews the lease.
    heartbeat_interval: float = 0.1
    # Monitor lease: valid for `lease` after the *submission* of the last
    # heartbeat a majority acknowledged. A new leader waits `lease` before acting.
    lease: float = 1.0
    # A node that learned of no committed heartbeat for `fence_after` drops its
    # VIPs and singleton services (self-fencing).
    fence_after: float = 1.0
    # Extra wait of the Monitor beyond `fence_after` before it moves a lost
    # node's singletons (covers the agent's own polling delay).
    fence_margin: float = 0.3
    beacon_interval: float = 0.5
    # Accepted clock skew for beacon timestamps (replay window).
    beacon_max_age: float = 30.0
    # Formation: a coordinator's offer expires for members after this long.
    formation_offer_timeout: float = 30.0
    formation_settle: float = 1.5
    # A node lost this long leaves the Raft configuration (nodeos/cluster/membership.py):
    # it no longer counts toward the quorum. Its services moved within seconds.
    member_remove_after: float = 600.0


@dataclass(frozen=True)
class StorageConfig:
    """Ceph (nodeos/storage): used when the catalog runs the Ceph services."""

    # A mon whose node has been lost this long is replaced on another node
    # (Rook waits 10 min, MicroCeph never; a node reboot takes about a minute).
    mon_replace_after: float = 120.0
    # "auto": every blank disk but the boot disk, else a file; "file": a file only
    # (the lab, whose namespaces see the host's disks).
    osd_disks: str = "auto"
    osd_file_size: int = 8 << 30  # bytes of a file-backed OSD (sparse)
    # "default" for real nodes, "lab": small memory and PG targets (nodeos/storage/conf.py).
    tuning: str = "default"
    # Seconds a ceph/rados command may take (the Monitor's health read, a mon
    # join, `ceph osd new`...); raise it on very slow machines (emulated CPUs).
    command_timeout: float = 30.0
    # Ceph's mon lease and election time-out (Ceph: 5 s / 5 s). Short, a dead mon
    # stalls commits briefly; too short for the machine, and mons that miss a renewal
    # call elections over and over, so map changes (a pool, a fence) wait minutes:
    # raise it on very slow machines (emulated CPUs).
    mon_lease: float = 2.0


@dataclass(frozen=True)
class NodeConfig:
    bootstrap_expect: int = 3
    interface: str | None = None  # None: the interface of the default route, else the only one
    vip_range: str | None = None  # None: free addresses of the nodes' own subnet
    multicast_group: str = "239.192.73.70"
    discovery_port: int = 7370
    raft_port: int = 7371
    status_port: int = 7372
    runtime: str = "systemd"  # "systemd" on real nodes, "process" in the lab
    catalog: str | None = None  # path of the service catalog; None: the packaged default
    # Real-time priority for the agent (SCHED_RR) and the guard (SCHED_FIFO):
    # load must not look like failure (nodeos/realtime.py).
    realtime: bool = True
    # The guard's last line (watchdog.py): "auto" (/dev/watchdog if present),
    # "none", "lab" (the lab's emulation) or a device path.
    watchdog: str = "auto"
    watchdog_timeout: float = 5.0
    # Multiplies the catalog's health-check times (interval, timeout, start period, slow
    # grace) and the one-time jobs' time-outs: raise it on very slow machines (emulated
    # CPUs), where a token takes seconds and a schema sync tens of minutes.
    service_time_scale: float = 1.0
    timing: Timing = field(default_factory=Timing)
    storage: StorageConfig = field(default_factory=StorageConfig)

    def replace(self, **changes: Any) -> "NodeConfig":
        return dataclasses.replace(self, **changes)


def _check_fields(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    known = {f.name: f for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown field '{key}' (known: {', '.join(sorted(known))})")
        default = getattr(cls(), key)
        if isinstance(default, bool) or default is None or isinstance(default, (Timing, StorageConfig)):
            out[key] = value
            continue
        expected: type = float if isinstance(default, float) else type(default)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or isinstance(value, bool):
            raise ConfigError(f"{where}: field '{key}' must be {expected.__name__}, got {value!r}")
        out[key] = value
    return out


def parse_config(data: Any, where: str = "config") -> NodeConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    fields = _check_fields(NodeConfig, data, where)
    timing_data = fields.pop("timing", None) or {}
    if not isinstance(timing_data, dict):
        raise ConfigError(f"{where}: field 'timing' must be a mapping")
    timing = Timing(**_check_fields(Timing, timing_data, f"{where}: timing"))
    storage_data = fields.pop("storage", None) or {}
    if not isinstance(storage_data, dict):
        raise ConfigError(f"{where}: field 'storage' must be a mapping")
    storage = StorageConfig(**_check_fields(StorageConfig, storage_data, f"{where}: storage"))
    config = NodeConfig(timing=timing, storage=storage, **fields)
    _validate(config, where)
    return config


def _validate(config: NodeConfig, where: str) -> None:
    if config.bootstrap_expect < 1:
        raise ConfigError(f"{where}: bootstrap_expect must be >= 1")
    if config.runtime not in ("systemd", "process"):
        raise ConfigError(f"{where}: runtime must be 'systemd' or 'process'")
    if not isinstance(config.realtime, bool):
        raise ConfigError(f"{where}: field 'realtime' must be true or false, got {config.realtime!r}")
    if config.watchdog not in ("auto", "none", "lab") and not config.watchdog.startswith("/dev/"):
        raise ConfigError(f"{where}: watchdog must be 'auto', 'none', 'lab' or a /dev/ path, got {config.watchdog!r}")
    if not 1.0 <= config.watchdog_timeout <= 600:
        raise ConfigError(f"{where}: watchdog_timeout must be between 1 and 600 seconds")
    if not 1.0 <= config.service_time_scale <= 10.0:
        raise ConfigError(f"{where}: service_time_scale must be between 1 and 10, got {config.service_time_scale}")
    storage = config.storage
    if storage.osd_disks not in ("auto", "file"):
        raise ConfigError(f"{where}: storage.osd_disks must be 'auto' or 'file', got {storage.osd_disks!r}")
    if storage.tuning not in ("default", "lab"):
        raise ConfigError(f"{where}: storage.tuning must be 'default' or 'lab', got {storage.tuning!r}")
    if storage.osd_file_size < 1 << 30:
        raise ConfigError(f"{where}: storage.osd_file_size must be at least 1 GiB (bytes), got {storage.osd_file_size}")
    if not 5 <= storage.command_timeout <= 3600:
        raise ConfigError(f"{where}: storage.command_timeout must be 5 to 3600 seconds, got {storage.command_timeout}")
    if not 1 <= storage.mon_lease <= 60:
        raise ConfigError(f"{where}: storage.mon_lease must be 1 to 60 seconds, got {storage.mon_lease}")
    if storage.mon_replace_after < 5:
        raise ConfigError(f"{where}: storage.mon_replace_after must be at least 5 seconds")
    t = config.timing
    if t.raft_min_timeout <= 3 * t.append_entries_period:
        raise ConfigError(f"{where}: timing.raft_min_timeout must exceed 3 x append_entries_period")
    if t.raft_max_timeout <= t.raft_min_timeout:
        raise ConfigError(f"{where}: timing.raft_max_timeout must exceed raft_min_timeout")
    if t.lease <= 2 * t.heartbeat_interval:
        raise ConfigError(f"{where}: timing.lease must exceed 2 x heartbeat_interval")
    if t.fence_after < t.raft_max_timeout + 2 * t.append_entries_period:
        raise ConfigError(f"{where}: timing.fence_after must be at least raft_max_timeout + 2 x append_entries_period "
                          "(or a leader's crash fences every node: the next leader's first heartbeat comes after an "
                          "election time-out)")
    if t.fence_after <= 2 * t.heartbeat_interval:
        raise ConfigError(f"{where}: timing.fence_after must exceed 2 x heartbeat_interval (or nodes fence themselves in normal operation)")
    if not margin_is_safe(t.fence_margin):
        raise ConfigError(f"{where}: timing.fence_margin must exceed {APPLY_LAG + ACT_BUDGET:g}s: the Monitor must wait longer "
                          "than a node's grant plus the time its guard needs to act (nodeos/fencing/policy.py)")


def load_config(path: Path | None) -> NodeConfig:
    """Load the config file; a missing default file means all defaults."""
    if path is None:
        path = DEFAULT_CONFIG_PATH
        if not path.exists():
            return NodeConfig()
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return parse_config(data, str(path))
