"""The service catalog: which services the cluster runs, and how.

A catalog is YAML written by an operator, so every mistake must come back as
one `CatalogError` naming file, line and field, e.g.

    catalog.yaml:12: services.nginx.health[0].port: must be an integer 1-65535

We compose the YAML into nodes (which carry line marks), convert them to plain
Python values while recording the line of every path, and validate the plain
values. `Catalog.from_dict` runs the very same validation without lines: the
catalog also travels inside the replicated Raft state as a plain dict, and a
bad entry there must be rejected just as clearly.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

CATALOG_VERSION = 1
# ceph-mons: on the nodes the storage model chose for Ceph monitors (nodeos/storage/decide.py).
PLACEMENTS = ("singleton", "every-node", "ceph-mons")
# The service's own signal (nodeos/cloud/probes.py, horizon_probe.py), not a port check.
CLOUD_CHECKS = ("mariadb", "memcached", "keystone", "glance", "rabbitmq", "placement", "nova", "cinder", "service-list",
                "neutron", "horizon")
CHECK_TYPES = ("process", "tcp", "http", "command", "ceph", *CLOUD_CHECKS)
# neutron's: one network's id, whatever the number of networks (the read still crosses its database).
NEUTRON_READ = "/v2.0/networks?limit=1&fields=id"
# An API checked with a keystone token: the read its check does by default.
API_READS = {"keystone": "/v3/projects", "glance": "/v2/images", "placement": "/resource_providers",
             "nova": "/v2.1/servers", "cinder": "/v3/volumes",  # service-list: its API's (SERVICE_LISTS)
             "neutron": NEUTRON_READ}
CEPH_DAEMONS = ("mon", "mgr", "osd")  # the `ceph` check asks the daemon's admin socket (nodeos/storage/asok.py)
# root: where packaged services' /etc, /var/lib... live ("" on a node; the node's private root in the lab).
TEMPLATE_NAMES = ("run_dir", "node_id", "vip", "port", "bind", "ceph_dir", "root")
# The process runtime keeps its own bookkeeping in the run dir.
RESERVED_FILES = frozenset({"pid.json", "service.log"})

_SERVICE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# `{name}` placeholders; `${name}` is left alone (nginx and shell variables).
_PLACEHOLDER = re.compile(r"(?<!\$)\{([A-Za-z_][A-Za-z0-9_]*)\}")
_MAX_NODES = 100_000  # bounds alias ("billion laughs") expansion
_MAX_DEPTH = 64

PathKey = tuple[str | int, ...]


class CatalogError(ValueError):
    """A catalog that cannot be used; the message names file, line and field."""


# ---------------------------------------------------------------- model


# A service on a busy node answers late, not never: restarting it then kills the work it
# serves. A hung process that still listens goes after this long (a database behind schema
# syncs gets longer in its catalog entry: lab-cloud's MariaDB 120 s).
SLOW_GRACE = 30.0


@dataclass(frozen=True)
class HealthCheckSpec:
    type: str
    interval: float = 1.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 2
    port: int | None = None  # tcp/http; the service's port unless given
    path: str | None = None  # http
    expect_status: int | None = None  # http
    expect_body: str | None = None  # http, substring
    command: tuple[str, ...] | None = None  # command; exit 0 = healthy
    daemon: str | None = None  # ceph: mon | mgr | osd; service-list: the binary (nova-conductor, cinder-volume ...)
    api: str | None = None  # service-list: whose list (nova | cinder), read through that API's VIP
    start_period: float = 0.0  # seconds after a start in which failures do not count until a pass
    # Seconds a check may time out while the process lives and its port accepts (`slow`: busy,
    # not broken) before that counts as a failure; 0: a timeout is a failure at once (`fall`).
    slow_grace: float = SLOW_GRACE


@dataclass(frozen=True)
class RestartPolicy:
    max_restarts: int = 3  # in place, before the Monitor migrates the service
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    reset_after: float = 60.0  # seconds healthy before the counter resets

    def backoff(self, restarts_so_far: int) -> float:
        """Delay before the next restart: doubles per restart, capped."""
        exponent = max(0, min(restarts_so_far, 62))
        return min(self.backoff_max, self.backoff_initial * (2.0**exponent))


@dataclass(frozen=True)
class Resources:
    cpu: float = 0.1  # cores
    memory_mb: int = 64


@dataclass(frozen=True)
class VolumeSpec:
    """A singleton's data on an RBD image that moves with it (nodeos/storage/volumes.py)."""

    size: int  # bytes
    fs: str = "ext4"  # ext4 | xfs
    mount: str = ""  # absolute path; templates as in start.command ({run_dir} in the lab)


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    placement: str  # "singleton" | "every-node" | "ceph-mons"
    vip: bool = False
    unit: str | None = None  # systemd unit (real nodes)
    command: tuple[str, ...] | None = None  # argv template (lab process runtime)
    files: Mapping[str, str] = field(default_factory=dict)  # read-only by convention
    port: int | None = None
    health: tuple[HealthCheckSpec, ...] = ()
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    depends_on: tuple[str, ...] = ()
    resources: Resources = field(default_factory=Resources)
    volume: VolumeSpec | None = None
    config: str | None = None  # its configuration files, rendered from the state (nodeos/cloud/config.py)
    jobs: tuple[str, ...] = ()  # one-time jobs done before its first start (nodeos/cloud/registry.py)

    @property
    def singleton(self) -> bool:
        return self.placement == "singleton"

    def template_values(
        self, *, node_id: str, run_dir: Path | str, vip: str | None, bind: str, ceph_dir: Path | str = "",
        root: Path | str = "/",
    ) -> dict[str, str]:
        """The values `{run_dir}`, `{node_id}`, `{vip}`, `{port}`, `{bind}`, `{ceph_dir}`, `{root}` expand to."""
        return {
            "run_dir": str(run_dir),
            "node_id": node_id,
            "vip": vip or "",
            "port": "" if self.port is None else str(self.port),
            "bind": bind,
            "ceph_dir": str(ceph_dir),
            "root": str(root).rstrip("/"),  # "{root}/etc/x": /etc/x on a node
        }

    def render_command(self, values: Mapping[str, str]) -> list[str]:
        if self.command is None:
            raise CatalogError(f"service {self.name}: has no start.command")
        return [render_template(arg, values) for arg in self.command]

    def render_files(self, values: Mapping[str, str]) -> dict[str, str]:
        return {name: render_template(text, values) for name, text in self.files.items()}


