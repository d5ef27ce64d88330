"""`nodeos guard`: the node's fencing guard, a small process apart from the agent.

It takes a node's VIPs and singletons away when the agent's grant runs out,
whether the agent is alive, dead, hung or crash-looping (the policy and its
safety argument: policy.py). One thread, one `select` loop over

* the Unix socket `<state_dir>/guard.sock` (mode 0600): the agent sends one
  JSON line per grant, `{"until": MONO|null, "holdings": {...}}`, and gets
  `{"ok": true, "valid": BOOL, "fences": N, "armed": BOOL}` back;
  `{"op": "status"}` returns the guard's view;
* a netlink socket subscribed to IPv4 address events: a held VIP that
  appears while the grant is expired is removed at once;
* its own deadline: at `until` it removes the VIPs and SIGKILLs the services.

It runs with real-time priority and locked memory, so load on the node does
not delay it, and feeds a watchdog while it answers for any holding: a hung or
dead guard then resets the node (watchdog.py).
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import time
from pathlib import Path
from typing import Any

from nodeos import log, pidlock
from .fencer import Fencer
from .policy import GuardPolicy, Holdings
from .watchdog import Watchdog, open_watchdog
from nodeos.realtime import lock_memory, set_realtime

SOCKET_NAME = "guard.sock"
HOLDINGS_FILE = "guard.json"  # what the guard answers for, kept across its own restarts
MAX_LINE = 256 * 1024
MAX_CLIENTS = 8
GUARD_PRIORITY = 20  # SCHED_FIFO; above the agent's (it must run when the agent cannot)


class Guard:
    def __init__(self, state_dir: Path, watchdog: Watchdog, fencer: Fencer | None = None) -> None:
        self.state_dir = state_dir
        self.socket_path = state_dir / SOCKET_NAME
        self.policy = GuardPolicy()
        self.fencer = fencer or Fencer()
        self.watchdog = watchdog
        self._clients: dict[socket.socket, bytearray] = {}
        self._stop = False
        self._last_feed = 0.0
        self._events: Any = None
        self._ifnames: dict[int, str] = {}

    # -- lifecycle ---------------------------------------------------------------
    def run(self) -> int:
        self._load_holdings()
        listener = self._listen()
        self._events = _address_events()
        log.event("guard.started", socket=str(self.socket_path), watchdog=self.watchdog.describe(), pid=os.getpid())
        try:
            while not self._stop:
                self._wait(listener)
                self._on_time(time.monotonic())
        finally:
            self._shutdown(listener)
        return 0

    def stop(self, *_: Any) -> None:
        self._stop = True

    def _load_holdings(self) -> None:
        """A restarted guard answers for what its predecessor held: enforced absent until a new grant."""
        path = self.state_dir / HOLDINGS_FILE
        try:
            self.policy.holdings = Holdings.from_wire(json.loads(path.read_text()))
        except FileNotFoundError:
            pass
        except ValueError as exc:
            log.event("guard.bad_holdings_file", level="error", path=str(path), error=str(exc))
        if self.policy.holdings:
            log.event("guard.inherited", holdings=self.policy.holdings.to_wire())
            self._fence(time.monotonic(), reason="guard restarted: no grant known")
        else:
            self.watchdog.release()  # a predecessor may have left it armed; nothing to answer for

    def _save_holdings(self) -> None:
        path = self.state_dir / HOLDINGS_FILE
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.policy.holdings.to_wire()))
        os.replace(tmp, path)

    def _listen(self) -> socket.socket:
        if self.socket_path.exists():
            self.socket_path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.socket_path))
        os.chmod(self.socket_path, 0o600)
        listener.listen(MAX_CLIENTS)
        listener.setblocking(False)
        return listener

    def _shutdown(self, listener: socket.socket) -> None:
        # A guard that stops leaves nobody to answer for the holdings: give them up.
        if self.policy.holdings:
            self._fence(time.monotonic(), reason="guard stopping")
        self.watchdog.disarm()
        for client in list(self._clients):
            client.close()
        listener.close()
        if self._events is not None:
            self._events.close()
        self.fencer.close()
        log.event("guard.stopped")

    # -- the loop ------------------------------------------------------------------
    def _wait(self, listener: socket.socket) -> None:
        now = time.monotonic()
        timeout = self.policy.next_wakeup(now)
        if self.watchdog.armed:
            timeout = min(timeout, max(0.0, self._last_feed + self.watchdog.feed_interval - now))
        readers: list[Any] = [listener, *self._clients]
        if self._events is not None:
            readers.append(self._events)
        try:
            ready, _, _ = select.select(readers, [], [], timeout)
        except InterruptedError:
            return
        for source in ready:
            if source is listener:
                self._accept(listener)
            elif source is self._events:
                self._on_address_events()
            else:
                self._read(source)

    def _on_time(self, now: float) -> None:
        if self.policy.must_fence(now):
            self._fence(now, reason="grant expired")
        elif self.policy.must_enforce(now):
            self._enforce(now)
        self._tend_watchdog(now)

    def _fence(self, now: float, reason: str) -> None:
        holdings = self.policy.holdings
        removed = self.fencer.remove_vips(holdings.vips)
        killed = self.fencer.kill(holdings.service_targets(), scan=True)
        self.policy.fenced_now(now)
        late = round(now - self.policy.until, 4) if self.policy.until > float("-inf") else None
        log.event("guard.fenced", level="warning", reason=reason, removed_vips=removed, killed=killed, late=late,
                  mono=round(now, 4), fences=self.policy.fences)

    def _enforce(self, now: float) -> None:
        holdings = self.policy.holdings
        removed = self.fencer.remove_vips(holdings.vips)
        killed = self.fencer.kill(holdings.service_targets(), scan=False)
        self.policy.enforced(now)
        if removed or killed:
            log.event("guard.enforced", level="warning", removed_vips=removed, killed=killed, mono=round(now, 4))

    def _tend_watchdog(self, now: float) -> None:
        wanted = self.policy.watchdog_armed()
        if wanted and not self.watchdog.armed:
            self.watchdog.arm()
            self._last_feed = now
            log.event("guard.watchdog_armed", watchdog=self.watchdog.describe())
        elif not wanted and self.watchdog.armed:
            self.watchdog.disarm()
            log.event("guard.watchdog_disarmed")
        elif wanted and now - self._last_feed >= self.watchdog.feed_interval:
            self.watchdog.feed()
            self._last_feed = now

    # -- agent messages --------------------------------------------------------------
    def _accept(self, listener: socket.socket) -> None:
        try:
            client, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        if len(self._clients) >= MAX_CLIENTS:
            client.close()
            return
        client.setblocking(False)
        self._clients[client] = bytearray()

    def _read(self, client: socket.socket) -> None:
        try:
            data = client.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        buffer = self._clients[client]
        buffer += data
        while b"\n" in buffer:
            line, _, rest = bytes(buffer).partition(b"\n")
            buffer[:] = rest
            self._answer(client, self._handle(line))
        if len(buffer) > MAX_LINE:
            log.event("guard.bad_message", level="warning", error="line too long")
            self._drop(client)

    def _drop(self, client: socket.socket) -> None:
        self._clients.pop(client, None)
        client.close()

    def _answer(self, client: socket.socket, reply: dict[str, Any]) -> None:
        try:
            client.setblocking(True)
            client.settimeout(0.2)  # a stuck agent must not hold the guard
            client.sendall(json.dumps(reply).encode() + b"\n")
            client.setblocking(False)
        except OSError:
            self._drop(client)

    def _handle(self, line: bytes) -> dict[str, Any]:
        now = time.monotonic()
        try:
            message = json.loads(line)
            if not isinstance(message, dict):
                raise ValueError("a message must be a JSON object")
            if message.get("op") == "status":
                return {"ok": True, **self.view(now)}
            until = message.get("until")
            if until is not None and (not isinstance(until, (int, float)) or isinstance(until, bool)):
                raise ValueError("'until' must be a number or null")
            holdings = Holdings.from_wire(message.get("holdings") or {})
        except ValueError as exc:
            log.event("guard.bad_message", level="warning", error=str(exc))
            return {"ok": False, "error": str(exc)}
        before = self.policy.holdings
        valid = self.policy.grant(now, until, holdings)
        if self.policy.holdings != before:
            self._save_holdings()  # before the reply: the agent acts on it
        self._on_time(now)  # e.g. a grant that shrank the holdings disarms the watchdog
        return {"ok": True, "valid": valid, "fences": self.policy.fences, "armed": self.watchdog.armed}

    def view(self, now: float) -> dict[str, Any]:
        policy = self.policy
        return {"valid": policy.valid(now), "until_in": round(policy.until - now, 3) if policy.until > float("-inf") else None,
                "fences": policy.fences, "holdings": policy.holdings.to_wire(), "armed": self.watchdog.armed,
                "watchdog": self.watchdog.describe(), "pid": os.getpid()}

    # -- address events ----------------------------------------------------------------
    def _on_address_events(self) -> None:
        try:
            messages = self._events.get()
        except Exception as exc:  # a broken event socket must not end the guard; the periodic check remains
            log.event("guard.events_failed", level="error", error=repr(exc))
            self._events.close()
            self._events = None
            return
        now = time.monotonic()
        for message in messages:
            if message.get("event") != "RTM_NEWADDR":
                continue
            ip = message.get_attr("IFA_ADDRESS")
            ifname = self._ifname(int(message["index"]))
            if ip and ifname and self.policy.enforces_vip(ifname, ip, now):
                removed = self.fencer.remove_vips(v for v in self.policy.holdings.vips if v.ip == ip and v.ifname == ifname)
                log.event("guard.enforced", level="warning", removed_vips=removed, killed={}, why="VIP added while fenced",
                          mono=round(now, 4))

    def _ifname(self, index: int) -> str | None:
        if index not in self._ifnames:
            from pyroute2 import IPRoute

            with IPRoute() as ipr:
                links = ipr.get_links(index)
                self._ifnames[index] = links[0].get_attr("IFLA_IFNAME") if links else ""
        return self._ifnames[index] or None


def _address_events() -> Any:
    from pyroute2 import IPRoute
    from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR

    try:
        ipr = IPRoute()
        ipr.bind(groups=RTMGRP_IPV4_IFADDR)
        return ipr
    except Exception as exc:  # no events: the periodic enforcement still runs
        log.event("guard.events_unavailable", level="warning", error=repr(exc))
        return None


def run_guard(state_dir: Path, watchdog_setting: str, watchdog_timeout: float, realtime: bool) -> int:
    log.configure(component="guard")
    try:
        pidlock.hold(state_dir, "guard")
    except pidlock.AlreadyRunning as exc:
        log.event("guard.refused", level="error", error=str(exc))
        return 2
    if realtime:
        set_realtime("guard", GUARD_PRIORITY, fifo=True)
        lock_memory("guard")
    watchdog = open_watchdog(watchdog_setting, watchdog_timeout, state_dir)
    guard = Guard(state_dir, watchdog)
    signal.signal(signal.SIGTERM, guard.stop)
    signal.signal(signal.SIGINT, guard.stop)
    return guard.run()
