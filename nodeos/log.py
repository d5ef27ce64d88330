"""Structured logging: one JSON event per line.

Every daemon message is an *event* with a dotted name and flat fields, so an
operator can grep it and a test can parse it. `RateLimiter` keeps hostile
input (forged beacons, garbage on the Raft port) from flooding the log.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import IO, Any

_lock = threading.Lock()
_stream: IO[str] = sys.stderr
_context: dict[str, Any] = {}


def configure(stream: IO[str] | None = None, **context: Any) -> None:
    """Set the output stream and fields added to every event (e.g. node=...)."""
    global _stream
    if stream is not None:
        _stream = stream
    _context.update(context)


def event(name: str, level: str = "info", **fields: Any) -> None:
    """Write one event line: {"ts":..., "level":..., "event":..., ...fields}."""
    record = {"ts": round(time.time(), 3), "level": level, "event": name}
    record.update(_context)
    record.update(fields)
    line = json.dumps(record, default=str, separators=(",", ":"))
    with _lock:
        try:
            _stream.write(line + "\n")
            _stream.flush()
        except (OSError, ValueError):
            pass  # a closed log stream must never take the agent down


class RateLimiter:
    """Allow at most `burst` events per `period` seconds per key; count the rest."""

    def __init__(self, period: float = 10.0, burst: int = 5) -> None:
        self.period = period
        self.burst = burst
        self._windows: dict[str, tuple[float, int, int]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str, now: float | None = None) -> tuple[bool, int]:
        """Return (allowed, suppressed_since_last_allowed)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            start, count, suppressed = self._windows.get(key, (now, 0, 0))
            if now - start >= self.period:
                start, count = now, 0
            if count < self.burst:
                self._windows[key] = (start, count + 1, 0)
                return True, suppressed
            self._windows[key] = (start, count, suppressed + 1)
            return False, suppressed + 1