@dataclass(frozen=True)
class Catalog:
    services: Mapping[str, ServiceSpec]  # read-only by convention
    version: int = CATALOG_VERSION

    def __getitem__(self, name: str) -> ServiceSpec:
        return self.services[name]

    def __contains__(self, name: object) -> bool:
        return name in self.services

    def __iter__(self) -> Iterator[ServiceSpec]:
        return iter(self.services.values())

    def __len__(self) -> int:
        return len(self.services)

    def names(self) -> list[str]:
        return sorted(self.services)

    def singletons(self) -> list[ServiceSpec]:
        return [self.services[n] for n in self.start_order() if self.services[n].singleton]

    def every_node(self) -> list[ServiceSpec]:
        return [self.services[n] for n in self.start_order() if not self.services[n].singleton]

    def start_order(self) -> list[str]:
        """Dependencies first; ties broken by name so every node agrees."""
        return _topological_order({n: s.depends_on for n, s in self.services.items()})

    def scaled(self, factor: float) -> "Catalog":
        """The catalog with every health check's times multiplied by `factor` (the node
        config's `service_time_scale`, for emulated CPUs); rise and fall stay."""
        if factor == 1.0:
            return self
        return dataclasses.replace(self, services={
            name: dataclasses.replace(spec, health=tuple(_scaled_check(check, factor) for check in spec.health))
            for name, spec in self.services.items()})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict; `Catalog.from_dict(c.to_dict()) == c`."""
        return {
            "version": self.version,
            "services": {name: _service_to_dict(spec) for name, spec in self.services.items()},
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "<catalog dict>") -> "Catalog":
        return _build_catalog(data, _Where(source, {}))


def _scaled_check(check: HealthCheckSpec, factor: float) -> HealthCheckSpec:
    """Within the limits a catalog is parsed with, so the state's copy still loads."""
    return dataclasses.replace(check, interval=min(check.interval * factor, 3600.0),
                               timeout=min(check.timeout * factor, 600.0),
                               start_period=min(check.start_period * factor, 3600.0),
                               slow_grace=min(check.slow_grace * factor, 3600.0))


