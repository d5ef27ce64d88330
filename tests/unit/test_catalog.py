"""Service catalog: the shipped catalogs load, round-trip, and bad input is
reported as one CatalogError naming file, line and field."""

from __future__ import annotations

import copy
import json
import textwrap
from pathlib import Path

import pytest

from nodeos.services.catalog import (
    Catalog,
    CatalogError,
    HealthCheckSpec,
    load_catalog,
    packaged_catalog,
    parse_catalog,
    render_template,
)

MINIMAL = """\
services:
  web:
    placement: singleton
    port: 80
    start:
      command: [nginx, -c, "{run_dir}/nginx.conf"]
    health:
      - type: http
        port: 80
"""


def parse(text: str) -> Catalog:
    return parse_catalog(textwrap.dedent(text), "catalog.yaml")


def error_of(text: str) -> str:
    with pytest.raises(CatalogError) as info:
        parse(text)
    return str(info.value)


# ---------------------------------------------------------------- shipped catalogs


def test_lab_catalog_loads_with_expected_services() -> None:
    catalog = load_catalog(packaged_catalog("lab"))
    assert set(catalog.names()) == {"memcached", "nginx", "node-http"}
    assert catalog["memcached"].placement == "singleton" and catalog["memcached"].vip
    assert catalog["memcached"].port == 11211
    assert [c.type for c in catalog["memcached"].health] == ["process", "tcp"]
    assert catalog["memcached"].health[1].port == 11211  # defaulted to the service port
    assert "-u" in catalog["memcached"].command  # memcached refuses root without it
    nginx = catalog["nginx"]
    assert nginx.vip and nginx.port == 80 and "nginx.conf" in nginx.files
    assert nginx.health[1] == HealthCheckSpec(
        type="http", port=80, path="/", expect_status=200, expect_body="nginx on node"
    )
    assert catalog["node-http"].placement == "every-node" and not catalog["node-http"].vip
    assert catalog.start_order().index("memcached") < catalog.start_order().index("nginx")


def test_lab_nginx_conf_renders_under_run_dir() -> None:
    nginx = load_catalog(packaged_catalog("lab"))["nginx"]
    values = nginx.template_values(node_id="node-7", run_dir="/srv/run/nginx", vip="10.0.0.9", bind="0.0.0.0")
    conf = nginx.render_files(values)["nginx.conf"]
    assert "daemon off;" in conf and "listen 80 default_server;" in conf
    assert "pid /srv/run/nginx/nginx.pid;" in conf
    assert "node-7" in conf and "{" in conf  # nginx blocks survive templating
    for line in conf.splitlines():
        if "_temp_path" in line or line.strip().startswith("pid "):
            assert "/srv/run/nginx/" in line
    assert nginx.render_command(values)[:3] == ["nginx", "-p", "/srv/run/nginx"]


@pytest.mark.parametrize("name", ["lab", "default", "lab-storage", "storage", "lab-cloud", "cloud"])
def test_packaged_catalogs_round_trip_exactly(name: str) -> None:
    catalog = load_catalog(packaged_catalog(name))
    data = catalog.to_dict()
    through_json = json.loads(json.dumps(data))  # what the Raft log stores
    assert through_json == data
    again = Catalog.from_dict(through_json)
    assert again == catalog
    assert again.to_dict() == data


def test_default_catalog_matches_lab_catalog() -> None:
    lab = load_catalog(packaged_catalog("lab"))
    default = load_catalog(packaged_catalog("default"))
    assert default.names() == lab.names()
    for spec in default:
        twin = lab[spec.name]
        assert spec.unit and spec.unit.endswith(".service")
        for attr in ("placement", "vip", "port", "health", "restart", "depends_on", "resources"):
            assert getattr(spec, attr) == getattr(twin, attr), f"{spec.name}.{attr} differs"
    assert default["nginx"].unit == "nginx.service"
    assert default["memcached"].unit == "memcached.service"


