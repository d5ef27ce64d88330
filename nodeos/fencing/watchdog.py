"""The last line of fencing: a watchdog that resets the node when the guard stops feeding it.

Three back-ends behind one small interface (arm, feed, disarm):

* `DeviceWatchdog`: the Linux watchdog device (`/dev/watchdog`: a hardware
  watchdog, or the `softdog` module the image loads). Timeout set with
  WDIOC_SETTIMEOUT; disarmed by the magic close ('V').
* `LabWatchdog`: in the lab, a datagram socket to the lab's per-node
  watchdog process (nodeos/lab/watchdog.py), which crashes and boots the node's
  namespace when the feed stops: the same reset, acting on the namespace.
* `NoWatchdog`: none configured or found; said once in the log.

`watchdog: auto` (the default) uses /dev/watchdog when it exists.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
from pathlib import Path
from typing import IO

from nodeos import log

WDIOC_SETTIMEOUT = 0xC0045706
LAB_SOCKET = "watchdog.sock"
DEVICE = "/dev/watchdog"


class Watchdog:
    """Null object: never resets anything."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.armed = False

    @property
    def feed_interval(self) -> float:
        return max(0.1, self.timeout / 4)

    def describe(self) -> str:
        return "none"

    def arm(self) -> None:
        self.armed = True

    def feed(self) -> None:
        return None

    def disarm(self) -> None:
        self.armed = False

    def release(self) -> None:
        """Disarm a timer a previous guard process may have left running."""
        self.arm()
        self.disarm()


class NoWatchdog(Watchdog):
    pass


class DeviceWatchdog(Watchdog):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__(timeout)
        self.path = path
        self._device: IO[bytes] | None = None

    def describe(self) -> str:
        return f"{self.path} ({self.timeout:g}s)"

    def arm(self) -> None:
        try:
            self._device = open(self.path, "wb", buffering=0)
            fcntl.ioctl(self._device, WDIOC_SETTIMEOUT, struct.pack("i", max(1, int(self.timeout))))
        except OSError as exc:
            log.event("watchdog.failed", level="error", device=self.path, error=str(exc))
        self.armed = True

    def feed(self) -> None:
        if self._device is not None:
            try:
                self._device.write(b"\0")
            except OSError as exc:
                log.event("watchdog.failed", level="error", device=self.path, error=str(exc))

    def disarm(self) -> None:
        if self._device is not None:
            try:
                self._device.write(b"V")  # magic close: stop the timer (unless nowayout)
                self._device.close()
            except OSError:
                pass
            self._device = None
        self.armed = False


class LabWatchdog(Watchdog):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__(timeout)
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def describe(self) -> str:
        return f"lab:{self.path} ({self.timeout:g}s)"

    def _send(self, message: str) -> None:
        try:
            self._sock.sendto(message.encode(), str(self.path))
        except OSError as exc:
            log.event("watchdog.failed", level="error", device=str(self.path), error=str(exc))

    def arm(self) -> None:
        self._send(f"arm {self.timeout}")
        self.armed = True

    def feed(self) -> None:
        self._send("feed")

    def disarm(self) -> None:
        self._send("disarm")
        self.armed = False


def open_watchdog(setting: str, timeout: float, state_dir: Path) -> Watchdog:
    if setting == "none":
        return NoWatchdog(timeout)
    if setting == "lab":
        return LabWatchdog(state_dir / LAB_SOCKET, timeout)
    path = DEVICE if setting == "auto" else setting
    if os.path.exists(path):
        return DeviceWatchdog(path, timeout)
    if setting != "auto":
        log.event("watchdog.missing", level="error", device=path)
    else:
        log.event("watchdog.none", level="warning", detail="no /dev/watchdog: a hung guard would not reset the node (load softdog)")
    return NoWatchdog(timeout)