def render_template(text: str, values: Mapping[str, str]) -> str:
    """Expand `{name}` placeholders; everything else (nginx `{ }` blocks) stays."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise CatalogError(f"unknown template placeholder {{{name}}}")
        return values[name]

    return _PLACEHOLDER.sub(substitute, text)


def packaged_catalog(name: str = "default") -> Path:
    """Path of a catalog shipped inside the package (`default`, `lab`)."""
    return Path(__file__).resolve().parent / "catalogs" / f"{name}.yaml"


def load_catalog(path: Path | str) -> Catalog:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise CatalogError(f"{path}: not UTF-8 text: {exc.reason}") from exc
    return parse_catalog(text, str(path))


def parse_catalog(text: str, source_name: str = "<catalog>") -> Catalog:
    data, lines = _compose_located(text, source_name)
    return _build_catalog(data, _Where(source_name, lines))


# ---------------------------------------------------------------- YAML with lines


def _compose_located(text: str, source: str) -> tuple[Any, dict[PathKey, int]]:
    """Parse YAML into plain values plus {path: 1-based line} for every key and item."""
    if not isinstance(text, str):
        raise CatalogError(f"{source}: catalog text must be a string, got {type(text).__name__}")
    try:
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as exc:  # the reader rejects control characters up front
        raise CatalogError(f"{source}: not valid YAML: {exc}") from None
    try:
        try:
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = f"{mark.line + 1}:" if mark is not None else ""
            raise CatalogError(f"{source}:{line} not valid YAML: {exc.problem or exc}") from None
        except yaml.YAMLError as exc:
            raise CatalogError(f"{source}: not valid YAML: {exc}") from None
        if root is None:
            return None, {}
        lines: dict[PathKey, int] = {(): root.start_mark.line + 1}
        budget = [_MAX_NODES]
        return _node_to_python(loader, root, (), lines, source, budget), lines
    finally:
        loader.dispose()


def _node_to_python(
    loader: yaml.SafeLoader,
    node: yaml.Node,
    path: PathKey,
    lines: dict[PathKey, int],
    source: str,
    budget: list[int],
) -> Any:
    line = node.start_mark.line + 1
    budget[0] -= 1
    if budget[0] < 0 or len(path) > _MAX_DEPTH:
        shown = _dotted(path[:8]) + ("..." if len(path) > 8 else "")
        raise CatalogError(f"{source}:{line}: {shown}: document too large or too deeply nested")
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise CatalogError(f"{source}:{key_line}: {_dotted(path)}: YAML merge keys (<<) are not supported")
            key = _construct_scalar(loader, key_node, path, source) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                raise CatalogError(f"{source}:{key_line}: {_dotted(path)}: keys must be strings")
            if key in out:
                raise CatalogError(f"{source}:{key_line}: {_dotted(path + (key,))}: duplicate key")
            lines[path + (key,)] = key_line
            out[key] = _node_to_python(loader, value_node, path + (key,), lines, source, budget)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            lines[path + (index,)] = item.start_mark.line + 1
            items.append(_node_to_python(loader, item, path + (index,), lines, source, budget))
        return items
    return _construct_scalar(loader, node, path, source)


def _construct_scalar(loader: yaml.SafeLoader, node: yaml.Node, path: PathKey, source: str) -> Any:
    try:
        return loader.construct_object(node, deep=True)
    except Exception as exc:  # e.g. a timestamp-looking scalar that is no date
        line = node.start_mark.line + 1
        raise CatalogError(f"{source}:{line}: {_dotted(path)}: cannot read value: {exc}") from None


def _dotted(path: PathKey) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "<top>"


# ---------------------------------------------------------------- validation


@dataclass(frozen=True)
class _Where:
    """Turns a field path into 'file:line: field: message' errors."""

    source: str
    lines: Mapping[PathKey, int]

    def error(self, path: PathKey, message: str) -> CatalogError:
        line = self._line(path)
        prefix = f"{self.source}:{line}" if line is not None else self.source
        return CatalogError(f"{prefix}: {_dotted(path)}: {message}")

    def _line(self, path: PathKey) -> int | None:
        # A missing field has no line of its own: point at its nearest parent.
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return None


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _mapping(where: _Where, value: Any, path: PathKey, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise where.error(path, f"must be a mapping, got {_describe(value)}")
    for key in value:
        if not isinstance(key, str):
            raise where.error(path, f"keys must be strings, got {_describe(key)}")
        if key not in allowed:
            raise where.error(path + (key,), f"unknown key (allowed: {', '.join(allowed)})")
    return value


def _int(where: _Where, value: Any, path: PathKey, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise where.error(path, f"must be an integer {low}-{high}, got {_describe(value)}")
    return value


def _number(where: _Where, value: Any, path: PathKey, low: float, high: float, low_inclusive: bool) -> float:
    ok_type = isinstance(value, (int, float)) and not isinstance(value, bool)
    in_range = ok_type and math.isfinite(value) and value <= high and (value >= low if low_inclusive else value > low)
    if not in_range:
        bound = f">= {low:g}" if low_inclusive else f"> {low:g}"
        raise where.error(path, f"must be a number {bound} and <= {high:g}, got {_describe(value)}")
    return float(value)


def _string(where: _Where, value: Any, path: PathKey) -> str:
    if not isinstance(value, str) or not value:
        raise where.error(path, f"must be a non-empty string, got {_describe(value)}")
    return value


def _bool(where: _Where, value: Any, path: PathKey) -> bool:
    if not isinstance(value, bool):
        raise where.error(path, f"must be true or false, got {_describe(value)}")
    return value


def _argv(where: _Where, value: Any, path: PathKey) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise where.error(path, f"must be a non-empty list of strings (argv), got {_describe(value)}")
    for index, arg in enumerate(value):
        if not isinstance(arg, str):
            raise where.error(path + (index,), f"must be a string, got {_describe(arg)}")
    if not value[0]:
        raise where.error(path + (0,), "the program name must not be empty")
    return tuple(value)


def _check_placeholders(where: _Where, text: str, path: PathKey, has_vip: bool, has_port: bool) -> None:
    for match in _PLACEHOLDER.finditer(text):
        name = match.group(1)
        if name not in TEMPLATE_NAMES:
            raise where.error(path, f"unknown placeholder {{{name}}} (known: {', '.join(TEMPLATE_NAMES)})")
        if name == "vip" and not has_vip:
            raise where.error(path, "uses {vip} but the service has no VIP")
        if name == "port" and not has_port:
            raise where.error(path, "uses {port} but the service has no port")


_TOP_KEYS = ("version", "services")
_SERVICE_KEYS = (
    "placement", "vip", "start", "files", "port", "health", "restart", "depends_on", "resources", "volume",
    "config", "jobs",
)
_VOLUME_KEYS = ("size", "fs", "mount")
VOLUME_FILESYSTEMS = ("ext4", "xfs")
_SIZE = re.compile(r"^\s*(\d+)\s*(MiB|GiB|TiB)?\s*$")
_SIZE_UNITS = {None: 1, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
MIN_VOLUME = 64 << 20
_START_KEYS = ("unit", "command")
_CHECK_KEYS = (
    "type", "interval", "timeout", "rise", "fall", "port", "path", "expect_status", "expect_body", "command",
    "daemon", "start_period", "api", "slow_grace",
)
_CHECK_ONLY_FOR = {
    "port": ("tcp", "http", *CLOUD_CHECKS),
    "path": ("http", *API_READS, "service-list"),
    "expect_status": ("http",),
    "expect_body": ("http",),
    "command": ("command",),
    "daemon": ("ceph", "service-list"),
    "api": ("service-list",),
}
_RESTART_KEYS = ("max_restarts", "backoff_initial", "backoff_max", "reset_after")
_RESOURCE_KEYS = ("cpu", "memory_mb")


def _build_catalog(data: Any, where: _Where) -> Catalog:
    if data is None:
        raise where.error((), "empty catalog: expected a mapping with 'services'")
    top = _mapping(where, data, (), _TOP_KEYS)
    version = _int(where, top.get("version", CATALOG_VERSION), ("version",), CATALOG_VERSION, CATALOG_VERSION)
    if "services" not in top:
        raise where.error((), "'services' is required")
    raw_services = top["services"]
    if not isinstance(raw_services, dict) or not raw_services:
        raise where.error(("services",), "must be a non-empty mapping of service name to definition")
    services: dict[str, ServiceSpec] = {}
    for name, raw in raw_services.items():
        path: PathKey = ("services", name)
        if not isinstance(name, str) or not _SERVICE_NAME.match(name):
            raise where.error(path, "service names must match [a-z0-9][a-z0-9_-]* (at most 40 characters)")
        services[name] = _build_service(where, name, raw, path)
    _check_dependencies(where, services)
    return Catalog(services=services, version=version)


def _build_service(where: _Where, name: str, raw: Any, path: PathKey) -> ServiceSpec:
    data = _mapping(where, raw, path, _SERVICE_KEYS)
    if "placement" not in data:
        raise where.error(path, "'placement' is required (singleton, every-node or ceph-mons)")
    placement = data["placement"]
    if placement not in PLACEMENTS:
        raise where.error(path + ("placement",), f"must be one of: {', '.join(PLACEMENTS)}, got {_describe(placement)}")
    vip = _bool(where, data.get("vip", placement == "singleton"), path + ("vip",))
    if vip and placement != "singleton":
        raise where.error(path + ("vip",), "only singleton services can have a VIP")
    port = None if data.get("port") is None else _int(where, data["port"], path + ("port",), 1, 65535)
    if vip and port is None:
        raise where.error(path, "'port' is required for a service with a VIP (the Monitor probes it through the VIP)")
    unit, command = _build_start(where, data.get("start"), path + ("start",), vip, port is not None)
    files = _build_files(where, data.get("files", {}), path + ("files",), vip, port is not None)
    health = _build_health(where, data.get("health"), path + ("health",), port, vip)
    return ServiceSpec(
        name=name,
        placement=placement,
        vip=vip,
        unit=unit,
        command=command,
        files=files,
        port=port,
        health=health,
        restart=_build_restart(where, data.get("restart", {}), path + ("restart",)),
        depends_on=_build_depends(where, data.get("depends_on", []), path + ("depends_on",), name),
        resources=_build_resources(where, data.get("resources", {}), path + ("resources",)),
        volume=_build_volume(where, data.get("volume"), path + ("volume",), placement, vip, port is not None),
        config=_build_config(where, data.get("config"), path + ("config",)),
        jobs=_build_jobs(where, data.get("jobs", []), path + ("jobs",)),
    )


def _build_config(where: _Where, raw: Any, path: PathKey) -> str | None:
    from nodeos.cloud.registry import CONFIGS

    if raw is None:
        return None
    if raw not in CONFIGS:
        raise where.error(path, f"must be one of: {', '.join(CONFIGS)}, got {_describe(raw)}")
    return str(raw)


def _build_jobs(where: _Where, raw: Any, path: PathKey) -> tuple[str, ...]:
    from nodeos.cloud.registry import JOBS

    if not isinstance(raw, list):
        raise where.error(path, f"must be a list of job names, got {_describe(raw)}")
    names: list[str] = []
    for index, item in enumerate(raw):
        if item not in JOBS:
            raise where.error(path + (index,), f"unknown job {_describe(item)} (known: {', '.join(JOBS)})")
        if item in names:
            raise where.error(path + (index,), f"duplicate job {item!r}")
        names.append(item)
    return tuple(names)


def _build_volume(where: _Where, raw: Any, path: PathKey, placement: str, has_vip: bool,
                  has_port: bool) -> VolumeSpec | None:
    if raw is None:
        return None
    if placement != "singleton":
        raise where.error(path, "only singleton services can have a volume (it is attached on one node at a time)")
    data = _mapping(where, raw, path, _VOLUME_KEYS)
    for key in _VOLUME_KEYS:
        if key not in data:
            raise where.error(path, f"'{key}' is required (size like 1GiB, fs ext4 or xfs, mount an absolute path)")
    size_text = data["size"]
    match = _SIZE.match(str(size_text)) if not isinstance(size_text, bool) else None
    if match is None:
        raise where.error(path + ("size",), f"must be bytes or a size like 512MiB or 2GiB, got {_describe(size_text)}")
    size = int(match.group(1)) * _SIZE_UNITS[match.group(2)]
    if size < MIN_VOLUME:
        raise where.error(path + ("size",), f"must be at least 64MiB, got {_describe(size_text)}")
    fs = data["fs"]
    if fs not in VOLUME_FILESYSTEMS:
        raise where.error(path + ("fs",), f"must be one of: {', '.join(VOLUME_FILESYSTEMS)}, got {_describe(fs)}")
    mount = _string(where, data["mount"], path + ("mount",))
    _check_placeholders(where, mount, path + ("mount",), has_vip, has_port)
    if not mount.startswith("/") and not mount.startswith("{"):
        raise where.error(path + ("mount",), f"must be an absolute path, got {_describe(mount)}")
    return VolumeSpec(size=size, fs=fs, mount=mount)


def _build_start(
    where: _Where, raw: Any, path: PathKey, has_vip: bool, has_port: bool
) -> tuple[str | None, tuple[str, ...] | None]:
    if raw is None:
        raise where.error(path[:-1], "'start' is required (unit and/or command)")
    data = _mapping(where, raw, path, _START_KEYS)
    unit = None if data.get("unit") is None else _string(where, data["unit"], path + ("unit",))
    command = None if data.get("command") is None else _argv(where, data["command"], path + ("command",))
    if unit is None and command is None:
        raise where.error(path, "needs 'unit' (systemd) and/or 'command' (process runtime)")
    if unit is not None and ("/" in unit or any(c.isspace() for c in unit)):
        raise where.error(path + ("unit",), f"must be a systemd unit name, got {_describe(unit)}")
    for index, arg in enumerate(command or ()):
        _check_placeholders(where, arg, path + ("command", index), has_vip, has_port)
    return unit, command


def _build_files(where: _Where, raw: Any, path: PathKey, has_vip: bool, has_port: bool) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise where.error(path, f"must be a mapping of file name to content, got {_describe(raw)}")
    files: dict[str, str] = {}
    for name, content in raw.items():
        file_path = path + (name,)
        if not isinstance(name, str) or not _FILE_NAME.match(name) or name in RESERVED_FILES:
            raise where.error(file_path, "must be a plain file name (no '/', not pid.json or service.log)")
        if not isinstance(content, str):
            raise where.error(file_path, f"content must be a string, got {_describe(content)}")
        _check_placeholders(where, content, file_path, has_vip, has_port)
        files[name] = content
    return files


def _build_health(
    where: _Where, raw: Any, path: PathKey, port: int | None, has_vip: bool
) -> tuple[HealthCheckSpec, ...]:
    if raw is None:
        return (HealthCheckSpec(type="process"),)  # at least: the main process lives
    if not isinstance(raw, list) or not raw:
        raise where.error(path, f"must be a non-empty list of checks, got {_describe(raw)}")
    return tuple(
        _build_check(where, item, path + (index,), port, has_vip) for index, item in enumerate(raw)
    )


def _build_check(where: _Where, raw: Any, path: PathKey, service_port: int | None, has_vip: bool) -> HealthCheckSpec:
    data = _mapping(where, raw, path, _CHECK_KEYS)
    kind = data.get("type")
    if kind not in CHECK_TYPES:
        raise where.error(path + ("type",), f"must be one of: {', '.join(CHECK_TYPES)}, got {_describe(kind)}")
    for key, kinds in _CHECK_ONLY_FOR.items():
        if key in data and kind not in kinds:
            raise where.error(path + (key,), f"only allowed for {' and '.join(kinds)} checks")
    common = dict(
        type=kind,
        interval=_number(where, data.get("interval", 1.0), path + ("interval",), 0.0, 3600.0, False),
        timeout=_number(where, data.get("timeout", 1.0), path + ("timeout",), 0.0, 600.0, False),
        rise=_int(where, data.get("rise", 2), path + ("rise",), 1, 100),
        fall=_int(where, data.get("fall", 2), path + ("fall",), 1, 100),
        start_period=_number(where, data.get("start_period", 0.0), path + ("start_period",), 0.0, 3600.0, True),
        slow_grace=_number(where, data.get("slow_grace", SLOW_GRACE), path + ("slow_grace",), 0.0, 3600.0, True),
    )
    if kind in CLOUD_CHECKS:
        if data.get("port") is None and service_port is None:
            raise where.error(path, f"a {kind} check needs 'port' (the service has none)")
        port = service_port if data.get("port") is None else _int(where, data["port"], path + ("port",), 1, 65535)
        if kind == "service-list":
            return _service_list_check(where, data, path, port, common)
        read = _string(where, data.get("path", API_READS[kind]), path + ("path",)) if kind in API_READS else None
        if read is not None and not read.startswith("/"):
            raise where.error(path + ("path",), f"must start with '/', got {_describe(read)}")
        return HealthCheckSpec(port=port, path=read, **common)
    if kind in ("tcp", "http"):
        if data.get("port") is None and service_port is None:
            raise where.error(path, f"a {kind} check needs 'port' (the service has none)")
        port = service_port if data.get("port") is None else _int(where, data["port"], path + ("port",), 1, 65535)
        if kind == "tcp":
            return HealthCheckSpec(port=port, **common)
        http_path = _string(where, data.get("path", "/"), path + ("path",))
        if not http_path.startswith("/"):
            raise where.error(path + ("path",), f"must start with '/', got {_describe(http_path)}")
        body = data.get("expect_body")
        return HealthCheckSpec(
            port=port,
            path=http_path,
            expect_status=_int(where, data.get("expect_status", 200), path + ("expect_status",), 100, 599),
            expect_body=None if body is None else _string(where, body, path + ("expect_body",)),
            **common,
        )
    if kind == "command":
        if "command" not in data:
            raise where.error(path, "a command check needs 'command' (argv list)")
        argv = _argv(where, data["command"], path + ("command",))
        for index, arg in enumerate(argv):
            _check_placeholders(where, arg, path + ("command", index), has_vip, service_port is not None)
        return HealthCheckSpec(command=argv, **common)
    if kind == "ceph":
        return HealthCheckSpec(daemon=_daemon(where, data, path, CEPH_DAEMONS), **common)
    return HealthCheckSpec(**common)


def _service_list_check(where: _Where, data: dict[str, Any], path: PathKey, port: int,
                        common: dict[str, Any]) -> HealthCheckSpec:
    """A worker (`daemon`) "up" in its API's (`api`) own service list: which lists and workers
    there are is the cloud registry's (nodeos/cloud/registry.py)."""
    from nodeos.cloud.registry import SERVICE_LISTS

    api = data.get("api")
    if api not in SERVICE_LISTS:
        raise where.error(path + ("api",), f"a service-list check needs 'api': one of {', '.join(SERVICE_LISTS)}, "
                                           f"got {_describe(api)}")
    listing = SERVICE_LISTS[api]
    read = _string(where, data.get("path", listing.read), path + ("path",))
    if not read.startswith("/"):
        raise where.error(path + ("path",), f"must start with '/', got {_describe(read)}")
    return HealthCheckSpec(port=port, path=read, api=api, daemon=_daemon(where, data, path, tuple(listing.daemons)),
                           **common)


