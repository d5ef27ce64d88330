"""placement-api in the lab-cloud catalog: stateless, its data in MariaDB, kept healthy by the Monitor.

On the package's cloud (conftest.py): the jobs make placement's database and schema and register it in keystone
(service type `placement` at its VIP), and Debian's placement-api answers
under uWSGI at its VIP. The real `openstack` client (with osc-placement)
lists and creates resource providers from the lab's client namespace; then
placement is killed, and the same calls answer again with the data kept.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from nodeos.lab.lab import Lab
from nodeos.lab.services import kill_service

from ..cluster_helpers import lab_marks, status_json, wait_until
from .helpers import answers, healthy_at_vip, live_node, openstack, rows

pytestmark = lab_marks("placement-api", what="placement-api")

SERVICE = "placement-api"
# 1.2 is where `resource provider list/create` begin in osc-placement; Zed's placement speaks 1.0-1.39.
VERSION = ("--os-placement-api-version", "1.2")


@pytest.fixture(scope="module")
def provider(lab: Lab) -> dict[str, Any]:
    """A resource provider made with the real client: data the kill must not lose."""
    return openstack(lab, *VERSION, "resource", "provider", "create", f"pl-rp-{int(time.time())}")


def providers(lab: Lab) -> list[dict[str, Any]] | None:
    """The resource provider list through placement's VIP, or None while it does not answer."""
    return answers(lab, *VERSION, "resource", "provider", "list")


def lists(lab: Lab, provider: dict[str, Any]) -> bool:
    found = providers(lab)
    return found is not None and any(p["uuid"] == provider["uuid"] for p in found)


def main_pid(lab: Lab, node_id: str) -> int | None:
    node = lab.node_name_of(node_id)
    record = Path(lab.node(node).state_dir) / "services" / SERVICE / "pid.json" if node else None
    try:
        return int(json.loads(record.read_text())["pid"]) if record else None
    except (OSError, ValueError, KeyError):
        return None


def test_placement_answers_at_its_vip_and_is_in_the_catalog(lab: Lab, provider: dict[str, Any]) -> None:
    assert lists(lab, provider)
    vip = rows(lab)[SERVICE]["vip"]
    entry = next(e for e in openstack(lab, "catalog", "list") if e["Type"] == "placement")
    assert entry["Name"] == "placement" and f"http://{vip}:8778" in json.dumps(entry["Endpoints"])
    view = status_json(lab, live_node(lab))
    jobs = {name: (job["state"], job["attempt"]) for name, job in view["cloud"]["jobs"].items()}
    for job in ("placement-db", "placement-db-sync", "keystone-register-placement"):
        assert jobs[job] == ("done", 1), jobs


def test_placement_killed_is_restarted_and_answers_with_its_data(lab: Lab, provider: dict[str, Any]) -> None:
    before = rows(lab)[SERVICE]
    old_pid = main_pid(lab, before["node"])
    print(kill_service(lab, SERVICE))
    killed = time.monotonic()
    # A new main process first: uWSGI's workers outlive a killed master for a moment and may still answer.
    wait_until(lambda: (pid := main_pid(lab, before["node"])) is not None and pid != old_pid, 60,
               "placement-api restarted with a new process", interval=0.2)
    wait_until(lambda: lists(lab, provider), 120, "the resource provider listed again after the kill", interval=0.5)
    print(f"\nresource provider list answered {time.monotonic() - killed:.1f}s after placement-api was killed")
    # Healthy with the restart counted: not the row from before the kill.
    after = wait_until(lambda: (row := healthy_at_vip(lab, SERVICE)) and row["restarts"] > before["restarts"] and row,
                       60, "placement-api healthy again, its restart counted")
    print(f"placement-api healthy {time.monotonic() - killed:.1f}s after the kill")
    assert after["node"] == before["node"] and after["vip"] == before["vip"]
