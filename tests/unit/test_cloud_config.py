"""OpenStack configuration rendered from the state (nodeos/cloud/config.py)."""

from __future__ import annotations

import base64
import configparser
import hashlib
import io
import json
import stat

import pytest

from nodeos.cloud import rabbitmq
from nodeos.cloud.config import CloudContext, ConfigError, ConfigFile, render, write_files
from nodeos.cloud.registry import CONFIGS
from nodeos.cloud.secrets import (db_password, erlang_cookie, horizon_secret_key, make_fernet_key, mq_password,
                                  service_password)
from nodeos.storage.keys import make_key
from nodeos.cluster.identity import ClusterIdentity

IDENTITY = ClusterIdentity("cluster-1", b"s" * 32, "", "")
KEYS = {"fernet": [make_fernet_key(lambda n: b"a" * n), make_fernet_key(lambda n: b"b" * n)],
        "credential": [make_fernet_key(lambda n: b"c" * n), make_fernet_key(lambda n: b"d" * n)]}
VIPS = {"mariadb": "10.0.0.200", "memcached": "10.0.0.201", "keystone": "10.0.0.202", "glance-api": "10.0.0.203",
        "placement-api": "10.0.0.204", "rabbitmq": "10.0.0.205", "nova-api": "10.0.0.206",
        "neutron-server": "10.0.0.207", "horizon": "10.0.0.208"}
GLANCE_KEY, CINDER_KEY = make_key(lambda n: b"g" * n), make_key(lambda n: b"k" * n)
CEPH = {"fsid": "0b3f3a4e-4f0e-5d5e-9c8e-111111111111", "mons": {"n1": "10.0.0.1", "n2": "10.0.0.2"},
        "keys": {"glance": GLANCE_KEY, "cinder": CINDER_KEY}, "pools": ["cinder", "images", "nodeos-volumes"]}


def context(**changes) -> CloudContext:
    values = dict(identity=IDENTITY, vips=VIPS, keys=KEYS, configs=("glance", "keystone", "mariadb"), lab=True,
                  ceph=CEPH, node_id="n2", node_ip="10.0.0.2")
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


def test_placement_points_at_the_vips_with_its_derived_passwords():
    files = {f.path: f for f in render("placement", context())}
    conf = configparser.ConfigParser(interpolation=None)
    conf.read_string(files["/etc/placement/placement.conf"].content)
    assert conf["placement_database"]["connection"] == \
        f"mysql+pymysql://placement:{db_password(IDENTITY, 'placement')}@10.0.0.200/placement"
    auth = conf["keystone_authtoken"]
    assert (auth["auth_url"], auth["www_authenticate_uri"], auth["memcached_servers"]) == \
        ("http://10.0.0.202:5000", "http://10.0.0.202:5000", "10.0.0.201:11211")
    assert (auth["username"], auth["project_name"], auth["password"]) == \
        ("placement", "service", service_password(IDENTITY, "placement"))
    assert conf["api"]["auth_strategy"] == "keystone"
    placement_conf = files["/etc/placement/placement.conf"]
    assert (placement_conf.mode, placement_conf.owner, placement_conf.group) == (0o640, "root", "placement")
    uwsgi = files["/etc/placement/nodeos-uwsgi.ini"].content
    assert "http-socket = 0.0.0.0:8778" in uwsgi and "wsgi-file = /usr/bin/placement-api" in uwsgi
    assert "uid = placement" in uwsgi and "processes = 1" in uwsgi
    assert "processes = 4" in {f.path: f for f in render("placement", context(lab=False))}[
        "/etc/placement/nodeos-uwsgi.ini"].content
    assert db_password(IDENTITY, "placement") != db_password(IDENTITY, "glance")  # one password per purpose
    with pytest.raises(ConfigError, match="keystone has no VIP"):
        render("placement", context(vips={"mariadb": "10.0.0.200", "memcached": "10.0.0.201"}))


