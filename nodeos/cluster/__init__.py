"""The cluster: identity, signed beacons, discovery, zero-config formation,
pysyncobj consensus with its guarded port, the Monitor lease, the replicated
`ClusterState`, the node config, the control API, and the agent loop that
ties them together (agent.py).

Public names: `ClusterState`, `OpError` (the replicated model), `NodeConfig`,
`Timing`, `load_config`, `ConfigError`. The agent itself (`agent.Agent`) is
imported where it is wired up (cli/agent.py), so that reading a config does
not load consensus. Never imports `nodeos.services` (a higher layer).
"""

from .config import ConfigError, NodeConfig, Timing, load_config
from .state import ClusterState, OpError

__all__ = ["ClusterState", "ConfigError", "NodeConfig", "OpError", "Timing", "load_config"]
