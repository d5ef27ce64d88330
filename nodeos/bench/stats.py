"""Figures every benchmark and campaign report shares: median, p95, min and max of samples."""

from __future__ import annotations

import statistics
from typing import Any


def summarize(samples: list[float]) -> dict[str, Any]:
    if not samples:
        return {"n": 0}
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, max(0, int(round(0.95 * len(ordered) + 0.5)) - 1))]
    return {"n": len(samples), "median": round(statistics.median(samples), 3), "p95": round(p95, 3),
            "min": round(ordered[0], 3), "max": round(ordered[-1], 3)}
