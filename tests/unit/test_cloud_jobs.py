"""One-time cloud jobs and keystone's keys in the replicated state, and the Monitor's decisions (pure)."""

from __future__ import annotations

import itertools

import pytest

import nodeos.cloud.ops  # noqa: F401  (registers the cloud ops)
import nodeos.services.placement  # noqa: F401  (registers the service ops)
from nodeos.cloud.decide import decide_cloud, retry_delay
from nodeos.cluster.state import ClusterState
from nodeos.services.catalog import load_catalog, packaged_catalog
from nodeos.services.node import desired_here

from .test_monitor import apply

CATALOG = load_catalog(packaged_catalog("lab-cloud"))


def counter_bytes():
    counter = itertools.count()
    return lambda n: bytes([next(counter) % 256]) * n


@pytest.fixture
def state() -> ClusterState:
    s = ClusterState()
    for i, node in enumerate(["a", "b", "c"]):
        apply(s, {"op": "node_join", "now": 1.0, "node": node, "raft_addr": f"10.0.0.{i + 1}:7371", "ip": f"10.0.0.{i + 1}"})
    apply(s, {"op": "catalog_set", "now": 1.0, "catalog": CATALOG.to_dict()})
    apply(s, {"op": "place", "now": 1.0, "service": "keystone", "node": "b", "by": "a", "term": 1, "reason": "t"})
    return s


def healthy(state: ClusterState, service: str, node: str, now: float) -> None:
    """`service` healthy on `node`, placed there first (a singleton's report counts only where it is placed)."""
    record = state.services[service]
    if record.placement == "singleton" and record.node != node:
        apply(state, {"op": "place", "now": now, "service": service, "node": node, "by": "a", "term": 1, "reason": "t"})
    apply(state, {"op": "report_health", "now": now, "service": service, "node": node, "state": "healthy", "generation": 0})


def decide(state: ClusterState, now: float) -> list[dict]:
    return decide_cloud(state, CATALOG, now, "a", 1, counter_bytes())


def test_keys_are_made_once_and_never_shown(state):
    ops = decide(state, 2.0)
    keys_op = next(o for o in ops if o["op"] == "cloud_keys")
    apply(state, keys_op)
    again = dict(keys_op, fernet=[keys_op["credential"][0]] * 2)
    assert state.apply(again) == {"ok": True, "already": True}
    assert state.cloud["keys"]["fernet"] == keys_op["fernet"]  # a second Monitor's keys never replace them
    assert "keys" not in state.to_dict()["cloud"]
    assert not any(o["op"] == "cloud_keys" for o in decide(state, 3.0))
    assert state.apply(dict(keys_op, fernet=["not a key", "x"]))["ok"]  # already made: nothing checked, nothing changed


def test_jobs_wait_for_their_services_then_run_in_order_on_the_services_node(state):
    assert [o for o in decide(state, 2.0) if o["op"] == "job_assign" and o["job"].startswith("keystone-")] == []  # MariaDB not healthy anywhere
    healthy(state, "mariadb", "c", 3.0)
    ops = [o for o in decide(state, 3.0) if o["op"] == "job_assign" and o["job"].startswith("keystone-")]
    assert [(o["job"], o["node"], o["attempt"]) for o in ops] == [("keystone-db-sync", "b", 1)]  # keystone's node
    apply(state, ops[0])
    assert [o for o in decide(state, 4.0) if o["op"] == "job_assign" and o["job"].startswith("keystone-")] == []  # running on an up node: wait
    apply(state, {"op": "job_report", "now": 5.0, "job": "keystone-db-sync", "node": "b", "attempt": 1, "ok": True})
    ops = [o for o in decide(state, 6.0) if o["op"] == "job_assign" and o["job"].startswith("keystone-")]
    assert [(o["job"], o["attempt"]) for o in ops] == [("keystone-bootstrap", 1)]
    assert [e["kind"] for e in state.events if e["kind"].startswith("job.")] == ["job.started", "job.done"]


