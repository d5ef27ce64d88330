"""What the cloud modules share: the status rows, the real `openstack` client from the lab's
client namespace, the one-time jobs, and `restored` (every node up and the cloud healthy)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from nodeos.lab.lab import Lab
from nodeos.lab.services import kill_service
from nodeos.services.catalog import packaged_catalog

from ..cluster_helpers import cli, status_json, wait_until

CLOUD_SINGLETONS = ("mariadb", "rabbitmq", "memcached", "keystone", "glance-api", "placement-api",  # healthy again after a fault
                    "nova-api", "nova-conductor", "nova-scheduler", "cinder-api", "cinder-scheduler", "cinder-volume",
                    "neutron-server", "horizon")
CLOUD_SETTLE = 300.0  # MariaDB's first start on its volume, keystone's schema (a minute on 2 cores), bootstrap
CLOUD_JOBS = ["cinder-db", "cinder-db-sync", "glance-db", "glance-db-sync", "keystone-bootstrap", "keystone-db-sync",
              "keystone-register-cinder", "keystone-register-glance", "keystone-register-neutron",
              "keystone-register-nova", "keystone-register-placement", "neutron-db", "neutron-db-sync",
              "nova-api-db-sync", "nova-cell0-map", "nova-cell1-create", "nova-db", "nova-db-sync", "placement-db",
              "placement-db-sync"]


def up_in(lab: Lab, api: str, binary: str, host: str) -> bool:
    """nova's or cinder's own view (`api`: compute, volume), through its API's VIP: the daemon's
    record on `host` is up."""
    services = answers(lab, api, "service", "list", "--service", binary)
    return services is not None and any(s["Host"] == host and s["State"] == "up" for s in services)


def live_node(lab: Lab) -> str:
    return next(name for name, node in sorted(lab.spec.nodes.items())
                if node.pid is not None and os.path.exists(f"/proc/{node.pid}"))


def rows(lab: Lab, node: str | None = None) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in status_json(lab, node or live_node(lab))["services"]}


def healthy(lab: Lab, service: str) -> dict[str, Any] | None:
    row = rows(lab).get(service)
    return row if row and row["health"] == "healthy" else None


def healthy_at_vip(lab: Lab, service: str) -> dict[str, Any] | None:
    row = healthy(lab, service)
    return row if row and row["vip"] else None


def killed_and_restarted(lab: Lab, service: str, answered: Callable[[], Any] | None = None, what: str = "",
                         timeout: float = 120.0) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """SIGKILL `service` where it runs; its rows before and once healthy again (at its VIP, if it
    had one) with the restart counted, and what `answered` returned first (a client's call that
    works again, `what` it is), timed from the kill."""
    before = rows(lab)[service]
    print(kill_service(lab, service, lab.node_name_of(before["node"])))
    killed = time.monotonic()
    answer = None
    if answered is not None:
        answer = wait_until(answered, timeout, f"{what} again after the kill", interval=0.5)
        print(f"\n{what} {time.monotonic() - killed:.1f}s after the kill")
    check = healthy_at_vip if before["vip"] else healthy
    after = wait_until(lambda: (row := check(lab, service)) and row["restarts"] > before["restarts"] and row,
                       timeout, f"{service} healthy again, its restart counted")
    print(f"\n{service} healthy {time.monotonic() - killed:.1f}s after the kill")
    return before, after, answer


def catalog_for(service: str | tuple[str, ...], path: Path) -> str:
    """lab-cloud trimmed to Ceph, `service` (or several) and what it depends on, written to `path`
    (for a module that needs one part of the cloud in a lab of its own)."""
    data = yaml.safe_load(packaged_catalog("lab-cloud").read_text())
    services = data["services"]
    wanted = {name for name in services if name.startswith("ceph-")}
    todo = [service] if isinstance(service, str) else list(service)
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo.extend(services[name].get("depends_on", []))
    data["services"] = {name: spec for name, spec in services.items() if name in wanted}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def events(lab: Lab) -> list[dict[str, Any]]:
    """The event log as the replicated state keeps it (its last 1,000 events)."""
    result = cli("events", "--json", "--limit", "1000", "--lab", lab.spec.name, "--lab-node", live_node(lab))
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def openrc_env(lab: Lab) -> dict[str, str]:
    result = cli("credentials", "--format", "openrc", "--lab", lab.spec.name, "--lab-node", live_node(lab))
    assert result.returncode == 0, result.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    for line in result.stdout.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            env[key] = shlex.split(value)[0] if value else ""
    return env


def openstack(lab: Lab, *args: str, timeout: float = 60.0) -> Any:
    """The real client, from the lab's client namespace; JSON output."""
    return json.loads(openstack_do(lab, *args, "-f", "json", timeout=timeout))


def openstack_do(lab: Lab, *args: str, timeout: float = 60.0) -> str:
    """The real client, from the lab's client namespace; what it printed (a delete prints nothing)."""
    argv = ["ip", "netns", "exec", lab.add_client(), "openstack", *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=openrc_env(lab))
    assert result.returncode == 0, f"openstack {' '.join(args)}: {result.stderr[-800:]}"
    return result.stdout


def answers(lab: Lab, *args: str) -> Any:
    try:
        return openstack(lab, *args, timeout=30.0)
    except (AssertionError, subprocess.TimeoutExpired):
        return None


def jobs_finished(lab: Lab) -> dict[str, Any]:
    """The status once every one-time job is done or failed (keystone answers about 90 s before
    nova's cells and schema are made)."""
    def finished() -> dict[str, Any] | None:
        view = status_json(lab, live_node(lab))
        jobs = view["cloud"]["jobs"]
        return view if all(jobs.get(name, {}).get("state") in ("done", "failed") for name in CLOUD_JOBS) else None

    return wait_until(finished, 240, "every one-time job finished", interval=1.0)


def monitor_node(lab: Lab) -> str:
    view = status_json(lab, live_node(lab))
    name = lab.node_name_of(view["monitor"])
    assert name, view["monitor"]
    return name


def holder(lab: Lab, service: str, seen_from: str | None = None) -> str:
    row = rows(lab, seen_from)[service]
    node = lab.node_name_of(row["node"])
    assert node, row
    return node


def restored(lab: Lab) -> None:
    """Every node up again, Ceph's daemons and the cloud's singletons healthy (the next test's start)."""
    for name, node in lab.spec.nodes.items():
        if node.pid is None or not os.path.exists(f"/proc/{node.pid}"):
            lab.start_agent(name)
    lab.wait_formed(timeout=90)

    def all_healthy() -> bool:
        view = rows(lab)
        return all(view[s]["health"] == "healthy 3/3" for s in ("ceph-mon", "ceph-osd")) and \
            all(view[s]["health"] == "healthy" for s in CLOUD_SINGLETONS if s in view)

    wait_until(all_healthy, 300, "Ceph and the cloud healthy on all nodes again", interval=1.0)
