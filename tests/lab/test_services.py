"""Service Monitor lab tests: real agents, real memcached and nginx, real VIPs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nodeos.lab.lab import Lab

from .cluster_helpers import (CLIENT_SCRIPT, cli, host_of, in_client, is_root, lease_holders, new_lab, node_mac, service_row, status_json,
                              teardown, wait_services_healthy, wait_until)

pytestmark = [pytest.mark.lab, pytest.mark.skipif(not is_root(), reason="needs root for namespaces")]


@pytest.fixture
def lab():
    lab = new_lab(3, catalog="lab")
    lab.add_client()
    yield lab
    teardown(lab)


def memcached_answers(lab: Lab, vip: str) -> bool:
    answer = in_client(lab, "memcached", vip)
    return isinstance(answer, str) and answer.startswith("VERSION")


def kill(lab: Lab, service: str) -> str:
    """SIGKILL the service's process, once some node runs it (it may be restarting)."""
    def attempt() -> str | None:
        result = cli("lab", "fault", "kill-service", service, "--name", lab.spec.name)
        return result.stdout if result.returncode == 0 else None

    return wait_until(attempt, 20, f"a running {service} to kill", interval=0.1)


def test_killed_service_restarts_in_place_and_vip_keeps_answering(lab):
    lab.wait_formed(timeout=60)
    rows = wait_services_healthy(lab)
    vip, node = rows["memcached"]["vip"], rows["memcached"]["node"]
    assert memcached_answers(lab, vip)
    host = host_of(lab, "memcached")
    kill(lab, "memcached")
    wait_until(lambda: service_row(lab, "n1", "memcached")["restarts"] == 1, 20, "a restart decision")
    wait_until(lambda: memcached_answers(lab, vip), 20, "memcached answering through its VIP again")
    row = service_row(lab, "n1", "memcached")
    assert row["node"] == node and host_of(lab, "memcached") == host  # same node
    wanted = [node_mac(lab, host)]
    wait_until(lambda: in_client(lab, "who_has", vip, "0.3") == wanted, 10, f"ARP for {vip} answered by {host} only")
    events = cli("events", "--json", "--lab-node", "n1", "--lab", lab.spec.name).stdout
    restart = [json.loads(line) for line in events.splitlines() if '"service.restart"' in line]
    assert restart and restart[0]["service"] == "memcached" and restart[0]["reason"].startswith("failed")


def test_service_that_keeps_failing_migrates_with_its_vip(lab):
    lab.wait_formed(timeout=60)
    rows = wait_services_healthy(lab)
    vip, first_node = rows["memcached"]["vip"], rows["memcached"]["node"]
    first_host = host_of(lab, "memcached")
    for _ in range(6):  # max_restarts is 3: the 4th failure moves it (spare kills for slow reactions)
        row = service_row(lab, "n1", "memcached")
        if row["node"] != first_node:
            break
        wait_until(lambda: host_of(lab, "memcached") == first_host, 30, "memcached running on its first node")
        kill(lab, "memcached")
        wait_until(lambda: (r := service_row(lab, "n1", "memcached"))["generation"] > row["generation"] or r["node"] != first_node,
                   30, "the Monitor to restart or move memcached")
    new_host = wait_until(lambda: (h := host_of(lab, "memcached")) and h != first_host and h, 30, "memcached on another node")
    wait_until(lambda: memcached_answers(lab, vip), 20, "the VIP answering from the new node")
    wanted = [node_mac(lab, new_host)]
    wait_until(lambda: in_client(lab, "who_has", vip, "0.3") == wanted, 10, f"ARP for {vip} answered by {new_host} only")
    assert service_row(lab, "n1", "memcached")["vip"] == vip  # the VIP never changes
    events = cli("events", "--lab-node", "n1", "--lab", lab.spec.name).stdout
    assert "service.migrating" in events and "after 3 restarts" in events, events


def test_crashed_node_singletons_move_and_vips_answer_from_another_mac(lab):
    lab.wait_formed(timeout=60)
    rows = wait_services_healthy(lab)
    victim = host_of(lab, "memcached")
    victim_mac = node_mac(lab, victim)
    moved = [name for name, row in rows.items() if row["placement"] == "singleton" and host_of(lab, name) == victim]
    lab.crash(victim)
    survivors = [n for n in sorted(lab.spec.nodes) if n != victim]
    for name in moved:
        vip = rows[name]["vip"]
        wait_until(lambda: host_of(lab, name) in survivors, 30, f"{name} on a surviving node")
        macs = wait_until(lambda: (m := in_client(lab, "who_has", vip, "0.3")) and m, 20, f"ARP for {vip}")
        assert macs == [node_mac(lab, host_of(lab, name))] and victim_mac not in macs
    wait_until(lambda: memcached_answers(lab, rows["memcached"]["vip"]), 20, "memcached through its VIP")
    observer = survivors[0]
    wait_until(lambda: any(m["status"] == "lost" for m in status_json(lab, observer)["members"]), 20, "the loss reported")