def _daemon(where: _Where, data: dict[str, Any], path: PathKey, daemons: tuple[str, ...]) -> str:
    """The check's `daemon`, one of `daemons`."""
    daemon = data.get("daemon")
    if daemon not in daemons:
        raise where.error(path + ("daemon",), f"a {data['type']} check needs 'daemon': one of {', '.join(daemons)}, "
                                              f"got {_describe(daemon)}")
    return str(daemon)


def _build_restart(where: _Where, raw: Any, path: PathKey) -> RestartPolicy:
    data = _mapping(where, raw, path, _RESTART_KEYS)

    def number(key: str, default: float, high: float, zero_ok: bool) -> float:
        return _number(where, data.get(key, default), path + (key,), 0.0, high, zero_ok)

    policy = RestartPolicy(
        max_restarts=_int(where, data.get("max_restarts", 3), path + ("max_restarts",), 0, 1000),
        backoff_initial=number("backoff_initial", 0.5, 3600.0, False),
        backoff_max=number("backoff_max", 30.0, 86400.0, False),
        reset_after=number("reset_after", 60.0, 86400.0, True),
    )
    if policy.backoff_max < policy.backoff_initial:
        raise where.error(path + ("backoff_max",), "must be >= backoff_initial")
    return policy


def _build_resources(where: _Where, raw: Any, path: PathKey) -> Resources:
    data = _mapping(where, raw, path, _RESOURCE_KEYS)
    return Resources(
        cpu=_number(where, data.get("cpu", 0.1), path + ("cpu",), 0.0, 1024.0, False),
        memory_mb=_int(where, data.get("memory_mb", 64), path + ("memory_mb",), 1, 16 * 1024 * 1024),
    )


