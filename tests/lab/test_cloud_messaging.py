"""The OpenStack control plane's message broker (issue 9): RabbitMQ on its volume, configured by the agents.

One 3-node lab per module with the `lab-cloud` catalog's Ceph and RabbitMQ
(the rest of the cloud is the cloud package's, tests/lab/cloud): the agents write the
broker's files from the replicated state, it starts on its RBD volume with
the node name rabbit@localhost, and the openstack user (its password derived
from the cluster secret) publishes and consumes through the VIP. Clients run
in the lab's client namespace, so every call crosses the lab LAN to the VIP.
Figures (time to healthy, restart, move, the broker's RSS) are printed, not
asserted.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import psutil
import pytest

from nodeos.cloud.secrets import mq_password
from nodeos.cluster.identity import load_identity
from nodeos.lab import netns
from nodeos.lab.lab import Lab
from nodeos.lab.services import kill_service

from .cluster_helpers import is_root, rss_mb, status_json, teardown, wait_until
from .cloud.helpers import catalog_for
from .test_storage_agent import SETTLE, live_nodes, settled

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(not is_root(), reason="needs root for namespaces"),
    pytest.mark.skipif(not Path("/usr/lib/rabbitmq/bin/rabbitmq-server").exists(),
                       reason="RabbitMQ is not installed (scripts/apt-packages.txt)"),
    pytest.mark.skipif(subprocess.run(["which", "ceph-mon"], capture_output=True).returncode != 0,
                       reason="Ceph is not installed (scripts/apt-packages.txt)"),
]

SEEN: set[int] = set()  # every broker process (beam.smp, epmd) the lab ran: none may outlive it

# A client of the broker, run in the lab's client namespace (python3-amqp's API, as oslo.messaging uses it).
AMQP_CLIENT = r'''
import json, sys, amqp
action, host, user, password, queue = sys.argv[1:6]
try:
    conn = amqp.Connection(host=f"{host}:5672", userid=user, password=password,
                           connect_timeout=5, read_timeout=5, write_timeout=5)
    conn.connect()
    channel = conn.channel()
    channel.queue_declare(queue, durable=True, auto_delete=False)
    if action == "publish":  # persistent, and confirmed: the broker has it on disk
        channel.basic_publish_confirm(amqp.Message(sys.argv[6], delivery_mode=2), exchange="", routing_key=queue,
                                      confirm_timeout=5)
        result = "published"
    else:
        message = channel.basic_get(queue, no_ack=True)
        body = None if message is None else message.body
        result = body.decode() if isinstance(body, bytes) else body
    conn.close()
    print(json.dumps({"ok": True, "result": result}))
except Exception as exc:
    print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}))
'''


def rows(lab: Lab) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in status_json(lab, live_nodes(lab)[0])["services"]}


def rabbitmq_healthy(lab: Lab) -> dict[str, Any] | None:
    row = rows(lab).get("rabbitmq")
    return row if row and row["health"] == "healthy" and row["vip"] else None


def holder(lab: Lab) -> str:
    name = lab.node_name_of(rows(lab)["rabbitmq"]["node"])
    assert name
    return name


def broker_pids(lab: Lab, node: str) -> dict[str, list[int]]:
    """The node's beam.smp and epmd processes, found by its network namespace."""
    found: dict[str, list[int]] = {"beam.smp": [], "epmd": []}
    for pid in netns.namespace_pids(lab.node(node).ns):
        try:
            name = psutil.Process(pid).name()
        except psutil.Error:
            continue
        if name in found:
            found[name].append(pid)
    return found


