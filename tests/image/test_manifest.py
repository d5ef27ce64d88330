"""Quick checks of the image pipeline's pure parts: manifests, config/firewall
rendering, disk layout and boot loader patching. No root, no network."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import yaml

from nodeos.image import disk as diskmod
from nodeos.image.build import BuildError, _apt_sources, detect_mirrors, firewall_env, render_config
from nodeos.image.manifest import IMAGES_DIR, ManifestError, load_manifest, parse_size


def _write(tmp_path: Path, data: dict, name: str = "m.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def _base() -> dict:
    return yaml.safe_load((IMAGES_DIR / "minimal.yaml").read_text())


@pytest.mark.parametrize("name", ["minimal", "cloud"])
def test_shipped_manifests_validate(name: str) -> None:
    manifest = load_manifest(name)
    assert manifest.name == name
    assert {"nodeos-base", "nodeos-agent", "nodeos-identity", "nodeos-hardening"} <= set(manifest.elements)
    if name == "cloud":
        assert {"nodeos-ceph", "nodeos-openstack"} <= set(manifest.elements)


def test_default_manifest_is_cloud() -> None:
    assert load_manifest(None).name == "cloud"


@pytest.mark.parametrize("change, field", [
    ({"colour": "blue"}, "colour: unknown field"),
    ({"name": "Bad Name"}, "name:"),
    ({"elements": ["nodeos-base", "nodeos-agent"]}, "elements: must include nodeos-identity"),
    ({"elements": ["nodeos-base", "nodeos-agent", "nodeos-identity", "nodeos-nope"]}, "elements[3]: no element"),
    ({"elements": ["nodeos-base", "nodeos-agent", "nodeos-identity", "vm"]}, "elements: 'vm' is not supported"),
    ({"disk": {"size": "8 parsecs"}}, "disk.size: expected 'auto'"),
    ({"disk": {"size": "100MiB"}}, "disk.size: must be at least"),
    ({"disk": {"bios": "yes"}}, "disk.bios: must be true or false"),
    ({"firewall": {"tcp": [70000]}}, "firewall.tcp[0]:"),
    ({"firewall": {"icmp": [1]}}, "firewall.icmp: unknown field"),
    ({"config": {"bootstrap_expect": "three"}}, "field 'bootstrap_expect' must be int"),
    ({"config": {"colour": 1}}, "unknown field 'colour'"),
    ({"outputs": ["iso"]}, "outputs[0]: must be one of"),
    ({"service_packages": ["Not A Package"]}, "service_packages[0]:"),
    ({"catalog": "nonexistent-catalog"}, "catalog: no catalog file"),
    ({"ssh_authorized_keys": ["hunter2"]}, "ssh_authorized_keys[0]:"),
])
def test_errors_name_file_and_field(tmp_path: Path, change: dict, field: str) -> None:
    data = _base()
    data.update(change)
    path = _write(tmp_path, data)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert str(path) in str(info.value)
    assert field in str(info.value)


def test_pxe_output_needs_netboot(tmp_path: Path) -> None:
    data = _base()
    data["elements"] = [e for e in data["elements"] if e != "nodeos-netboot"]
    with pytest.raises(ManifestError, match="outputs: the 'pxe' output needs the nodeos-netboot element"):
        load_manifest(_write(tmp_path, data))


def test_not_yaml(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ManifestError, match="not valid YAML"):
        load_manifest(path)


def test_sizes() -> None:
    assert parse_size("8GiB") == 8 * 1024**3
    assert parse_size("1.5G") == int(1.5 * 1024**3)
    assert parse_size("500MB") == 500 * 1000**2
    with pytest.raises(ValueError):
        parse_size("lots")


def test_config_and_firewall_rendering() -> None:
    manifest = load_manifest("minimal")
    config = yaml.safe_load(render_config(manifest))
    assert config["catalog"] == "/etc/nodeos/catalog.yaml"
    assert config["runtime"] == "systemd"
    env = dict(line.split("=", 1) for line in firewall_env(manifest).splitlines())
    tcp = env["NODEOS_FW_TCP"].strip('"').split()
    # SSH, Raft, status + the catalog's service ports (nginx 80, node-http 8080, memcached 11211).
    assert {"22", "7371", "7372", "80", "8080", "11211"} <= set(tcp)
    assert env["NODEOS_FW_UDP"].strip('"').split() == ["7370"]
    assert env["NODEOS_FW_MCAST_GROUP"] == '"239.192.73.70"'
    cloud = dict(line.split("=", 1) for line in firewall_env(load_manifest("cloud")).splitlines())
    assert "6800-7300" in cloud["NODEOS_FW_TCP"]


def test_the_cloud_image_runs_the_cloud_catalog_and_can_run_the_storage_one() -> None:
    from nodeos.image.manifest import with_config_settings
    from nodeos.services.catalog import packaged_catalog

    manifest = load_manifest("cloud")
    assert manifest.catalog == packaged_catalog("cloud")
    assert yaml.safe_load(render_config(manifest))["catalog"] == "/etc/nodeos/catalog.yaml"
    tcp = set(dict(line.split("=", 1) for line in firewall_env(manifest).splitlines())["NODEOS_FW_TCP"].strip('"').split())
    # The catalog's own ports: MariaDB, RabbitMQ, memcached, keystone, glance, placement, nova, cinder, neutron,
    # horizon (80); nothing of the storage catalog's (node-http's 8080).
    assert {"3306", "5672", "11211", "5000", "9292", "8778", "8774", "8776", "9696", "80"} <= tcp
    assert "8080" not in tcp
    # The image tier's storage test: the node config names the packaged storage catalog (the agent
    # resolves a name to nodeos/services/catalogs/<name>.yaml), and its ports are opened too.
    storage = with_config_settings(manifest, ["catalog=storage"])
    assert yaml.safe_load(render_config(storage))["catalog"] == "storage"
    tcp = set(dict(line.split("=", 1) for line in firewall_env(storage).splitlines())["NODEOS_FW_TCP"].strip('"').split())
    assert {"80", "8080", "8091", "3306", "5000"} <= tcp


def test_mirror_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODEOS_DEBIAN_MIRROR", "http://mirror.example/debian")
    monkeypatch.delenv("NODEOS_DEBIAN_SECURITY_MIRROR", raising=False)
    monkeypatch.delenv("DIB_DEBIAN_SECURITY_MIRROR", raising=False)
    main, security = detect_mirrors()
    assert main == "http://mirror.example/debian"
    found = _apt_sources()[1]
    assert security == (found or "http://mirror.example/debian-security")


def test_no_mirror_anywhere_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NODEOS_DEBIAN_MIRROR", "DIB_DISTRIBUTION_MIRROR", "NODEOS_DEBIAN_SECURITY_MIRROR", "DIB_DEBIAN_SECURITY_MIRROR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("nodeos.image.build._apt_sources", lambda: (None, None))
    with pytest.raises(BuildError, match="NODEOS_DEBIAN_MIRROR"):
        detect_mirrors()


def test_layout_and_boot_config() -> None:
    layout = diskmod.plan_layout(900 * diskmod.MiB, None)
    assert layout.bios_start == diskmod.MiB and layout.esp_start == 2 * diskmod.MiB
    assert layout.root_start == layout.esp_start + layout.esp_size
    assert layout.root_size >= 900 * diskmod.MiB * 1.25
    assert layout.root_start + layout.root_size + diskmod.MiB == layout.total
    with pytest.raises(diskmod.DiskError):
        diskmod.plan_layout(900 * diskmod.MiB, 600 * diskmod.MiB)
    cfg = diskmod.grub_cfg("1234-uuid")
    assert "root=UUID=1234-uuid" in cfg and "console=ttyS0,115200n8" in cfg
    assert "search --no-floppy --fs-uuid --set=root 1234-uuid" in diskmod.embedded_cfg("1234-uuid")


@pytest.mark.skipif(not (diskmod.GRUB_PC_DIR / "boot.img").exists(), reason="grub-pc-bin not installed")
def test_bios_boot_patching(tmp_path: Path) -> None:
    """boot.img points at core.img; core.img's blocklist at its own remaining sectors."""
    layout = diskmod.plan_layout(100 * diskmod.MiB, None)
    _, core = diskmod.make_grub_images(tmp_path, "1234-uuid", bios=True)
    assert core is not None
    image = tmp_path / "disk.raw"
    diskmod.partition(image, layout, "11111111-2222-3333-4444-555555555555", "66666666-7777-8888-9999-000000000000")
    table_before = image.read_bytes()[440:512]
    diskmod.install_bios_boot(image, core, layout)
    data = image.read_bytes()
    assert data[440:512] == table_before  # protective MBR partition table untouched
    assert struct.unpack_from("<Q", data, 0x5C)[0] == layout.bios_start // 512
    start, length, segment = struct.unpack_from("<QHH", data, layout.bios_start + 500)
    assert start == layout.bios_start // 512 + 1
    assert length == (core.stat().st_size + 511) // 512 - 1 and segment == 0x820