def test_storage_catalog_is_default_plus_the_lab_storage_ceph_services() -> None:
    storage = load_catalog(packaged_catalog("storage"))
    default = load_catalog(packaged_catalog("default"))
    lab_storage = load_catalog(packaged_catalog("lab-storage"))
    ceph = [name for name in lab_storage.names() if name.startswith("ceph-")]
    assert set(storage.names()) == {*default.names(), *ceph, "ledger"}  # the image's volume witness is its own
    for spec in storage:
        if spec.name == "ledger":
            assert spec.volume is not None and spec.singleton
            continue
        twin = default[spec.name] if spec.name in default.names() else lab_storage[spec.name]
        for attr in ("placement", "vip", "port", "health", "restart", "depends_on", "resources"):
            assert getattr(spec, attr) == getattr(twin, attr), f"{spec.name}.{attr} differs"
        if spec.name.startswith("ceph-"):
            # Debian's template unit; the image's drop-in runs the launcher in it.
            assert spec.unit == f"{spec.name}@nodeos.service"
        else:
            assert spec.unit == default[spec.name].unit


# What the image's cloud catalog may do differently from lab-cloud, and why. Everything else
# (placement, VIPs, ports, depends_on, volumes, config, jobs, health checks, restart policies,
# resources) is the same, so the Monitor makes the same decisions on a rack as in the lab.
CLOUD_DIFFERENCES = {
    # The systemd runtime starts a unit (Debian's, with the image's drop-in); the process runtime a command.
    "unit": "systemd runtime: Debian's unit",
    "command": "process runtime only",
    # lab-cloud's start scripts of MariaDB and RabbitMQ are the drop-ins' ExecStartPre/ExecStart on the image
    # (elements/nodeos-openstack): the systemd runtime writes no run-dir files.
    "files": "the lab's start scripts are the image's drop-ins",
}


def test_the_cloud_catalog_is_lab_cloud_under_the_systemd_runtime() -> None:
    import dataclasses

    from nodeos.services.catalog import ServiceSpec

    cloud = load_catalog(packaged_catalog("cloud"))
    lab = load_catalog(packaged_catalog("lab-cloud"))
    assert cloud.names() == lab.names()
    assert cloud.start_order() == lab.start_order()
    compared = [f.name for f in dataclasses.fields(ServiceSpec) if f.name not in CLOUD_DIFFERENCES]
    assert {"depends_on", "health", "config", "jobs", "volume", "vip", "placement"} <= set(compared)
    for spec in cloud:
        twin = lab[spec.name]
        for attr in compared:
            assert getattr(spec, attr) == getattr(twin, attr), f"{spec.name}.{attr} differs from lab-cloud"
        assert [c.type for c in spec.health] == [c.type for c in twin.health]
        # The differences, as listed: a unit and no command, no run-dir files.
        assert spec.unit is not None and spec.unit.endswith(".service") and spec.command is None, spec.name
        assert spec.files == {}, spec.name
        assert twin.unit is None and twin.command is not None, spec.name
    assert sorted(spec.name for spec in lab if spec.files) == ["mariadb", "rabbitmq"]
    # Debian's units by the packages' names; neutron-server is Zed's neutron-api package (uWSGI).
    assert cloud["neutron-server"].unit == "neutron-api.service"
    assert cloud["rabbitmq"].unit == "rabbitmq-server.service"
    assert {name: cloud[name].unit for name in ("ceph-mon", "ceph-mgr", "ceph-osd")} == \
        {name: f"{name}@nodeos.service" for name in ("ceph-mon", "ceph-mgr", "ceph-osd")}
    # A volume's mount renders to Debian's path on a node ({root} is "" there).
    mariadb = cloud["mariadb"]
    assert mariadb.volume is not None
    assert render_template(mariadb.volume.mount, mariadb.template_values(node_id="n1", run_dir="", vip="10.0.0.9", bind="0.0.0.0", root="/")) == "/var/lib/mysql"