@pytest.mark.parametrize("config, service, path", [
    ("placement", "placement-api", "/etc/placement/placement.conf"),
    ("nova", "nova-conductor", "/etc/nova/nova.conf"),
    ("cinder", "cinder-volume", "/etc/cinder/cinder.conf"),
])
def test_service_secrets_are_never_logged(tmp_path, monkeypatch, config, service, path):
    """prepare() logs the paths it wrote, never their content (the passwords)."""
    from nodeos import log
    from nodeos.cloud import layer as cloud_layer
    from nodeos.cloud.layer import CloudLayer
    from nodeos.services.catalog import load_catalog, packaged_catalog

    catalog = load_catalog(packaged_catalog("lab-cloud"))
    stream = io.StringIO()
    monkeypatch.setattr(log, "_stream", stream)
    # The state's view and the writing (owners: the service's user) are not what is tested here.
    monkeypatch.setattr(cloud_layer, "context_from_state", lambda *args: context(configs=(config,)))
    class Host:  # writes nothing, says it wrote everything
        def write(self, files, what):
            return [f.path for f in files]

        def run(self, job, steps, timeout):
            raise AssertionError("no job here")

    layer = CloudLayer("a", IDENTITY, Host(), lambda op, cb: None, lab=True)
    try:
        layer.prepare(catalog[service], None, catalog)
    finally:
        layer.shutdown()
    [written] = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert written["event"] == "cloud.config_written" and path in written["files"]
    for secret in (db_password(IDENTITY, config), service_password(IDENTITY, config), mq_password(IDENTITY)):
        assert secret not in stream.getvalue()


def _settings(content: str) -> dict:
    """A Django settings file as Django reads it: executed, its upper-case names kept."""
    namespace: dict = {}
    exec(compile(content, "local_settings.py", "exec"), namespace)  # noqa: S102 (our own rendered file)
    return {name: value for name, value in namespace.items() if name.isupper()}


def test_horizon_points_at_keystone_and_memcached_and_derives_its_secret_key():
    files = {f.path: f for f in render("horizon", context())}
    local = files["/etc/openstack-dashboard/local_settings.py"]
    settings = _settings(local.content)
    assert settings["OPENSTACK_KEYSTONE_URL"] == "http://10.0.0.202:5000/v3"
    assert settings["OPENSTACK_HOST"] == "10.0.0.202"
    assert settings["ALLOWED_HOSTS"] == ["10.0.0.208"]  # its VIP: the Host header its users send
    assert settings["SESSION_ENGINE"] == "django.contrib.sessions.backends.cache"
    # Derived, the same on every node (never Debian's generated secret_key file), and private to horizon.
    assert settings["SECRET_KEY"] == horizon_secret_key(IDENTITY) and len(settings["SECRET_KEY"]) >= 50
    assert (local.mode, local.owner, local.group) == (0o640, "root", "horizon")
    assert "secret_key" not in local.content.replace("SECRET_KEY", "")
    # Debian's snippet of the same name set a per-process local memory cache: replaced, memcached at its VIP.
    cache = _settings(files["/etc/openstack-dashboard/local_settings.d/_0006_debian_cache.py"].content)["CACHES"]
    assert cache["default"]["LOCATION"] == "10.0.0.201:11211"
    assert cache["default"]["BACKEND"].endswith("PyMemcacheCache")
    uwsgi = configparser.ConfigParser(interpolation=None, strict=False)
    uwsgi.read_string(files["/etc/openstack-dashboard/nodeos-uwsgi.ini"].content)
    ini = uwsgi["uwsgi"]
    assert ini["shared-socket"] == "10.0.0.208:80" and ini["http-socket"] == "=0"  # on its VIP
    assert ini["static-map"] == "/static=/var/lib/openstack-dashboard/static"
    assert ini["skip-atexit"] == "true" and ini["uid"] == "horizon"
    assert ini["wsgi-file"] == "/usr/share/openstack-dashboard/wsgi.py"


def test_horizon_waits_for_the_vips_it_names():
    for missing in ("horizon", "keystone", "memcached"):
        with pytest.raises(ConfigError, match=f"{missing} has no VIP yet"):
            render("horizon", context(vips={k: v for k, v in VIPS.items() if k != missing}))