def _build_depends(where: _Where, raw: Any, path: PathKey, own_name: str) -> tuple[str, ...]:
    if not isinstance(raw, list):
        raise where.error(path, f"must be a list of service names, got {_describe(raw)}")
    names: list[str] = []
    for index, item in enumerate(raw):
        dep = _string(where, item, path + (index,))
        if dep == own_name:
            raise where.error(path + (index,), "a service cannot depend on itself")
        if dep in names:
            raise where.error(path + (index,), f"duplicate dependency {dep!r}")
        names.append(dep)
    return tuple(names)


def _check_dependencies(where: _Where, services: Mapping[str, ServiceSpec]) -> None:
    for name, spec in services.items():
        for index, dep in enumerate(spec.depends_on):
            if dep not in services:
                raise where.error(
                    ("services", name, "depends_on", index),
                    f"unknown service {dep!r} (known: {', '.join(sorted(services))})",
                )
    _check_job_prerequisites(where, services)
    cycle = _find_cycle({n: s.depends_on for n, s in services.items()})
    if cycle:
        raise where.error(("services", cycle[0], "depends_on"), f"dependency cycle: {' -> '.join(cycle)}")


def _check_job_prerequisites(where: _Where, services: Mapping[str, ServiceSpec]) -> None:
    """A job waits for services to be healthy: they must be in the catalog, or it would wait forever."""
    from nodeos.cloud.registry import JOBS, jobs_closure

    for name, spec in services.items():
        for job in jobs_closure(spec.jobs):
            for needed in JOBS[job].after_services:
                if needed not in services:
                    raise where.error(("services", name, "jobs"),
                                      f"job {job!r} needs service {needed!r}, which is not in the catalog")


