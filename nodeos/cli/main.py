"""The `nodeos` command line.

Exit codes: 0 success; 1 the operation failed; 2 bad input or configuration;
3 no agent answered (not running, or not formed yet).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from nodeos.cluster.config import DEFAULT_CONFIG_PATH, DEFAULT_IDENTITY_PATH, DEFAULT_STATE_DIR

EXIT_FAILED, EXIT_USAGE, EXIT_NO_AGENT = 1, 2, 3


def _cmd_identity_init(args: argparse.Namespace) -> int:
    from nodeos.cluster.identity import IdentityError, init_identity

    try:
        identity = init_identity(Path(args.out), force=args.force)
    except IdentityError as exc:
        print(f"nodeos: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote cluster identity {identity.cluster_id} to {args.out} (mode 0600)")
    return 0


def _cmd_agent(args: argparse.Namespace) -> int:
    from .agent import run_agent

    config = Path(args.config) if args.config else None
    return run_agent(config, Path(args.identity), Path(args.state_dir), node_root=Path(args.node_root),
                     mount_ns=Path(args.mount_ns) if args.mount_ns else None)


def _cmd_guard(args: argparse.Namespace) -> int:
    from nodeos.cluster.config import ConfigError, load_config
    from nodeos.fencing.guard import run_guard

    try:
        config = load_config(Path(args.config) if args.config else None)
    except ConfigError as exc:
        print(f"nodeos guard: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return run_guard(Path(args.state_dir), config.watchdog, config.watchdog_timeout, config.realtime)


def _cmd_volumed(args: argparse.Namespace) -> int:
    import signal

    from nodeos.storage.volumed import SOCKET, serve

    if os.geteuid() != 0:
        print("nodeos volumed: must run as root (it maps RBD images and mounts them)", file=sys.stderr)
        return EXIT_USAGE
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # systemd's stop: volumes stay attached for the agent
    serve(args.socket or SOCKET)
    return 0


def agent_socket(args: argparse.Namespace) -> Path:
    """Which agent to talk to: --socket, --lab-node, else the node's own state dir."""
    if getattr(args, "socket", None):
        return Path(args.socket)
    if getattr(args, "lab_node", None):
        from nodeos.cluster.control import ControlError
        from nodeos.lab.lab import Lab, LabError

        try:
            return Lab.load(args.lab).node_socket(args.lab_node)
        except LabError as exc:
            raise ControlError(str(exc)) from None
    return Path(args.state_dir) / "agent.sock"


def _call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None,
          timeout: float = 5.0) -> tuple[int, Any]:
    from nodeos.cluster.control import request

    return request(agent_socket(args), method, path, body, timeout=timeout)


def _cmd_status(args: argparse.Namespace) -> int:
    from nodeos.cluster.control import ControlError
    from .render import render_status

    try:
        code, status = _call(args, "GET", "/status")
    except (ControlError, LookupError) as exc:
        print(f"nodeos: {exc}", file=sys.stderr)
        return EXIT_NO_AGENT
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(render_status(status))
    return 0 if code == 200 else EXIT_FAILED


def _cmd_events(args: argparse.Namespace) -> int:
    from nodeos.cluster.control import ControlError
    from .render import render_event

    since = args.since
    try:
        while True:
            _, events = _call(args, "GET", f"/events?since={since}&limit={args.limit}")
            for event in events:
                print(json.dumps(event) if args.json else render_event(event), flush=True)
                since = max(since, event["seq"])
            if not args.follow:
                return 0
            time.sleep(0.5)
    except (ControlError, LookupError) as exc:
        print(f"nodeos: {exc}", file=sys.stderr)
        return EXIT_NO_AGENT
    except KeyboardInterrupt:
        return 0


def _agent_status(args: argparse.Namespace) -> tuple[int, Any]:
    """(HTTP code, status) from the agent; code 0 when none answered. Says why on stderr."""
    from nodeos.cluster.control import ControlError

    try:
        code, status = _call(args, "GET", "/status")
    except (ControlError, LookupError) as exc:
        print(f"nodeos: {exc}", file=sys.stderr)
        return 0, None
    if code != 200:
        print(f"nodeos: the agent answered {code}: {status}", file=sys.stderr)
    return code, status


