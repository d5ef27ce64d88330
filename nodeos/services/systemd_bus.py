"""Unit states from systemd over D-Bus: no process per question.

The services pass asks each turn whether each catalog unit runs and its main
pid. A `systemctl` per turn costs a fork and exec, and on an emulated CPU each
call took 10-30 s while the node booted: the passes stalled and the watchdog
restarted the agent (the cloud image under TCG, 2026-12-02). Two kinds of
call on the system bus answer the same in-process: `ListUnitsByPatterns`
(only the units systemd holds, so nothing is loaded to answer: a unit not
held is not running) and, for a unit not at rest, its `MainPID`.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from jeepney import DBusAddress, new_method_call
from jeepney.io.blocking import DBusConnection, open_dbus_connection
from jeepney.wrappers import DBusErrorResponse, unwrap_msg

SYSTEMD = "org.freedesktop.systemd1"
MANAGER = DBusAddress("/org/freedesktop/systemd1", bus_name=SYSTEMD, interface=f"{SYSTEMD}.Manager")
CALL_TIMEOUT = 5.0
AT_REST = ("inactive", "failed")  # no main process to ask for

UnitStates = Callable[[list[str]], dict[str, tuple[str, int | None]]]


class BusError(Exception):
    """The system bus or systemd did not answer; the caller asks systemctl instead."""


class SystemdBus:
    """One connection to the system bus, shared by the threads that ask (calls are serialized)."""

    def __init__(self, connect: Callable[[], DBusConnection] | None = None, timeout: float = CALL_TIMEOUT) -> None:
        # jeepney's own authentication time-out is 1 s: too short for a node booting on an emulated CPU.
        self._connect = connect or (lambda: open_dbus_connection(bus="SYSTEM", auth_timeout=timeout))
        self._timeout = timeout
        self._conn: DBusConnection | None = None
        self._lock = threading.Lock()

    def unit_states(self, units: list[str]) -> dict[str, tuple[str, int | None]]:
        """Each unit asked: (ActiveState, main pid or None); a unit systemd does not hold is inactive."""
        with self._lock:
            try:
                return self._states(units)
            except (OSError, TimeoutError, DBusErrorResponse, ValueError, TypeError) as exc:
                self._close()
                raise BusError(f"systemd over D-Bus: {exc}") from exc

    def _states(self, units: list[str]) -> dict[str, tuple[str, int | None]]:
        states: dict[str, tuple[str, int | None]] = {unit: ("inactive", None) for unit in units}
        [rows] = self._call(MANAGER, "ListUnitsByPatterns", "asas", ([], units))
        for row in rows:
            name, active, path = row[0], row[3], row[6]
            if name in states:
                states[name] = (active, None if active in AT_REST else self._main_pid(path))
        return states

    def _main_pid(self, path: str) -> int | None:
        properties = DBusAddress(path, bus_name=SYSTEMD, interface="org.freedesktop.DBus.Properties")
        try:
            [(_, pid)] = self._call(properties, "Get", "ss", (f"{SYSTEMD}.Service", "MainPID"))
        except DBusErrorResponse:
            return None  # not a service (a socket, a target): no main process
        return int(pid) or None

    def _call(self, address: DBusAddress, method: str, signature: str, body: tuple[Any, ...]) -> Any:
        if self._conn is None:
            self._conn = self._connect()
        reply = self._conn.send_and_get_reply(new_method_call(address, method, signature, body), timeout=self._timeout)
        return unwrap_msg(reply)

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass
            self._conn = None
