"""Whether any IPv4 address changed in this network namespace since the last look.

The kernel multicasts every address added or removed to netlink's RTMGRP_IPV4_IFADDR
group. A non-blocking socket subscribed to it answers "changed?" with one recv that
usually finds nothing: the node pass asks 10 times a second, where listing the
interface's addresses costs about 2 ms of netlink and parsing.
"""

from __future__ import annotations

import errno
import socket

RTMGRP_IPV4_IFADDR = 0x10


class AddressWatch:
    """`changed()` is True when an address changed since its last call, or when it cannot tell."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None  # opened on first use, in the caller's network namespace

    def changed(self) -> bool:
        if self._sock is None:
            try:
                self._sock = _subscribe()
            except OSError:
                return True  # no watch: every look lists again
            return True  # nothing seen before the subscription: list once
        seen = False
        while True:
            try:
                if not self._sock.recv(65536):
                    return True
                seen = True
            except BlockingIOError:
                return seen
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # notifications overflowed: some were lost
                    seen = True
                    continue
                self.close()
                return True

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


def _subscribe() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
    try:
        sock.bind((0, RTMGRP_IPV4_IFADDR))
    except OSError:
        sock.close()
        raise
    return sock