def test_defaults_fill_in() -> None:
    web = parse(MINIMAL)["web"]
    assert web.vip is True  # singletons get a VIP unless told otherwise
    assert (web.restart.max_restarts, web.restart.backoff_initial, web.restart.backoff_max) == (3, 0.5, 30.0)
    assert web.restart.reset_after == 60.0
    check = web.health[0]
    assert (check.interval, check.timeout, check.rise, check.fall) == (1.0, 1.0, 2, 2)
    assert (check.path, check.expect_status, check.expect_body) == ("/", 200, None)


def test_missing_health_means_a_process_check() -> None:
    catalog = parse(
        """
        services:
          worker:
            placement: every-node
            start: {command: [sleep, "100"]}
        """
    )
    assert [c.type for c in catalog["worker"].health] == ["process"]
    assert catalog["worker"].vip is False


def test_backoff_doubles_and_caps() -> None:
    policy = parse(MINIMAL)["web"].restart
    assert [policy.backoff(n) for n in range(3)] == [0.5, 1.0, 2.0]
    assert policy.backoff(20) == 30.0
    assert policy.backoff(10_000) == 30.0


def test_start_order_is_topological_and_deterministic() -> None:
    catalog = parse(
        """
        services:
          c: {placement: every-node, start: {unit: c.service}, depends_on: [b]}
          b: {placement: every-node, start: {unit: b.service}, depends_on: [a]}
          z: {placement: every-node, start: {unit: z.service}}
          a: {placement: every-node, start: {unit: a.service}}
        """
    )
    assert catalog.start_order() == ["a", "b", "c", "z"]


def test_render_template_leaves_shell_and_nginx_variables() -> None:
    values = {"port": "80"}
    assert render_template("listen {port}; set $x ${host}; if ($a) { }", values) == (
        "listen 80; set $x ${host}; if ($a) { }"
    )


# ---------------------------------------------------------------- errors: file:line: field


def test_bad_port_names_file_line_and_field() -> None:
    message = error_of(
        """\
        services:
          nginx:
            placement: singleton
            port: 80
            start: {command: [nginx]}
            health:
              - type: tcp
                port: 70000
        """
    )
    assert message.startswith("catalog.yaml:8: services.nginx.health[0].port: must be an integer 1-65535")


@pytest.mark.parametrize(
    ("snippet", "line", "field", "words"),
    [
        ("placement: somewhere", 3, "services.svc.placement", "must be one of: singleton, every-node"),
        ("port: '80'", 3, "services.svc.port", "must be an integer 1-65535"),
        ("port: true", 3, "services.svc.port", "must be an integer"),
        ("vip: yes please", 3, "services.svc.vip", "must be true or false"),
        ("colour: blue", 3, "services.svc.colour", "unknown key"),
        ("restart: {max_restarts: -1}", 3, "services.svc.restart.max_restarts", "must be an integer 0-1000"),
        ("restart: {backoff_initial: 0}", 3, "services.svc.restart.backoff_initial", "must be a number > 0"),
        ("restart: {backoff_initial: 5, backoff_max: 1}", 3, "services.svc.restart.backoff_max", ">= backoff_initial"),
        ("resources: {cpu: fast}", 3, "services.svc.resources.cpu", "must be a number"),
        ("resources: {memory_mb: 1.5}", 3, "services.svc.resources.memory_mb", "must be an integer"),
        ("depends_on: svc2", 3, "services.svc.depends_on", "must be a list"),
        ("files: {../etc/passwd: x}", 3, "services.svc.files.../etc/passwd", "plain file name"),
        ("files: {pid.json: x}", 3, "services.svc.files.pid.json", "plain file name"),
        ("files: {a.conf: [1]}", 3, "services.svc.files.a.conf", "content must be a string"),
        ("health: []", 3, "services.svc.health", "non-empty list"),
        ("health: [{type: ping}]", 3, "services.svc.health[0].type", "must be one of: process, tcp"),
        ("health: [{type: tcp, path: /}]", 3, "services.svc.health[0].path", "only allowed for http"),
        ("health: [{type: http, expect_status: 700}]", 3, "services.svc.health[0].expect_status", "100-599"),
        ("health: [{type: http, path: healthz}]", 3, "services.svc.health[0].path", "must start with '/'"),
        ("health: [{type: tcp, interval: -1}]", 3, "services.svc.health[0].interval", "must be a number > 0"),
        ("health: [{type: tcp, rise: 0}]", 3, "services.svc.health[0].rise", "must be an integer 1-100"),
        ("health: [{type: command}]", 3, "services.svc.health[0]", "needs 'command'"),
        ("health: [{type: command, command: [check, 3]}]", 3, "services.svc.health[0].command[1]", "must be a string"),
    ],
)
def test_field_errors(snippet: str, line: int, field: str, words: str) -> None:
    text = "services:\n  svc:\n    " + snippet + "\n    start: {command: [x]}\n"
    if "placement" not in snippet:
        text += "    placement: singleton\n"
    if "port" not in snippet.split(":")[0]:
        text += "    port: 1234\n"
    with pytest.raises(CatalogError) as info:
        parse_catalog(text, "catalog.yaml")
    message = str(info.value)
    assert message.startswith(f"catalog.yaml:{line}: {field}: "), message
    assert words in message


