"""The node's TCP settings, so that clients of a VIP that moved do not hang (issue 9, item 4).

When a service's node dies, a client's connection to its VIP is not told:

* with data in flight (a query sent, not yet acknowledged), Linux retransmits
  for up to ~15 minutes (`tcp_retries2` = 15) before it reports an error;
  once the VIP answers from another node its RST ends this sooner, but the
  retransmissions back off exponentially, so the next try can be many seconds
  after the VIP is back;
* with a request sent and acknowledged but no answer yet (MariaDB acked the
  query, then its node crashed), nothing is retransmitted at all: the client
  waits for its own time-out, and PyMySQL (keystone's driver) sets none; it
  does set SO_KEEPALIVE, whose first probe Linux sends after 2 hours.

So every node's kernel gives up on a silent peer within seconds: keep-alive
probes after 10 s idle, 3 s apart, 3 of them (about 19 s to an error on an
idle connection), and data unacknowledged for about 12.6 s (`tcp_retries2` =
5 with the 200 ms minimum RTO). Peers on a cloud's LAN answer in
milliseconds: a silence this long is a dead peer, and every client here
(oslo.db, oslo.messaging, Ceph's messenger) reconnects. These sysctls are per
network namespace: the agent applies them where it runs, which in the lab is
the node's namespace.
"""

from __future__ import annotations

from pathlib import Path

from nodeos import log

PROC_SYS = Path("/proc/sys")
TCP_SETTINGS: dict[str, int] = {
    "net/ipv4/tcp_keepalive_time": 10,
    "net/ipv4/tcp_keepalive_intvl": 3,
    "net/ipv4/tcp_keepalive_probes": 3,
    "net/ipv4/tcp_retries2": 5,
}


def apply_tcp_settings(proc_sys: Path = PROC_SYS, settings: dict[str, int] | None = None) -> dict[str, tuple[str, int]]:
    """Write each setting that differs; returns {key: (old, new)} of what changed. Failures are logged, not raised."""
    changed: dict[str, tuple[str, int]] = {}
    for key, value in (TCP_SETTINGS if settings is None else settings).items():
        path = proc_sys / key
        try:
            old = path.read_text().strip()
            if old != str(value):
                path.write_text(f"{value}\n")
                changed[key] = (old, value)
        except OSError as exc:  # a kernel without the knob, or a read-only /proc/sys (a container)
            log.event("node.tcp_setting_failed", level="warning", key=key.replace("/", "."), error=str(exc))
    if changed:
        log.event("node.tcp_settings", changed={k.replace("/", "."): f"{old} -> {new}" for k, (old, new) in changed.items()})
    return changed
