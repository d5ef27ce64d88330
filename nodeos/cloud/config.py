"""OpenStack services' configuration files, rendered from the replicated state.

The same code serves a node (files under /) and the lab (files under the
node's private root, which the node's mount namespace shows at /etc, /var/lib
...; nodeos/lab/mountns.py): `write_files(files, root)`. Passwords come from
the cluster secret (secrets.py), addresses from the state (each service's
VIP), keystone's keys from the state (ops.py). Nothing is asked of anyone.
"""

from __future__ import annotations

import dataclasses
import grp
import os
import pwd
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import jinja2

from nodeos.cluster.identity import ClusterIdentity
from nodeos.storage.clients import service_entity, service_keyring
from nodeos.storage.conf import render_client_conf
from nodeos.storage.ops import service_key

from . import rabbitmq
from .credentials import DEFAULT_REGION
from .probes import mariadb_health_sql
from .registry import CEPH_CLIENTS, CINDER_BACKEND, CINDER_BACKEND_HOST, CONTROL_HOST
from .secrets import (db_password, erlang_cookie, health_password, horizon_secret_key, mq_password, mq_password_salt,
                      service_password)

_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("nodeos.cloud", "templates"),
    undefined=jinja2.StrictUndefined,  # a missing value is an error, never an empty setting
    keep_trailing_newline=True,
    autoescape=False,
)

MARIADB_PORT, MEMCACHED_PORT, KEYSTONE_PORT, GLANCE_PORT = 3306, 11211, 5000, 9292  # RabbitMQ's: rabbitmq.py
PLACEMENT_PORT, NOVA_PORT, CINDER_PORT, NEUTRON_PORT = 8778, 8774, 8776, 9696
HORIZON_PORT = 80
# What Debian's openstack-dashboard collected and compressed at install (its postinst runs
# collectstatic and compress; STATIC_ROOT in its _0003_debian_static_root.py): uWSGI serves it.
HORIZON_STATIC = "/var/lib/openstack-dashboard/static"
# The physical network name of provider (flat or VLAN) networks: the compute plane's agents
# map it to the node's interface (`--provider-physical-network provider`).
PHYSICAL_NETWORK = "provider"
MARIADB_DATADIR = "/var/lib/mysql/data"
# The OpenStack services that keep a database, by the configuration that uses it; the
# configuration's name is also its database user's (nova: one user for its three databases).
DATABASES: dict[str, tuple[str, ...]] = {"keystone": ("keystone",), "glance": ("glance",),
                                         "placement": ("placement",), "nova": ("nova_api", "nova", "nova_cell0"),
                                         "cinder": ("cinder",), "neutron": ("neutron",)}
SERVICE_PROJECT = "service"  # where the services' keystone users have the admin role


class ConfigError(RuntimeError):
    """A configuration that cannot be rendered yet (a VIP or key not in the state)."""


@dataclass(frozen=True)
class ConfigFile:
    path: str  # absolute, as the service sees it
    content: str
    mode: int = 0o644
    owner: str = "root"
    group: str = "root"


@dataclass(frozen=True)
class CloudContext:
    """What every rendering reads: the cluster's secret, the VIPs, keystone's keys, the configs in use."""

    identity: ClusterIdentity
    vips: Mapping[str, str]  # service -> VIP
    keys: Mapping[str, Any]  # state.cloud["keys"]
    configs: tuple[str, ...] = ()  # every `config:` of the catalog (which databases MariaDB keeps)
    lab: bool = False  # small buffers and worker counts
    node_id: str = ""  # the node the files are for (nova's `host`)
    node_ip: str = ""  # its address on the cluster network (nova's `my_ip`)
    # Ceph as a service's librados sees it: {"fsid", "mons": node -> IP, "keys": client -> key
    # (registered ones only), "pools": [...]}; empty without Ceph.
    ceph: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def vip(self, service: str) -> str:
        vip = self.vips.get(service)
        if not vip:
            raise ConfigError(f"{service} has no VIP yet")
        return vip


def context_from_state(state: Any, catalog: Any, identity: ClusterIdentity, lab: bool,
                       node_id: str = "") -> CloudContext:
    vips = {name: record.vip for name, record in state.services.items() if record.vip}
    configs = tuple(sorted({spec.config for spec in catalog if spec.config}))
    node = state.nodes.get(node_id)
    return CloudContext(identity=identity, vips=vips, keys=dict(state.cloud.get("keys") or {}), configs=configs, lab=lab,
                        ceph=_ceph_view(state), node_id=node_id, node_ip=node.ip if node is not None else "")


