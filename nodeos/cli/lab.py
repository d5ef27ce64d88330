"""`nodeos lab ...`: bring a lab cluster up and down, look at it, inject faults."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

from nodeos.lab.lab import Lab, LabError, destroy


def _progress(message: str) -> None:
    print(f"  ... {message}", file=sys.stderr, flush=True)


def lab_catalog(name: str) -> str:
    """A node catalog's lab variant when there is one: `cloud` -> `lab-cloud`, `default` -> `lab`.

    The node catalogs run systemd units; their lab twins run the same
    packages as processes, which is what a lab node can do.
    """
    from nodeos.services.catalog import packaged_catalog

    twin = "lab" if name == "default" else f"lab-{name}"
    if "/" not in name and not name.startswith("lab") and packaged_catalog(twin).exists():
        return twin
    return name


def _up(args: argparse.Namespace) -> int:
    try:
        catalog = None if args.no_services else lab_catalog(args.catalog)
        lab = Lab.create(args.name, args.nodes, args.expect, catalog=catalog)
        print(f"lab {args.name}: bridge {lab.spec.bridge}, {args.nodes} namespaces; starting agents", file=sys.stderr)
        lab.start_all()
        if args.no_wait:
            return 0
        view = lab.wait_formed(args.timeout, progress=_progress)
        services = [] if args.no_services else lab.wait_services(args.timeout, progress=_progress)
    except LabError as exc:
        print(f"nodeos lab: {exc}", file=sys.stderr)
        print(f"  (logs: /run/nodeos-lab/{args.name}/nodes/*/agent.log; clean up with 'nodeos lab down --name {args.name}')", file=sys.stderr)
        return 1
    leader = view["leader"]
    print(f"lab {args.name}: formed, {args.nodes} members, leader {leader} ({lab.node_name_of(leader)})")
    for row in services:
        where = f"on {lab.node_name_of(row['node'])}, VIP {row['vip']}" if row["placement"] == "singleton" else "on every node"
        print(f"  {row['name']}: {row['health']} {where}")
    print(f"  next: nodeos lab status --name {args.name} | nodeos status --lab-node n1 | nodeos lab down --name {args.name}")
    return 0


def _down(args: argparse.Namespace) -> int:
    removed = destroy(args.name)
    print(f"lab {args.name}: removed {len(removed)} namespaces/links" if removed else f"lab {args.name}: nothing to remove")
    return 0


def _status(args: argparse.Namespace) -> int:
    try:
        view = Lab.load(args.name).status()
    except LabError as exc:
        print(f"nodeos lab: {exc}", file=sys.stderr)
        return 3
    if args.json:
        print(json.dumps(view, indent=2))
        return 0
    print(f"lab {view['lab']} on bridge {view['bridge']}" + (f"; PARTITIONED {view['partitioned']}" if view["partitioned"] else ""))
    for node in view["nodes"]:
        status = node["status"] or {}
        role = "leader" if status.get("is_leader") else ("monitor" if status.get("may_act") else "")
        print(f"  {node['name']:<4} {node['address']:<12} pid {str(node['agent_pid'] or '-'):<8} "
              f"{status.get('node_id', '-'):<13} {status.get('formation', 'down'):<9} "
              f"members {len(status.get('members') or [])} leader {status.get('leader') or '-'} {role}")
    return 0


def _add(args: argparse.Namespace) -> int:
    try:
        node = Lab.load(args.name).add_node()
    except LabError as exc:
        print(f"nodeos lab: {exc}", file=sys.stderr)
        return 1
    print(f"lab {args.name}: started {node.name} ({node.ip}); it joins the existing cluster")
    return 0


def _client(args: argparse.Namespace) -> int:
    """A command on the lab's LAN, from a namespace that is not a node, as the cloud's admin."""
    from nodeos.cloud.credentials import admin_environment, keystone_auth_url
    from nodeos.cloud.secrets import admin_password
    from nodeos.cluster.identity import load_identity

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("nodeos lab client: give a command, e.g. 'nodeos lab client -- openstack token issue'", file=sys.stderr)
        return 2
    try:
        lab = Lab.load(args.name)
        namespace = lab.add_client()
        env = dict(os.environ)
        status = next((s for s in (lab.node_status(n) for n in lab.spec.nodes) if s), None)
        auth_url = keystone_auth_url(status or {})
        if auth_url:  # the lab runs keystone: the OpenStack clients need nothing more
            env.update(admin_environment(auth_url, admin_password(load_identity(lab.identity_path))))
    except LabError as exc:
        print(f"nodeos lab: {exc}", file=sys.stderr)
        return 1
    return subprocess.run(["ip", "netns", "exec", namespace, *command], env=env).returncode


def _fault(args: argparse.Namespace) -> int:
    try:
        lab = Lab.load(args.name)
        result = _apply_fault(lab, args)
    except LabError as exc:
        print(f"nodeos lab: {exc}", file=sys.stderr)
        return 1
    print(result)
    return 0


def _apply_fault(lab: Lab, args: argparse.Namespace) -> str:
    kind = args.fault
    if kind == "crash":
        return f"{args.node}: killed {len(lab.crash(args.node))} processes"
    if kind == "reboot":
        return f"{args.node}: rebooted, agent pid {lab.reboot(args.node)}"
    if kind == "start":
        return f"{args.node}: agent pid {lab.start_agent(args.node)}"
    if kind == "stop":
        lab.stop_agent(args.node)
        return f"{args.node}: stopped"
    if kind == "disconnect":
        lab.disconnect(args.node)
        return f"{args.node}: link down"
    if kind == "reconnect":
        lab.reconnect(args.node)
        return f"{args.node}: link up"
    if kind == "partition":
        lab.partition(args.nodes)
        return f"partitioned: {lab.spec.partitioned}"
    if kind == "heal":
        lab.heal()
        return "partition healed"
    if kind == "kill-agent":
        return f"{args.node}: agent pid {lab.kill_agent(args.node)} killed (its services, VIPs and guard stay)"
    if kind == "hang-agent":
        _progress(f"{args.node}: agent stopped (SIGSTOP) for {args.seconds:g}s")
        return f"{args.node}: agent pid {lab.hang_agent(args.node, args.seconds)} continued (SIGCONT) after {args.seconds:g}s"
    if kind == "load":
        return _load(lab, args)
    if kind == "kill-service":
        from nodeos.lab.services import kill_service

        return kill_service(lab, args.service)
    raise LabError(f"unknown fault {kind}")


def _load(lab: Lab, args: argparse.Namespace) -> str:
    import signal
    import time

    names = sorted(lab.spec.nodes) if args.node == "all" else [lab.node(args.node).name]
    pids = lab.start_load(names, args.seconds)
    cores = os.cpu_count() or 1
    _progress(f"load on {', '.join(names)}: {cores} CPU hog(s) and fsync'd writes per node for {args.seconds:g}s (Ctrl-C ends it)")
    try:
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            time.sleep(min(10.0, max(0.0, end - time.monotonic())))
            left = end - time.monotonic()
            if left > 1:
                _progress(f"load: {left:.0f}s left")
    except KeyboardInterrupt:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        return "load stopped early"
    return f"load ended on {', '.join(names)}"


def register(sub: Any) -> None:
    lab = sub.add_parser("lab", help="a test cluster of real agents in network namespaces on this machine (root)")
    lab_sub = lab.add_subparsers(dest="lab_command", metavar="ACTION")
    lab_sub.required = True

    def named(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("--name", default="lab", help="lab name, 1-6 letters/digits (default: %(default)s)")
        return parser

    up = named(lab_sub.add_parser("up", help="create bridge + namespaces, start an agent in each, wait for the cluster"))
    up.add_argument("--nodes", type=int, default=3, help="number of nodes (default: %(default)s)")
    up.add_argument("--expect", type=int, help="bootstrap_expect (default: the number of nodes)")
    up.add_argument("--catalog", default="lab", help="service catalog: a packaged one by name ('lab'; 'storage': with Ceph; "
                    "'cloud': Ceph, MariaDB, RabbitMQ, memcached, keystone, glance-api, placement-api, nova-api, "
                    "nova-conductor, nova-scheduler, cinder-api, cinder-scheduler, cinder-volume, neutron-server; "
                    "a node catalog means its lab twin) or a YAML path "
                    "(default: %(default)s)")
    up.add_argument("--no-services", action="store_true", help="run no catalog services, consensus only")
    up.add_argument("--no-wait", action="store_true", help="do not wait for the cluster to form")
    up.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for formation (default: %(default)s)")
    up.set_defaults(func=_up)

    down = named(lab_sub.add_parser("down", help="remove everything the lab made (also after a crash of the lab)"))
    down.set_defaults(func=_down)

    status = named(lab_sub.add_parser("status", help="each node: namespace, address, agent pid, its view of the cluster"))
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=_status)

    add = named(lab_sub.add_parser("add", help="start one more node; it joins the running cluster"))
    add.set_defaults(func=_add)

    client = named(lab_sub.add_parser(
        "client", help="run a command on the lab's LAN from its client namespace (as the cloud's admin when "
                       "keystone runs): nodeos lab client -- openstack token issue"))
    client.add_argument("command", nargs=argparse.REMAINDER, help="the command and its arguments (after --)")
    client.set_defaults(func=_client)

    fault = named(lab_sub.add_parser("fault", help="inject a fault"))
    fault_sub = fault.add_subparsers(dest="fault", metavar="FAULT")
    fault_sub.required = True
    def leaf(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        # Also accept --name after the fault's own arguments.
        parser.add_argument("--name", default=argparse.SUPPRESS, help="lab name (default: lab)")
        return parser

    for kind, text in [("crash", "SIGKILL the node's agent and everything it started"),
                       ("reboot", "crash, then start again from its disk state"),
                       ("stop", "stop the agent gracefully (SIGTERM)"), ("start", "start a stopped/crashed agent"),
                       ("disconnect", "pull the node's cable (link down)"), ("reconnect", "plug it back in")]:
        parser = leaf(fault_sub.add_parser(kind, help=text))
        parser.add_argument("node", help="node name, e.g. n1")
    partition = leaf(fault_sub.add_parser("partition", help="cut the listed nodes off from all others (nftables)"))
    partition.add_argument("nodes", nargs="+", help="nodes on one side")
    leaf(fault_sub.add_parser("heal", help="remove the partition"))
    kill_agent = leaf(fault_sub.add_parser("kill-agent", help="SIGKILL the node's agent only (services, VIPs, guard, link stay)"))
    kill_agent.add_argument("node", help="node name, e.g. n1")
    hang = leaf(fault_sub.add_parser("hang-agent", help="SIGSTOP the node's agent, then SIGCONT after --seconds (a hung daemon)"))
    hang.add_argument("node", help="node name, e.g. n1")
    hang.add_argument("--seconds", type=float, default=10.0, help="how long it hangs (default: %(default)s)")
    load = leaf(fault_sub.add_parser("load", help="a CPU hog per core plus heavy fsync'd disk writes on a node (or all)"))
    load.add_argument("node", help="node name, e.g. n1, or 'all'")
    load.add_argument("--seconds", type=float, default=60.0, help="how long (default: %(default)s)")
    kill = leaf(fault_sub.add_parser("kill-service", help="SIGKILL a catalog service's process on its node"))
    kill.add_argument("service", help="service name, e.g. memcached")
    fault.set_defaults(func=_fault)
