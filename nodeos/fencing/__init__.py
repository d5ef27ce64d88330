"""Fencing: a node holds VIPs and singletons only under a grant, enforced
without the agent's help.

* policy.py: when a node may hold, when the guard fences (pure), and the
  safety argument next to the lease's;
* fencer.py: removing VIPs and killing singletons, fast;
* guard.py: `nodeos guard`, the separate real-time process that acts at the
  grant's end and feeds the watchdog (watchdog.py);
* guardian.py: the agent's side: claim before take, and its own fence keeper.

Public names: `GuardPolicy`, `Holdings`, `Vip`, `margin_is_safe`. Imports no
other nodeos subsystem (the cluster and services layers use it).
"""

from .policy import GuardPolicy, Holdings, Vip, margin_is_safe

__all__ = ["GuardPolicy", "Holdings", "Vip", "margin_is_safe"]