def _ceph_view(state: Any) -> dict[str, Any]:
    storage = state.storage
    if not storage.get("fsid"):
        return {}
    keys = {name: key for name in CEPH_CLIENTS if (key := service_key(state, name))}
    return {"fsid": storage["fsid"], "mons": dict(storage.get("mons") or {}), "keys": keys,
            "pools": sorted(storage.get("pools") or {})}


def render(config: str, ctx: CloudContext) -> list[ConfigFile]:
    try:
        renderer = _RENDERERS[config]
    except KeyError:
        raise ConfigError(f"no configuration named {config!r}") from None
    return renderer(ctx)


def _mariadb(ctx: CloudContext) -> list[ConfigFile]:
    users = [{"name": config, "password": db_password(ctx.identity, config), "databases": DATABASES[config]}
             for config in ctx.configs if config in DATABASES]
    server = _TEMPLATES.get_template("mariadb-server.cnf.j2").render(
        port=MARIADB_PORT, datadir=MARIADB_DATADIR, max_connections=200 if ctx.lab else 1000,
        buffer_pool="64M" if ctx.lab else "1G")
    init = _TEMPLATES.get_template("mariadb-init.sql.j2").render(
        users=users, health_sql=mariadb_health_sql(health_password(ctx.identity)))
    return [ConfigFile("/etc/mysql/mariadb.conf.d/99-nodeos.cnf", server),
            ConfigFile("/etc/mysql/nodeos-init.sql", init, mode=0o640, group="mysql")]


def _keystone(ctx: CloudContext) -> list[ConfigFile]:
    keys = ctx.keys
    if not keys.get("fernet") or not keys.get("credential"):
        raise ConfigError("keystone's keys are not in the state yet")
    conf = _TEMPLATES.get_template("keystone.conf.j2").render(
        memcached=f"{ctx.vip('memcached')}:{MEMCACHED_PORT}",
        mariadb=ctx.vip("mariadb"), db_password=db_password(ctx.identity, "keystone"))
    uwsgi = _TEMPLATES.get_template("keystone-uwsgi.ini.j2").render(
        port=KEYSTONE_PORT, processes=1 if ctx.lab else 4, threads=4)
    files = [ConfigFile("/etc/keystone/keystone.conf", conf, mode=0o640, group="keystone"),
             ConfigFile("/etc/keystone/nodeos-uwsgi.ini", uwsgi)]
    # Key repositories: 0 is the staged key, the highest number the primary (keystone's layout).
    for repository in ("fernet", "credential"):
        for index, key in enumerate(keys[repository]):
            files.append(ConfigFile(f"/etc/keystone/{repository}-keys/{index}", key, mode=0o600,
                                    owner="keystone", group="keystone"))
    return files


def _glance(ctx: CloudContext) -> list[ConfigFile]:
    """glance-api under uWSGI, images in Ceph (glance_store's rbd driver as client.glance)."""
    ceph_files, pool = _ceph_client(ctx, "glance")
    keystone = f"http://{ctx.vip('keystone')}:{KEYSTONE_PORT}"
    conf = _TEMPLATES.get_template("glance-api.conf.j2").render(
        port=GLANCE_PORT, mariadb=ctx.vip("mariadb"), db_password=db_password(ctx.identity, "glance"),
        keystone=keystone, memcached=f"{ctx.vip('memcached')}:{MEMCACHED_PORT}", project=SERVICE_PROJECT,
        password=service_password(ctx.identity, "glance"), pool=pool, user="glance",
        ceph_conf="/etc/ceph/ceph.conf")
    uwsgi = _TEMPLATES.get_template("glance-uwsgi.ini.j2").render(
        port=GLANCE_PORT, processes=1 if ctx.lab else 4, threads=4 if ctx.lab else 8)
    return [ConfigFile("/etc/glance/glance-api.conf", conf, mode=0o640, group="glance"),
            ConfigFile("/etc/glance/nodeos-uwsgi.ini", uwsgi), *ceph_files]