def test_error_on_a_later_line_points_there() -> None:
    message = error_of(MINIMAL + "    restart:\n      reset_after: soon\n")
    assert message.startswith("catalog.yaml:11: services.web.restart.reset_after: must be a number")


def test_unknown_top_level_key() -> None:
    assert error_of(MINIMAL + "servces: {}\n").startswith("catalog.yaml:10: servces: unknown key")


def test_missing_required_fields() -> None:
    assert "'placement' is required" in error_of("services:\n  a:\n    start: {unit: a.service}\n")
    message = error_of("services:\n  a:\n    placement: every-node\n")
    assert message.startswith("catalog.yaml:2: services.a: 'start' is required")
    assert "needs 'unit'" in error_of("services:\n  a:\n    placement: every-node\n    start: {}\n")
    assert "'services' is required" in error_of("version: 1\n")
    assert "'port' is required" in error_of("services:\n  a:\n    placement: singleton\n    start: {unit: a}\n")


def test_every_node_service_cannot_have_a_vip() -> None:
    message = error_of("services:\n  a:\n    placement: every-node\n    vip: true\n    start: {unit: a}\n")
    assert message.startswith("catalog.yaml:4: services.a.vip: only singleton services can have a VIP")


def test_unknown_dependency() -> None:
    message = error_of(MINIMAL + "    depends_on: [db]\n")
    assert message.startswith("catalog.yaml:10: services.web.depends_on[0]: unknown service 'db'")


def test_dependency_cycle_is_named() -> None:
    message = error_of(
        """\
        services:
          a: {placement: every-node, start: {unit: a}, depends_on: [b]}
          b: {placement: every-node, start: {unit: b}, depends_on: [c]}
          c: {placement: every-node, start: {unit: c}, depends_on: [a]}
          d: {placement: every-node, start: {unit: d}}
        """
    )
    assert message.startswith("catalog.yaml:2: services.a.depends_on: dependency cycle: a -> b -> c -> a")


def test_self_dependency() -> None:
    assert "cannot depend on itself" in error_of(MINIMAL + "    depends_on: [web]\n")


def test_unknown_placeholder_and_vip_placeholder_without_vip() -> None:
    message = error_of(MINIMAL.replace('"{run_dir}/nginx.conf"', '"{rundir}/nginx.conf"'))
    assert message.startswith("catalog.yaml:6: services.web.start.command[2]: unknown placeholder {rundir}")
    message = error_of(
        "services:\n  a:\n    placement: every-node\n    start: {command: [x, '{vip}']}\n"
    )
    assert "uses {vip} but the service has no VIP" in message


