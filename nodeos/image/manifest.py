"""Image manifests (`images/*.yaml`): load, validate, explain mistakes.

Every error names the file and the field, e.g.

    images/minimal.yaml: disk.size: expected 'auto' or a size like '8GiB', got '8 parsecs'
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nodeos.cluster.config import ConfigError, parse_config

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGES_DIR = REPO_ROOT / "images"
ELEMENTS_DIR = REPO_ROOT / "elements"
DEFAULT_MANIFEST = IMAGES_DIR / "cloud.yaml"

OUTPUTS = ("raw", "qcow2", "pxe")
RELEASES = ("bookworm",)
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
_ELEMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|K|KB|KiB|M|MB|MiB|G|GB|GiB|T|TB|TiB)?\s*$", re.IGNORECASE)
_UNITS = {
    "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1024**3, "gb": 1000**3, "gib": 1024**3, "t": 1024**4, "tb": 1000**4, "tib": 1024**4,
}
_TOP = ("name", "description", "release", "elements", "catalog", "service_packages", "config",
        "firewall", "ssh_authorized_keys", "disk", "outputs")


class ManifestError(ValueError):
    """A manifest that cannot be built; the message names file and field."""


@dataclass(frozen=True)
class Manifest:
    path: Path
    name: str
    description: str
    release: str
    elements: tuple[str, ...]
    catalog: Path | None
    service_packages: tuple[str, ...]
    config: dict[str, Any]
    firewall_tcp: tuple[str, ...]  # "22" or "6800-7300"
    firewall_udp: tuple[str, ...]
    ssh_authorized_keys: tuple[str, ...]
    disk_size: int | None  # bytes; None = auto
    bios: bool
    outputs: tuple[str, ...]
    raw: dict[str, Any] = field(default_factory=dict, compare=False)


def parse_size(text: Any) -> int:
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(text)
    number, unit = match.groups()
    return int(float(number) * _UNITS[(unit or "b").lower()])


def resolve_manifest_path(name_or_path: str | Path | None) -> Path:
    """`None` -> the cloud manifest; `minimal` -> images/minimal.yaml; else a path."""
    if name_or_path is None:
        return DEFAULT_MANIFEST
    text = str(name_or_path)
    candidate = Path(text)
    if candidate.exists():
        return candidate.resolve()
    if _NAME.match(text) and (IMAGES_DIR / f"{text}.yaml").exists():
        return IMAGES_DIR / f"{text}.yaml"
    raise ManifestError(f"{text}: no such manifest (give a path, or a name from {IMAGES_DIR}: "
                        f"{', '.join(sorted(p.stem for p in IMAGES_DIR.glob('*.yaml')))})")


def load_manifest(path: str | Path | None, elements_dir: Path = ELEMENTS_DIR) -> Manifest:
    path = resolve_manifest_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: not valid YAML: {exc}") from exc
    return parse_manifest(data, path, elements_dir)


def parse_manifest(data: Any, path: Path, elements_dir: Path = ELEMENTS_DIR) -> Manifest:
    where = str(path)

    def err(fieldname: str, message: str) -> ManifestError:
        return ManifestError(f"{where}: {fieldname}: {message}")

    if not isinstance(data, dict):
        raise ManifestError(f"{where}: expected a mapping at the top level")
    for key in data:
        if key not in _TOP:
            raise err(str(key), f"unknown field (known: {', '.join(_TOP)})")

    name = data.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise err("name", f"required; lower-case letters, digits, '-' or '_' (max 40), got {name!r}")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise err("description", f"must be a string, got {description!r}")
    release = data.get("release", "bookworm")
    if release not in RELEASES:
        raise err("release", f"must be one of {', '.join(RELEASES)}, got {release!r}")

    elements = _string_list(data.get("elements"), "elements", err, required=True)
    for i, element in enumerate(elements):
        if not _ELEMENT.match(element):
            raise err(f"elements[{i}]", f"not an element name: {element!r}")
        if element.startswith("nodeos-") and not (elements_dir / element).is_dir():
            raise err(f"elements[{i}]", f"no element '{element}' in {elements_dir}")
    if len(set(elements)) != len(elements):
        raise err("elements", "lists an element twice")
    for needed in ("nodeos-base", "nodeos-agent", "nodeos-identity"):
        if needed not in elements:
            raise err("elements", f"must include {needed} (every node image runs the agent)")
    if "vm" in elements:
        raise err("elements", "'vm' is not supported: the disk is assembled by nodeos (no device-mapper here)")

    catalog = _catalog_path(data.get("catalog"), err)
    if catalog is not None and "nodeos-services" not in elements:
        raise err("catalog", "a catalog needs the nodeos-services element")
    packages = _string_list(data.get("service_packages"), "service_packages", err)
    for i, pkg in enumerate(packages):
        if not _PACKAGE.match(pkg):
            raise err(f"service_packages[{i}]", f"not a Debian package name: {pkg!r}")

    config = data.get("config") or {}
    if not isinstance(config, dict):
        raise err("config", "must be a mapping (the node config, see nodeos/config.py)")
    try:
        parse_config(config, f"{where}: config")
    except ConfigError as exc:
        raise ManifestError(str(exc)) from exc

    firewall = data.get("firewall") or {}
    if not isinstance(firewall, dict):
        raise err("firewall", "must be a mapping with 'tcp' and/or 'udp' port lists")
    for key in firewall:
        if key not in ("tcp", "udp"):
            raise err(f"firewall.{key}", "unknown field (known: tcp, udp)")
    tcp = tuple(_port(p, f"firewall.tcp[{i}]", err) for i, p in enumerate(firewall.get("tcp") or []))
    udp = tuple(_port(p, f"firewall.udp[{i}]", err) for i, p in enumerate(firewall.get("udp") or []))

    keys = _string_list(data.get("ssh_authorized_keys"), "ssh_authorized_keys", err)
    for i, key in enumerate(keys):
        if not re.match(r"^(ssh-|ecdsa-|sk-)\S+ \S+", key):
            keyfile = _repo_path(key)
            if not keyfile.is_file():
                raise err(f"ssh_authorized_keys[{i}]", "expected a public key line ('ssh-ed25519 AAAA...') "
                          f"or a readable file, got {key[:40]!r}")

    disk = data.get("disk") or {}
    if not isinstance(disk, dict):
        raise err("disk", "must be a mapping (size, bios)")
    for key in disk:
        if key not in ("size", "bios"):
            raise err(f"disk.{key}", "unknown field (known: size, bios)")
    size_value = disk.get("size", "auto")
    disk_size: int | None
    if size_value in (None, "auto"):
        disk_size = None
    else:
        try:
            disk_size = parse_size(size_value)
        except ValueError:
            raise err("disk.size", f"expected 'auto' or a size like '8GiB', got {size_value!r}") from None
        if disk_size < 512 * 1024**2:
            raise err("disk.size", f"must be at least 512MiB, got {size_value!r}")
    bios = disk.get("bios", True)
    if not isinstance(bios, bool):
        raise err("disk.bios", f"must be true or false, got {bios!r}")

    outputs = _string_list(data.get("outputs", list(OUTPUTS)), "outputs", err, required=True)
    for i, out in enumerate(outputs):
        if out not in OUTPUTS:
            raise err(f"outputs[{i}]", f"must be one of {', '.join(OUTPUTS)}, got {out!r}")
    if "pxe" in outputs and "nodeos-netboot" not in elements:
        raise err("outputs", "the 'pxe' output needs the nodeos-netboot element")

    return Manifest(path=path, name=name, description=description, release=release,
                    elements=tuple(elements), catalog=catalog, service_packages=tuple(packages),
                    config=dict(config), firewall_tcp=tcp, firewall_udp=udp,
                    ssh_authorized_keys=tuple(keys), disk_size=disk_size, bios=bios,
                    outputs=tuple(outputs), raw=data)


def _string_list(value: Any, fieldname: str, err: Any, required: bool = False) -> list[str]:
    if value is None:
        if required:
            raise err(fieldname, "required (a list)")
        return []
    if not isinstance(value, list):
        raise err(fieldname, f"must be a list, got {value!r}")
    if required and not value:
        raise err(fieldname, "must not be empty")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise err(f"{fieldname}[{i}]", f"must be a non-empty string, got {item!r}")
    return list(value)


def _port(value: Any, fieldname: str, err: Any) -> str:
    if isinstance(value, bool):
        raise err(fieldname, f"must be a port or a range 'LOW-HIGH', got {value!r}")
    if isinstance(value, int):
        low = high = value
    elif isinstance(value, str) and re.fullmatch(r"\d+(-\d+)?", value.strip()):
        parts = [int(x) for x in value.strip().split("-")]
        low, high = parts[0], parts[-1]
    else:
        raise err(fieldname, f"must be a port or a range 'LOW-HIGH', got {value!r}")
    if not (1 <= low <= high <= 65535):
        raise err(fieldname, f"ports must be 1-65535 and LOW <= HIGH, got {value!r}")
    return str(low) if low == high else f"{low}-{high}"


def _repo_path(text: str) -> Path:
    path = Path(text)
    return path if path.is_absolute() else REPO_ROOT / path


def _catalog_path(value: Any, err: Any) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise err("catalog", f"must be a packaged catalog name or a path, got {value!r}")
    if _NAME.match(value) and not value.endswith(".yaml"):
        from nodeos.services.catalog import packaged_catalog

        path = packaged_catalog(value)
    else:
        path = _repo_path(value)
    if not path.is_file():
        raise err("catalog", f"no catalog file {path}")
    try:
        from nodeos.services.catalog import CatalogError, load_catalog
    except ImportError:  # catalog module not there: only the YAML syntax can be checked
        try:
            yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise err("catalog", f"{path}: not valid YAML: {exc}") from exc
        return path
    try:
        load_catalog(path)
    except CatalogError as exc:
        raise err("catalog", str(exc)) from exc
    return path


def catalog_ports(path: Path | None) -> tuple[list[str], list[str]]:
    """TCP and UDP ports the catalog's services listen on (for the firewall)."""
    if path is None:
        return [], []
    try:
        from nodeos.services.catalog import load_catalog
    except ImportError:
        return [], []
    tcp: set[int] = set()
    for service in load_catalog(path):
        if service.port:
            tcp.add(int(service.port))
        for check in service.health:
            if check.port:
                tcp.add(int(check.port))
    return [str(p) for p in sorted(tcp)], []


def with_config_settings(manifest: Manifest, settings: tuple[str, ...] | list[str]) -> Manifest:
    """The manifest with `KEY=VALUE` settings applied to its node config.

    KEY may be dotted (`timing.fence_after=4`); VALUE is read as YAML, so
    `realtime=false` is a bool and `timing.lease=4` a number. The result is
    validated like the manifest's own config; errors name the setting.
    """
    import copy
    import dataclasses

    if not settings:
        return manifest
    config = copy.deepcopy(manifest.config)
    for item in settings:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ManifestError(f"--set {item!r}: expected KEY=VALUE, e.g. timing.fence_after=4")
        *parents, leaf = key.strip().split(".")
        node = config
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ManifestError(f"--set {item!r}: '{part}' is not a mapping in the config")
            node = child
        try:
            node[leaf] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise ManifestError(f"--set {item!r}: value is not valid YAML: {exc}") from exc
    try:
        parse_config(config, f"{manifest.path}: config with --set {' '.join(settings)}")
    except ConfigError as exc:
        raise ManifestError(str(exc)) from exc
    return dataclasses.replace(manifest, config=config)