def _find_cycle(graph: Mapping[str, tuple[str, ...]]) -> list[str] | None:
    """First cycle found by a name-ordered DFS, as [a, b, ..., a]; None if acyclic."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        stack: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        on_path = [start]
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                on_path.pop()
                done.add(node)
            elif child in on_path:
                return on_path[on_path.index(child):] + [child]
            elif child not in done:
                stack.append((child, iter(sorted(graph[child]))))
                on_path.append(child)
    return None


def _topological_order(graph: Mapping[str, tuple[str, ...]]) -> list[str]:
    waiting = {name: set(deps) for name, deps in graph.items()}
    ready = [name for name, deps in waiting.items() if not deps]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        name = heapq.heappop(ready)
        order.append(name)
        for other, deps in waiting.items():
            if name in deps:
                deps.discard(name)
                if not deps:
                    heapq.heappush(ready, other)
    return order  # validated catalogs are acyclic, so this holds every service


# ---------------------------------------------------------------- to_dict


def _check_to_dict(check: HealthCheckSpec) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": check.type,
        "interval": check.interval,
        "timeout": check.timeout,
        "rise": check.rise,
        "fall": check.fall,
    }
    if check.start_period:
        out["start_period"] = check.start_period
    if check.slow_grace != SLOW_GRACE:
        out["slow_grace"] = check.slow_grace
    optional = {
        "port": check.port,
        "path": check.path,
        "expect_status": check.expect_status,
        "expect_body": check.expect_body,
        "command": None if check.command is None else list(check.command),
        "daemon": check.daemon,
        "api": check.api,
    }
    out.update({key: value for key, value in optional.items() if value is not None})
    return out


def _service_to_dict(spec: ServiceSpec) -> dict[str, Any]:
    start: dict[str, Any] = {}
    if spec.unit is not None:
        start["unit"] = spec.unit
    if spec.command is not None:
        start["command"] = list(spec.command)
    out: dict[str, Any] = {"placement": spec.placement, "vip": spec.vip, "start": start}
    if spec.files:
        out["files"] = dict(spec.files)
    if spec.port is not None:
        out["port"] = spec.port
    out["health"] = [_check_to_dict(check) for check in spec.health]
    out["restart"] = {
        "max_restarts": spec.restart.max_restarts,
        "backoff_initial": spec.restart.backoff_initial,
        "backoff_max": spec.restart.backoff_max,
        "reset_after": spec.restart.reset_after,
    }
    out["depends_on"] = list(spec.depends_on)
    out["resources"] = {"cpu": spec.resources.cpu, "memory_mb": spec.resources.memory_mb}
    if spec.volume is not None:
        out["volume"] = {"size": spec.volume.size, "fs": spec.volume.fs, "mount": spec.volume.mount}
    if spec.config is not None:
        out["config"] = spec.config
    if spec.jobs:
        out["jobs"] = list(spec.jobs)
    return out
