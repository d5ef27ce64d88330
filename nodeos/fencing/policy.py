"""When may this node hold VIPs and singletons? The fencing policy, pure.

Times are CLOCK_MONOTONIC seconds (shared by every process and network
namespace of one host) and are arguments; nothing here reads a clock or acts.
The guard process (guard.py) and the agent's fence keeper (guardian.py) act on
what this module decides.

Holdings are what a node may have to give up: VIPs on an interface and
singleton services (their kill targets). A *grant* is "this node may hold them
until `until`", where `until` = the last quorum evidence + `fence_after`
(nodeos/cluster/lease.py's FenceClock). The agent sends a grant at least every 100 ms and,
before it takes a new holding, a grant that names it (intent first).

Safety argument (invariant 2 of DESIGN.md), next to the lease's in nodeos/cluster/lease.py.
Let t_r be the last time the majority's leader heard this node. The Monitor
moves this node's singletons only after t_r + fence_after + fence_margin
(1.3 s by default), on the leader's clock. This node's evidence is stamped
when pysyncobj applies a committed heartbeat, which is after the reply the
leader counted by at most one pysyncobj tick's work (the tick right after the
message applies it: pysyncobj's thread sleeps only while nothing arrives; 20 ms
allowed), so every grant ends by t_r + fence_after + 20 ms. A new leader counts its predecessor (the old
Monitor, whose evidence is its own committed heartbeats) from an earlier
bound: its first candidacy minus raft_min_timeout, which no committed
heartbeat of the predecessor can postdate (lease.PredecessorSilence says
why). A node whose grant lapsed gets evidence again only once a rejoin
barrier came back (nodeos/cluster/rejoin.py): until then its state may lack
the moves decided without it. Whatever happens to the agent then:

* agent alive: its fence keeper removes VIPs and kills singletons at `until`,
  on its own thread, never behind a runtime call (a blocked `stop`);
* agent dead, hung (SIGSTOP, swapped out) or crash-looping: the guard, a
  separate small process with real-time priority and locked memory, does the
  same at `until`; a new agent has no evidence and gets no grant until it
  learns of a committed heartbeat again;
* guard dead: the agent sees its socket close and fences at once (no guard,
  no holdings: the agent takes nothing the guard was not told of first);
* both dead or hung (OOM killer, a stalled kernel): the watchdog device
  (hardware or softdog; in the lab an emulation that crashes the node's
  namespace) resets the node `watchdog_timeout` after the guard's last feed.
  The guard arms it while it is responsible for any holding. This double
  failure is the one case where the split can last longer than the margin:
  up to watchdog_timeout - fence_margin.

The margin left for acting is fence_margin - 20 ms = 280 ms: the guard wakes
within a few ms at real-time priority; removing a VIP (one netlink call) and
SIGKILLing a process group take about a millisecond each.

After a fence, what was held stays *enforced absent*: a hung agent that wakes
up and completes an `add`/`start` it began before the hang would otherwise
bring a VIP back on the minority side. While a grant is expired the guard
removes any held VIP the moment it appears (netlink address events) and kills
a held service's processes within `ENFORCE_PERIOD`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ENFORCE_PERIOD = 0.1  # how often an expired grant's services are re-checked
# What fence_margin must cover (the argument above): the evidence stamp may
# trail the reply the leader counted by one pysyncobj tick, and the guard needs
# time to wake up, remove addresses and kill (measured: under 1 ms late).
APPLY_LAG = 0.02
ACT_BUDGET = 0.1


def margin_is_safe(fence_margin: float) -> bool:
    """Does the Monitor wait long enough past a node's grant before moving its singletons?"""
    return fence_margin > APPLY_LAG + ACT_BUDGET


@dataclass(frozen=True)
class Vip:
    ifname: str
    ip: str
    prefixlen: int = 32

    def to_wire(self) -> dict[str, Any]:
        return {"ifname": self.ifname, "ip": self.ip, "prefixlen": self.prefixlen}

    @classmethod
    def from_wire(cls, data: Any) -> "Vip":
        if not isinstance(data, dict):
            raise ValueError("a VIP must be a mapping")
        ifname, ip, prefixlen = data.get("ifname"), data.get("ip"), data.get("prefixlen", 32)
        if not isinstance(ifname, str) or not isinstance(ip, str) or not isinstance(prefixlen, int) or isinstance(prefixlen, bool):
            raise ValueError(f"bad VIP {data!r}")
        return cls(ifname, ip, prefixlen)