def _ceph_client(ctx: CloudContext, name: str) -> tuple[list[ConfigFile], str]:
    """ceph.conf and client.<name>'s keyring (readable by the service's group `name`), and its
    first pool; ConfigError until the Monitor registered the client and made the pool."""
    _, pools = CEPH_CLIENTS[name]
    ceph = ctx.ceph
    if not ceph:
        raise ConfigError("Ceph is not initialized yet")
    if name not in ceph["keys"]:
        raise ConfigError(f"{service_entity(name)} is not registered with Ceph yet")
    if any(pool not in ceph["pools"] for pool in pools):
        raise ConfigError(f"Ceph pool {pools[0]} is not created yet")
    keyring = f"/etc/ceph/ceph.{service_entity(name)}.keyring"
    return [ConfigFile("/etc/ceph/ceph.conf", render_client_conf(ceph["fsid"], ceph["mons"])),
            ConfigFile(keyring, service_keyring(name, ceph["keys"][name]), mode=0o640, group=name)], pools[0]


def _placement(ctx: CloudContext) -> list[ConfigFile]:
    """placement-api under uWSGI: stateless (everything is in its database), so it moves with its VIP."""
    keystone = f"http://{ctx.vip('keystone')}:{KEYSTONE_PORT}"
    conf = _TEMPLATES.get_template("placement.conf.j2").render(
        mariadb=ctx.vip("mariadb"), db_password=db_password(ctx.identity, "placement"), keystone=keystone,
        memcached=f"{ctx.vip('memcached')}:{MEMCACHED_PORT}", project=SERVICE_PROJECT,
        password=service_password(ctx.identity, "placement"))
    uwsgi = _TEMPLATES.get_template("placement-uwsgi.ini.j2").render(
        port=PLACEMENT_PORT, processes=1 if ctx.lab else 4, threads=4 if ctx.lab else 8)
    return [ConfigFile("/etc/placement/placement.conf", conf, mode=0o640, group="placement"),
            ConfigFile("/etc/placement/nodeos-uwsgi.ini", uwsgi)]


def _nova(ctx: CloudContext) -> list[ConfigFile]:
    """nova-api (under uWSGI), nova-conductor and nova-scheduler read the same nova.conf; each node
    renders its own (`my_ip` is the node's; `host` is CONTROL_HOST everywhere), the rest comes from the state."""
    if not ctx.node_id or not ctx.node_ip:
        raise ConfigError("this node's address is not in the state yet")
    keystone = f"http://{ctx.vip('keystone')}:{KEYSTONE_PORT}"
    connection = f"mysql+pymysql://nova:{db_password(ctx.identity, 'nova')}@{ctx.vip('mariadb')}"
    workers = 1 if ctx.lab else 4
    conf = _TEMPLATES.get_template("nova.conf.j2").render(
        host=CONTROL_HOST, my_ip=ctx.node_ip,
        transport_url=rabbitmq.transport_url(ctx.vip("rabbitmq"), mq_password(ctx.identity)),
        api_connection=f"{connection}/nova_api", connection=f"{connection}/nova", keystone=keystone,
        memcached=f"{ctx.vip('memcached')}:{MEMCACHED_PORT}", project=SERVICE_PROJECT,
        password=service_password(ctx.identity, "nova"), region=DEFAULT_REGION,
        placement=f"http://{ctx.vip('placement-api')}:{PLACEMENT_PORT}",
        glance=f"http://{ctx.vip('glance-api')}:{GLANCE_PORT}", workers=workers)
    # nova-api is monkey-patched by eventlet: one thread per uWSGI process (Debian's ini does the same).
    uwsgi = _TEMPLATES.get_template("nova-api-uwsgi.ini.j2").render(port=NOVA_PORT, processes=2 if ctx.lab else 4)
    return [ConfigFile("/etc/nova/nova.conf", conf, mode=0o640, group="nova"),
            ConfigFile("/etc/nova/nodeos-uwsgi.ini", uwsgi)]


