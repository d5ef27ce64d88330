"""OpenStack configuration rendered from the state (nodeos/cloud/config.py)."""

from __future__ import annotations

import base64
import configparser
import hashlib
import json
import stat

import pytest

from nodeos.cloud import rabbitmq
from nodeos.cloud.config import CloudContext, ConfigError, ConfigFile, render, write_files
from nodeos.cloud.registry import CONFIGS
from nodeos.cloud.secrets import db_password, erlang_cookie, make_fernet_key, mq_password, service_password
from nodeos.storage.keys import make_key
from nodeos.cluster.identity import ClusterIdentity

IDENTITY = ClusterIdentity("cluster-1", b"s" * 32, "", "")
KEYS = {"fernet": [make_fernet_key(lambda n: b"a" * n), make_fernet_key(lambda n: b"b" * n)],
        "credential": [make_fernet_key(lambda n: b"c" * n), make_fernet_key(lambda n: b"d" * n)]}
VIPS = {"mariadb": "10.0.0.200", "memcached": "10.0.0.201", "keystone": "10.0.0.202", "glance-api": "10.0.0.203"}
GLANCE_KEY = make_key(lambda n: b"g" * n)
CEPH = {"fsid": "0b3f3a4e-4f0e-5d5e-9c8e-111111111111", "mons": {"n1": "10.0.0.1", "n2": "10.0.0.2"},
        "keys": {"glance": GLANCE_KEY}, "pools": ["images", "nodeos-volumes"]}


def context(**changes) -> CloudContext:
    values = dict(identity=IDENTITY, vips=VIPS, keys=KEYS, configs=("glance", "keystone", "mariadb"), lab=True,
                  ceph=CEPH)
    values.update(changes)
    return CloudContext(**values)


@pytest.mark.parametrize("config", CONFIGS)
def test_every_config_the_catalog_may_name_renders(config):
    assert render(config, context())


def test_keystone_points_at_the_vips_with_the_derived_password():
    files = {f.path: f for f in render("keystone", context())}
    conf = configparser.ConfigParser(interpolation=None)
    conf.read_string(files["/etc/keystone/keystone.conf"].content)
    assert conf["database"]["connection"] == \
        f"mysql+pymysql://keystone:{db_password(IDENTITY, 'keystone')}@10.0.0.200/keystone"
    assert conf["cache"]["memcache_servers"] == "10.0.0.201:11211"
    assert files["/etc/keystone/fernet-keys/1"].content == KEYS["fernet"][1]  # the highest number is the primary key
    assert files["/etc/keystone/fernet-keys/0"].mode == 0o600 and files["/etc/keystone/fernet-keys/0"].owner == "keystone"


def test_glance_points_at_the_vips_and_keeps_its_images_in_ceph():
    files = {f.path: f for f in render("glance", context())}
    conf = configparser.ConfigParser(interpolation=None)
    conf.read_string(files["/etc/glance/glance-api.conf"].content)
    assert conf["database"]["connection"] == f"mysql+pymysql://glance:{db_password(IDENTITY, 'glance')}@10.0.0.200/glance"
    auth = conf["keystone_authtoken"]
    assert (auth["auth_url"], auth["memcached_servers"]) == ("http://10.0.0.202:5000", "10.0.0.201:11211")
    assert (auth["username"], auth["project_name"], auth["password"]) == \
        ("glance", "service", service_password(IDENTITY, "glance"))
    store = conf["glance_store"]
    assert (store["default_store"], store["rbd_store_pool"], store["rbd_store_user"]) == ("rbd", "images", "glance")
    assert files["/etc/glance/glance-api.conf"].mode == 0o640 and files["/etc/glance/glance-api.conf"].group == "glance"
    keyring = files["/etc/ceph/ceph.client.glance.keyring"]
    assert (keyring.mode, keyring.owner, keyring.group) == (0o640, "root", "glance")
    assert "[client.glance]" in keyring.content and GLANCE_KEY in keyring.content and "caps" not in keyring.content
    ceph = configparser.ConfigParser(interpolation=None)
    ceph.read_string(files["/etc/ceph/ceph.conf"].content)
    assert ceph["global"]["mon_host"] == "[v2:10.0.0.1:3300,v1:10.0.0.1:6789],[v2:10.0.0.2:3300,v1:10.0.0.2:6789]"
    assert ceph["client"]["keyring"] == "/etc/ceph/$cluster.$name.keyring"
    assert "http-socket = 0.0.0.0:9292" in files["/etc/glance/nodeos-uwsgi.ini"].content


def test_glance_waits_for_its_ceph_client_and_pool():
    with pytest.raises(ConfigError, match="Ceph is not initialized"):
        render("glance", context(ceph={}))
    with pytest.raises(ConfigError, match="client.glance is not registered"):
        render("glance", context(ceph={**CEPH, "keys": {}}))
    with pytest.raises(ConfigError, match="pool images"):
        render("glance", context(ceph={**CEPH, "pools": ["nodeos-volumes"]}))


