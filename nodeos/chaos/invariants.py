"""Invariant checkers over a recorded history (history.py), each separate and pure.

Safety: at most one Monitor lease holder at any sampled instant; each VIP answered by at
most one MAC; each volume writable from at most one node (Ceph's watchers of its image that
the blocklist does not fence); no acknowledged write lost. Liveness: every fault recovered
within its bound. A violation seen by consecutive samples is one violation (an episode),
with its first and last sample and what was seen. The unavailability windows of the
client's polls are measurements, not violations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import groupby
from typing import Any, Callable, Iterable

from .history import History, Record

DEFAULT_RECOVERY_BOUND = 300.0  # seconds from injection to every service healthy again


@dataclass(frozen=True)
class Violation:
    invariant: str
    at: float
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Window:
    """A client could not use an API from `start` (its last answer before the outage) to `end`
    (its first answer after); `end` is None when it never answered again."""
    api: str
    start: float
    end: float | None

    @property
    def seconds(self) -> float | None:
        return None if self.end is None else round(self.end - self.start, 3)


def _episodes(samples: list[Record], bad: Callable[[Record], bool]) -> list[list[Record]]:
    """Runs of consecutive bad samples (time order)."""
    return [list(run) for is_bad, run in groupby(samples, key=bad) if is_bad]


def _episode_violation(invariant: str, run: list[Record], what: str) -> Violation:
    span = f"{run[0]['t']:.3f}s" if len(run) == 1 else f"{run[0]['t']:.3f}s to {run[-1]['t']:.3f}s ({len(run)} samples)"
    return Violation(invariant, run[0]["t"], f"{what} at {span}")


def one_lease_holder(history: History) -> list[Violation]:
    return [_episode_violation("one-lease-holder", run, f"lease held by {sorted(set(run[0]['holders']))}")
            for run in _episodes(history.of("lease"), lambda r: len(set(r["holders"])) > 1)]


def _per_key(records: list[Record], key: str) -> dict[str, list[Record]]:
    grouped: dict[str, list[Record]] = {}
    for record in records:
        grouped.setdefault(record[key], []).append(record)
    return grouped


def one_mac_per_vip(history: History) -> list[Violation]:
    return [_episode_violation("one-mac-per-vip", run, f"VIP {vip} answered by {sorted(set(run[0]['macs']))}")
            for vip, samples in sorted(_per_key(history.of("arp"), "vip").items())
            for run in _episodes(samples, lambda r: len(set(r["macs"])) > 1)]


def writers(rows: list[dict[str, Any]]) -> set[str]:
    """Who could write, from one `watch` sample's rows: the nodes (an address outside the lab
    stands for itself) holding a watch the blocklist does not fence."""
    return {row["node"] or row["address"] for row in rows if not row["fenced"]}


def _known(sample: Record) -> bool:
    return sample.get("watchers") is not None


def one_writer_per_volume(history: History) -> list[Violation]:
    """Two nodes with un-fenced watches in one sample (both could write), and every stretch of
    unknown samples across which that cannot be ruled out (see `_unverified`). The mount
    table's `mapping` records are not checked: a fenced node's mount cannot write."""
    found = []
    for volume, samples in sorted(_per_key(history.of("watch"), "volume").items()):
        found += [_episode_violation("one-writer-per-volume", run,
                                     f"volume {volume} writable from {sorted(writers(run[0]['watchers']))} "
                                     f"(un-blocklisted watches)")
                  for run in _episodes([s for s in samples if _known(s)], lambda r: len(writers(r["watchers"])) > 1)]
        found += _unverified(volume, samples)
    return found


def _unverified(volume: str, samples: list[Record]) -> list[Violation]:
    """A stretch of unknown samples is no pass: it is reported unless the writers seen on its two
    sides are one node at most (the same one, or one leaving, or one arriving), or the writers
    before it that are gone after it are found blocklisted at its end (a handover hidden in it:
    Ceph refuses the old client's writes from its fence on; that the new holder attached only
    after that fence is the order volumes.py keeps, not seen here). With a side never seen, two
    writers at once could not be ruled out. Assumed: no writer came and went entirely within one
    stretch (a node crash blinds the observer for as long as the image's header is on a dead
    OSD, and nobody can open the image then either)."""
    found = []
    index = 0
    for known, group in groupby(samples, key=_known):
        run = list(group)
        start, index = index, index + len(run)
        if known:
            continue
        before = writers(samples[start - 1]["watchers"]) if start > 0 else None
        after = writers(samples[index]["watchers"]) if index < len(samples) else None
        if before is not None and after is not None and (
                len(before | after) <= 1 or (len(after) <= 1 and _left_fenced(samples[start - 1], samples[index]))):
            continue
        span = f"{run[0]['t']:.3f}s to {run[-1]['t']:.3f}s ({len(run)} samples)"
        found.append(Violation("one-writer-per-volume", run[0]["t"],
                               f"volume {volume} not verified: its watchers unknown at {span}, writers before "
                               f"{_names(before)}, after {_names(after)}; first error: {run[0].get('error', '?')}"))
    return found


def _left_fenced(before: Record, after: Record) -> bool:
    """Every un-fenced watch before that is not a writer after is blocklisted in the sample after:
    as a fenced row, or in `fenced_seen` (earlier watchers the blocklist now names)."""
    still = writers(after["watchers"])
    fenced = {row["address"] for row in after["watchers"] if row["fenced"]} | set(after.get("fenced_seen") or ())
    return all(row["address"] in fenced for row in before["watchers"]
               if not row["fenced"] and (row["node"] or row["address"]) not in still)


def _names(nodes: set[str] | None) -> str:
    return "unknown" if nodes is None else str(sorted(nodes))


def no_acknowledged_write_lost(history: History) -> list[Violation]:
    """Every acknowledged key is in the store's last read-back; a store written but never read
    back is a violation too (the check did not happen)."""
    readbacks = {store: runs[-1] for store, runs in _per_key(history.of("readback"), "store").items()}
    violations = []
    for store, writes in sorted(_per_key(history.of("write"), "store").items()):
        readback = readbacks.get(store)
        if readback is None:
            violations.append(Violation("no-acknowledged-write-lost", writes[-1]["t"],
                                        f"{store}: {len(writes)} acknowledged writes never read back"))
            continue
        found = set(readback["keys"])
        lost = [w for w in writes if w["key"] not in found]
        if lost:
            keys = ", ".join(str(w["key"]) for w in lost[:5]) + (" ..." if len(lost) > 5 else "")
            violations.append(Violation("no-acknowledged-write-lost", lost[0]["t"],
                                        f"{store}: {len(lost)} of {len(writes)} acknowledged writes lost ({keys})"))
    return violations


def incidents(history: History) -> dict[str, dict[str, Any]]:
    """Per fault id: the fault, its target and the time of each phase (the first of each)."""
    found: dict[str, dict[str, Any]] = {}
    for record in history.of("fault"):
        incident = found.setdefault(record["id"], {"id": record["id"], "fault": record["fault"],
                                                   "target": record.get("target", ""), "phases": {}, "state": None})
        incident["phases"].setdefault(record["phase"], record["t"])
        if record["phase"] == "stuck":
            incident["state"] = record.get("state")
    return found


def recovered_in_bound(history: History, bounds: dict[str, float] | None = None) -> list[Violation]:
    """Every injected fault reaches `healthy` within its bound (per fault kind, else the default)."""
    bounds = bounds or {}
    violations = []
    for incident in incidents(history).values():
        phases = incident["phases"]
        injected = phases.get("injected")
        if injected is None:
            continue
        bound = bounds.get(incident["fault"], DEFAULT_RECOVERY_BOUND)
        healthy = phases.get("healthy")
        if healthy is None or healthy - injected > bound:
            took = "never" if healthy is None else f"after {healthy - injected:.1f}s"
            state = f"; cluster then: {incident['state']}" if incident["state"] else ""
            violations.append(Violation("recovered-in-bound", injected,
                                        f"{incident['id']} {incident['fault']} {incident['target']}: healthy {took}, "
                                        f"bound {bound:.0f}s (stuck recovery){state}"))
    return violations


def unavailability_windows(history: History) -> list[Window]:
    """Per API, each outage seen by the client's polls: from its last answer before the first
    failed poll to its first answer after (polls before the first answer ever are start-up)."""
    windows = []
    for api, polls in sorted(_per_key(history.of("poll"), "api").items()):
        last_ok: float | None = None
        outage = False
        for poll in polls:
            if poll["ok"]:
                if outage and last_ok is not None:
                    windows.append(Window(api, last_ok, poll["t"]))
                last_ok, outage = poll["t"], False
            elif last_ok is not None:
                outage = True
        if outage and last_ok is not None:
            windows.append(Window(api, last_ok, None))
    return sorted(windows, key=lambda w: w.start)


CHECKERS: dict[str, Callable[[History], list[Violation]]] = {
    "one-lease-holder": one_lease_holder,
    "one-mac-per-vip": one_mac_per_vip,
    "one-writer-per-volume": one_writer_per_volume,
    "no-acknowledged-write-lost": no_acknowledged_write_lost,
}


def check(history: History, bounds: dict[str, float] | None = None,
          skip: Iterable[str] = ()) -> list[Violation]:
    """Every checker's violations, in time order."""
    found = [v for name, checker in CHECKERS.items() if name not in skip for v in checker(history)]
    if "recovered-in-bound" not in skip:
        found += recovered_in_bound(history, bounds)
    return sorted(found, key=lambda v: (v.at, v.invariant))