def test_bad_service_name() -> None:
    assert "service names must match" in error_of("services:\n  Bad/Name: {placement: every-node}\n")


def test_yaml_syntax_error_has_line() -> None:
    message = error_of("services:\n  a: {placement: every-node\n  b: [\n")
    assert message.startswith("catalog.yaml:") and "not valid YAML" in message


def test_duplicate_key() -> None:
    message = error_of(MINIMAL + "    port: 81\n")
    assert message.startswith("catalog.yaml:10: services.web.port: duplicate key")


@pytest.mark.parametrize(
    "text",
    ["", "[]", "just a string", "services: 5", "services: {}", "services: {a: 5}", "services:\n  1: {}\n",
     "a: &x [*x]\n", "services: !!python/object:os.system {}\n", "\x00\x01", "{[1]: 2}",
     "services:\n  a:\n    <<: {placement: singleton}\n", "version: 2\nservices: {}\n",
     "services: {a: {placement: every-node, start: {unit: a}, health: [{type: tcp}]}}"],
)
def test_garbage_only_ever_raises_catalog_error(text: str) -> None:
    with pytest.raises(CatalogError):
        parse_catalog(text, "catalog.yaml")


def test_from_dict_validates_too() -> None:
    data = load_catalog(packaged_catalog("lab")).to_dict()
    bad = copy.deepcopy(data)
    bad["services"]["nginx"]["health"][1]["port"] = 0
    with pytest.raises(CatalogError) as info:
        Catalog.from_dict(bad, "raft")
    assert str(info.value).startswith("raft: services.nginx.health[1].port: must be an integer 1-65535")
    for garbage in (None, [], {"services": {"x": None}}, {"services": {"x": {"placement": 3}}}, {1: 2}):
        with pytest.raises(CatalogError):
            Catalog.from_dict(garbage)


def test_load_catalog_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(tmp_path / "nope.yaml")
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(CatalogError):
        load_catalog(tmp_path / "bin.yaml")


VOLUME_BASE = """version: 1
services:
  db:
    placement: {placement}
    port: 3306
    start: {{command: [x]}}
    volume: {volume}
"""


@pytest.mark.parametrize("placement, volume, words", [
    ("singleton", "{size: 1GiB, fs: btrfs, mount: /x}", "volume.fs: must be one of: ext4, xfs"),
    ("singleton", "{size: 1KiB, fs: ext4, mount: /x}", "volume.size: must be bytes or a size"),
    ("singleton", "{size: 16MiB, fs: ext4, mount: /x}", "at least 64MiB"),
    ("singleton", "{size: 1GiB, fs: ext4}", "'mount' is required"),
    ("singleton", "{size: 1GiB, fs: ext4, mount: relative}", "must be an absolute path"),
    ("every-node", "{size: 1GiB, fs: ext4, mount: /x}", "only singleton services can have a volume"),
])
def test_volume_mistakes_name_the_field(placement: str, volume: str, words: str) -> None:
    with pytest.raises(CatalogError, match=words) as info:
        parse_catalog(VOLUME_BASE.format(placement=placement, volume=volume), "c.yaml")
    assert str(info.value).startswith("c.yaml:")


def test_a_volume_and_ceph_checks_survive_the_trip_through_the_state() -> None:
    catalog = load_catalog(packaged_catalog("lab-storage"))
    assert Catalog.from_dict(catalog.to_dict()) == catalog
    volume = catalog["mariadb"].volume
    assert volume is not None and (volume.size, volume.fs) == (1 << 30, "ext4")
    assert catalog["ceph-mon"].placement == "ceph-mons"
    assert [c.daemon for c in catalog["ceph-osd"].health if c.type == "ceph"] == ["osd"]
    with pytest.raises(CatalogError, match="daemon"):
        parse_catalog("version: 1\nservices:\n  m:\n    placement: ceph-mons\n    start: {command: [x]}\n"
                      "    health: [{type: ceph, daemon: mds}]\n", "c.yaml")