def test_config_settings_override_the_manifest_config_and_are_validated() -> None:
    from nodeos.image.manifest import with_config_settings

    base = load_manifest("minimal")
    changed = with_config_settings(base, ["realtime=false", "timing.fence_after=4", "timing.lease=4.5"])
    assert changed.config["realtime"] is False
    assert changed.config["timing"] == {"fence_after": 4, "lease": 4.5}
    assert changed.config["bootstrap_expect"] == base.config["bootstrap_expect"]
    assert "timing" not in base.config  # the loaded manifest is untouched
    assert "realtime=false" in render_config(changed) or "realtime: false" in render_config(changed)
    for bad, words in [("fence_after", "KEY=VALUE"), ("nope=1", "unknown field 'nope'"),
                       ("timing.fence_after=soon", "must be float"),
                       ("timing.fence_margin=0.01", "fence_margin"),
                       ("bootstrap_expect.x=1", "not a mapping")]:
        with pytest.raises(ManifestError, match=words):
            with_config_settings(base, [bad])


def test_every_unit_of_the_cloud_catalog_has_a_drop_in_in_the_cloud_image_s_elements() -> None:
    """Without building: the drop-ins the cloud image's elements install (static/) cover every unit the
    cloud catalog starts (or the elements ship the unit itself: horizon's), each with Restart=no (the
    agent restarts and moves), and epmd is masked."""
    import configparser

    from nodeos.image.manifest import ELEMENTS_DIR
    from nodeos.services.catalog import load_catalog

    manifest = load_manifest("cloud")
    assert manifest.catalog is not None
    units = [ELEMENTS_DIR / element / "static/etc/systemd/system" for element in manifest.elements]
    dropins = {path.parent.name: path for directory in units for path in directory.glob("*.d/nodeos.conf")}
    # A unit the elements ship whole counts as its own drop-in.
    dropins |= {f"{path.name}.d": path for directory in units for path in directory.glob("nodeos-*.service")}
    for spec in load_catalog(manifest.catalog):
        assert spec.unit is not None
        unit = spec.unit.replace("@nodeos.service", "@.service")
        assert f"{unit}.d" in dropins, f"{spec.name}: no drop-in for {unit}"
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.read_string(dropins[f"{unit}.d"].read_text())
        assert parser["Service"]["Restart"] == "no", unit
        for command in ("ExecStart", "ExecStartPre"):
            for word in parser["Service"].get(command, "").split()[:1]:
                program = word.lstrip("+!-@:")
                if program.startswith("/usr/local/lib/nodeos/"):
                    script = ELEMENTS_DIR / "nodeos-openstack/static" / program.lstrip("/")
                    assert script.is_file() and script.stat().st_mode & 0o111, f"{unit}: {program}"
    masking = (ELEMENTS_DIR / "nodeos-openstack/post-install.d/80-nodeos-openstack-disabled").read_text()
    assert "systemctl mask epmd.socket epmd.service" in masking
