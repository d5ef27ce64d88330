"""The lab: real agents in network namespaces on one bridge, and the faults
injected into it (crash, reboot, kill-agent, hang-agent, load, disconnect,
partition, kill-service), with an emulated watchdog per node.

Public names: `Lab`, `LabError`, `destroy`.
"""

from .lab import Lab, LabError, destroy

__all__ = ["Lab", "LabError", "destroy"]