def _cinder(ctx: CloudContext) -> list[ConfigFile]:
    """cinder-api (under uWSGI), cinder-scheduler and cinder-volume read the same cinder.conf; each
    node renders its own (`my_ip` is the node's; `host` is CONTROL_HOST). cinder-volume's RBD backend writes
    its volumes as client.cinder to the pool `cinder`, under one fixed backend host."""
    if not ctx.node_id or not ctx.node_ip:
        raise ConfigError("this node's address is not in the state yet")
    ceph_files, pool = _ceph_client(ctx, "cinder")
    keystone = f"http://{ctx.vip('keystone')}:{KEYSTONE_PORT}"
    conf = _TEMPLATES.get_template("cinder.conf.j2").render(
        host=CONTROL_HOST, my_ip=ctx.node_ip,
        transport_url=rabbitmq.transport_url(ctx.vip("rabbitmq"), mq_password(ctx.identity)),
        connection=f"mysql+pymysql://cinder:{db_password(ctx.identity, 'cinder')}@{ctx.vip('mariadb')}/cinder",
        keystone=keystone, memcached=f"{ctx.vip('memcached')}:{MEMCACHED_PORT}", project=SERVICE_PROJECT,
        password=service_password(ctx.identity, "cinder"), backend=CINDER_BACKEND, backend_host=CINDER_BACKEND_HOST,
        pool=pool, user="cinder", ceph_conf="/etc/ceph/ceph.conf")
    uwsgi = _TEMPLATES.get_template("cinder-api-uwsgi.ini.j2").render(
        port=CINDER_PORT, processes=1 if ctx.lab else 4, threads=4 if ctx.lab else 8)
    return [ConfigFile("/etc/cinder/cinder.conf", conf, mode=0o640, group="cinder"),
            ConfigFile("/etc/cinder/nodeos-uwsgi.ini", uwsgi), *ceph_files]
def _neutron(ctx: CloudContext) -> list[ConfigFile]:
    """neutron-server's API under uWSGI (Debian's neutron-api) with the ML2 plugin: stateless (its
    networks are in its database), so it moves with its VIP. Each node renders its own (`host`)."""
    if not ctx.node_id:
        raise ConfigError("this node's id is not known yet")
    keystone = f"http://{ctx.vip('keystone')}:{KEYSTONE_PORT}"
    conf = _TEMPLATES.get_template("neutron.conf.j2").render(
        host=ctx.node_id, transport_url=rabbitmq.transport_url(ctx.vip("rabbitmq"), mq_password(ctx.identity)),
        connection=f"mysql+pymysql://neutron:{db_password(ctx.identity, 'neutron')}@{ctx.vip('mariadb')}/neutron",
        keystone=keystone, memcached=f"{ctx.vip('memcached')}:{MEMCACHED_PORT}", project=SERVICE_PROJECT,
        password=service_password(ctx.identity, "neutron"))
    ml2 = _TEMPLATES.get_template("neutron-ml2.ini.j2").render(physical_network=PHYSICAL_NETWORK)
    # neutron-api is monkey-patched by eventlet (neutron.cmd.eventlet): one thread per process, as
    # nova-api. One process in the lab: each loads neutron for seconds of CPU, and neutron-server
    # starts while nova's schema sync keeps MariaDB busy on the lab's two cores.
    uwsgi = _TEMPLATES.get_template("neutron-api-uwsgi.ini.j2").render(port=NEUTRON_PORT,
                                                                       processes=1 if ctx.lab else 4)
    return [ConfigFile("/etc/neutron/neutron.conf", conf, mode=0o640, group="neutron"),
            ConfigFile("/etc/neutron/plugins/ml2/ml2_conf.ini", ml2, mode=0o640, group="neutron"),
            ConfigFile("/etc/neutron/nodeos-uwsgi.ini", uwsgi)]


def _horizon(ctx: CloudContext) -> list[ConfigFile]:
    """horizon (Debian's openstack-dashboard) under uWSGI on port 80 of its VIP: stateless (its
    sessions are in memcached, the rest is keystone's and the APIs'), so it moves with its VIP.
    The same files on every node: the secret key is derived, the addresses are VIPs."""
    vip = ctx.vip("horizon")
    settings = _TEMPLATES.get_template("horizon-local_settings.py.j2").render(
        secret_key=horizon_secret_key(ctx.identity), allowed_hosts=[vip],
        keystone_host=ctx.vip("keystone"), keystone_port=KEYSTONE_PORT)
    cache = _TEMPLATES.get_template("horizon-cache.py.j2").render(
        memcached=f"{ctx.vip('memcached')}:{MEMCACHED_PORT}", timeout=1.0, dead_timeout=2)
    # Django is thread-safe: one process with threads in the lab (each process loads horizon, ~100 MiB).
    uwsgi = _TEMPLATES.get_template("horizon-uwsgi.ini.j2").render(
        vip=vip, port=HORIZON_PORT, processes=1 if ctx.lab else 4, threads=4 if ctx.lab else 8,
        static_root=HORIZON_STATIC)
    return [ConfigFile("/etc/openstack-dashboard/local_settings.py", settings, mode=0o640, group="horizon"),
            # Debian's snippet of that name (a local memory cache) would override CACHES: replaced.
            ConfigFile("/etc/openstack-dashboard/local_settings.d/_0006_debian_cache.py", cache),
            ConfigFile("/etc/openstack-dashboard/nodeos-uwsgi.ini", uwsgi)]