def amqp_client(lab: Lab, action: str, queue: str, body: str = "", user: str = "openstack",
                password: str | None = None) -> dict[str, Any]:
    vip = rows(lab)["rabbitmq"]["vip"]
    password = mq_password(load_identity(lab.identity_path)) if password is None else password
    argv = ["ip", "netns", "exec", lab.add_client(), sys.executable, "-c", AMQP_CLIENT, action, vip, user, password, queue]
    result = subprocess.run([*argv, body] if body else argv, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr[-800:]
    return json.loads(result.stdout)


def probe(lab: Lab) -> tuple[bool, str]:
    """The agent's own check, run from the client namespace through the VIP."""
    vip = rows(lab)["rabbitmq"]["vip"]
    password = mq_password(load_identity(lab.identity_path))
    code = ("import json, sys; from nodeos.cloud.probes import rabbitmq_publish_consume as p; "
            "print(json.dumps(p(sys.argv[1], 5672, 'openstack', sys.argv[2], 2.0)))")
    result = subprocess.run(["ip", "netns", "exec", lab.add_client(), sys.executable, "-c", code, vip, password],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr[-800:]
    ok, detail = json.loads(result.stdout)
    return ok, detail


def in_node(lab: Lab, node: str, *argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """A command inside the node: its network and mount namespaces (Debian's paths are the node's)."""
    return subprocess.run([*lab.node_exec_argv(node), *argv], capture_output=True, text=True, timeout=timeout)


def failing(result: tuple[bool, str]) -> str | None:
    return None if result[0] else result[1]


def healthy_elsewhere(lab: Lab, node: str) -> dict[str, Any] | None:
    row = rabbitmq_healthy(lab)
    return row if row and lab.node_name_of(row["node"]) != node else None


def consumed(lab: Lab, queue: str) -> str | None:
    reply = amqp_client(lab, "get", queue)
    return reply["result"] if reply["ok"] else None


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    catalog = catalog_for("rabbitmq", tmp_path_factory.mktemp("rmq") / "catalog.yaml")
    lab = Lab.create("rmq" + secrets.token_hex(2)[:3], 3, catalog=str(catalog))
    try:
        started = time.monotonic()
        lab.start_all()
        lab.wait_formed(timeout=60)
        wait_until(lambda: settled(lab, 3), SETTLE, "Ceph HEALTH_OK with 3 OSDs up and in, PGs active+clean")
        ceph = time.monotonic()
        wait_until(lambda: rabbitmq_healthy(lab), 180, "rabbitmq healthy at its VIP", interval=0.5)
        now = time.monotonic()
        print(f"\nrabbitmq healthy {now - started:.1f}s after lab up ({now - ceph:.1f}s after Ceph settled)")
        yield lab
    finally:
        for name in lab.spec.nodes:
            remember(lab, name)
            keep_broker_log(lab, name)
        teardown(lab)
        left = [pid for pid in SEEN if alive(pid)]
        assert not left, f"broker processes outlived the lab: {left}"


def keep_broker_log(lab: Lab, node: str) -> None:
    """The broker's own log next to the agents' (teardown keeps those) in artifacts/lab-NAME/."""
    log = Path(lab.node(node).state_dir) / "services/rabbitmq/service.log"
    if log.exists():
        target = Path("artifacts") / f"lab-{lab.spec.name}" / node
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(log, target / "rabbitmq.log")


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def remember(lab: Lab, node: str) -> dict[str, list[int]]:
    pids = broker_pids(lab, node)
    SEEN.update(pid for group in pids.values() for pid in group)
    return pids


def test_the_broker_answers_at_its_vip_as_openstack_only(lab: Lab) -> None:
    node = holder(lab)
    assert amqp_client(lab, "publish", "rmq-hello", "hello") == {"ok": True, "result": "published"}
    assert consumed(lab, "rmq-hello") == "hello"
    for user, password in (("guest", "guest"), ("openstack", "wrong")):
        reply = amqp_client(lab, "get", "rmq-hello", user=user, password=password)
        assert not reply["ok"] and "ACCESS_REFUSED" in reply["error"], reply
    ok, detail = probe(lab)
    assert ok and detail.startswith("published and consumed on "), detail

    # One node name everywhere; Erlang's own ports only on the node's loopback; epmd in the service's group.
    status = in_node(lab, node, "rabbitmqctl", "-q", "eval", "node().")
    assert status.returncode == 0 and status.stdout.strip() == "rabbit@localhost", status.stderr
    listening = in_node(lab, node, "ss", "-Hltn").stdout
    for port in ("4369", "25672"):
        local = [line.split()[3] for line in listening.splitlines() if line.split()[3].endswith(f":{port}")]
        assert local and all(a.startswith(("127.0.0.1:", "[::1]:")) for a in local), (port, local)
    pids = remember(lab, node)
    assert len(pids["beam.smp"]) == 1 and len(pids["epmd"]) == 1, pids
    beam, epmd = pids["beam.smp"][0], pids["epmd"][0]
    assert psutil.Process(beam).username() == "rabbitmq"
    assert Path(lab.node(node).state_dir, "services/rabbitmq/pid.json").read_text().count(str(beam)) == 1  # main pid
    assert os.getpgid(epmd) == os.getpgid(beam)  # stopped with the service
    cookie = Path(lab.node(node).state_dir) / "root/var/lib/rabbitmq/.erlang.cookie"  # on the volume
    st = cookie.stat()
    assert stat.S_IMODE(st.st_mode) == 0o400 and st.st_uid == psutil.Process(beam).uids().real
    print(f"\nbeam.smp RSS {rss_mb(beam):.0f} MiB, epmd {rss_mb(epmd):.1f} MiB")


def test_a_memory_alarm_is_reported_as_the_alarm_layer(lab: Lab) -> None:
    node = holder(lab)
    low = in_node(lab, node, "rabbitmqctl", "-q", "set_vm_memory_high_watermark", "absolute", "10MiB")
    assert low.returncode == 0, low.stderr
    try:
        detail = wait_until(lambda: failing(probe(lab)), 20, "the probe to fail")
        assert detail.startswith("alarm: publishing blocked by the broker"), detail
    finally:
        in_node(lab, node, "rabbitmqctl", "-q", "set_vm_memory_high_watermark", "absolute", "512MiB")
    wait_until(lambda: probe(lab)[0], 60, "the probe to pass again (or the broker restarted)", interval=0.5)
    wait_until(lambda: rabbitmq_healthy(lab), 60, "rabbitmq healthy again", interval=0.5)


def test_the_broker_killed_is_restarted_in_place_with_its_messages(lab: Lab) -> None:
    before = rabbitmq_healthy(lab)
    assert before
    node = holder(lab)
    assert amqp_client(lab, "publish", "rmq-kill", "kept")["ok"]
    remember(lab, node)
    print(kill_service(lab, "rabbitmq"))
    killed = time.monotonic()
    after = wait_until(lambda: rabbitmq_healthy(lab) if probe(lab)[0] else None, 120, "rabbitmq back after a kill",
                       interval=0.5)
    print(f"\nrabbitmq answering again {time.monotonic() - killed:.1f}s after SIGKILL of beam.smp")
    assert after["node"] == before["node"] and after["restarts"] >= before["restarts"] + 1
    assert consumed(lab, "rmq-kill") == "kept"
    pids = remember(lab, node)
    assert len(pids["beam.smp"]) == 1 and len(pids["epmd"]) == 1, pids  # the killed broker's epmd went with it


def test_a_crashed_node_and_the_broker_comes_back_elsewhere_with_its_name_and_queue(lab: Lab) -> None:
    node = holder(lab)
    body = f"before-crash-{int(time.time())}"
    assert amqp_client(lab, "publish", "rmq-crash", body)["ok"]
    remember(lab, node)
    lab.crash(node)
    crashed = time.monotonic()
    wait_until(lambda: healthy_elsewhere(lab, node), 180, f"rabbitmq healthy on another node after {node} crashed",
               interval=0.5)
    moved = time.monotonic() - crashed
    assert consumed(lab, "rmq-crash") == body  # the durable queue and its persistent message moved with the volume
    print(f"\n{node} crashed: rabbitmq healthy on {holder(lab)} after {moved:.1f}s, the message still there")
    new = holder(lab)
    status = in_node(lab, new, "rabbitmqctl", "-q", "eval", "node().")
    assert status.stdout.strip() == "rabbit@localhost", status.stderr
    remember(lab, new)
