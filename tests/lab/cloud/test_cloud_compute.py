"""nova's control plane in the lab-cloud catalog: nova-api, nova-conductor and nova-scheduler, kept healthy.

On the package's cloud (conftest.py): the jobs make nova's three databases and cells v2 (cell0, cell1) and register
the `compute` service in keystone; Debian's nova-api answers under uWSGI at
its VIP. The real `openstack` client lists nova's services from the lab's
client namespace: the conductor and the scheduler are `up` under the one host
name they keep wherever nodeos places them. Then the conductor is killed: it is restarted and
reported `up` again by nova itself.
"""

from __future__ import annotations

import json

from nodeos.cloud.registry import CONTROL_HOST
from nodeos.lab.lab import Lab

from ..cluster_helpers import lab_marks, status_json, wait_until
from .helpers import healthy, killed_and_restarted, live_node, openstack, rows, up_in

pytestmark = lab_marks("nova-conductor", what="nova")

DAEMONS = ("nova-conductor", "nova-scheduler")


def test_conductor_and_scheduler_are_up_in_nova_under_the_control_host(lab: Lab) -> None:
    placed = rows(lab)
    for daemon in DAEMONS:
        assert up_in(lab, "compute", daemon, CONTROL_HOST), openstack(lab, "compute", "service", "list")
    entry = next(e for e in openstack(lab, "catalog", "list") if e["Type"] == "compute")
    assert entry["Name"] == "nova" and f"http://{placed['nova-api']['vip']}:8774/v2.1" in json.dumps(entry["Endpoints"])
    assert openstack(lab, "server", "list") == []
    view = status_json(lab, live_node(lab))
    jobs = {name: (job["state"], job["attempt"]) for name, job in view["cloud"]["jobs"].items()}
    for job in ("nova-db", "nova-api-db-sync", "nova-cell0-map", "nova-cell1-create", "nova-db-sync",
                "keystone-register-nova"):
        assert jobs[job] == ("done", 1), jobs


def test_conductor_killed_is_restarted_and_reported_up_by_nova(lab: Lab) -> None:
    before, after, _ = killed_and_restarted(lab, "nova-conductor")
    assert after["node"] == before["node"]
    assert up_in(lab, "compute", "nova-conductor", CONTROL_HOST)
    # The scheduler's reports go through the conductor; it is healthy again too (held, not moved, meanwhile).
    scheduler = wait_until(lambda: healthy(lab, "nova-scheduler"), 60, "nova-scheduler healthy")
    print(f"nova-scheduler: {scheduler['restarts']} restart(s) counted")