def _cmd_node_remove(args: argparse.Namespace) -> int:
    from nodeos.cluster.control import ControlError

    try:
        code, payload = _call(args, "POST", "/node/remove", {"node": args.node_id}, timeout=15.0)
    except (ControlError, LookupError) as exc:
        print(f"nodeos: {exc}", file=sys.stderr)
        return EXIT_NO_AGENT
    if code == 200:
        print(f"{payload['node']} ({payload['addr']}) removed; {payload['members']} members now")
        return 0
    print(f"nodeos: {payload.get('error') if isinstance(payload, dict) else payload}", file=sys.stderr)
    return EXIT_USAGE if code in (400, 404, 409) else EXIT_FAILED


def _cmd_credentials(args: argparse.Namespace) -> int:
    from nodeos.cloud.credentials import clouds_yaml, keystone_auth_url, openrc
    from nodeos.cloud.secrets import admin_password
    from nodeos.cluster.identity import IdentityError, load_identity

    code, status = _agent_status(args)
    if code != 200:
        return EXIT_NO_AGENT if code == 0 else EXIT_FAILED
    auth_url = keystone_auth_url(status)
    if auth_url is None:
        print("nodeos: keystone has no VIP yet: the cloud catalog is not applied or keystone not placed", file=sys.stderr)
        return EXIT_FAILED
    identity_path = Path(args.identity) if args.identity else DEFAULT_IDENTITY_PATH
    if args.lab_node and not args.socket and not args.identity:  # the lab's agents run with the lab's own identity
        from nodeos.lab.lab import Lab

        identity_path = Lab.load(args.lab).identity_path  # agent_socket just loaded this lab
    try:
        password = admin_password(load_identity(identity_path))
    except IdentityError as exc:
        print(f"nodeos: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(clouds_yaml(auth_url, password) if args.format == "clouds-yaml" else openrc(auth_url, password), end="")
    return 0


def _add_target_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR), help="agent state directory (default: %(default)s)")
    parser.add_argument("--socket", help="agent control socket (overrides --state-dir)")
    parser.add_argument("--lab-node", metavar="NODE", help="talk to this node of a running lab (e.g. n1)")
    parser.add_argument("--lab", default="lab", help="lab name, with --lab-node (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nodeos", description="nodeos: the self-healing private cloud node service.",
                                     epilog="Exit codes: 0 ok, 1 failed, 2 bad input/config, 3 no agent answered.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    identity = sub.add_parser("identity", help="cluster identity (secret, cluster id, CA)")
    identity_sub = identity.add_subparsers(dest="identity_command", metavar="ACTION")
    identity_sub.required = True
    init = identity_sub.add_parser("init", help="create a new cluster identity file (0600)")
    init.add_argument("--out", default=str(DEFAULT_IDENTITY_PATH), help="where to write it (default: %(default)s)")
    init.add_argument("--force", action="store_true", help="replace an existing identity (a new, different cluster)")
    init.set_defaults(func=_cmd_identity_init)

    agent = sub.add_parser("agent", help="run the node agent daemon (logs one JSON event per line to stderr)")
    agent.add_argument("--config", help=f"node config YAML (default: {DEFAULT_CONFIG_PATH} if present, else built-in defaults)")
    agent.add_argument("--identity", default=str(DEFAULT_IDENTITY_PATH), help="cluster identity (default: %(default)s)")
    agent.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR), help="node state: node id, Raft journal (default: %(default)s)")
    agent.add_argument("--node-root", default="/", help="lab: the node's private root for packaged services' /etc, /var/lib, "
                                                        "/var/log and /run (default: %(default)s, a real node's own)")
    agent.add_argument("--mount-ns", help="lab: the mount namespace file the node's services run in (default: none)")
    agent.set_defaults(func=_cmd_agent)

    guard = sub.add_parser("guard", help="run the node's fencing guard: drops VIPs and singletons when the agent's grant "
                                         "runs out (the agent dead, hung or cut off); feeds the watchdog")
    guard.add_argument("--config", help=f"node config YAML (default: {DEFAULT_CONFIG_PATH} if present): watchdog, realtime")
    guard.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR), help="where guard.sock lives, shared with the agent "
                                                                           "(default: %(default)s)")
    guard.set_defaults(func=_cmd_guard)

    volumed = sub.add_parser(
        "volumed", help="run the node's volume helper: attaches and mounts RBD volumes for the sandboxed agent",
        description="The agent runs without the privilege to map and mount block devices (nodeos-agent.service); this "
                    "root daemon does it for it, over a Unix socket only root can reach. It decides nothing: the agent "
                    "keeps the fence's order (attach, record the client in the cluster state, mount).")
    volumed.add_argument("--socket", help="where it listens (default: where the agent calls it, "
                                          "/run/nodeos-volumed/volumed.sock)")
    volumed.set_defaults(func=_cmd_volumed)

    status = sub.add_parser("status", help="members, leader, Monitor, formation, per-node health and services")
    _add_target_options(status)
    status.add_argument("--json", action="store_true", help="machine-readable output (schema: docs/status-schema.md)")
    status.set_defaults(func=_cmd_status)

    events = sub.add_parser("events", help="the cluster's event log (decisions, node changes, elections)")
    _add_target_options(events)
    events.add_argument("--since", type=int, default=0, help="only events after this sequence number")
    events.add_argument("--limit", type=int, default=200, help="at most this many events per fetch")
    events.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    events.add_argument("--json", action="store_true", help="one JSON object per line")
    events.set_defaults(func=_cmd_events)

    node = sub.add_parser("node", help="cluster membership of nodes")
    node_sub = node.add_subparsers(dest="node_command", metavar="ACTION")
    node_sub.required = True
    remove = node_sub.add_parser(
        "remove", help="take a dead node out of the Raft configuration now",
        description="Take a dead node out of the Raft configuration, so it no longer counts toward the quorum. The "
                    "Monitor does this by itself once a node has been lost for timing.member_remove_after (default "
                    "10 min); this does it now. Refused while the node answers (stop its agent or power it off "
                    "first) or when the members left would have no answering majority. A removed node that comes "
                    "back joins again as a new member by itself.")
    remove.add_argument("node_id", help="node id or unique prefix (see nodeos status)")
    _add_target_options(remove)
    remove.set_defaults(func=_cmd_node_remove)

    credentials = sub.add_parser(
        "credentials", help="print the OpenStack admin credentials (openrc or clouds.yaml)",
        description="Print the OpenStack admin credentials: keystone's URL (its VIP, from the agent's status) and the "
                    "admin password. The password is not stored anywhere: it is derived from the cluster secret, so "
                    "this reads the cluster identity file (root-only, mode 0600).")
    _add_target_options(credentials)
    credentials.add_argument("--format", choices=("openrc", "clouds-yaml"), default="openrc",
                             help="shell exports to source, or a clouds.yaml for --os-cloud nodeos (default: %(default)s)")
    credentials.add_argument("--identity", help=f"cluster identity (default: {DEFAULT_IDENTITY_PATH}, "
                                                "or the lab's with --lab-node)")
    credentials.set_defaults(func=_cmd_credentials)

    from . import lab as lab_cli

    lab_cli.register(sub)
    from . import bench

    bench.register(sub)
    from . import chaos

    chaos.register(sub)
    from . import storage as storage_cli

    storage_cli.register(sub)
    try:
        from . import services as services_cli
    except ImportError:
        services_cli = None  # type: ignore[assignment]
    if services_cli is not None:
        services_cli.register(sub, _add_target_options, _call)
    try:
        from . import image as image_cli
    except ImportError:
        image_cli = None  # type: ignore[assignment]
    if image_cli is not None:
        image_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
