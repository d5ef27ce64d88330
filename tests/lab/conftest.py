"""Shared lab fixtures: a bridge, namespaces on it, code run inside them.

Everything gets a short random name (parallel runs never collide) and is
torn down by finalizers, also when a test fails half-way.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import pytest

from nodeos.lab import netns

T = TypeVar("T")
LAB_SUBNET = "10.77.0"  # each bridge is its own L2 domain, so reuse is safe
PREFIXLEN = 24


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("lab tests need root (namespaces, bridges, raw sockets)")
    if shutil.which("ip") is None:
        pytest.skip("lab tests need iproute2 ('ip')")


@dataclass(frozen=True)
class LabNode:
    ns: str
    veth: str  # host end, on the bridge
    ifname: str  # inside the namespace
    ip: str
    prefixlen: int
    mac: str


@pytest.fixture
def lab_bridge(request: pytest.FixtureRequest) -> str:
    """A fresh bridge (no STP delay, no multicast snooping), deleted afterwards."""
    require_root()
    name = netns.unique_name("nbr")
    request.addfinalizer(lambda: netns.delete_link(name))
    netns.create_bridge(name)
    return name


def kill_namespace_processes(ns: str) -> None:
    """SIGKILL what runs in a namespace this test created (all of it is ours)."""
    for pid in netns.namespace_pids(ns):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while netns.namespace_pids(ns) and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture
def lab_node(lab_bridge: str, request: pytest.FixtureRequest) -> Callable[[int], LabNode]:
    """Factory: lab_node(host_number) -> a namespace at 10.77.0.<host_number>/24 on the bridge."""
    created: list[tuple[str, str]] = []

    def cleanup() -> None:
        for ns, veth in reversed(created):
            kill_namespace_processes(ns)
            netns.delete_namespace(ns)
            netns.delete_link(veth)

    request.addfinalizer(cleanup)

    def make(host_number: int) -> LabNode:
        ns, veth = netns.unique_name("nns"), netns.unique_name("nve")
        created.append((ns, veth))  # before creating: a half-made node is cleaned too
        ip = f"{LAB_SUBNET}.{host_number}"
        netns.create_namespace(ns, lab_bridge, veth, f"{ip}/{PREFIXLEN}")
        return LabNode(ns, veth, "eth0", ip, PREFIXLEN, netns.link_mac(ns, "eth0"))

    return make


def in_netns(ns: str, fn: Callable[[], T], timeout: float = 30.0) -> T:
    """Run `fn` in a dedicated thread inside `ns`; return its result or re-raise."""
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            with netns.enter_netns(ns):
                outcome["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            outcome["error"] = exc

    thread = threading.Thread(target=work, name=f"netns-{ns}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"code in namespace {ns} still running after {timeout}s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def ns_python(ns: str, code: str, timeout: float = 30.0) -> Any:
    """Run Python `code` in `ns` in a fresh interpreter; it must print one JSON value."""
    proc = netns.run_in_ns(
        ns, [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    if proc.returncode != 0:
        raise AssertionError(f"python in {ns} failed ({proc.returncode}): {err.strip()}")
    lines = out.strip().splitlines()
    return json.loads(lines[-1]) if lines else None


def ns_run(ns: str, *argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout, check=False
    )


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll until `predicate()` is truthy; return its last value (falsy on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


class LabTools:
    """The helpers above as a fixture, so test modules need not import conftest."""

    in_netns = staticmethod(in_netns)
    ns_python = staticmethod(ns_python)
    ns_run = staticmethod(ns_run)
    wait_for = staticmethod(wait_for)
    kill_namespace_processes = staticmethod(kill_namespace_processes)


@pytest.fixture
def lab() -> type[LabTools]:
    require_root()
    return LabTools


@pytest.fixture
def lab_factory():
    """Labs made on demand (`lab_factory(nodes, **Lab.create options)`), each torn down at the end."""
    from nodeos.lab.lab import Lab

    from .cluster_helpers import new_lab, teardown

    made: list[Lab] = []

    def make(nodes: int, **kwargs: Any) -> Lab:
        lab = new_lab(nodes, **kwargs)
        made.append(lab)
        return lab

    yield make
    for lab in made:
        teardown(lab)
