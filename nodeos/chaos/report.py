"""A campaign's recovery report: JSON, and a self-contained HTML page (no script, no link out).

Per fault kind: how many, and recovery times (median, p95, max) from injection to the client
answering again and to every service healthy, and from the fault's end (a node back on, a
cable back in) to every service healthy; per incident a timeline of the fault, its
detection, the Monitor's decisions (from the event log), health and the API answering,
with the client's unavailability windows drawn under it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2

from nodeos.bench.stats import summarize

from .history import History, event_name
from .invariants import Violation, incidents, unavailability_windows

PHASES = ("injected", "detected", "decided", "answering", "undone", "healthy")
# Agent events worth a mark on an incident's timeline (the Monitor's decisions and their outcome).
DECISION_EVENTS = ("node.", "monitor.", "service.", "vip.", "fence.", "storage.volume", "volume.", "cloud.")

_TEMPLATES = jinja2.Environment(loader=jinja2.PackageLoader("nodeos.chaos", "templates"), autoescape=True,
                                undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def build(history: History, violations: list[Violation], meta: dict[str, Any]) -> dict[str, Any]:
    """The report as plain data (what `nodeos chaos report` renders again from the JSON)."""
    found = sorted(incidents(history).values(), key=lambda i: i["phases"].get("injected", 0.0))
    windows = unavailability_windows(history)
    events = history.of("event")
    per_fault: dict[str, dict[str, list[float]]] = {}
    rows = []
    for incident in found:
        phases = incident["phases"]
        start = phases.get("injected")
        if start is None:
            continue
        end = phases.get("healthy", phases.get("stuck", start))
        relative = {p: round(t - start, 3) for p, t in phases.items()}
        times = per_fault.setdefault(incident["fault"], {"healthy": [], "answering": [], "undone": [], "stuck": []})
        for phase in ("healthy", "answering"):
            if phase in relative:
                times[phase].append(relative[phase])
        if "healthy" in relative and "undone" in relative:  # the whole cluster healthy once the fault ended
            times["undone"].append(round(relative["healthy"] - relative["undone"], 3))
        if "healthy" not in relative:
            times["stuck"].append(1.0)
        rows.append({
            "id": incident["id"], "fault": incident["fault"], "target": incident["target"], "phases": relative,
            "state": incident["state"],
            "events": [{"t": round(e["t"] - start, 3), "node": e.get("node", ""), "event": event_name(e)}
                       for e in events if start <= e["t"] <= end and event_name(e).startswith(DECISION_EVENTS)],
            "windows": [{"api": w.api, "start": round(w.start - start, 3),
                         "end": None if w.end is None else round(w.end - start, 3)}
                        for w in windows if w.start <= end and (w.end is None or w.end >= start)],
        })
    return {
        "meta": meta,
        "ok": not violations,
        "violations": [v.as_dict() for v in violations],
        "per_fault": {fault: {"count": len(t["healthy"]) + len(t["stuck"]), "stuck": len(t["stuck"]),
                              "healthy_s": summarize(t["healthy"]), "answering_s": summarize(t["answering"]),
                              "healthy_after_undo_s": summarize(t["undone"])}
                      for fault, t in sorted(per_fault.items())},
        "unavailability_s": {api: summarize([w.seconds for w in windows if w.api == api and w.seconds is not None])
                             for api in sorted({w.api for w in windows})},
        "incidents": rows,
    }


def write_json(report: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=True))
    return path


def load_json(path: Path) -> dict[str, Any]:
    report = json.loads(path.read_text())
    if not isinstance(report, dict) or "per_fault" not in report or "incidents" not in report:
        raise ValueError(f"{path}: not a chaos report (no per_fault/incidents)")
    return report


def render_html(report: dict[str, Any]) -> str:
    return _TEMPLATES.get_template("report.html.j2").render(report=report, phases=PHASES, timeline=_timeline)


def _timeline(incident: dict[str, Any], width: int = 720) -> dict[str, Any]:
    """Scale an incident's times to an SVG's x axis (0 = injection)."""
    times = [t for t in incident["phases"].values()] + [e["t"] for e in incident["events"]] + \
        [w["end"] for w in incident["windows"] if w["end"] is not None]
    span = max([1.0] + times)
    scale = (width - 40) / span

    def x(t: float | None) -> float:
        return round(20 + max(0.0, min(t if t is not None else span, span)) * scale, 1)

    return {"span": span, "width": width, "x": x}
