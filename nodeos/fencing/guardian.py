"""The agent's side of fencing: claims before it takes, and a fence keeper thread.

* `claim_vip` / `claim_service`: intent first. The holding is added to the
  set the guard answers for, and the guard must confirm a valid grant for it
  before the agent adds the VIP or starts the singleton. No guard, no
  holding.
* The fence keeper (its own thread, every `PERIOD`) sends the guard the
  current grant, and fences locally, with the same Fencer as the guard,
  whenever the grant has expired or the guard does not answer. It never
  waits for a runtime call: a `stop` blocked on a slow service cannot delay
  the fence (issue: a node stuck stopping one service kept another's VIP).

Policy and safety argument: policy.py.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

from nodeos import log
from .fencer import Fencer
from .policy import Holdings, Vip

# Grants are about 1 s ahead of now, so 10 a second leave the guard ample notice; a dead
# guard is seen at the next call (then the agent fences at once).
PERIOD = 0.1
# The guard's answer: a third of the default fence margin; slower machines set a
# larger timing.fence_margin and get guard_timeout_for() of it.
GUARD_TIMEOUT = 0.1


def guard_timeout_for(fence_margin: float) -> float:
    """How long the agent waits for its guard: a third of the margin, never under GUARD_TIMEOUT."""
    return max(GUARD_TIMEOUT, fence_margin / 3)


class GuardConnection:
    """One line out, one line back, on the guard's Unix socket; reconnects as needed."""

    def __init__(self, path: Path, timeout: float = GUARD_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = b""

    def call(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """The guard's reply, or None when it does not answer (in `timeout`)."""
        for attempt in range(2):
            try:
                if self._sock is None:
                    self._connect()
                assert self._sock is not None
                self._sock.sendall(json.dumps(message).encode() + b"\n")
                return self._read_line()
            except socket.timeout:
                self.close()
                return None  # a hung guard: no second wait, the keeper must fence in time
            except (OSError, ValueError):
                self.close()  # e.g. a restarted guard: our old connection is gone; one retry
                if attempt:
                    return None
        return None

    def _connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
        except OSError:
            sock.close()
            raise
        self._sock, self._buffer = sock, b""

    def _read_line(self) -> dict[str, Any]:
        assert self._sock is not None
        while b"\n" not in self._buffer:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise OSError("guard closed the connection")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        reply = json.loads(line)
        if not isinstance(reply, dict):
            raise ValueError("bad reply")
        return reply

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class Guardian:
    def __init__(self, guard_socket: Path, grant_until: Callable[[], float | None], fencer: Fencer | None = None,
                 guard_timeout: float = GUARD_TIMEOUT) -> None:
        self._guard = GuardConnection(guard_socket, guard_timeout)
        self._grant_until = grant_until
        self._fencer = fencer or Fencer()
        self._lock = threading.Lock()  # holdings and the guard connection
        self._vips: set[Vip] = set()
        self._services: dict[str, dict[str, str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fence-keeper", daemon=True)
        self._valid = False
        self._guard_ok = False
        self._guard_fences = 0
        self._local_fences = 0
        self._fenced_locally = False
        self._refusals = log.RateLimiter(period=10.0, burst=2)

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        with self._lock:
            self._guard.close()

    # -- claims (services thread) -------------------------------------------------
    def claim_vip(self, ifname: str, ip: str, prefixlen: int = 32) -> bool:
        return self._claim(lambda: self._vips.add(Vip(ifname, ip, prefixlen)), f"VIP {ip}")

    def claim_service(self, name: str, target: dict[str, str]) -> bool:
        return self._claim(lambda: self._services.__setitem__(name, dict(target)), f"service {name}")

    def release_vip(self, ifname: str, ip: str, prefixlen: int = 32) -> None:
        with self._lock:
            self._vips.discard(Vip(ifname, ip, prefixlen))

    def release_service(self, name: str) -> None:
        with self._lock:
            self._services.pop(name, None)

    def _claim(self, add: Callable[[], None], what: str) -> bool:
        with self._lock:
            add()  # intent first: even a refused claim stays enforced absent by the guard
            ok = self._send_grant(time.monotonic())
        if not ok:
            allowed, suppressed = self._refusals.allow(what)
            if allowed:
                log.event("fence.claim_refused", level="warning", what=what, guard=self._guard_ok, suppressed=suppressed)
        return ok

    def still_valid(self) -> bool:
        """Re-check right before an action that others can see (a gratuitous ARP)."""
        until = self._grant_until()
        return self._valid and until is not None and time.monotonic() < until

    # -- the fence keeper -------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.wait(PERIOD):
            try:
                self.keep(time.monotonic())
            except Exception as exc:  # the keeper must survive anything; it is the fence
                log.event("fence.keeper_failed", level="error", error=repr(exc))

    def keep(self, now: float) -> None:
        with self._lock:
            self._send_grant(now)
            valid = self._valid
            holdings = self._holdings()
        if valid:
            self._fenced_locally = False
            return
        if holdings:
            self._fence_locally(holdings, first=not self._fenced_locally)

    def _send_grant(self, now: float) -> bool:
        """Tell the guard the grant and holdings (lock held). True: valid, confirmed."""
        until = self._grant_until()
        reply = self._guard.call({"until": until, "holdings": self._holdings().to_wire()})
        self._guard_ok = reply is not None and bool(reply.get("ok"))
        if reply is not None and reply.get("fences", 0) != self._guard_fences:
            self._guard_fences = int(reply.get("fences", 0))
            log.event("fence.guard_fenced", level="warning", fences=self._guard_fences)
        self._valid = self._guard_ok and bool(reply and reply.get("valid")) and until is not None and now < until
        return self._valid

    def _holdings(self) -> Holdings:
        return Holdings.of(set(self._vips), dict(self._services))

    def _fence_locally(self, holdings: Holdings, first: bool) -> None:
        removed = self._fencer.remove_vips(holdings.vips)
        killed = self._fencer.kill(holdings.service_targets(), scan=first)
        if first:
            self._fenced_locally = True
            self._local_fences += 1
        if first or removed or killed:
            log.event("fence.local", level="warning", reason="no guard" if not self._guard_ok else "grant expired",
                      removed_vips=removed, killed=killed, mono=round(time.monotonic(), 4))

    # -- views -------------------------------------------------------------------------
    def view(self) -> dict[str, Any]:
        with self._lock:
            holdings = self._holdings()
        return {"guard": self._guard_ok, "valid": self._valid, "guard_fences": self._guard_fences,
                "local_fences": self._local_fences, "claimed": holdings.to_wire()}

    def actually_held(self, vips: set[Vip], services: dict[str, dict[str, str]]) -> dict[str, Any]:
        """What is really on this node now: present VIPs, running singletons (no agent lock taken)."""
        try:
            present = sorted(v.ip for v in self._fencer.present_vips(vips))
        except Exception as exc:  # a status view must answer even if netlink does not
            present = [f"unknown: {exc!r}"]
        return {"vips": present, "services": sorted(self._fencer.running(services))}
