"""ProcessRuntime with the real daemons of lab.yaml (memcached, nginx).

Services run in a fresh network namespace, so the catalog's real ports (80,
11211) are free and nothing collides with parallel runs. A crash of the
agent is simulated by a separate Python process that starts a service and
exits; a new ProcessRuntime must then find and stop what it left behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import psutil
import pytest

from nodeos.services.catalog import Catalog, HealthCheckSpec, ServiceSpec, load_catalog, packaged_catalog
from nodeos.services.health import CheckTarget, ServiceHealth, run_check
from nodeos.services.runtime import LOG_FILE, PID_FILE, ProcessRuntime, Runtime, ServiceContext, ServiceRuntimeError

if TYPE_CHECKING:
    from tests.lab.conftest import LabNode, LabTools

pytestmark = pytest.mark.lab
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root")

CATALOG = load_catalog(packaged_catalog("lab"))
NODE_ID = "lab-node-1"


def live_group_members(pgid: int) -> list[int]:
    """Non-zombie processes in a process group (zombies of orphans belong to init)."""
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) == pgid:
                members.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def is_live(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def runtime(tmp_path: Path, request: pytest.FixtureRequest) -> ProcessRuntime:
    rt = ProcessRuntime(tmp_path / "run")
    request.addfinalizer(lambda: ProcessRuntime(tmp_path / "run").stop_all(timeout=2.0))
    return rt


@pytest.fixture
def node(lab_node: Callable[[int], LabNode]) -> LabNode:
    return lab_node(1)


def wait_healthy(
    lab: type[LabTools], node: LabNode, rt: ProcessRuntime, spec: ServiceSpec, timeout: float
) -> ServiceHealth:
    health = ServiceHealth(spec.health, now=time.monotonic())
    deadline = time.monotonic() + timeout
    while health.state != "healthy" and time.monotonic() < deadline:
        target = CheckTarget(host="127.0.0.1", pid=rt.main_pid(spec.name))
        lab.in_netns(node.ns, lambda: health.run_due(target, time.monotonic()))
        time.sleep(0.1)
    return health


def memcached_set_get(host: str, port: int) -> bytes:
    import socket

    with socket.create_connection((host, port), timeout=3) as sock:
        sock.sendall(b"set greeting 0 0 5\r\nhello\r\nget greeting\r\n")
        data = b""
        while b"END\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        return data


# ---------------------------------------------------------------- real daemons


@needs_root
def test_real_services_start_healthy_then_die_and_stop_cleanly(
    lab: type[LabTools], node: LabNode, runtime: ProcessRuntime
) -> None:
    assert isinstance(runtime, Runtime)
    ctx = ServiceContext(node_id=NODE_ID, vip=None, bind="0.0.0.0")
    for name in CATALOG.start_order():
        if name in ("memcached", "nginx"):
            lab.in_netns(node.ns, lambda: runtime.start(CATALOG[name], ctx))
    assert runtime.running() == {"memcached", "nginx"}

    for name in ("memcached", "nginx"):
        health = wait_healthy(lab, node, runtime, CATALOG[name], timeout=15)
        log_text = (runtime.run_dir(name) / LOG_FILE).read_text()
        assert health.state == "healthy", f"{name}: {health.details()}\n{log_text}"

    # Real traffic, not just a port probe.
    assert b"VALUE greeting 0 5\r\nhello" in lab.in_netns(node.ns, lambda: memcached_set_get("127.0.0.1", 11211))
    page = HealthCheckSpec(
        type="http", port=80, path="/", expect_status=200, expect_body=f"nginx on node {NODE_ID}"
    )
    assert lab.in_netns(node.ns, lambda: run_check(page, CheckTarget())).ok
    conf = (runtime.run_dir("nginx") / "nginx.conf").read_text()
    assert str(runtime.run_dir("nginx")) in conf

    # start() again is a no-op while the service runs.
    nginx_pid = runtime.main_pid("nginx")
    assert nginx_pid is not None
    lab.in_netns(node.ns, lambda: runtime.start(CATALOG["nginx"], ctx))
    assert runtime.main_pid("nginx") == nginx_pid
    record = json.loads((runtime.run_dir("nginx") / PID_FILE).read_text())
    assert record["pid"] == nginx_pid and record["create_time"] == psutil.Process(nginx_pid).create_time()

    # SIGKILL the nginx master: the runtime notices, and reaps it (no zombie).
    memcached_pid = runtime.main_pid("memcached")
    assert memcached_pid is not None
    workers = [p for p in live_group_members(nginx_pid) if p != nginx_pid]
    assert workers, "nginx should have a worker process in its group"
    os.kill(nginx_pid, signal.SIGKILL)
    assert lab.wait_for(lambda: not runtime.is_running("nginx"), timeout=5)
    assert runtime.main_pid("nginx") is None
    assert not psutil.pid_exists(nginx_pid), "the killed main process was not reaped"
    assert runtime.running() == {"memcached"}
    dead_check = lab.in_netns(node.ns, lambda: run_check(CATALOG["nginx"].health[0], CheckTarget(pid=nginx_pid)))
    assert not dead_check.ok

    # stop_all leaves nothing of either group, orphaned nginx workers included.
    runtime.stop_all()
    assert live_group_members(nginx_pid) == []
    assert live_group_members(memcached_pid) == []
    assert not psutil.pid_exists(memcached_pid), "memcached was not reaped"
    assert runtime.running() == set()
    assert not (runtime.run_dir("nginx") / PID_FILE).exists()
    assert (runtime.run_dir("nginx") / LOG_FILE).exists()  # the log stays for the operator


@needs_root
def test_new_runtime_finds_and_stops_a_leftover_of_a_crashed_agent(
    lab: type[LabTools], node: LabNode, tmp_path: Path, runtime: ProcessRuntime
) -> None:
    run_root = tmp_path / "run"
    previous_agent = (
        "import json, pathlib\n"
        "from nodeos.services.catalog import load_catalog, packaged_catalog\n"
        "from nodeos.services.runtime import ProcessRuntime, ServiceContext\n"
        f"rt = ProcessRuntime(pathlib.Path({str(run_root)!r}))\n"
        "rt.start(load_catalog(packaged_catalog('lab'))['memcached'], ServiceContext(node_id='old'))\n"
        "print(json.dumps(rt.main_pid('memcached')))\n"
    )
    leftover_pid = lab.ns_python(node.ns, previous_agent)  # this "agent" exits right away
    assert isinstance(leftover_pid, int) and is_live(leftover_pid)

    fresh = ProcessRuntime(run_root)
    assert fresh.running() == {"memcached"}
    assert fresh.main_pid("memcached") == leftover_pid
    tcp = CATALOG["memcached"].health[1]
    assert lab.wait_for(lambda: lab.in_netns(node.ns, lambda: run_check(tcp, CheckTarget()).ok), timeout=5)

    fresh.stop_all()
    assert not is_live(leftover_pid)
    assert live_group_members(leftover_pid) == []
    assert fresh.running() == set()
    assert not lab.in_netns(node.ns, lambda: run_check(tcp, CheckTarget()).ok)


# ---------------------------------------------------------------- process semantics (no daemons)


def sleeper_catalog(command: list[str]) -> Catalog:
    return Catalog.from_dict(
        {"services": {"sleeper": {"placement": "every-node", "start": {"command": command}}}}
    )


@pytest.fixture
def stranger(request: pytest.FixtureRequest) -> Iterator[subprocess.Popen[bytes]]:
    """A process the runtime did NOT start (stands in for whoever got a recycled pid)."""
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    request.addfinalizer(lambda: (proc.kill(), proc.wait()))
    yield proc


def test_recycled_pid_record_is_never_signalled(
    runtime: ProcessRuntime, stranger: subprocess.Popen[bytes]
) -> None:
    run_dir = runtime.run_dir("memcached")
    run_dir.mkdir(parents=True)
    true_start = psutil.Process(stranger.pid).create_time()
    record = {"pid": stranger.pid, "create_time": true_start - 1000.0, "argv": ["memcached"]}
    (run_dir / PID_FILE).write_text(json.dumps(record))

    fresh = ProcessRuntime(runtime.run_root)
    assert not fresh.is_running("memcached")
    assert fresh.main_pid("memcached") is None
    assert fresh.running() == set()
    fresh.stop("memcached", timeout=0.5)
    fresh.stop_all(timeout=0.5)
    time.sleep(0.2)
    assert stranger.poll() is None, "a process with a recycled pid was signalled"
    assert is_live(stranger.pid)
    assert not (run_dir / PID_FILE).exists()  # the stale record is dropped


@pytest.mark.parametrize("garbage", ["", "{", "[]", '{"pid": "12"}', '{"pid": 1, "create_time": 0}'])
def test_garbage_pid_record_is_ignored(runtime: ProcessRuntime, garbage: str) -> None:
    run_dir = runtime.run_dir("sleeper")
    run_dir.mkdir(parents=True)
    (run_dir / PID_FILE).write_text(garbage)
    assert runtime.main_pid("sleeper") is None
    runtime.stop_all(timeout=0.5)


def test_orphaned_group_members_are_stopped_after_the_main_process_dies(runtime: ProcessRuntime) -> None:
    spec = sleeper_catalog(["sh", "-c", "sleep 60 & wait"])["sleeper"]
    runtime.start(spec, ServiceContext(node_id="n"))
    main = runtime.main_pid("sleeper")
    assert main is not None
    members: list[int] = []
    deadline = time.monotonic() + 5
    while len(members) < 2 and time.monotonic() < deadline:
        members = live_group_members(main)
    grandchild = next(pid for pid in members if pid != main)
    os.kill(main, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while runtime.is_running("sleeper") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not runtime.is_running("sleeper")
    assert is_live(grandchild)  # orphaned, still in the group
    runtime.stop("sleeper")
    assert not is_live(grandchild)
    assert live_group_members(main) == []


def test_stop_escalates_to_sigkill(runtime: ProcessRuntime) -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('RE' + 'ADY', flush=True); time.sleep(60)"
    )
    spec = sleeper_catalog([sys.executable, "-c", code])["sleeper"]
    runtime.start(spec, ServiceContext(node_id="n"))
    pid = runtime.main_pid("sleeper")
    assert pid is not None
    log_path = runtime.run_dir("sleeper") / LOG_FILE
    deadline = time.monotonic() + 10
    while "READY" not in log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)  # SIGTERM must arrive after the handler is installed
    started = time.monotonic()
    runtime.stop("sleeper", timeout=0.5)
    assert time.monotonic() - started >= 0.5
    assert not psutil.pid_exists(pid)


def test_start_failures_are_clear(runtime: ProcessRuntime) -> None:
    spec = sleeper_catalog(["/nonexistent/daemon", "--flag"])["sleeper"]
    with pytest.raises(ServiceRuntimeError, match="sleeper: cannot execute '/nonexistent/daemon'"):
        runtime.start(spec, ServiceContext(node_id="n"))
    assert runtime.running() == set()
    unit_only = Catalog.from_dict(
        {"services": {"u": {"placement": "every-node", "start": {"unit": "u.service"}}}}
    )["u"]
    with pytest.raises(ServiceRuntimeError, match="no start.command"):
        runtime.start(unit_only, ServiceContext(node_id="n"))


def test_exited_service_is_not_running_and_restarts(runtime: ProcessRuntime) -> None:
    spec = sleeper_catalog(["sh", "-c", "echo started {node_id}; exit 0"])["sleeper"]
    runtime.start(spec, ServiceContext(node_id="node-9"))
    deadline = time.monotonic() + 5
    while runtime.is_running("sleeper") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not runtime.is_running("sleeper")
    runtime.start(spec, ServiceContext(node_id="node-9"))  # a restart after exit
    log_path = runtime.run_dir("sleeper") / LOG_FILE
    deadline = time.monotonic() + 5
    while log_path.read_text().splitlines().count("started node-9") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log_path.read_text().splitlines().count("started node-9") == 2  # rendered, log appended
