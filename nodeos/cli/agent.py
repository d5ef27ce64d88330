"""Wiring of the `nodeos agent` process: config, identity, agent, control API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nodeos import log, pidlock
from nodeos.cluster.agent import Agent
from nodeos.cluster.config import ConfigError, load_config
from nodeos.cluster.control import ControlServer
from nodeos.cluster.discovery import InterfaceError
from nodeos.cluster.identity import IdentityError, load_identity
from nodeos.services.tcp_settings import apply_tcp_settings
# Registers the service operations: every node must know every op it may apply.
from nodeos.services import placement  # noqa: F401
from nodeos.storage import ops as storage_ops  # noqa: F401  (registers the storage ops)

EXIT_OK = 0
EXIT_CONFIG = 2  # bad config, identity or environment: restarting will not help


def _routes(agent: Agent) -> tuple[dict[str, Any], dict[str, Any]]:
    def status(_: dict[str, Any]) -> tuple[int, Any]:
        return 200, agent.status()

    def events(params: dict[str, Any]) -> tuple[int, Any]:
        try:
            since, limit = int(params.get("since", 0)), int(params.get("limit", 200))
        except ValueError:
            return 400, {"error": "since and limit must be integers"}
        return 200, agent.events(since, limit)

    def lease(_: dict[str, Any]) -> tuple[int, Any]:
        return 200, {"node_id": agent.node_id, "may_act": agent.may_act(), "fenced": agent.fenced()}

    def remove_node(params: dict[str, Any]) -> tuple[int, Any]:
        return agent.remove_node(str(params.get("node") or ""))

    get = {"/status": status, "/events": events, "/lease": lease}
    post: dict[str, Any] = {"/node/remove": remove_node}
    if agent.services is not None:
        get.update(agent.services.get_routes())
        post.update(agent.services.post_routes())
    return get, post


def run_agent(config_path: Path | None, identity_path: Path, state_dir: Path, *, node_root: Path = Path("/"),
              mount_ns: Path | None = None) -> int:
    try:
        pidlock.hold(state_dir, "agent")
        config = load_config(config_path)
        identity = load_identity(identity_path)
        agent = Agent(config, identity, state_dir, node_root=node_root, mount_ns=mount_ns)
    except (ConfigError, IdentityError, InterfaceError, RuntimeError) as exc:
        log.event("agent.refused", level="error", error=str(exc))
        return EXIT_CONFIG
    attach_services(agent)
    apply_tcp_settings()  # clients of a VIP that moved must not hang (nodeos/services/tcp_settings.py)
    get, post = _routes(agent)
    server = ControlServer(state_dir / "agent.sock", ("0.0.0.0", config.status_port), get, post, {"/status", "/events"})
    server.start()
    agent.control_counters = server.counters
    agent.install_signal_handlers()
    try:
        code = agent.run()
    finally:
        server.stop()
    if agent.fatal is not None:
        # The agent stopped itself on something a restart cannot fix (a cloned
        # node id, a damaged Raft journal): say so, and keep systemd from looping.
        log.event("agent.refused", level="error", error=agent.fatal)
        return EXIT_CONFIG
    return code


def attach_services(agent: Agent) -> None:
    """Attach the services layer (Service Monitor + node side)."""
    from nodeos.services.layer import ServicesLayer

    agent.services = ServicesLayer(agent)