def test_a_done_job_never_runs_again_and_stale_reports_change_nothing(state):
    healthy(state, "mariadb", "c", 3.0)
    apply(state, next(o for o in decide(state, 3.0) if o["op"] == "job_assign" and o["job"].startswith("keystone-")))
    assert state.apply({"op": "job_report", "now": 4.0, "job": "keystone-db-sync", "node": "c", "attempt": 1,
                        "ok": True}) == {"ok": True, "stale": True}  # not the node it was handed to
    apply(state, {"op": "job_report", "now": 4.0, "job": "keystone-db-sync", "node": "b", "attempt": 1, "ok": True})
    refused = state.apply({"op": "job_assign", "now": 5.0, "job": "keystone-db-sync", "node": "a", "attempt": 2,
                           "by": "a", "term": 1})
    assert not refused["ok"] and "never runs again" in refused["error"]
    late = state.apply({"op": "job_report", "now": 6.0, "job": "keystone-db-sync", "node": "b", "attempt": 1, "ok": False})
    assert late == {"ok": True, "stale": True} and state.cloud["jobs"]["keystone-db-sync"]["state"] == "done"


def test_a_failed_attempt_is_retried_after_a_backoff_and_a_lost_nodes_attempt_at_once(state):
    healthy(state, "mariadb", "c", 3.0)
    apply(state, next(o for o in decide(state, 3.0) if o["op"] == "job_assign" and o["job"].startswith("keystone-")))
    apply(state, {"op": "job_report", "now": 4.0, "job": "keystone-db-sync", "node": "b", "attempt": 1, "ok": False,
                  "detail": "exit 1: Can't connect to MySQL"})
    assert [o for o in decide(state, 4.0 + retry_delay(1) - 0.1) if o["op"] == "job_assign" and o["job"].startswith("keystone-")] == []
    retry = next(o for o in decide(state, 4.0 + retry_delay(1)) if o["op"] == "job_assign" and o["job"].startswith("keystone-"))
    assert retry["attempt"] == 2 and "Can't connect" in retry["reason"]
    apply(state, retry)
    # A second assignment of the same attempt (a re-proposal) is refused: only one node runs it.
    assert not state.apply(dict(retry, node="c"))["ok"]
    apply(state, {"op": "node_status", "now": 20.0, "node": "b", "status": "lost"})
    moved = next(o for o in decide(state, 20.0) if o["op"] == "job_assign" and o["job"].startswith("keystone-"))
    assert moved["attempt"] == 3 and moved["node"] != "b" and "lost" in moved["reason"]


def test_a_service_with_jobs_waits_on_its_node_until_they_are_done(state):
    healthy(state, "mariadb", "c", 3.0)
    healthy(state, "memcached", "a", 3.0)
    want = desired_here(state, CATALOG, "b", False, set())["keystone"]
    assert not want.run and want.waiting_for == ["job keystone-db-sync", "job keystone-bootstrap"]
    for job in ("keystone-db-sync", "keystone-bootstrap"):
        op = next(o for o in decide(state, 4.0) if o["op"] == "job_assign" and o["job"].startswith("keystone-"))
        apply(state, op)
        apply(state, {"op": "job_report", "now": 4.0, "job": job, "node": op["node"], "attempt": 1, "ok": True})
    assert desired_here(state, CATALOG, "b", False, set())["keystone"].run


def finish(state, job: str, now: float) -> dict:
    op = next(o for o in decide(state, now) if o["op"] == "job_assign" and o["job"] == job)
    apply(state, op)
    apply(state, {"op": "job_report", "now": now, "job": job, "node": op["node"], "attempt": op["attempt"], "ok": True})
    return op


def test_glance_jobs_database_on_mariadbs_node_then_schema_and_keystone_registration(state):
    apply(state, {"op": "place", "now": 1.0, "service": "mariadb", "node": "c", "by": "a", "term": 1, "reason": "t"})
    apply(state, {"op": "place", "now": 1.0, "service": "glance-api", "node": "a", "by": "a", "term": 1, "reason": "t"})
    healthy(state, "mariadb", "c", 3.0)
    first = {o["job"]: o["node"] for o in decide(state, 3.0) if o["op"] == "job_assign"}
    assert first == {"keystone-db-sync": "b", "glance-db": "c", "placement-db": "c", "nova-db": "c",
                     "cinder-db": "c", "neutron-db": "c"}  # where MariaDB runs
    assert finish(state, "glance-db", 4.0)["node"] == "c"
    assert finish(state, "glance-db-sync", 5.0)["node"] == "a"  # glance's node: it has glance's configuration
    finish(state, "keystone-db-sync", 6.0)
    finish(state, "keystone-bootstrap", 7.0)
    assert not any(o.get("job") == "keystone-register-glance" for o in decide(state, 8.0))  # keystone not healthy yet
    healthy(state, "keystone", "b", 8.0)
    assert finish(state, "keystone-register-glance", 9.0)["node"] == "a"
    want = desired_here(state, CATALOG, "a", False, set())["glance-api"]
    assert want.waiting_for == ["memcached"]  # only a service it depends on, no job any more
    assert not any("job" in w for w in want.waiting_for)


