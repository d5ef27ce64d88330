"""A campaign's recorded history: what the neutral observers saw, one JSON object per line.

Times (`t`) are seconds on the host's monotonic clock, the one the agents log with, so the
agents' events and the observers' samples sort into one timeline. Kinds (`k`):

  lease    {holders: [node]}               the Monitor lease holders one sampler saw at one instant
  arp      {vip, macs: [mac]}              the MACs that answered one ARP who-has for a VIP
  watch    {volume, watchers: [{address, node, fenced}] | null, absent?, error?}
                                           a volume image's Ceph watchers at one instant: each
                                           client instance, its lab node (null: not a node's IP),
                                           and whether the blocklist (read before) fences it;
                                           watchers null: unknown (why in error), never "none";
                                           absent: the image does not exist (nobody can write it)
  mapping  {volume, rw: [node]}            the nodes that had a volume mounted read-write at one
                                           instant (information only: a fenced mount cannot write)
  write    {store, key}                    a write acknowledged to the writer (only acknowledged ones)
  readback {store, keys: [key]}            every key read back from a store at the end
  poll     {api, ok, detail}               one client request through a VIP
  fault    {id, fault, target, phase}      phase: injected, detected, decided, healthy, answering, stuck
  event    {node, event, ...}              one entry of an agent's event log

The samplers' kinds (lease, arp, watch, mapping, poll) are recorded by change
(`ChangeRecorder`): the first and last sample of each value and one every
KEEPALIVE seconds, not every sample.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Iterator

Record = dict[str, Any]
Sink = Callable[[Record], None]
KEEPALIVE = 5.0  # seconds between records of an unchanged value: the observer was still looking

KINDS = ("lease", "arp", "watch", "mapping", "write", "readback", "poll", "fault", "event")


def event_name(record: Record) -> str:
    """An `event` record's name: the event log calls it `kind` (histories before 2026-12-02 left `event` empty)."""
    return str(record.get("event") or record.get("kind") or "")


class HistoryError(ValueError):
    """A history file that cannot be read back (its path and line in the message)."""


class History:
    """Append-only and thread-safe: the samplers are threads of one process."""

    def __init__(self, records: Iterable[Record] = ()) -> None:
        self._records: list[Record] = []
        self._lock = threading.Lock()
        for record in records:
            self.add(record)

    def add(self, record: Record) -> None:
        if record.get("k") not in KINDS or not isinstance(record.get("t"), (int, float)):
            raise HistoryError(f"not a history record: {record!r}")
        with self._lock:
            self._records.append(record)

    def record(self, kind: str, t: float, /, **fields: Any) -> None:
        """One record; `fields` may not be named k or t (positional-only: an event may have a `kind`)."""
        self.add({**fields, "k": kind, "t": t})

    def of(self, kind: str) -> list[Record]:
        """The records of one kind in time order (samplers append concurrently, a little out of order)."""
        with self._lock:
            return sorted((r for r in self._records if r["k"] == kind), key=lambda r: r["t"])

    def __iter__(self) -> Iterator[Record]:
        with self._lock:
            return iter(sorted(self._records, key=lambda r: r["t"]))

    def __len__(self) -> int:
        return len(self._records)

    def dump(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        with tmp.open("w") as out:
            for record in self:
                out.write(json.dumps(record, sort_keys=True) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "History":
        history = cls()
        with path.open() as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    history.add(json.loads(line))
                except (json.JSONDecodeError, HistoryError) as exc:
                    raise HistoryError(f"{path}:{number}: {exc}") from None
        return history


class ChangeRecorder:
    """One observer's samples, recorded only where they matter: the first sample of each value,
    the last one before it changes (so an episode or an outage keeps its exact ends), and one
    every `keepalive` seconds while nothing changes (the observer was still looking). A long
    campaign stays small: 20 lease samples a second become a few records a minute.

    Samples of one `key` (a VIP, an API, a volume) are compared by `value(fields)`; each key is
    one observer thread's, so no lock. `flush` records what is held back, at the end."""

    def __init__(self, sink: Sink, kind: str, value: Callable[[Record], Hashable],
                 keepalive: float = KEEPALIVE) -> None:
        self.sink, self.kind, self.value, self.keepalive = sink, kind, value, keepalive
        self._last: dict[Hashable, tuple[Hashable, float]] = {}  # key -> (its value, when last recorded)
        self._held: dict[Hashable, Record] = {}  # key -> its last sample, not recorded yet

    def sample(self, t: float, key: Hashable, /, **fields: Any) -> None:
        record = {**fields, "k": self.kind, "t": t}
        value = self.value(fields)
        last = self._last.get(key)
        if last is not None and last[0] == value and t - last[1] < self.keepalive:
            self._held[key] = record
            return
        held = self._held.pop(key, None)
        if last is not None and last[0] != value and held is not None:
            self.sink(held)  # the last sample of the old value
        self.sink(record)
        self._last[key] = (value, t)

    def flush(self) -> None:
        for key in list(self._held):
            self.sink(self._held.pop(key))
