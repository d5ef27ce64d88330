"""The OpenStack control plane, first tier (issue 9): MariaDB on its volume, memcached and
keystone, configured and bootstrapped by the agents, used with the real `openstack` client.

On the package's cloud (conftest.py): Ceph settled, MariaDB started on its RBD volume, the
Monitor handed out keystone's schema and bootstrap jobs (recorded in the replicated log),
and keystone answers at its VIP. Operators get credentials from `nodeos credentials`; the
client runs from the lab's client namespace, so every call crosses the lab LAN to a VIP.
"""

from __future__ import annotations

import json
import re
import time

from nodeos.lab.lab import Lab
from nodeos.lab.services import kill_service

from ..cluster_helpers import cli, lab_marks, wait_until
from .helpers import CLOUD_JOBS, answers, events, healthy_at_vip, jobs_finished, openstack, rows

pytestmark = lab_marks("keystone-manage", what="keystone")


def test_the_openstack_client_gets_a_token_and_a_catalog_at_the_vips(lab: Lab) -> None:
    token = openstack(lab, "token", "issue")
    assert token["id"] and token["project_id"]
    vip = rows(lab)["keystone"]["vip"]
    catalog = openstack(lab, "catalog", "list")
    identity = next(entry for entry in catalog if entry["Type"] == "identity")
    urls = [e["url"] for e in identity["Endpoints"]] if isinstance(identity["Endpoints"], list) else \
        [line.split("url: ")[-1] for line in str(identity["Endpoints"]).splitlines() if "url" in line]
    assert urls and all(f"http://{vip}:5000/v3" in url for url in urls), identity
    # What the README tells operators to type: nothing but the command.
    bare = cli("lab", "client", "--name", lab.spec.name, "--", "openstack", "token", "issue", "-f", "json")
    assert bare.returncode == 0 and json.loads(bare.stdout)["id"], bare.stderr


def test_one_time_jobs_ran_exactly_once_and_are_in_the_event_log(lab: Lab) -> None:
    expected = CLOUD_JOBS
    view = jobs_finished(lab)
    jobs = view["cloud"]["jobs"]
    assert {name: (job["state"], job["attempt"]) for name, job in jobs.items()} == {
        name: ("done", 1) for name in expected}
    done = [e for e in events(lab) if e["kind"] == "job.done"]
    assert sorted(e["detail"].split(",")[0] for e in done) == expected
    assert view["cloud"]["keys"] == "made"  # said, never shown: no Fernet key anywhere in the status
    assert not re.search(r"[A-Za-z0-9_-]{43}=", json.dumps(view))
    assert not re.search(r"AQ[A-Za-z0-9+/]{38}==", json.dumps(view))  # nor a cephx key (client.glance's)


def test_keystone_killed_is_restarted_in_place_and_data_stays(lab: Lab) -> None:
    project = f"p-{int(time.time())}"
    openstack(lab, "project", "create", project)
    before = rows(lab)["keystone"]
    print(kill_service(lab, "keystone"))
    killed = time.monotonic()
    wait_until(lambda: answers(lab, "token", "issue"), 120, "a token again after keystone was killed", interval=0.5)
    print(f"token issued again {time.monotonic() - killed:.1f}s after the kill")
    after = wait_until(lambda: healthy_at_vip(lab, "keystone"), 60, "keystone healthy again")
    assert after["node"] == before["node"] and after["restarts"] >= before["restarts"] + 1
    assert project in {p["Name"] for p in openstack(lab, "project", "list")}


def test_keystone_is_held_not_restarted_while_mariadb_is_down(lab: Lab) -> None:
    """MariaDB killed over and over: the Monitor repairs MariaDB; keystone waits, with an event saying why."""
    before = rows(lab)["keystone"]
    seen = max((e["seq"] for e in events(lab)), default=0)  # the cloud is shared: only what follows counts
    deadline = time.monotonic() + 60
    held = None
    while time.monotonic() < deadline and held is None:
        try:
            kill_service(lab, "mariadb")
        except Exception:  # between its death and its restart there is nothing to kill
            pass
        time.sleep(1.0)
        held = next((e for e in events(lab) if e["seq"] > seen and e["kind"] == "service.waiting"
                     and e.get("service") == "keystone"), None)
    assert held is not None, "keystone was never held while MariaDB was down"
    assert "mariadb" in held["reason"]
    wait_until(lambda: answers(lab, "token", "issue"), 300, "a token again once MariaDB is back", interval=1.0)
    after = rows(lab)["keystone"]
    assert after["node"] == before["node"], "keystone was moved because its database was down"
    assert after["restarts"] <= before["restarts"] + 1  # at most the restart after the grace, never a loop