def test_glance_waits_for_its_jobs(state):
    apply(state, {"op": "place", "now": 1.0, "service": "glance-api", "node": "a", "by": "a", "term": 1, "reason": "t"})
    for service, node in (("mariadb", "c"), ("memcached", "b"), ("keystone", "b")):
        healthy(state, service, node, 3.0)
    want = desired_here(state, CATALOG, "a", False, set())["glance-api"]
    assert not want.run and want.waiting_for == ["job glance-db-sync", "job keystone-register-glance"]


def test_job_commands_run_as_the_service_and_keep_secrets_off_the_command_line():
    from nodeos.cloud.config import CloudContext
    from nodeos.cloud.jobs import REGISTER_SCRIPT, commands
    from nodeos.cloud.secrets import admin_password, service_password
    from nodeos.cluster.identity import ClusterIdentity

    identity = ClusterIdentity("cluster-1", b"s" * 32, "", "")
    ctx = CloudContext(identity=identity, vips={"keystone": "10.0.0.202", "glance-api": "10.0.0.203"}, keys={})
    [sync] = commands("glance-db-sync", ctx)
    assert sync.argv == ("runuser", "-u", "glance", "--", "glance-manage", "db_sync")
    [database] = commands("glance-db", ctx)
    assert "nodeos-init.sql" in database.argv[-1] and database.argv[:2] == ("sh", "-c")
    [register] = commands("keystone-register-glance", ctx)
    assert register.argv == ("/usr/bin/python3", REGISTER_SCRIPT)
    env = register.env
    assert env["NODEOS_SERVICE_URL"] == "http://10.0.0.203:9292" and env["NODEOS_SERVICE_TYPE"] == "image"
    assert env["OS_AUTH_URL"] == "http://10.0.0.202:5000/v3" and env["OS_PASSWORD"] == admin_password(identity)
    assert env["NODEOS_SERVICE_PASSWORD"] == service_password(identity, "glance")
    assert not any(admin_password(identity) in arg or service_password(identity, "glance") in arg
                   for arg in register.argv)


def test_placement_jobs_database_schema_and_registration_at_its_vip(state):
    from nodeos.cloud.config import CloudContext
    from nodeos.cloud.jobs import commands
    from nodeos.cloud.secrets import service_password
    from nodeos.cluster.identity import ClusterIdentity

    apply(state, {"op": "place", "now": 1.0, "service": "mariadb", "node": "c", "by": "a", "term": 1, "reason": "t"})
    apply(state, {"op": "place", "now": 1.0, "service": "placement-api", "node": "b", "by": "a", "term": 1,
                  "reason": "t"})
    healthy(state, "mariadb", "c", 3.0)
    assert finish(state, "placement-db", 4.0)["node"] == "c"
    assert finish(state, "placement-db-sync", 5.0)["node"] == "b"  # placement's node: it has placement.conf
    for job in ("keystone-db-sync", "keystone-bootstrap"):
        finish(state, job, 6.0)
    healthy(state, "keystone", "b", 7.0)
    assert finish(state, "keystone-register-placement", 8.0)["node"] == "b"
    assert "job" not in " ".join(desired_here(state, CATALOG, "b", False, set())["placement-api"].waiting_for)

    identity = ClusterIdentity("cluster-1", b"s" * 32, "", "")
    ctx = CloudContext(identity=identity, vips={"keystone": "10.0.0.202", "placement-api": "10.0.0.204"}, keys={})
    [sync] = commands("placement-db-sync", ctx)
    assert sync.argv == ("runuser", "-u", "placement", "--", "placement-manage", "db", "sync")
    [register] = commands("keystone-register-placement", ctx)
    env = register.env
    assert (env["NODEOS_SERVICE_URL"], env["NODEOS_SERVICE_TYPE"], env["NODEOS_SERVICE_NAME"]) == \
        ("http://10.0.0.204:8778", "placement", "placement")
    assert env["NODEOS_SERVICE_PASSWORD"] == service_password(identity, "placement")


