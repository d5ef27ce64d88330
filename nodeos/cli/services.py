"""`nodeos service ...` and `nodeos catalog ...`: operator commands for services."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from nodeos.services.catalog import CatalogError, parse_catalog
from nodeos.cluster.control import ControlError

Call = Callable[[argparse.Namespace, str, str, "dict[str, Any] | None"], tuple[int, Any]]


def _report(code: int, payload: Any, success: str) -> int:
    if code == 200:
        print(success)
        return 0
    error = payload.get("error") if isinstance(payload, dict) else payload
    print(f"nodeos: {error}", file=sys.stderr)
    return 2 if code in (400, 404, 409) else 1


def register(sub: Any, add_target_options: Callable[[argparse.ArgumentParser], None], call: Call) -> None:
    def guarded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        def run(args: argparse.Namespace) -> int:
            try:
                return handler(args)
            except (ControlError, LookupError) as exc:
                print(f"nodeos: {exc}", file=sys.stderr)
                return 3
        return run

    def restart(args: argparse.Namespace) -> int:
        code, payload = call(args, "POST", "/service/restart", {"name": args.name})
        return _report(code, payload, f"{args.name}: restart ordered on {', '.join(payload.get('nodes', [])) if code == 200 else ''}")

    def move(args: argparse.Namespace) -> int:
        code, payload = call(args, "POST", "/service/move", {"name": args.name, "to": args.to})
        return _report(code, payload, f"{args.name}: move ordered (watch: nodeos events --follow)")

    def apply(args: argparse.Namespace) -> int:
        path = Path(args.file)
        try:
            text = path.read_text()
            parse_catalog(text, str(path))  # the same validation the agent does, before sending
        except OSError as exc:
            print(f"nodeos: {path}: {exc.strerror}", file=sys.stderr)
            return 2
        except CatalogError as exc:
            print(f"nodeos: {exc}\nnothing was changed in the cluster", file=sys.stderr)
            return 2
        code, payload = call(args, "POST", "/catalog", {"text": text, "source": str(path)})
        return _report(code, payload, f"catalog applied (version {payload.get('version') if isinstance(payload, dict) else '?'})")

    def check(args: argparse.Namespace) -> int:
        path = Path(args.file)
        try:
            catalog = parse_catalog(path.read_text(), str(path))
        except OSError as exc:
            print(f"nodeos: {path}: {exc.strerror}", file=sys.stderr)
            return 2
        except CatalogError as exc:
            print(f"nodeos: {exc}", file=sys.stderr)
            return 2
        print(f"{path}: valid; services in start order: {', '.join(catalog.start_order())}")
        return 0

    def show(args: argparse.Namespace) -> int:
        code, payload = call(args, "GET", "/catalog", None)
        print(json.dumps(payload, indent=2))
        return 0 if code == 200 else 1

    service = sub.add_parser("service", help="operator actions on catalog services")
    service_sub = service.add_subparsers(dest="service_command", metavar="ACTION")
    service_sub.required = True
    p = service_sub.add_parser("restart", help="restart a service in place (does not count as a failure)")
    p.add_argument("name")
    add_target_options(p)
    p.set_defaults(func=guarded(restart))
    p = service_sub.add_parser("move", help="move a singleton (and its VIP) to another node")
    p.add_argument("name")
    p.add_argument("--to", help="node id or unique prefix (default: the least-loaded other node)")
    add_target_options(p)
    p.set_defaults(func=guarded(move))

    catalog = sub.add_parser("catalog", help="the service catalog")
    catalog_sub = catalog.add_subparsers(dest="catalog_command", metavar="ACTION")
    catalog_sub.required = True
    p = catalog_sub.add_parser("check", help="validate a catalog file locally (file:line: field: problem)")
    p.add_argument("file")
    p.set_defaults(func=check)
    p = catalog_sub.add_parser("apply", help="validate and apply a catalog to the running cluster")
    p.add_argument("file")
    add_target_options(p)
    p.set_defaults(func=guarded(apply))
    p = catalog_sub.add_parser("show", help="print the catalog the cluster runs")
    add_target_options(p)
    p.set_defaults(func=guarded(show))