def test_mariadb_creates_a_database_per_service_in_use():
    init = {f.path: f for f in render("mariadb", context())}["/etc/mysql/nodeos-init.sql"]
    assert "CREATE DATABASE IF NOT EXISTS `keystone`" in init.content and "nodeos_health" in init.content
    assert "CREATE DATABASE IF NOT EXISTS `glance`" in init.content
    assert init.mode == 0o640  # passwords: not world-readable
    bare = {f.path: f for f in render("mariadb", context(configs=("mariadb",)))}["/etc/mysql/nodeos-init.sql"]
    assert "`keystone`" not in bare.content and "`glance`" not in bare.content


def test_what_is_not_in_the_state_yet_is_an_error_not_an_empty_setting():
    with pytest.raises(ConfigError, match="keys are not in the state"):
        render("keystone", context(keys={}))
    with pytest.raises(ConfigError, match="memcached has no VIP"):
        render("keystone", context(vips={"mariadb": "10.0.0.200"}))


def test_files_are_written_private_first_and_only_when_changed(tmp_path):
    files = render("keystone", context())
    written = write_files(files, tmp_path)
    assert "/etc/keystone/fernet-keys/0" in written
    key = tmp_path / "etc/keystone/fernet-keys/0"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700  # keystone refuses a key repository others can read
    assert write_files(files, tmp_path) == []
    assert not list(tmp_path.rglob(".*nodeos-tmp"))


def rabbitmq_files(**changes) -> dict[str, ConfigFile]:
    return {f.path: f for f in render("rabbitmq", context(**changes))}


def test_rabbitmq_has_one_node_name_everywhere_and_keeps_erlang_on_loopback():
    env = rabbitmq_files()["/etc/rabbitmq/rabbitmq-env.conf"].content
    assert "NODENAME=rabbit@localhost\n" in env  # not the host's name: Mnesia's directory moves with the volume
    assert "ERL_EPMD_ADDRESS=127.0.0.1\n" in env and "inet_dist_use_interface {127,0,0,1}" in env
    conf = rabbitmq_files()["/etc/rabbitmq/rabbitmq.conf"].content
    assert "listeners.tcp.default = 5672\n" in conf and "load_definitions = /etc/rabbitmq/definitions.json\n" in conf


def test_rabbitmq_defines_the_openstack_user_by_a_hash_of_the_derived_password():
    files = rabbitmq_files()
    definitions = json.loads(files["/etc/rabbitmq/definitions.json"].content)
    assert [u["name"] for u in definitions["users"]] == ["openstack"]  # no guest
    user = definitions["users"][0]
    raw = base64.b64decode(user["password_hash"])
    salt, digest = raw[:4], raw[4:]
    assert digest == hashlib.sha256(salt + mq_password(IDENTITY).encode()).digest()
    assert mq_password(IDENTITY) not in files["/etc/rabbitmq/definitions.json"].content
    assert definitions["permissions"] == [{"user": "openstack", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}]
    assert files["/etc/rabbitmq/definitions.json"].mode == 0o640
    assert rabbitmq_files() == files  # every node renders the same bytes (no random salt): nothing rewritten


def test_rabbitmq_cookie_is_derived_and_readable_by_rabbitmq_only():
    cookie = rabbitmq_files()["/etc/rabbitmq/erlang.cookie"]
    assert cookie.content == erlang_cookie(IDENTITY)
    assert (cookie.mode, cookie.owner, cookie.group) == (0o400, "rabbitmq", "rabbitmq")
    other = ClusterIdentity("cluster-2", b"t" * 32, "", "")
    assert rabbitmq_files(identity=other)["/etc/rabbitmq/erlang.cookie"].content != cookie.content


def test_rabbitmq_lab_limits_are_small_and_a_node_keeps_rabbitmqs_defaults():
    lab = rabbitmq_files()["/etc/rabbitmq/rabbitmq.conf"].content
    assert "vm_memory_high_watermark.absolute = 512MiB" in lab and "disk_free_limit.absolute = 50MB" in lab
    assert "+S 1:1" in rabbitmq_files()["/etc/rabbitmq/rabbitmq-env.conf"].content
    node = rabbitmq_files(lab=False)
    assert "vm_memory_high_watermark.relative = 0.4" in node["/etc/rabbitmq/rabbitmq.conf"].content
    assert "+S" not in node["/etc/rabbitmq/rabbitmq-env.conf"].content


def test_rabbitmq_password_hash_and_transport_url():
    assert rabbitmq.password_hash("guest", b"\x90\x8d\xc6\x0a") == \
        base64.b64encode(b"\x90\x8d\xc6\x0a" + hashlib.sha256(b"\x90\x8d\xc6\x0aguest").digest()).decode()
    with pytest.raises(ValueError):
        rabbitmq.password_hash("x", b"12345")
    assert rabbitmq.transport_url("10.0.0.203", "p@ss/w") == "rabbit://openstack:p%40ss%2Fw@10.0.0.203:5672/"