def test_nova_jobs_databases_then_cells_v2_in_order_then_registration_at_its_vip(state):
    from nodeos.cloud.config import CloudContext
    from nodeos.cloud.jobs import commands
    from nodeos.cloud.secrets import db_password, mq_password, service_password
    from nodeos.cluster.identity import ClusterIdentity

    apply(state, {"op": "place", "now": 1.0, "service": "mariadb", "node": "c", "by": "a", "term": 1, "reason": "t"})
    apply(state, {"op": "place", "now": 1.0, "service": "nova-api", "node": "a", "by": "a", "term": 1, "reason": "t"})
    healthy(state, "mariadb", "c", 3.0)
    assert finish(state, "nova-db", 4.0)["node"] == "c"
    cells = ["nova-api-db-sync", "nova-cell0-map", "nova-cell1-create", "nova-db-sync"]
    for now, job in enumerate(cells, start=5):
        offered = {o["job"] for o in decide(state, float(now)) if o["op"] == "job_assign"}
        assert set(cells) & offered == {job}  # one at a time, in nova's order
        assert finish(state, job, float(now))["node"] == "a"  # nova-api's node: it has nova.conf
    for job in ("keystone-db-sync", "keystone-bootstrap"):
        finish(state, job, 10.0)
    healthy(state, "keystone", "b", 11.0)
    assert finish(state, "keystone-register-nova", 12.0)["node"] == "a"
    assert "job" not in " ".join(desired_here(state, CATALOG, "a", False, set())["nova-api"].waiting_for)

    identity = ClusterIdentity("cluster-1", b"s" * 32, "", "")
    ctx = CloudContext(identity=identity, vips={"keystone": "10.0.0.202", "nova-api": "10.0.0.206"}, keys={})
    argv = {job: commands(job, ctx)[0].argv for job in cells}
    assert argv["nova-api-db-sync"] == ("runuser", "-u", "nova", "--", "nova-manage", "api_db", "sync")
    assert argv["nova-db-sync"] == ("runuser", "-u", "nova", "--", "nova-manage", "db", "sync")
    # Cell mappings as templates nova fills from its nova.conf: no password or address in nova_api.
    assert argv["nova-cell0-map"] == ("runuser", "-u", "nova", "--", "nova-manage", "cell_v2", "map_cell0",
                                      "--database_connection={scheme}://{username}:{password}@{hostname}/{path}_cell0")
    assert argv["nova-cell1-create"][:6] == ("runuser", "-u", "nova", "--", "sh", "-c")
    script = argv["nova-cell1-create"][6]
    assert script.startswith("nova-manage cell_v2 list_cells | grep -qE '^[|] +cell1 +[|]' || exec nova-manage")
    assert "--name=cell1" in script and "--transport-url='{scheme}://{username}:{password}@{hostname}:{port}/{path}'" in script
    for secret in (db_password(identity, "nova"), mq_password(identity)):
        assert not any(secret in arg for args in argv.values() for arg in args)
    [register] = commands("keystone-register-nova", ctx)
    env = register.env
    assert (env["NODEOS_SERVICE_URL"], env["NODEOS_SERVICE_TYPE"], env["NODEOS_SERVICE_NAME"]) == \
        ("http://10.0.0.206:8774/v2.1", "compute", "nova")
    assert env["NODEOS_SERVICE_PASSWORD"] == service_password(identity, "nova")


def test_cinder_jobs_database_schema_and_registration_at_its_vip_with_the_project(state):
    from nodeos.cloud.config import CloudContext
    from nodeos.cloud.jobs import commands
    from nodeos.cloud.secrets import service_password
    from nodeos.cluster.identity import ClusterIdentity

    apply(state, {"op": "place", "now": 1.0, "service": "mariadb", "node": "c", "by": "a", "term": 1, "reason": "t"})
    apply(state, {"op": "place", "now": 1.0, "service": "cinder-api", "node": "b", "by": "a", "term": 1, "reason": "t"})
    healthy(state, "mariadb", "c", 3.0)
    assert finish(state, "cinder-db", 4.0)["node"] == "c"
    assert finish(state, "cinder-db-sync", 5.0)["node"] == "b"  # cinder-api's node: it has cinder.conf
    for job in ("keystone-db-sync", "keystone-bootstrap"):
        finish(state, job, 6.0)
    healthy(state, "keystone", "b", 7.0)
    assert finish(state, "keystone-register-cinder", 8.0)["node"] == "b"
    assert "job" not in " ".join(desired_here(state, CATALOG, "b", False, set())["cinder-api"].waiting_for)

    identity = ClusterIdentity("cluster-1", b"s" * 32, "", "")
    ctx = CloudContext(identity=identity, vips={"keystone": "10.0.0.202", "cinder-api": "10.0.0.207"}, keys={})
    [sync] = commands("cinder-db-sync", ctx)
    assert sync.argv == ("runuser", "-u", "cinder", "--", "cinder-manage", "db", "sync")
    [register] = commands("keystone-register-cinder", ctx)
    env = register.env
    # Debian's names; keystone puts the token's project in the URL, where cinderclient wants it.
    assert (env["NODEOS_SERVICE_URL"], env["NODEOS_SERVICE_TYPE"], env["NODEOS_SERVICE_NAME"]) == \
        ("http://10.0.0.207:8776/v3/%(project_id)s", "volumev3", "cinderv3")
    assert (env["NODEOS_SERVICE_USER"], env["NODEOS_SERVICE_PASSWORD"]) == ("cinder", service_password(identity, "cinder"))


