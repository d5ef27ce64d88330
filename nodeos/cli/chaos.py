"""`nodeos chaos ...`: fault campaigns' schedules and reports.

    nodeos chaos run    --seed 7 --rounds 20 --faults all      a campaign on a new lab (catalog lab-cloud), or --lab NAME
    nodeos chaos plan   --seed 7 --rounds 20 --faults all      the schedule a seed gives (no cluster touched)
    nodeos chaos report FILE [--html OUT]                      check a recorded history, or render an old report

Exit codes: 0 no invariant violated, 1 a violation (or a stuck recovery), 2 bad input,
3 the lab could not be set up or healed, 130 interrupted (the faults undone, the report written).
Campaigns run on labs only: a real cluster's campaign is not built yet.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

EPILOG = """FILE is a campaign's history (JSON lines: what the observers recorded) or a report
(JSON) written before. From a history the invariants are checked again: at most one
Monitor lease holder at a time, one MAC per VIP, one node per volume holding a Ceph
watch the blocklist does not fence (unknown samples are no pass), no acknowledged write
lost, every fault healthy again within its bound."""


def _bounds(pairs: list[str]) -> dict[str, float]:
    bounds = {}
    for pair in pairs:
        fault, _, seconds = pair.partition("=")
        try:
            bounds[fault] = float(seconds)
        except ValueError:
            raise SystemExit(f"nodeos chaos: --bound {pair!r}: expected FAULT=SECONDS, e.g. node-crash=120") from None
    return bounds


def _cmd_plan(args: argparse.Namespace) -> int:
    from nodeos.chaos.schedule import ScheduleError, parse_faults, plan

    try:
        schedule = plan(args.seed, args.rounds, parse_faults(args.faults), args.nodes.split(","),
                        [s for s in args.services.split(",") if s], args.overlap)
    except ScheduleError as exc:
        print(f"nodeos chaos plan: {exc}", file=sys.stderr)
        return 2
    for round_ in schedule:
        print(f"round {round_.number:>4}: " + " + ".join(str(f) for f in round_.faults))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from nodeos.chaos.runner import Options, run_campaign
    from nodeos.chaos.schedule import ScheduleError, parse_faults
    from nodeos.lab.lab import LabError

    try:
        options = Options(seed=args.seed, rounds=args.rounds, faults=parse_faults(args.faults), lab=args.lab,
                          catalog=args.catalog, overlap=args.overlap, bounds=_bounds(args.bound),
                          out=Path(args.out) if args.out else None, keep=args.keep)
        report, out = run_campaign(options)
    except ScheduleError as exc:
        print(f"nodeos chaos run: {exc}", file=sys.stderr)
        return 2
    except LabError as exc:
        print(f"nodeos chaos run: {exc}", file=sys.stderr)
        return 3
    _print_summary(report)
    print(f"wrote {out}/history.jsonl, report.json, report.html")
    if report["meta"].get("aborted"):
        print(f"aborted: {report['meta']['aborted']}", file=sys.stderr)
        return 3
    if report["meta"].get("interrupted"):
        return 130
    return 0 if report["ok"] else 1


def _figures(summary: dict[str, Any]) -> str:
    return f"{summary['median']}/{summary['p95']}/{summary['max']} s (median/p95/max)" if summary.get("n") else "-"


def _print_summary(report: dict[str, Any]) -> None:
    for fault, row in report["per_fault"].items():
        print(f"{fault:<16} {row['count']:>4} faults, {row['stuck']} stuck; API answering {_figures(row['answering_s'])}; "
              f"all healthy {_figures(row['healthy_s'])}, {_figures(row.get('healthy_after_undo_s', {'n': 0}))} "
              "after the fault ended")
    for api, row in report.get("unavailability_s", {}).items():
        if row["n"]:
            print(f"client {api:<9} {row['n']:>4} outages: {_figures(row)}")
    for violation in report["violations"]:
        print(f"VIOLATION {violation['invariant']} at {violation['at']:.3f}s: {violation['detail']}")
    print("no invariant violated" if report["ok"] else f"{len(report['violations'])} violation(s)")


def _load_report(path: Path, bounds: dict[str, float]) -> dict[str, Any]:
    from nodeos.chaos.history import History
    from nodeos.chaos.invariants import check
    from nodeos.chaos.report import build, load_json

    if path.suffix == ".json":
        return load_json(path)
    history = History.load(path)
    return build(history, check(history, bounds), {"history": str(path), "records": len(history)})


def _cmd_report(args: argparse.Namespace) -> int:
    from nodeos.chaos.history import HistoryError
    from nodeos.chaos.report import render_html

    path = Path(args.file)
    try:
        report = _load_report(path, _bounds(args.bound))
    except FileNotFoundError:
        print(f"nodeos chaos report: {path}: no such file", file=sys.stderr)
        return 2
    except (HistoryError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        print(f"nodeos chaos report: {exc}", file=sys.stderr)
        return 2
    html = Path(args.html) if args.html else path.with_suffix(".html")
    html.write_text(render_html(report))
    _print_summary(report)
    print(f"wrote {html}")
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    return 0 if report["ok"] else 1


def register(sub: Any) -> None:
    from nodeos.chaos.schedule import FAULTS

    chaos = sub.add_parser("chaos", help="fault campaigns: a seeded schedule, invariant checks, a recovery report",
                           description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    chaos_sub = chaos.add_subparsers(dest="chaos", required=True)
    run = chaos_sub.add_parser("run", help="a seeded fault campaign on a lab, checked against the invariants",
                               epilog="Ctrl-C undoes the faults in force, heals the lab and still writes the report.")
    run.add_argument("--seed", type=int, required=True, help="the same seed gives the same schedule")
    run.add_argument("--rounds", type=int, default=20, help="rounds (default: %(default)s)")
    run.add_argument("--faults", default="all", help=f"comma-separated, or all: {','.join(FAULTS)}")
    run.add_argument("--lab", help="run on this existing, healthy lab (default: a new 3-node lab `chaos`)")
    run.add_argument("--catalog", default="lab-cloud", help="the new lab's catalog (default: %(default)s)")
    run.add_argument("--overlap", type=float, default=0.25,
                     help="chance of a second fault overlapping a round's first (default: %(default)s)")
    run.add_argument("--bound", action="append", default=[], metavar="FAULT=SECONDS",
                     help="recovery bound of a fault kind (defaults: 180 s for a service or agent, 600 s for a node)")
    run.add_argument("--out", help="output directory (default: chaos-results/LAB-seedS-TIME)")
    run.add_argument("--keep", action="store_true", help="keep the new lab afterwards")
    run.set_defaults(func=_cmd_run)
    plan = chaos_sub.add_parser("plan", help="print the schedule a seed gives (touches no cluster)")
    plan.add_argument("--seed", type=int, required=True, help="the same seed gives the same schedule")
    plan.add_argument("--rounds", type=int, default=20, help="rounds (default: %(default)s)")
    plan.add_argument("--faults", default="all", help=f"comma-separated, or all: {','.join(FAULTS)}")
    plan.add_argument("--nodes", default="n1,n2,n3", help="node names (default: %(default)s)")
    plan.add_argument("--services", default="", help="services a service-kill may target, comma-separated")
    plan.add_argument("--overlap", type=float, default=0.25,
                      help="chance of a second fault overlapping a round's first (default: %(default)s)")
    plan.set_defaults(func=_cmd_plan)
    report = chaos_sub.add_parser("report", help="check a recorded history, or render an old report, as HTML",
                                  epilog=EPILOG)
    report.add_argument("file", metavar="FILE", help="history (.jsonl) or report (.json)")
    report.add_argument("--html", help="HTML output (default: FILE with .html)")
    report.add_argument("--bound", action="append", default=[], metavar="FAULT=SECONDS",
                        help="recovery bound of a fault kind (default 300 s each)")
    report.add_argument("--json", action="store_true", help="also print the report as JSON")
    report.set_defaults(func=_cmd_report)
