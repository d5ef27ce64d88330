"""SystemdRuntime builds the right systemctl commands and reports failures.

There is no systemd as PID 1 on the test machines, so a fake runner stands
in for subprocess; the real commands run only on nodes booted from the image.
"""

from __future__ import annotations

import subprocess
from typing import Sequence

import pytest

from nodeos.services.catalog import load_catalog, packaged_catalog
from nodeos.services.runtime import Runtime, ServiceContext, ServiceRuntimeError, SystemdRuntime, _parse_list_units, unit_cgroup

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


class FakeSystemd(FakeSystemctl):
    """systemctl over units in memory: unit -> (ActiveState, MainPID). `list-units` lists only
    those (a unit not in memory is not listed), `show` answers for any unit it is asked about."""

    def __init__(self, units: dict[str, tuple[str, int]], replies: dict[str, tuple[int, str, str]] | None = None) -> None:
        super().__init__(replies)
        self.units = units

    def __call__(self, argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        if argv[1] not in ("list-units", "show") or argv[1] in self.replies:
            return super().__call__(argv, timeout)
        self.calls.append((list(argv), timeout))
        asked = [a for a in argv[2:] if not a.startswith("-") and a not in ("Id", "ActiveState", "MainPID")]
        if argv[1] == "list-units":
            out = "".join(f"{'● ' if self.units[u][0] == 'failed' else ''}{u} loaded {self.units[u][0]} x Some unit\n"
                          for u in asked if u in self.units)
        else:
            out = "\n".join(f"Id={u}\nActiveState={self.units.get(u, ('inactive', 0))[0]}\n"
                            f"MainPID={self.units.get(u, ('inactive', 0))[1]}\n" for u in asked)
        return subprocess.CompletedProcess(list(argv), 0, out, "")

    def commands(self) -> list[str]:
        return [argv[1] for argv, _ in self.calls]


def test_start_stop_status_commands() -> None:
    fake = FakeSystemd({"nginx.service": ("active", 4242)})
    runtime = SystemdRuntime(runner=fake, command_timeout=12.0, pid_alive=lambda pid: True)
    runtime.start(CATALOG["nginx"], CTX)
    assert runtime.is_running("nginx")
    assert runtime.main_pid("nginx") == 4242
    runtime.stop("nginx", timeout=20.0)
    assert [argv for argv, _ in fake.calls] == [
        ["systemctl", "start", "nginx.service"],
        ["systemctl", "list-units", "--all", "--plain", "--no-legend", "--no-pager", "nginx.service"],
        ["systemctl", "show", "-p", "Id", "-p", "ActiveState", "-p", "MainPID", "nginx.service"],
        ["systemctl", "stop", "nginx.service"],
    ]
    assert [timeout for _, timeout in fake.calls] == [12.0, 12.0, 12.0, 20.0]


def test_one_systemctl_round_answers_for_every_unit_until_a_process_dies() -> None:
    """The services pass asks about each service every turn: one `list-units` (and one `show`
    for the units not at rest) serves them all for a second, and a main process found dead is
    asked about again at once."""
    units = {"memcached": "memcached.service", "nginx": "nginx.service"}
    fake = FakeSystemd({"memcached.service": ("active", 11), "nginx.service": ("active", 22)})
    alive = {11, 22}
    runtime = SystemdRuntime(units=units, runner=fake, pid_alive=lambda pid: pid in alive)
    for _ in range(5):
        assert runtime.main_pid("memcached") == 11 and runtime.main_pid("nginx") == 22
        assert runtime.is_running("memcached") and runtime.is_running("nginx")
    assert fake.commands() == ["list-units", "show"]
    assert fake.calls[1][0][-2:] == ["memcached.service", "nginx.service"]
    alive.discard(22)  # nginx crashed: systemd reaped it
    fake.units["nginx.service"] = ("failed", 0)
    assert runtime.main_pid("nginx") is None and not runtime.is_running("nginx")
    assert fake.commands() == ["list-units", "show", "list-units", "show"]
    assert fake.calls[3][0][-1:] == ["memcached.service"]  # a failed unit has no process to ask for


def test_a_unit_systemd_does_not_hold_is_not_running_and_not_shown() -> None:
    """`show` would make systemd load the unit and its dependencies, at every turn (over 30 s a
    call for the cloud catalog on an emulated CPU): only units listed in memory and not at rest are shown."""
    cloud = load_catalog(packaged_catalog("cloud"))
    fake = FakeSystemd({"ceph-mon@nodeos.service": ("active", 7), "mariadb.service": ("inactive", 0)})
    runtime = SystemdRuntime(runner=fake, pid_alive=lambda pid: True)
    runtime.know(cloud)
    assert runtime.running() == {"ceph-mon"}
    assert runtime.main_pid("ceph-mon") == 7 and runtime.main_pid("mariadb") is None
    listed, shown = (argv for argv, _ in fake.calls)
    assert len([a for a in listed if a.endswith(".service")]) == len(list(cloud))
    assert shown[-1:] == ["ceph-mon@nodeos.service"]


def test_show_blocks_are_matched_by_their_unit_id() -> None:
    units = {"memcached": "memcached.service", "nginx": "nginx.service"}
    text = "Id=nginx.service\nActiveState=active\nMainPID=22\n\nId=memcached.service\nActiveState=deactivating\nMainPID=0\n"
    fake = FakeSystemd({"memcached.service": ("deactivating", 0), "nginx.service": ("active", 22)},
                       {"show": (0, text, "")})
    runtime = SystemdRuntime(units=units, runner=fake, pid_alive=lambda pid: True)
    assert runtime.main_pid("nginx") == 22 and runtime.is_running("nginx")
    assert runtime.main_pid("memcached") is None and not runtime.is_running("memcached")


def test_list_units_lines_with_and_without_a_mark() -> None:
    text = ("● ceph-osd@nodeos.service loaded failed failed Ceph object storage daemon osd.nodeos\n"
            "mariadb.service loaded active running MariaDB 10.11.6 database server\n"
            "* nova-api.service not-found inactive dead nova-api.service\n")
    assert _parse_list_units(text) == {"ceph-osd@nodeos.service": "failed", "mariadb.service": "active",
                                       "nova-api.service": "inactive"}
    assert _parse_list_units("") == {}


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
    fake = FakeSystemd({unit: ("active", 100 + i) for i, unit in enumerate(sorted(units.values()))})
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
    fake = FakeSystemd({"nginx.service": ("active", 1)}, {"show": (0, "ActiveState=active\nMainPID=n/a\n", "")})
    with pytest.raises(ServiceRuntimeError, match="MainPID"):
        SystemdRuntime(runner=fake).main_pid("nginx")
    fake = FakeSystemd({"a.service": ("active", 1), "b.service": ("active", 2)}, {"show": _show(("active", 1))})
    runtime = SystemdRuntime(units={"a": "a.service", "b": "b.service"}, runner=fake)
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
    fake = FakeSystemd({"ceph-mon@nodeos.service": ("active", 77)})
    runtime = SystemdRuntime(runner=fake, pid_alive=lambda pid: True)
    runtime.know(cloud)
    assert runtime.fence_target("rabbitmq") == {"cgroup": unit_cgroup("rabbitmq-server.service")}
    assert runtime.is_running("ceph-mon")
    assert "ceph-mon@nodeos.service" in fake.calls[0][0]
    assert "ceph-mon.service" not in fake.calls[0][0]
