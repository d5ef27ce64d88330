"""Derived OpenStack passwords, Fernet keys, and the admin credentials `nodeos credentials` prints."""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import socketserver
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from cryptography.fernet import Fernet

from nodeos.cloud import secrets
from nodeos.cloud.credentials import clouds_yaml, keystone_auth_url, openrc
from nodeos.cli.main import EXIT_FAILED, EXIT_NO_AGENT, main
from nodeos.cluster.identity import ClusterIdentity, init_identity, load_identity


@pytest.fixture
def identity(tmp_path: Path) -> ClusterIdentity:
    return init_identity(tmp_path / "identity.json")


@pytest.fixture
def other_cluster(tmp_path: Path) -> ClusterIdentity:
    return init_identity(tmp_path / "other.json")


def test_same_identity_same_password(tmp_path: Path, identity: ClusterIdentity) -> None:
    reloaded = load_identity(tmp_path / "identity.json")  # what another node computes from the baked-in file
    assert secrets.db_password(identity, "nova") == secrets.db_password(reloaded, "nova")
    assert secrets.admin_password(identity) == secrets.admin_password(reloaded)


def test_one_password_per_purpose(identity: ClusterIdentity) -> None:
    passwords = [
        secrets.db_password(identity, "keystone"), secrets.db_password(identity, "nova"),
        secrets.service_password(identity, "nova"), secrets.admin_password(identity), secrets.mq_password(identity),
        secrets.db_root_password(identity), secrets.health_password(identity), secrets.erlang_cookie(identity),
        secrets.horizon_secret_key(identity),
    ]
    assert len(set(passwords)) == len(passwords)
    assert secrets.db_password(identity, "nova") == secrets.cloud_password(identity, "db/nova")


def test_horizons_secret_key_is_derived_long_enough_for_django(tmp_path: Path, identity: ClusterIdentity) -> None:
    key = secrets.horizon_secret_key(identity)
    assert key == secrets.horizon_secret_key(load_identity(tmp_path / "identity.json"))  # every node's the same
    assert re.fullmatch(r"[0-9a-f]{64}", key)  # Django's deploy check wants 50 characters or more
    assert key == identity.derive_key("cloud/horizon/secret-key", length=32).hex()


def test_other_cluster_other_password(identity: ClusterIdentity, other_cluster: ClusterIdentity) -> None:
    assert secrets.admin_password(identity) != secrets.admin_password(other_cluster)


def test_password_needs_no_quoting(identity: ClusterIdentity) -> None:
    password = secrets.db_password(identity, "glance")
    assert re.fullmatch(r"[0-9a-f]{32}", password)
    assert shlex.quote(password) == password


@pytest.mark.parametrize("purpose", ["", "DB/nova", "db//nova", "db/nova ", "-x", "db/a'b", "x" * 65])
def test_bad_purpose_refused(identity: ClusterIdentity, purpose: str) -> None:
    with pytest.raises(ValueError, match="password purpose"):
        secrets.cloud_password(identity, purpose)


def test_fernet_key() -> None:
    key = secrets.make_fernet_key(os.urandom)
    assert secrets.is_fernet_key(key)
    Fernet(key)  # accepted by the library keystone uses
    assert secrets.make_fernet_key(lambda n: b"\x07" * n) == secrets.make_fernet_key(lambda n: b"\x07" * n)


@pytest.mark.parametrize("text", ["", "not a key", secrets.make_fernet_key(os.urandom)[:-4], "é" * 44,
                                  secrets.make_fernet_key(os.urandom).replace("=", "")])
def test_not_a_fernet_key(text: str) -> None:
    assert not secrets.is_fernet_key(text)


# -- credentials -----------------------------------------------------------------

def _status(keystone_vip: str | None) -> dict:
    """Shaped like GET /status (docs/status-schema.md, ServicesLayer.status_view)."""
    return {
        "schema": 1, "node_id": "a1", "cluster_id": "c1", "address": "10.0.0.11",
        "services": [
            {"name": "mariadb", "placement": "singleton", "node": "a1", "vip": "10.0.0.200", "health": "healthy",
             "restarts": 0, "generation": 1, "migration": None, "probe": {"ok": True, "since": 1.0, "detail": ""}, "note": ""},
            {"name": "keystone", "placement": "singleton", "node": "a2" if keystone_vip else None, "vip": keystone_vip,
             "health": "healthy" if keystone_vip else "unplaced", "restarts": 0, "generation": 1, "migration": None,
             "probe": None, "note": ""},
            {"name": "memcached", "placement": "every-node", "node": "every-node", "vip": None, "health": "healthy 3/3",
             "restarts": 0, "instances": {"a1": "healthy"}, "note": ""},
        ],
    }