def test_cloud_config_and_jobs_are_checked_against_what_nodeos_knows() -> None:
    assert "config: must be one of: mariadb, keystone, glance, rabbitmq, placement, nova, cinder, neutron, " \
        "horizon, got 'swift'" in error_of("""
        services:
          api: {placement: singleton, vip: false, start: {command: [x]}, config: swift}
        """)
    assert "jobs[0]: unknown job 'db-sync'" in error_of("""
        services:
          api: {placement: singleton, vip: false, start: {command: [x]}, jobs: [db-sync]}
        """)
    # keystone's schema job waits for MariaDB to be healthy: without MariaDB it would wait forever.
    assert "job 'keystone-db-sync' needs service 'mariadb', which is not in the catalog" in error_of("""
        services:
          keystone: {placement: singleton, vip: false, start: {command: [x]}, jobs: [keystone-db-sync]}
        """)


def test_cloud_checks_use_the_service_port_and_keystone_reads_a_path() -> None:
    catalog = parse("""
        services:
          keystone:
            placement: singleton
            port: 5000
            start: {command: [x]}
            health:
              - {type: keystone, path: /v3/services}
              - {type: memcached, port: 11211}
        """)
    checks = catalog["keystone"].health
    assert (checks[0].port, checks[0].path) == (5000, "/v3/services") and checks[1].port == 11211
    glance = parse("""
        services:
          glance-api: {placement: singleton, port: 9292, start: {command: [x]}, health: [{type: glance}]}
        """)["glance-api"].health[0]
    assert (glance.port, glance.path) == (9292, "/v2/images")
    placement = parse("""
        services:
          placement-api: {placement: singleton, port: 8778, start: {command: [x]}, health: [{type: placement}]}
        """)["placement-api"].health[0]
    assert (placement.port, placement.path) == (8778, "/resource_providers")
    neutron = parse("""
        services:
          neutron-server: {placement: singleton, port: 9696, start: {command: [x]}, health: [{type: neutron}]}
        """)["neutron-server"].health[0]
    assert (neutron.port, neutron.path) == (9696, "/v2.0/networks?limit=1&fields=id")
    assert "only allowed for http and keystone and glance and placement and nova and cinder and neutron and " \
        "service-list checks" \
        in error_of("""
        services:
          db: {placement: singleton, port: 3306, start: {command: [x]}, health: [{type: mariadb, path: /x}]}
        """)
    assert parse("""
        services:
          mq: {placement: singleton, port: 5672, start: {command: [x]}, health: [{type: rabbitmq}]}
        """)["mq"].health[0].port == 5672
    assert "a rabbitmq check needs 'port'" in error_of("""
        services:
          mq: {placement: singleton, vip: false, start: {command: [x]}, health: [{type: rabbitmq}]}
        """)


def test_nova_checks_read_servers_and_the_service_list_of_a_named_daemon() -> None:
    api = parse("""
        services:
          nova-api: {placement: singleton, port: 8774, start: {command: [x]}, health: [{type: nova}]}
        """)["nova-api"].health[0]
    assert (api.type, api.port, api.path) == ("nova", 8774, "/v2.1/servers")
    # The conductor has no port of its own: its check names nova-api's, whose list, and which daemon to find.
    conductor = parse("""
        services:
          nova-conductor:
            placement: singleton
            vip: false
            start: {command: [x]}
            health: [{type: service-list, api: nova, daemon: nova-conductor, port: 8774}]
        """)["nova-conductor"].health[0]
    assert (conductor.port, conductor.path, conductor.api, conductor.daemon) == \
        (8774, "/v2.1/os-services", "nova", "nova-conductor")
    assert "a service-list check needs 'daemon': one of nova-conductor, nova-scheduler, got 'nova-compute'" in error_of("""
        services:
          c: {placement: singleton, vip: false, start: {command: [x]}, health: [{type: service-list, api: nova, daemon: nova-compute, port: 8774}]}
        """)
    assert "a service-list check needs 'port'" in error_of("""
        services:
          c: {placement: singleton, vip: false, start: {command: [x]}, health: [{type: service-list, api: nova, daemon: nova-conductor}]}
        """)
    assert "only allowed for ceph and service-list checks" in error_of("""
        services:
          api: {placement: singleton, port: 8774, start: {command: [x]}, health: [{type: nova, daemon: nova-conductor}]}
        """)