def test_nova_points_at_the_vips_with_this_nodes_address_and_the_control_host():
    files = {f.path: f for f in render("nova", context())}
    conf = configparser.ConfigParser(interpolation=None)
    conf.read_string(files["/etc/nova/nova.conf"].content)
    default = conf["DEFAULT"]
    # The singleton workers report as one host wherever they run (a moved one is not left `down`).
    assert (default["host"], default["my_ip"], default["enabled_apis"]) == ("control", "10.0.0.2", "osapi_compute")
    assert default["transport_url"] == rabbitmq.transport_url("10.0.0.205", mq_password(IDENTITY)) == \
        f"rabbit://openstack:{mq_password(IDENTITY)}@10.0.0.205:5672/"
    password = db_password(IDENTITY, "nova")  # one database user for nova's three databases
    assert conf["api_database"]["connection"] == f"mysql+pymysql://nova:{password}@10.0.0.200/nova_api"
    assert conf["database"]["connection"] == f"mysql+pymysql://nova:{password}@10.0.0.200/nova"
    assert int(default["report_interval"]) < int(default["service_down_time"])
    rabbit = conf["oslo_messaging_rabbit"]
    assert (rabbit["heartbeat_timeout_threshold"], rabbit["heartbeat_rate"]) == ("6", "3")
    auth = conf["keystone_authtoken"]
    assert (auth["auth_url"], auth["memcached_servers"], auth["username"], auth["password"]) == \
        ("http://10.0.0.202:5000", "10.0.0.201:11211", "nova", service_password(IDENTITY, "nova"))
    placement = conf["placement"]
    assert (placement["endpoint_override"], placement["auth_url"], placement["username"], placement["region_name"]) == \
        ("http://10.0.0.204:8778", "http://10.0.0.202:5000", "nova", "RegionOne")
    assert conf["glance"]["endpoint_override"] == "http://10.0.0.203:9292"
    assert conf["scheduler"]["discover_hosts_in_cells_interval"] == "60"
    assert conf["oslo_concurrency"]["lock_path"] == "/var/lib/nova/tmp"
    assert conf["conductor"]["workers"] == conf["scheduler"]["workers"] == "1"
    nova_conf = files["/etc/nova/nova.conf"]
    assert (nova_conf.mode, nova_conf.owner, nova_conf.group) == (0o640, "root", "nova")
    uwsgi = files["/etc/nova/nodeos-uwsgi.ini"].content
    assert "http-socket = 0.0.0.0:8774" in uwsgi and "wsgi-file = /usr/bin/nova-api-wsgi" in uwsgi
    assert "uid = nova" in uwsgi and "threads = 1" in uwsgi and "processes = 2" in uwsgi
    node = {f.path: f.content for f in render("nova", context(lab=False))}
    assert "processes = 4" in node["/etc/nova/nodeos-uwsgi.ini"] and "workers = 4" in node["/etc/nova/nova.conf"]


def test_nova_waits_for_this_nodes_address_and_the_vips_it_names():
    with pytest.raises(ConfigError, match="this node's address is not in the state"):
        render("nova", context(node_ip=""))
    with pytest.raises(ConfigError, match="placement-api has no VIP"):
        render("nova", context(vips={k: v for k, v in VIPS.items() if k != "placement-api"}))
    with pytest.raises(ConfigError, match="rabbitmq has no VIP"):
        render("nova", context(vips={k: v for k, v in VIPS.items() if k != "rabbitmq"}))