def test_keystone_auth_url_from_status() -> None:
    assert keystone_auth_url(_status("10.0.0.201")) == "http://10.0.0.201:5000/v3"
    assert keystone_auth_url(_status(None)) is None
    assert keystone_auth_url({"services": []}) is None


def test_clouds_yaml() -> None:
    cloud = yaml.safe_load(clouds_yaml("http://10.0.0.201:5000/v3", "s3cret"))["clouds"]["nodeos"]
    assert cloud["auth"] == {"auth_url": "http://10.0.0.201:5000/v3", "username": "admin", "password": "s3cret",
                             "project_name": "admin", "user_domain_name": "Default", "project_domain_name": "Default"}
    assert (cloud["region_name"], cloud["identity_api_version"], cloud["interface"]) == ("RegionOne", 3, "public")


def test_openrc_sources_in_a_shell() -> None:
    script = openrc("http://10.0.0.201:5000/v3", "it's $x")  # a password that would break unquoted
    out = subprocess.run(["sh", "-c", script + 'printf "%s|%s|%s" "$OS_AUTH_URL" "$OS_PASSWORD" "$OS_REGION_NAME"'],
                         capture_output=True, text=True, check=True).stdout
    assert out == "http://10.0.0.201:5000/v3|it's $x|RegionOne"
    assert "export OS_IDENTITY_API_VERSION=3\n" in script and "export OS_USER_DOMAIN_NAME=Default\n" in script


# -- `nodeos credentials` against a stand-in agent on a Unix socket ----------------

StartAgent = Callable[[dict], Path]  # serve this status on a new socket; its path
Capsys = pytest.CaptureFixture[str]


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def _agent(path: Path, status: dict) -> _UnixHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            body = json.dumps(status).encode()
            self.send_response(200 if self.path == "/status" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = _UnixHTTPServer(str(path), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def agent_with(tmp_path: Path) -> Iterator[StartAgent]:
    servers: list[_UnixHTTPServer] = []

    def start(status: dict) -> Path:
        path = tmp_path / f"agent{len(servers)}.sock"
        servers.append(_agent(path, status))
        return path

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_cli_prints_openrc(tmp_path: Path, identity: ClusterIdentity, agent_with: StartAgent, capsys: Capsys) -> None:
    sock = agent_with(_status("10.0.0.201"))
    assert main(["credentials", "--socket", str(sock), "--identity", str(tmp_path / "identity.json")]) == 0
    out = capsys.readouterr().out
    assert "export OS_AUTH_URL=http://10.0.0.201:5000/v3\n" in out
    assert f"export OS_PASSWORD={secrets.admin_password(identity)}\n" in out


def test_cli_prints_clouds_yaml(tmp_path: Path, identity: ClusterIdentity, agent_with: StartAgent, capsys: Capsys) -> None:
    sock = agent_with(_status("10.0.0.201"))
    argv = ["credentials", "--format", "clouds-yaml", "--socket", str(sock), "--identity", str(tmp_path / "identity.json")]
    assert main(argv) == 0
    auth = yaml.safe_load(capsys.readouterr().out)["clouds"]["nodeos"]["auth"]
    assert auth["password"] == secrets.admin_password(identity)


def test_cli_no_vip_yet(tmp_path: Path, identity: ClusterIdentity, agent_with: StartAgent, capsys: Capsys) -> None:
    sock = agent_with(_status(None))
    assert main(["credentials", "--socket", str(sock), "--identity", str(tmp_path / "identity.json")]) == EXIT_FAILED
    assert "keystone has no VIP yet" in capsys.readouterr().err


def test_cli_no_agent(tmp_path: Path, capsys: Capsys) -> None:
    assert main(["credentials", "--socket", str(tmp_path / "none.sock")]) == EXIT_NO_AGENT
    assert "no agent answering" in capsys.readouterr().err