def test_cinder_checks_read_volumes_and_cinders_service_list() -> None:
    api = parse("""
        services:
          cinder-api: {placement: singleton, port: 8776, start: {command: [x]}, health: [{type: cinder}]}
        """)["cinder-api"].health[0]
    assert (api.type, api.port, api.path) == ("cinder", 8776, "/v3/volumes")
    volume = parse("""
        services:
          cinder-volume:
            placement: singleton
            vip: false
            start: {command: [x]}
            health: [{type: service-list, api: cinder, daemon: cinder-volume, port: 8776}]
        """)["cinder-volume"].health[0]
    assert (volume.path, volume.api, volume.daemon) == ("/v3/os-services", "cinder", "cinder-volume")
    # Each list has its own workers: cinder's has no conductor.
    assert "a service-list check needs 'daemon': one of cinder-scheduler, cinder-volume, got 'nova-conductor'" in error_of("""
        services:
          c: {placement: singleton, vip: false, start: {command: [x]}, health: [{type: service-list, api: cinder, daemon: nova-conductor, port: 8776}]}
        """)
    assert "a service-list check needs 'api': one of nova, cinder, got 'neutron'" in error_of("""
        services:
          c: {placement: singleton, vip: false, start: {command: [x]}, health: [{type: service-list, api: neutron, daemon: x, port: 9696}]}
        """)
    assert "a service-list check needs 'api': one of nova, cinder, got None" in error_of("""
        services:
          c: {placement: singleton, vip: false, start: {command: [x]}, health: [{type: service-list, daemon: cinder-volume, port: 8776}]}
        """)
    assert "only allowed for service-list checks" in error_of("""
        services:
          api: {placement: singleton, port: 8776, start: {command: [x]}, health: [{type: cinder, api: cinder}]}
        """)


def test_the_lab_cloud_catalog_runs_novas_control_plane_after_its_dependencies() -> None:
    catalog = load_catalog(packaged_catalog("lab-cloud"))
    assert Catalog.from_dict(catalog.to_dict()) == catalog  # the state's copy keeps which daemon a check looks for
    order = catalog.start_order()
    assert order.index("placement-api") < order.index("nova-api") < order.index("nova-conductor") \
        < order.index("nova-scheduler")
    assert catalog["nova-api"].vip and catalog["nova-api"].port == 8774
    assert not catalog["nova-conductor"].vip and catalog["nova-conductor"].singleton
    assert {spec.config for spec in (catalog["nova-api"], catalog["nova-conductor"], catalog["nova-scheduler"])} == {"nova"}
    daemons = {name: [(c.api, c.daemon) for c in catalog[name].health if c.type == "service-list"]
               for name in ("nova-conductor", "nova-scheduler")}
    assert daemons == {"nova-conductor": [("nova", "nova-conductor")], "nova-scheduler": [("nova", "nova-scheduler")]}