def test_neutron_points_at_the_vips_and_runs_ml2_with_linuxbridge_and_vxlan():
    files = {f.path: f for f in render("neutron", context())}
    conf = configparser.ConfigParser(interpolation=None)
    conf.read_string(files["/etc/neutron/neutron.conf"].content)
    default = conf["DEFAULT"]
    assert (default["host"], default["core_plugin"], default["service_plugins"]) == ("n2", "ml2", "router")
    assert default["transport_url"] == f"rabbit://openstack:{mq_password(IDENTITY)}@10.0.0.205:5672/"
    assert default["notify_nova_on_port_status_changes"] == "false"  # no compute plane yet
    assert conf["database"]["connection"] == \
        f"mysql+pymysql://neutron:{db_password(IDENTITY, 'neutron')}@10.0.0.200/neutron"
    assert (conf["database"]["max_retries"], conf["database"]["retry_interval"]) == ("-1", "1")
    assert conf["oslo_messaging_rabbit"]["heartbeat_timeout_threshold"] == "6"
    auth = conf["keystone_authtoken"]
    assert (auth["auth_url"], auth["memcached_servers"], auth["username"], auth["password"]) == \
        ("http://10.0.0.202:5000", "10.0.0.201:11211", "neutron", service_password(IDENTITY, "neutron"))
    assert conf["experimental"]["linuxbridge"] == "true"  # Zed loads the linuxbridge driver only so
    ml2 = configparser.ConfigParser(interpolation=None)
    ml2.read_string(files["/etc/neutron/plugins/ml2/ml2_conf.ini"].content)
    assert (ml2["ml2"]["type_drivers"], ml2["ml2"]["tenant_network_types"], ml2["ml2"]["mechanism_drivers"]) == \
        ("flat,vlan,vxlan", "vxlan", "linuxbridge")
    assert ml2["ml2_type_flat"]["flat_networks"] == ml2["ml2_type_vlan"]["network_vlan_ranges"] == "provider"
    assert ml2["ml2_type_vxlan"]["vni_ranges"] == "1:1000"
    for path in ("/etc/neutron/neutron.conf", "/etc/neutron/plugins/ml2/ml2_conf.ini"):
        assert (files[path].mode, files[path].owner, files[path].group) == (0o640, "root", "neutron")
    uwsgi = files["/etc/neutron/nodeos-uwsgi.ini"].content
    assert "http-socket = 0.0.0.0:9696" in uwsgi and "wsgi-file = /usr/bin/neutron-api" in uwsgi
    assert "uid = neutron" in uwsgi and "threads = 1" in uwsgi and "processes = 1" in uwsgi
    assert "processes = 4" in {f.path: f.content for f in render("neutron", context(lab=False))}[
        "/etc/neutron/nodeos-uwsgi.ini"]
    with pytest.raises(ConfigError, match="rabbitmq has no VIP"):
        render("neutron", context(vips={k: v for k, v in VIPS.items() if k != "rabbitmq"}))
    with pytest.raises(ConfigError, match="this node's id"):
        render("neutron", context(node_id=""))


def test_the_context_knows_this_nodes_address_from_the_state():
    from nodeos.cloud.config import context_from_state
    from nodeos.cluster.state import ClusterState
    from nodeos.services.catalog import load_catalog, packaged_catalog

    from .test_monitor import apply

    state = ClusterState()
    apply(state, {"op": "node_join", "now": 1.0, "node": "n2", "raft_addr": "10.0.0.2:7371", "ip": "10.0.0.2"})
    catalog = load_catalog(packaged_catalog("lab-cloud"))
    ctx = context_from_state(state, catalog, IDENTITY, True, "n2")
    assert (ctx.node_id, ctx.node_ip) == ("n2", "10.0.0.2") and "nova" in ctx.configs
    assert context_from_state(state, catalog, IDENTITY, True, "n9").node_ip == ""  # not joined (yet)


