"""Config parsing errors and the cluster identity file."""

from __future__ import annotations

import os

import pytest

from nodeos.cluster.config import ConfigError, NodeConfig, load_config, parse_config
from nodeos.cluster.identity import IdentityError, init_identity, load_identity, load_or_create_node_id


def test_defaults_need_no_file(tmp_path):
    assert parse_config(None) == NodeConfig()


@pytest.mark.parametrize("data,message", [
    ({"bootstrap_expct": 3}, "unknown field 'bootstrap_expct'"),
    ({"bootstrap_expect": "three"}, "bootstrap_expect' must be int"),
    ({"bootstrap_expect": 0}, "bootstrap_expect must be >= 1"),
    ({"runtime": "docker"}, "runtime must be"),
    ({"timing": {"lease": 0.1}}, "timing.lease must exceed"),
    ({"timing": {"leese": 1}}, "timing: unknown field 'leese'"),
    ({"timing": {"fence_margin": 0.0}}, "fence_margin must exceed"),
    ({"timing": {"fence_margin": 0.1}}, "fence_margin must exceed"),
    ({"watchdog_timeout": 0.5}, "watchdog_timeout must be between"),
    ({"watchdog": "/tmp/wd"}, "watchdog must be"),
    ({"timing": {"fence_after": 0.8}}, "fence_after must be at least raft_max_timeout"),  # 0.7 + 2 x 0.1
    ({"timing": {"heartbeat_interval": 0.6, "lease": 2.0}}, "fence_after must exceed 2 x heartbeat_interval"),
    ({"storage": {"command_timeout": 1.0}}, "storage.command_timeout must be 5 to 3600 seconds"),
    ({"service_time_scale": 0.5}, "service_time_scale must be between 1 and 10"),
    ([1, 2], "expected a mapping"),
])
def test_config_errors_name_the_field(data, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(data, "cfg.yaml")


def test_config_file_errors_name_the_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("bootstrap_expect: [\n")
    with pytest.raises(ConfigError, match=str(path)):
        load_config(path)


def test_identity_is_private_and_round_trips(tmp_path):
    path = tmp_path / "identity.json"
    made = init_identity(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    loaded = load_identity(path)
    assert loaded == made and len(loaded.secret) == 32
    assert "BEGIN CERTIFICATE" in loaded.ca_cert_pem
    assert len({loaded.beacon_key, bytes.fromhex(loaded.raft_password)}) == 2  # independent keys


def test_identity_is_not_overwritten_by_accident(tmp_path):
    path = tmp_path / "identity.json"
    init_identity(path)
    with pytest.raises(IdentityError, match="already exists"):
        init_identity(path)


def test_too_open_identity_is_refused(tmp_path):
    path = tmp_path / "identity.json"
    init_identity(path)
    os.chmod(path, 0o644)
    with pytest.raises(IdentityError, match="too open"):
        load_identity(path)


def test_malformed_identity_is_refused(tmp_path):
    path = tmp_path / "identity.json"
    path.write_text("{}")
    os.chmod(path, 0o600)
    with pytest.raises(IdentityError, match="malformed"):
        load_identity(path)


def test_node_id_is_created_once(tmp_path):
    first = load_or_create_node_id(tmp_path)
    assert load_or_create_node_id(tmp_path) == first