def test_the_lab_cloud_catalog_runs_cinder_after_its_dependencies() -> None:
    catalog = load_catalog(packaged_catalog("lab-cloud"))
    order = catalog.start_order()
    assert order.index("keystone") < order.index("cinder-api") < order.index("cinder-scheduler")
    assert order.index("cinder-api") < order.index("cinder-volume")
    assert catalog["cinder-api"].vip and catalog["cinder-api"].port == 8776
    assert catalog["cinder-api"].jobs == ("cinder-db-sync", "keystone-register-cinder")
    for name in ("cinder-scheduler", "cinder-volume"):
        spec = catalog[name]
        assert spec.singleton and not spec.vip and spec.config == "cinder" and "cinder-api" in spec.depends_on
        assert [(c.api, c.daemon) for c in spec.health if c.type == "service-list"] == [("cinder", name)]


def test_the_lab_cloud_catalog_runs_neutron_server_at_its_vip_after_its_jobs() -> None:
    catalog = load_catalog(packaged_catalog("lab-cloud"))
    neutron = catalog["neutron-server"]
    assert neutron.singleton and neutron.vip and neutron.port == 9696 and neutron.config == "neutron"
    assert set(neutron.depends_on) == {"mariadb", "memcached", "rabbitmq", "keystone"}
    assert list(neutron.jobs) == ["neutron-db-sync", "keystone-register-neutron"]
    order = catalog.start_order()
    assert all(order.index(dep) < order.index("neutron-server") for dep in neutron.depends_on)
    assert [c.path for c in neutron.health if c.type == "neutron"] == ["/v2.0/networks?limit=1&fields=id"]


def test_the_lab_cloud_catalog_runs_horizon_at_its_vip_after_keystone_and_memcached() -> None:
    catalog = load_catalog(packaged_catalog("lab-cloud"))
    horizon = catalog["horizon"]
    assert horizon.singleton and horizon.vip and horizon.port == 80 and horizon.config == "horizon"
    assert set(horizon.depends_on) == {"keystone", "memcached"} and not horizon.jobs
    order = catalog.start_order()
    assert all(order.index(dep) < order.index("horizon") for dep in horizon.depends_on)
    assert [(c.type, c.port) for c in horizon.health] == [("process", None), ("horizon", 80)]
    assert Catalog.from_dict(catalog.to_dict()) == catalog


def test_a_check_s_slow_grace_defaults_to_two_minutes_and_zero_turns_it_off() -> None:
    from nodeos.services.catalog import SLOW_GRACE, Catalog

    catalog = parse("""
        services:
          db:
            placement: singleton
            port: 3306
            start: {command: [x]}
            health: [{type: mariadb}, {type: tcp, slow_grace: 0}, {type: tcp, slow_grace: 300}]
        """)
    assert [c.slow_grace for c in catalog["db"].health] == [SLOW_GRACE, 0.0, 300.0] and SLOW_GRACE == 30.0
    assert Catalog.from_dict(catalog.to_dict()) == catalog
    assert "slow_grace: must be a number >= 0 and <= 3600, got -1" in error_of("""
        services:
          db: {placement: singleton, port: 3306, start: {command: [x]}, health: [{type: tcp, slow_grace: -1}]}
        """)


def test_scaled_catalog_stretches_every_check_time_and_still_loads_from_the_state():
    """service_time_scale (emulated CPUs): times grow, rise and fall stay, the copy the
    Monitor commits parses again (the parse limits hold)."""
    catalog = load_catalog(packaged_catalog("cloud"))
    assert catalog.scaled(1.0) is catalog
    scaled = catalog.scaled(10.0)
    for spec in catalog:
        for before, after in zip(spec.health, scaled[spec.name].health):
            assert after.interval == pytest.approx(min(before.interval * 10, 3600))
            assert after.timeout == pytest.approx(min(before.timeout * 10, 600))
            assert after.start_period == pytest.approx(min(before.start_period * 10, 3600))
            assert after.slow_grace == pytest.approx(min(before.slow_grace * 10, 3600))
            assert (after.rise, after.fall, after.type) == (before.rise, before.fall, before.type)
    assert scaled["keystone"].health[-1].timeout > catalog["keystone"].health[-1].timeout
    assert Catalog.from_dict(scaled.to_dict()) == scaled