def test_monitor_crash_during_migration_is_completed_by_the_next_monitor(lab):
    lab.wait_formed(timeout=60)
    rows = wait_services_healthy(lab)
    names = sorted(lab.spec.nodes)
    monitor = wait_until(lambda: lease_holders(lab, names), 10, "a Monitor")[0]
    source = host_of(lab, "memcached")
    if source == monitor:  # keep the service away from the Monitor we are going to kill
        other = next(n for n in names if n != monitor)
        assert cli("service", "move", "memcached", "--to", status_json(lab, other)["node_id"], "--lab-node", "n1",
                   "--lab", lab.spec.name).returncode == 0
        wait_until(lambda: host_of(lab, "memcached") == other and service_row(lab, other, "memcached")["migration"] is None,
                   30, "the preparatory move")
        source = other
    target = next(n for n in names if n not in (monitor, source))
    target_id = status_json(lab, target)["node_id"]
    result = cli("service", "move", "memcached", "--to", target_id, "--lab-node", source, "--lab", lab.spec.name)
    assert result.returncode == 0, result.stderr
    lab.crash(monitor)  # the migration is in flight: the target needs >= 1 s to report healthy
    survivors = [n for n in names if n != monitor]
    seen_hosts = set()

    def finished() -> bool:
        host = host_of(lab, "memcached")  # asserts it never runs on two nodes
        seen_hosts.add(host)
        row = service_row(lab, source, "memcached")
        return host == target and row["migration"] is None and row["health"] == "healthy"

    wait_until(finished, 40, "the new Monitor to complete the migration", interval=0.05)
    assert seen_hosts <= {source, target, None}
    assert memcached_answers(lab, rows["memcached"]["vip"])
    events = [json.loads(line) for line in cli("events", "--json", "--lab-node", target, "--lab", lab.spec.name).stdout.splitlines()]
    done = [e for e in events if e["kind"] == "service.migrated" and e["service"] == "memcached"][-1]
    monitor_id = status_json(lab, survivors[0])["monitor"]
    assert monitor_id in done["detail"]  # completed by the new Monitor


def test_partitioned_vip_holder_drops_vips_before_majority_takes_them(lab, tmp_path):
    lab.wait_formed(timeout=60)
    rows = wait_services_healthy(lab)
    vips = [row["vip"] for row in rows.values() if row.get("vip")]
    holder = host_of(lab, "memcached")
    stop = tmp_path / "stop"
    ns = lab.add_client()
    samplers = [subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", CLIENT_SCRIPT, "sample_arp", vip, str(stop), "0.025"],
                                 stdout=subprocess.PIPE, text=True) for vip in vips]
    try:
        time.sleep(1.0)
        lab.partition([holder])
        majority = [n for n in sorted(lab.spec.nodes) if n != holder]
        wait_until(lambda: host_of(lab, "memcached") in majority, 30, "memcached on the majority side")
        wait_until(lambda: memcached_answers(lab, rows["memcached"]["vip"]), 20, "memcached through its VIP")
        time.sleep(1.0)
        lab.heal()
        time.sleep(2.0)
    finally:
        stop.touch()
        outputs = [sampler.communicate(timeout=30)[0] for sampler in samplers]
    samples = [json.loads(line) for out in outputs for line in out.splitlines()]
    for vip in vips:
        times = sorted(s["t"] for s in samples if s["vip"] == vip)
        gaps = sorted(b - a for a, b in zip(times, times[1:]))
        assert len(times) > 50 and gaps[int(0.95 * len(gaps))] <= 0.05, f"{vip}: sampled too slowly"
    doubles = [s for s in samples if len(s["macs"]) > 1]
    assert not doubles, doubles[:5]
    holder_mac = node_mac(lab, holder)
    memcached_vip = rows["memcached"]["vip"]
    macs_seen = [s["macs"] for s in samples if s["vip"] == memcached_vip and s["macs"]]
    assert [holder_mac] in macs_seen and any(m != [holder_mac] for m in macs_seen)
    # The cut-off holder dropped its VIPs by itself (self-fencing: its guard, its fence keeper or its services pass).
    state_dir = Path(lab.node(holder).state_dir)
    log = (state_dir / "agent.log").read_text()
    assert '"fence.engaged"' in log
    removed = set()
    for line in log.splitlines() + (state_dir / "guard.log").read_text().splitlines():
        event = json.loads(line) if line.startswith("{") else {}
        if event.get("event") in ("guard.fenced", "fence.local"):
            removed.update(event.get("removed_vips") or [])
        elif event.get("event") == "vip.removed":
            removed.add(event.get("ip"))
    assert memcached_vip in removed


def test_bad_catalog_is_refused_with_a_clear_message_and_changes_nothing(lab, tmp_path):
    lab.wait_formed(timeout=60)
    wait_services_healthy(lab)
    before = json.loads(cli("catalog", "show", "--lab-node", "n1", "--lab", lab.spec.name).stdout)
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nservices:\n  web:\n    placement: singleton\n    port: 99999\n    start: {command: [nginx]}\n")
    result = cli("catalog", "apply", str(bad), "--lab-node", "n1", "--lab", lab.spec.name)
    assert result.returncode == 2
    assert f"{bad}:5" in result.stderr and "port" in result.stderr, result.stderr
    # Straight to the agent, bypassing the CLI's own check: refused the same way.
    from nodeos.cluster.control import request
    code, payload = request(lab.node_socket("n2"), "POST", "/catalog", {"text": bad.read_text(), "source": "bad.yaml"})
    assert code == 400 and "bad.yaml:5" in payload["error"]
    after = json.loads(cli("catalog", "show", "--lab-node", "n1", "--lab", lab.spec.name).stdout)
    assert after == before
    assert {r["name"] for r in status_json(lab, "n3")["services"]} == {"memcached", "nginx", "node-http"}
