"""`nodeos storage run mon|mgr|osd`: make a Ceph daemon if needed, then become it.

The catalog's Ceph services start this launcher; it prepares from the files
the agent wrote (files.py) and then execs the daemon, so the service's main
pid is the daemon itself and the runtime's stop/fence applies to it as to
any service. Preparing happens inside the service's start, not in the agent's
loop: a mon mkfs or an OSD mkfs takes seconds, and the agent must not wait.

* mon: mkfs from the first monmap if this node is one of the initial mons,
  else from the running cluster's monmap (a mon added later joins); never
  over an existing store.
* mgr: its key from the mons (get-or-create), then ceph-mgr.
* osd: on the first start, one OSD per blank disk (`--osd-disks auto`,
  probe.py double-checks each) or a file-backed OSD; ids whose making was
  cut short are given back first. The choice (taken, skipped and why) is
  written to osd-report.json for the agent to report. One OSD: exec it;
  several: supervise them and exit when one exits, so the service restarts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from .conf import CephPaths
from .daemons import (CLI_TIMEOUT, OSD_READY, CephError, CephNode, build_monmap, ceph, create_osd, discard_osd, local_osds, mkfs_mon,
                      mon_argv, mon_exists, osd_argv, prepare_mgr, purge_osd, write_private)
from .files import BOOTSTRAP, MON_SEED, NODE_FACTS

EXIT_NOT_READY = 3  # the agent has not written this node's Ceph files yet, or the cluster does not answer
OSD_REPORT = "osd-report.json"


class LaunchError(RuntimeError):
    pass


def node_for(ceph_dir: str, node_id: str, ip: str, command_timeout: float = CLI_TIMEOUT) -> CephNode:
    return CephNode(node_id, ip, CephPaths(ceph_dir), command_timeout=command_timeout)


def run(kind: str, ceph_dir: str) -> int:
    try:
        facts = json.loads((Path(ceph_dir) / NODE_FACTS).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        print(f"nodeos storage run {kind}: {ceph_dir}/{NODE_FACTS} not readable ({exc}); the agent writes it "
              "once Ceph is initialized", file=sys.stderr)
        return EXIT_NOT_READY
    node = node_for(ceph_dir, facts["node_id"], facts["ip"], float(facts.get("command_timeout", CLI_TIMEOUT)))
    osd_disks = facts.get("osd_disks", "file")
    try:
        if kind == "mon":
            _exec(prepare_mon(node))
        if kind == "mgr":
            _exec(prepare_mgr(node))
        if kind == "osd":
            ids = prepare_osds(node, osd_disks)
            if len(ids) == 1:
                _exec(osd_argv(node, ids[0]))
            return supervise([osd_argv(node, i) for i in ids])
    except (CephError, LaunchError, OSError) as exc:
        print(f"nodeos storage run {kind}: {exc}", file=sys.stderr)
        return EXIT_NOT_READY
    print(f"nodeos storage run: unknown daemon kind {kind!r} (mon, mgr, osd)", file=sys.stderr)
    return 2


def _exec(argv: Sequence[str]) -> None:
    print(f"nodeos storage run: exec {' '.join(argv)}", flush=True)
    os.execvp(argv[0], list(argv))


def prepare_mon(node: CephNode) -> list[str]:
    if not mon_exists(node):
        seed = str(Path(node.paths.keys_dir) / MON_SEED)
        boot = json.loads((Path(node.paths.root) / BOOTSTRAP).read_text())
        monmap = str(Path(node.paths.run_dir) / "mkfs.monmap")
        if node.node_id in boot["initial_mons"]:
            build_monmap(node, boot["fsid"], boot["initial_mons"], monmap)
        else:
            ceph(node, "mon", "getmap", "-o", monmap)  # joins the running cluster
        mkfs_mon(node, monmap, seed)
        print(f"nodeos storage run mon: made mon.{node.node_id}", flush=True)
    return mon_argv(node)


def prepare_osds(node: CephNode, osd_disks: str) -> list[int]:
    ready, broken = local_osds(node)
    for osd_id in broken:
        discard_osd(node, osd_id)
    for osd_id in [i for i in ready if _file_lost(node, i)]:
        # Its data is gone for good (the file was deleted): Ceph re-replicates from
        # the other copies onto a new OSD. A missing *disk* is never purged: it may
        # only be late to appear, and its data would be thrown away.
        print(f"nodeos storage run osd: the file of osd.{osd_id} is gone; purging it for a new one", flush=True)
        purge_osd(node, osd_id)
        ready.remove(osd_id)
    if ready:
        return ready
    taken, skipped = _choose_disks(osd_disks)
    made = [create_osd(node, os.urandom, block=path) for path in taken]
    if not made:
        made = [create_osd(node, os.urandom)]  # a file-backed OSD of the conf's bluestore_block_size
        taken = [node.paths.block_file(made[0])]
    write_private(Path(node.paths.root) / OSD_REPORT,
                  json.dumps({"ids": made, "taken": taken, "skipped": skipped}, sort_keys=True) + "\n")
    return made


def _file_lost(node: CephNode, osd_id: int) -> bool:
    """A file-backed OSD whose block file no longer exists."""
    marker = Path(node.paths.data("osd", str(osd_id))) / OSD_READY
    block = marker.read_text().strip()
    return block == node.paths.block_file(osd_id) and not Path(block).exists()


def _choose_disks(osd_disks: str) -> tuple[list[str], dict[str, str]]:
    if osd_disks != "auto":
        return [], {}
    from .probe import ProbeError, osd_disks as probe_disks

    try:
        choice = probe_disks()
    except ProbeError as exc:
        return [], {"(all)": f"disks not probed: {exc}"}
    return [disk.path for disk in choice.taken], dict(choice.skipped)


def supervise(argvs: list[list[str]]) -> int:
    """Run several daemons; when one ends, end the others and exit with its code."""
    procs = [subprocess.Popen(argv) for argv in argvs]

    def forward(signum: int, _frame: object) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:
        for proc in procs:
            code = proc.poll()
            if code is not None:
                forward(signal.SIGTERM, None)
                for other in procs:
                    try:
                        other.wait(10)
                    except subprocess.TimeoutExpired:
                        other.kill()
                return code or 1
        time.sleep(0.5)
