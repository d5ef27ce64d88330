"""Unit states over D-Bus (nodeos/services/systemd_bus.py), against a fake bus that answers
with real jeepney messages the way systemd does; and SystemdRuntime's fallback to systemctl.
No system bus on the test machines: the image tier asks the real one."""

from __future__ import annotations

import io
from typing import Any

import pytest
from jeepney import new_error, new_method_return
from jeepney.low_level import HeaderFields, Message

from nodeos import log
from nodeos.services.runtime import SystemdRuntime
from nodeos.services.systemd_bus import BusError, SystemdBus

SERVICE = "org.freedesktop.systemd1.Service"


def _path(unit: str) -> str:
    return "/org/freedesktop/systemd1/unit/" + unit.replace("@", "_40").replace(".", "_2e").replace("-", "_2d")


class FakeSystemd:
    """systemd on the bus: units it holds, unit -> (ActiveState, MainPID)."""

    def __init__(self, units: dict[str, tuple[str, int]]) -> None:
        self.units = units
        self.calls: list[tuple[str, Any]] = []
        self.closed = 0
        self.down = False

    def send_and_get_reply(self, msg: Message, timeout: float | None = None) -> Message:
        if self.down:
            raise ConnectionResetError("the bus went away")
        member = msg.header.fields[HeaderFields.member]
        self.calls.append((member, msg.body))
        if member == "ListUnitsByPatterns":
            _, patterns = msg.body
            rows = [(u, "desc", "loaded", state, "running", "", _path(u), 0, "", "/") for u, (state, _) in
                    self.units.items() if u in patterns]
            return new_method_return(msg, "a(ssssssouso)", (rows,))
        path = msg.header.fields[HeaderFields.path]
        unit = next(u for u in self.units if _path(u) == path)
        if not unit.endswith(".service"):
            return new_error(msg, "org.freedesktop.DBus.Error.UnknownProperty", "s", ("no such interface",))
        return new_method_return(msg, "v", (("u", self.units[unit][1]),))

    def close(self) -> None:
        self.closed += 1


def test_held_units_with_their_main_pids_and_the_rest_inactive() -> None:
    fake = FakeSystemd({"ceph-mon@nodeos.service": ("active", 41), "mariadb.service": ("failed", 0),
                        "epmd.socket": ("active", 0), "other.service": ("active", 9)})
    bus = SystemdBus(connect=lambda: fake)
    asked = ["ceph-mon@nodeos.service", "epmd.socket", "keystone.service", "mariadb.service"]
    assert bus.unit_states(asked) == {"ceph-mon@nodeos.service": ("active", 41), "epmd.socket": ("active", None),
                                      "keystone.service": ("inactive", None), "mariadb.service": ("failed", None)}
    # One listing; a main pid asked only of units not at rest.
    assert [member for member, _ in fake.calls] == ["ListUnitsByPatterns", "Get", "Get"]
    assert fake.calls[0][1] == ([], asked)
    assert fake.calls[1][1] == (SERVICE, "MainPID")


def test_a_lost_bus_is_an_error_and_the_next_call_connects_again() -> None:
    fake = FakeSystemd({"memcached.service": ("active", 5)})
    connects: list[int] = []
    bus = SystemdBus(connect=lambda: connects.append(1) or fake)
    fake.down = True
    with pytest.raises(BusError, match="the bus went away"):
        bus.unit_states(["memcached.service"])
    assert fake.closed == 1
    fake.down = False
    assert bus.unit_states(["memcached.service"]) == {"memcached.service": ("active", 5)}
    assert len(connects) == 2


def test_the_runtime_asks_systemctl_while_the_bus_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    logged = io.StringIO()
    monkeypatch.setattr(log, "_stream", logged)
    answers: list[Any] = [BusError("systemd over D-Bus: refused"), BusError("again"), {"nginx.service": ("active", 7)}]

    def bus(units: list[str]) -> dict[str, tuple[str, int | None]]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    systemctl_calls: list[list[str]] = []

    def runner(argv: Any, timeout: float) -> Any:
        import subprocess
        systemctl_calls.append(list(argv))
        return subprocess.CompletedProcess(list(argv), 0, "", "")  # systemd holds nothing

    runtime = SystemdRuntime(units={"nginx": "nginx.service"}, runner=runner, bus=bus, pid_alive=lambda pid: True)
    assert not runtime.is_running("nginx")
    runtime._forget_status()
    assert not runtime.is_running("nginx")
    runtime._forget_status()
    assert runtime.is_running("nginx") and runtime.main_pid("nginx") == 7
    assert [argv[1] for argv in systemctl_calls] == ["list-units", "list-units"]
    events = [line for line in logged.getvalue().splitlines() if "runtime.bus" in line]
    assert len(events) == 2 and "runtime.bus_failed" in events[0] and "runtime.bus_back" in events[1]