def test_neutron_jobs_database_schema_heads_and_registration_at_its_vip(state):
    from nodeos.cloud.config import CloudContext
    from nodeos.cloud.jobs import commands
    from nodeos.cloud.secrets import service_password
    from nodeos.cluster.identity import ClusterIdentity

    apply(state, {"op": "place", "now": 1.0, "service": "mariadb", "node": "c", "by": "a", "term": 1, "reason": "t"})
    apply(state, {"op": "place", "now": 1.0, "service": "neutron-server", "node": "b", "by": "a", "term": 1,
                  "reason": "t"})
    healthy(state, "mariadb", "c", 3.0)
    assert finish(state, "neutron-db", 4.0)["node"] == "c"
    assert finish(state, "neutron-db-sync", 5.0)["node"] == "b"  # neutron's node: it has neutron.conf and ml2_conf.ini
    for job in ("keystone-db-sync", "keystone-bootstrap"):
        finish(state, job, 6.0)
    healthy(state, "keystone", "b", 7.0)
    assert finish(state, "keystone-register-neutron", 8.0)["node"] == "b"
    want = desired_here(state, CATALOG, "b", False, set())["neutron-server"]
    assert "job" not in " ".join(want.waiting_for)

    identity = ClusterIdentity("cluster-1", b"s" * 32, "", "")
    ctx = CloudContext(identity=identity, vips={"keystone": "10.0.0.202", "neutron-server": "10.0.0.207"}, keys={})
    [sync] = commands("neutron-db-sync", ctx)
    assert sync.argv == ("runuser", "-u", "neutron", "--", "neutron-db-manage",
                         "--config-file", "/etc/neutron/neutron.conf",
                         "--config-file", "/etc/neutron/plugins/ml2/ml2_conf.ini", "upgrade", "heads")
    [register] = commands("keystone-register-neutron", ctx)
    env = register.env
    assert (env["NODEOS_SERVICE_URL"], env["NODEOS_SERVICE_TYPE"], env["NODEOS_SERVICE_NAME"]) == \
        ("http://10.0.0.207:9696", "network", "neutron")
    assert env["NODEOS_SERVICE_PASSWORD"] == service_password(identity, "neutron")


def test_the_cell1_guard_finds_cell1_in_list_cells_output():
    """The job's grep against nova-manage's table (prettytable), so a retry never makes a second cell1."""
    import subprocess

    from nodeos.cloud.jobs import CELL1_CREATE

    guard = CELL1_CREATE.split(" || ")[0].split(" | ", 1)[1]
    table = ("+-------+--------------------------------------+\n"
             "|  Name |                 UUID                 |\n"
             "+-------+--------------------------------------+\n"
             "| cell0 | 00000000-0000-0000-0000-000000000000 |\n"
             "| cell1 | 7b0a0a4e-3f0e-4c61-9d1c-2f0f0bd2c4b1 |\n"
             "+-------+--------------------------------------+\n")
    assert subprocess.run(["sh", "-c", guard], input=table, text=True).returncode == 0
    without = "\n".join(line for line in table.splitlines() if "cell1" not in line)
    assert subprocess.run(["sh", "-c", guard], input=without, text=True).returncode == 1
    # prettytable centres: beside a longer name, cell1 is padded on both sides; a cell10 is another cell.
    assert subprocess.run(["sh", "-c", guard], input="|   cell1   | u |\n", text=True).returncode == 0
    assert subprocess.run(["sh", "-c", guard], input="|  cell10  | u |\n", text=True).returncode == 1
