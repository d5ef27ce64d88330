"""`nodeos bench ...`: benchmarks in the lab; they print figures and write JSON, nothing is asserted.

    nodeos bench formation --rounds 10     agents' start -> formed cluster (3 and 5 nodes)
    nodeos bench election  --rounds 10     leader SIGKILL -> a new Monitor lease holder
    nodeos bench failover  --rounds 10     per fault: detection and VIP serving again
    nodeos bench failover  --stateful      MariaDB on a Ceph volume: its node failed -> writes again
    nodeos bench load      --seconds 600   false failovers and loop lag, idle vs. `load all`
    nodeos bench idle      --minutes 60    an idle lab's CPU, RSS (and its growth) and journal size: a soak
    nodeos bench cloud     --rounds 5      the OpenStack APIs' unavailability per fault, the control plane's RSS
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from nodeos.bench.cluster import bench_election, bench_formation, print_table, write_results
from nodeos.lab.lab import LabError


STATELESS_FAULTS = ["service-kill", "node-crash", "node-reboot", "disconnect", "monitor-crash", "kill-agent", "hang-agent"]


def _cmd(args: argparse.Namespace) -> int:
    try:
        if args.bench == "formation":
            results = bench_formation(args.rounds, args.sizes)
            title = "Formation: agents started -> one formed cluster"
        elif args.bench == "election":
            results = bench_election(args.rounds)
            title = "Election: leader SIGKILL -> new Monitor lease holder"
        elif args.bench == "load":
            from nodeos.bench.load import bench_load, print_load

            results = bench_load(args.seconds, args.idle_seconds)
            print_load(results)
            path = write_results("load", {"bench": "load", "at": time.time(), "results": results}, args.out)
            print(f"\nwrote {path}")
            return 0
        elif args.bench == "idle":
            from nodeos.bench.idle import bench_idle, print_idle

            results = bench_idle(args.minutes, args.every, args.nodes)
            print_idle(results)
            path = write_results("idle", {"bench": "idle", "at": time.time(), "results": results}, args.out)
            print(f"\nwrote {path}")
            return 0
        elif args.bench == "cloud":
            from nodeos.bench.cloud import FAULTS as CLOUD_FAULTS, bench_cloud

            results = bench_cloud(args.rounds, args.faults or list(CLOUD_FAULTS))
            title = "Cloud: token issue + an authenticated read through the VIPs every 0.5 s, unavailable per fault"
        elif args.stateful:
            from nodeos.bench.stateful import FAULTS, bench_stateful

            results = bench_stateful(args.rounds, args.faults or list(FAULTS))
            title = "Stateful failover (MariaDB on a Ceph volume): phases and writes acknowledged again"
        else:
            from nodeos.bench.failover import bench_failover

            results = bench_failover(args.rounds, args.faults or STATELESS_FAULTS)
            title = "Failover per fault: detection and VIP serving again"
    except LabError as exc:
        print(f"nodeos bench: {exc}", file=sys.stderr)
        return 1
    print_table(title, {k: v for k, v in results.items() if isinstance(v, dict) and "n" in v})
    name = "failover-stateful" if getattr(args, "stateful", False) else args.bench
    path = write_results(name, {"bench": name, "rounds": args.rounds, "at": time.time(), "results": results}, args.out)
    print(f"\nwrote {path}")
    return 0


def register(sub: Any) -> None:
    bench = sub.add_parser("bench", help="benchmarks in the lab (print figures, write JSON)")
    bench_sub = bench.add_subparsers(dest="bench", metavar="BENCH")
    bench_sub.required = True
    formation = bench_sub.add_parser("formation", help="time from agents' start to a formed cluster")
    formation.add_argument("--sizes", type=int, nargs="+", default=[3, 5], help="cluster sizes (default: 3 5)")
    election = bench_sub.add_parser("election", help="time from leader SIGKILL to a new Monitor lease holder")
    failover = bench_sub.add_parser("failover", help="per fault: time to detection and to the VIP serving again")
    failover.add_argument("--faults", nargs="+", default=None,
                          help="faults to measure (default: all; with --stateful: node-crash disconnect partition)")
    failover.add_argument("--stateful", action="store_true",
                          help="MariaDB on a Ceph volume (catalog lab-storage): the holder's node crashed, cut off or "
                               "partitioned -> inserts through its VIP acknowledged again, every acknowledged row read back")
    load = bench_sub.add_parser("load", help="false failovers (fences, lease changes, service stops) and the agents' loop "
                                             "lag, idle and under `lab fault load all`")
    load.add_argument("--seconds", type=float, default=600.0, help="seconds under load (default: %(default)s)")
    load.add_argument("--idle-seconds", type=float, default=60.0, help="idle baseline first (default: %(default)s)")
    load.add_argument("--out", help="JSON output path (default: bench-results/load.json)")
    load.set_defaults(func=_cmd)
    idle = bench_sub.add_parser("idle", help="an idle lab's cost over time (a soak): agents' and guards' CPU, RSS and "
                                             "its growth per hour, the Raft journal's size")
    idle.add_argument("--minutes", type=float, default=10.0, help="how long it runs idle (default: %(default)s)")
    idle.add_argument("--every", type=float, default=60.0, help="seconds between samples (default: %(default)s)")
    idle.add_argument("--nodes", type=int, default=3, help="lab size (default: %(default)s)")
    idle.add_argument("--out", help="JSON output path (default: bench-results/idle.json)")
    idle.set_defaults(func=_cmd)
    cloud = bench_sub.add_parser("cloud", help="the OpenStack APIs (catalog lab-cloud): a client's unavailability "
                                              "per fault (token issue, projects, images every 0.5 s), RSS")
    cloud.add_argument("--faults", nargs="+", default=None, metavar="FAULT",
                       help="faults to measure (default: all; an unknown name lists them)")
    for parser in (formation, election, failover, cloud):
        parser.add_argument("--rounds", type=int, default=10, help="rounds per case (default: %(default)s)")
        parser.add_argument("--out", help="JSON output path (default: bench-results/<bench>.json; "
                                          "failover --stateful: failover-stateful.json)")
        parser.set_defaults(func=_cmd)