@dataclass(frozen=True)
class Holdings:
    """VIPs and singleton services (name -> kill target) a node may hold."""

    vips: frozenset[Vip] = frozenset()
    services: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()  # sorted (name, sorted target items)

    @classmethod
    def of(cls, vips: set[Vip] | frozenset[Vip], services: dict[str, dict[str, str]]) -> "Holdings":
        return cls(frozenset(vips), tuple(sorted((n, tuple(sorted(t.items()))) for n, t in services.items())))

    def service_targets(self) -> dict[str, dict[str, str]]:
        return {name: dict(items) for name, items in self.services}

    def __bool__(self) -> bool:
        return bool(self.vips or self.services)

    def union(self, other: "Holdings") -> "Holdings":
        services = self.service_targets()
        services.update(other.service_targets())
        return Holdings.of(self.vips | other.vips, services)

    def to_wire(self) -> dict[str, Any]:
        return {"vips": [v.to_wire() for v in sorted(self.vips, key=lambda v: (v.ifname, v.ip))],
                "services": self.service_targets()}

    @classmethod
    def from_wire(cls, data: Any) -> "Holdings":
        if not isinstance(data, dict):
            raise ValueError("holdings must be a mapping")
        vips = {Vip.from_wire(v) for v in data.get("vips") or []}
        services = data.get("services") or {}
        if not isinstance(services, dict) or not all(
                isinstance(n, str) and isinstance(t, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in t.items())
                for n, t in services.items()):
            raise ValueError("services must map names to {str: str} kill targets")
        return cls.of(vips, services)


@dataclass
class GuardPolicy:
    """The guard's decisions: accept grants, and say when to fence and enforce."""

    until: float = float("-inf")
    holdings: Holdings = field(default_factory=Holdings)
    fenced: bool = True  # nothing granted yet: nothing may be held
    fences: int = 0  # how many times holdings were taken away
    last_enforced: float = float("-inf")

    def grant(self, now: float, until: float | None, holdings: Holdings) -> bool:
        """The agent's claim. True if it may hold `holdings` now.

        A valid grant replaces the holdings (the agent gives up what it no
        longer names only after it removed it). An expired or missing one
        adds them to what stays enforced absent: nothing is forgotten.
        """
        if until is not None and until > now:
            self.until = until
            self.holdings = holdings
            self.fenced = False
            return True
        self.holdings = self.holdings.union(holdings)
        return False

    def valid(self, now: float) -> bool:
        return not self.fenced and now < self.until

    def must_fence(self, now: float) -> bool:
        """The grant just ran out while something is held: fence now."""
        return not self.fenced and now >= self.until

    def fenced_now(self, now: float) -> None:
        self.fenced = True
        self.fences += 1
        self.last_enforced = now

    def must_enforce(self, now: float) -> bool:
        """Fenced and holding something: re-check that it stays absent."""
        return self.fenced and bool(self.holdings) and now - self.last_enforced >= ENFORCE_PERIOD

    def enforced(self, now: float) -> None:
        self.last_enforced = now

    def enforces_vip(self, ifname: str, ip: str, now: float) -> bool:
        """Must an address that just appeared on `ifname` be removed at once?"""
        return (self.fenced or now >= self.until) and any(v.ifname == ifname and v.ip == ip for v in self.holdings.vips)

    def watchdog_armed(self) -> bool:
        """Armed while the guard answers for anything (a hung guard must reset the node)."""
        return bool(self.holdings)

    def next_wakeup(self, now: float) -> float:
        """Seconds until the guard must look again (it also wakes on messages and events)."""
        if not self.fenced:
            return max(0.0, min(self.until - now, 0.5))
        if self.holdings:
            return max(0.0, self.last_enforced + ENFORCE_PERIOD - now)
        return 0.5