def _rabbitmq(ctx: CloudContext) -> list[ConfigFile]:
    """Needs nothing from the state but the secret: clients find the broker at its VIP."""
    conf = _TEMPLATES.get_template("rabbitmq.conf.j2").render(
        port=rabbitmq.AMQP_PORT,
        # The lab's broker idles at about 140 MiB: alarms well above that, far below the host's memory.
        memory_absolute="512MiB" if ctx.lab else "", memory_relative=0.4,
        disk_free_limit="50MB" if ctx.lab else "1GB")
    env = _TEMPLATES.get_template("rabbitmq-env.conf.j2").render(
        node_name=rabbitmq.NODE_NAME, dist_port=rabbitmq.DIST_PORT,
        # Lab nodes share 2 cores: one scheduler each, fewer threads.
        erl_args=" +S 1:1" if ctx.lab else "")
    definitions = rabbitmq.definitions_json(mq_password(ctx.identity), mq_password_salt(ctx.identity))
    return [ConfigFile("/etc/rabbitmq/rabbitmq.conf", conf, mode=0o640, group="rabbitmq"),
            ConfigFile("/etc/rabbitmq/rabbitmq-env.conf", env),
            ConfigFile("/etc/rabbitmq/enabled_plugins", "[].\n"),  # no management plugin: nothing listens but AMQP
            ConfigFile("/etc/rabbitmq/definitions.json", definitions, mode=0o640, group="rabbitmq"),
            # Copied by the start script to the volume, as rabbitmq's ~/.erlang.cookie (where rabbitmqctl looks).
            ConfigFile("/etc/rabbitmq/erlang.cookie", erlang_cookie(ctx.identity), mode=0o400,
                       owner="rabbitmq", group="rabbitmq")]


_RENDERERS: dict[str, Callable[[CloudContext], list[ConfigFile]]] = {
    "mariadb": _mariadb, "keystone": _keystone, "glance": _glance, "rabbitmq": _rabbitmq, "placement": _placement,
    "nova": _nova, "cinder": _cinder, "neutron": _neutron, "horizon": _horizon}


def write_files(files: list[ConfigFile], root: Path | str = "/") -> list[str]:
    """Write what changed (atomically, owner and mode first); returns the paths written."""
    written = []
    for item in files:
        path = Path(root) / item.path.lstrip("/")
        uid, gid = _ids(item.owner, item.group)
        if _unchanged(path, item, uid, gid):
            continue
        _make_parent(path, uid, gid, item)
        tmp = path.with_name(f".{path.name}.nodeos-tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchown(fd, uid, gid)
            os.fchmod(fd, item.mode)  # before the secret goes in
            os.write(fd, item.content.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        written.append(item.path)
    return written


def _ids(owner: str, group: str) -> tuple[int, int]:
    try:
        return pwd.getpwnam(owner).pw_uid, grp.getgrnam(group).gr_gid
    except KeyError as exc:
        raise ConfigError(f"user or group missing on this node: {exc} (is the package installed?)") from exc


def _unchanged(path: Path, item: ConfigFile, uid: int, gid: int) -> bool:
    try:
        st = path.stat()
        return (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (item.mode, uid, gid) and path.read_text() == item.content
    except (OSError, UnicodeDecodeError):
        return False


def _make_parent(path: Path, uid: int, gid: int, item: ConfigFile) -> None:
    """Key repositories must be private to their owner (keystone refuses others)."""
    parent = path.parent
    if not parent.is_dir():
        parent.mkdir(parents=True, exist_ok=True)
        if item.mode & 0o077 == 0 and item.owner != "root":
            os.chown(parent, uid, gid)
            os.chmod(parent, 0o700)