def test_cinder_points_at_the_vips_and_keeps_its_volumes_in_its_own_ceph_pool():
    files = {f.path: f for f in render("cinder", context())}
    conf = configparser.ConfigParser(interpolation=None)
    conf.read_string(files["/etc/cinder/cinder.conf"].content)
    default = conf["DEFAULT"]
    assert (default["host"], default["my_ip"], default["enabled_backends"]) == ("control", "10.0.0.2", "rbd")
    assert default["transport_url"] == rabbitmq.transport_url("10.0.0.205", mq_password(IDENTITY))
    assert (default["report_interval"], default["service_down_time"]) == ("5", "20")
    assert "glance_api_servers" not in default  # glance is found in keystone's catalog, if the catalog has one
    assert conf["database"]["connection"] == f"mysql+pymysql://cinder:{db_password(IDENTITY, 'cinder')}@10.0.0.200/cinder"
    auth = conf["keystone_authtoken"]
    assert (auth["auth_url"], auth["memcached_servers"], auth["username"], auth["password"]) == \
        ("http://10.0.0.202:5000", "10.0.0.201:11211", "cinder", service_password(IDENTITY, "cinder"))
    assert conf["oslo_messaging_rabbit"]["heartbeat_timeout_threshold"] == "6"
    backend = conf["rbd"]
    assert backend["volume_driver"] == "cinder.volume.drivers.rbd.RBDDriver"
    # Its own pool (not nodeos's `volumes`), and one host name whatever node runs cinder-volume.
    assert (backend["rbd_pool"], backend["rbd_user"], backend["backend_host"]) == ("cinder", "cinder", "cinder")
    cinder_conf = files["/etc/cinder/cinder.conf"]
    assert (cinder_conf.mode, cinder_conf.owner, cinder_conf.group) == (0o640, "root", "cinder")
    keyring = files["/etc/ceph/ceph.client.cinder.keyring"]
    assert (keyring.mode, keyring.group) == (0o640, "cinder") and CINDER_KEY in keyring.content
    assert "caps" not in keyring.content and GLANCE_KEY not in keyring.content
    uwsgi = files["/etc/cinder/nodeos-uwsgi.ini"].content
    assert "http-socket = 0.0.0.0:8776" in uwsgi and "wsgi-file = /usr/bin/cinder-wsgi" in uwsgi
    assert "uid = cinder" in uwsgi and "processes = 1" in uwsgi
    # Another node renders its own address, the same host and backend host.
    other = {f.path: f.content for f in render("cinder", context(node_id="n3", node_ip="10.0.0.3"))}
    conf.read_string(other["/etc/cinder/cinder.conf"])
    assert (conf["DEFAULT"]["my_ip"], conf["DEFAULT"]["host"], conf["rbd"]["backend_host"]) == (
        "10.0.0.3", "control", "cinder")


def test_cinder_waits_for_this_nodes_address_its_ceph_client_and_pool():
    with pytest.raises(ConfigError, match="this node's address is not in the state"):
        render("cinder", context(node_ip=""))
    with pytest.raises(ConfigError, match="client.cinder is not registered"):
        render("cinder", context(ceph={**CEPH, "keys": {"glance": GLANCE_KEY}}))
    with pytest.raises(ConfigError, match="pool cinder"):
        render("cinder", context(ceph={**CEPH, "pools": ["images", "nodeos-volumes"]}))


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
    assert "CREATE DATABASE IF NOT EXISTS `placement`" not in init.content  # not in the configs in use
    with_placement = {f.path: f for f in render("mariadb", context(configs=("mariadb", "placement")))}
    assert f"'placement'@'%' IDENTIFIED BY '{db_password(IDENTITY, 'placement')}'" in \
        with_placement["/etc/mysql/nodeos-init.sql"].content
    assert init.mode == 0o640  # passwords: not world-readable
    with_nova = {f.path: f for f in render("mariadb", context(configs=("mariadb", "nova")))}
    sql = with_nova["/etc/mysql/nodeos-init.sql"].content
    assert sql.count("CREATE USER IF NOT EXISTS 'nova'@'%'") == 1  # one user, three databases
    for database in ("nova_api", "nova", "nova_cell0"):
        assert f"CREATE DATABASE IF NOT EXISTS `{database}`;" in sql
        assert f"GRANT ALL PRIVILEGES ON `{database}`.* TO 'nova'@'%';" in sql
    with_neutron = {f.path: f for f in render("mariadb", context(configs=("mariadb", "neutron")))}
    assert "GRANT ALL PRIVILEGES ON `neutron`.* TO 'neutron'@'%';" in with_neutron["/etc/mysql/nodeos-init.sql"].content
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
