"""SystemdRuntime builds the right systemctl commands and reports failures.

There is no systemd as PID 1 on the test machines, so a fake runner stands
in for subprocess; the real commands run only on nodes booted from the image.
"""

from __future__ import annotations

import subprocess
from typing import Sequence

import pytest

from nodeos.services.catalog import load_catalog, packaged_catalog
from nodeos.services.runtime import Runtime, ServiceContext, ServiceRuntimeError, SystemdRuntime, unit_cgroup

CATALOG = load_catalog(packaged_catalog("default"))
CTX = ServiceContext(node_id="n1", vip="10.0.0.200")


class FakeSystemctl:
    def __init__(self, replies: dict[str, tuple[int, str, str]] | None = None) -> None:
        self.calls: list[tuple[list[str], float]] = []
        self.replies = replies or {}

    def __call__(self, argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        self.calls.append((list(argv), timeout))
        code, out, err = self.replies.get(argv[1], (0, "", ""))
        return subprocess.CompletedProcess(list(argv), code, out, err)


def test_is_a_runtime() -> None:
    assert isinstance(SystemdRuntime(runner=FakeSystemctl()), Runtime)


def _show(*units: tuple[str, int]) -> tuple[int, str, str]:
    """What `systemctl show -p Id -p ActiveState -p MainPID U...` prints: a block per unit
    (Ids left out: an alias shows its unit's own Id, so order is what counts then)."""
    return 0, "\n".join(f"ActiveState={state}\nMainPID={pid}\n" for state, pid in units), ""


def test_start_stop_status_commands() -> None:
    fake = FakeSystemctl({"show": _show(("active", 4242))})
    runtime = SystemdRuntime(runner=fake, command_timeout=12.0, pid_alive=lambda pid: True)
    runtime.start(CATALOG["nginx"], CTX)
    assert runtime.is_running("nginx")
    assert runtime.main_pid("nginx") == 4242
    runtime.stop("nginx", timeout=20.0)
    assert [argv for argv, _ in fake.calls] == [
        ["systemctl", "start", "nginx.service"],
        ["systemctl", "show", "-p", "Id", "-p", "ActiveState", "-p", "MainPID", "nginx.service"],
        ["systemctl", "stop", "nginx.service"],
    ]
    assert [timeout for _, timeout in fake.calls] == [12.0, 12.0, 20.0]


def test_one_systemctl_call_answers_for_every_unit_until_a_process_dies() -> None:
    """The services pass asks about every service every turn: one batched `show` serves them
    all for a second, and a main process found dead is asked about again at once."""
    units = {"memcached": "memcached.service", "nginx": "nginx.service"}
    fake = FakeSystemctl({"show": _show(("active", 11), ("active", 22))})
    alive = {11, 22}
    runtime = SystemdRuntime(units=units, runner=fake, pid_alive=lambda pid: pid in alive)
    for _ in range(5):
        assert runtime.main_pid("memcached") == 11 and runtime.main_pid("nginx") == 22
        assert runtime.is_running("memcached") and runtime.is_running("nginx")
    assert len(fake.calls) == 1
    assert fake.calls[0][0][-2:] == ["memcached.service", "nginx.service"]
    alive.discard(22)  # nginx crashed: systemd reaped it
    fake.replies["show"] = _show(("active", 11), ("failed", 0))
    assert runtime.main_pid("nginx") is None and not runtime.is_running("nginx")
    assert len(fake.calls) == 2


def test_blocks_are_matched_by_their_unit_id() -> None:
    units = {"memcached": "memcached.service", "nginx": "nginx.service"}
    text = "Id=nginx.service\nActiveState=active\nMainPID=22\n\nId=memcached.service\nActiveState=failed\nMainPID=0\n"
    runtime = SystemdRuntime(units=units, runner=FakeSystemctl({"show": (0, text, "")}), pid_alive=lambda pid: True)
    assert runtime.main_pid("nginx") == 22 and runtime.is_running("nginx")
    assert runtime.main_pid("memcached") is None and not runtime.is_running("memcached")


def test_main_pid_zero_means_none_and_inactive_means_not_running() -> None:
    runtime = SystemdRuntime(
        units={"memcached": "memcached.service"},
        runner=FakeSystemctl({"show": _show(("inactive", 0))}),
    )
    assert runtime.main_pid("memcached") is None
    assert not runtime.is_running("memcached")
    assert runtime.running() == set()


def test_known_units_are_used_after_an_agent_restart() -> None:
    units = {spec.name: spec.unit for spec in CATALOG if spec.unit}
    fake = FakeSystemctl({"show": _show(*[("active", 100 + i) for i in range(len(units))])})
    runtime = SystemdRuntime(units=units, runner=fake, pid_alive=lambda pid: True)
    runtime.stop_all()
    stops = [argv for argv, _ in fake.calls if argv[1] == "stop"]
    assert sorted(argv[2] for argv in stops) == ["memcached.service", "nginx.service", "node-http.service"]
    assert runtime.running() == {"memcached", "nginx", "node-http"}


def test_failure_is_a_clear_error() -> None:
    fake = FakeSystemctl({"start": (5, "", "Failed to start nginx.service: Unit nginx.service not found.\n")})
    with pytest.raises(ServiceRuntimeError, match="nginx: 'systemctl start nginx.service' failed: .*not found"):
        SystemdRuntime(runner=fake).start(CATALOG["nginx"], CTX)


def test_timeout_and_missing_systemctl() -> None:
    def hangs(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        raise subprocess.TimeoutExpired(list(argv), timeout)

    with pytest.raises(ServiceRuntimeError, match="timed out after 3s"):
        SystemdRuntime(runner=hangs, command_timeout=3).start(CATALOG["nginx"], CTX)
    with pytest.raises(ServiceRuntimeError, match="cannot run"):
        SystemdRuntime(systemctl="/nonexistent/systemctl").start(CATALOG["nginx"], CTX)


def test_spec_without_unit_is_refused() -> None:
    lab = load_catalog(packaged_catalog("lab"))
    with pytest.raises(ServiceRuntimeError, match="no start.unit"):
        SystemdRuntime(runner=FakeSystemctl()).start(lab["nginx"], CTX)


def test_garbage_status_is_a_clear_error() -> None:
    runtime = SystemdRuntime(runner=FakeSystemctl({"show": (0, "ActiveState=active\nMainPID=n/a\n", "")}))
    with pytest.raises(ServiceRuntimeError, match="MainPID"):
        runtime.main_pid("nginx")
    runtime = SystemdRuntime(units={"a": "a.service", "b": "b.service"}, runner=FakeSystemctl({"show": _show(("active", 1))}))
    with pytest.raises(ServiceRuntimeError, match="1 units' status for 2 asked"):
        runtime.is_running("a")


def test_fence_target_is_the_units_cgroup_also_for_template_instances() -> None:
    runtime = SystemdRuntime(units={"memcached": "memcached.service", "ceph-mgr": "ceph-mgr@nodeos.service"})
    assert runtime.fence_target("memcached") == {"cgroup": "/sys/fs/cgroup/system.slice/memcached.service"}
    # What systemd does for getty@tty1.service (system-getty.slice), with '-' escaped in the slice name.
    assert runtime.fence_target("ceph-mgr") == {
        "cgroup": "/sys/fs/cgroup/system.slice/system-ceph\\x2dmgr.slice/ceph-mgr@nodeos.service"}


def test_the_catalog_names_each_unit_before_the_first_start() -> None:
    """rabbitmq runs as rabbitmq-server.service: the guard's first claim (made before the start)
    must name that unit's cgroup, and a restarted agent must ask about it, not rabbitmq.service."""
    cloud = load_catalog(packaged_catalog("cloud"))
    fake = FakeSystemctl({"show": _show(*[("active", 77 + i) for i, _ in enumerate(cloud)])})
    runtime = SystemdRuntime(runner=fake, pid_alive=lambda pid: True)
    runtime.know(cloud)
    assert runtime.fence_target("rabbitmq") == {"cgroup": unit_cgroup("rabbitmq-server.service")}
    assert runtime.is_running("ceph-mon")
    assert "ceph-mon@nodeos.service" in fake.calls[-1][0]
    assert "ceph-mon.service" not in fake.calls[-1][0]
