"""A node's Ceph files, written by its agent from the replicated state.

ceph.conf (mons, network, pool defaults), the keyrings (admin,
bootstrap-osd, the node's own client, and the mon seed a new mon is made
from) and `bootstrap.json` (fsid and the first monmap). The Ceph services'
launchers (launch.py) read nothing else, so a daemon can start on any node
the Monitor picks. Files are rewritten only when their content changes;
keyrings are 0600 and their content never reaches a log.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from nodeos import log
from nodeos.cluster.config import StorageConfig
from nodeos.cluster.state import ClusterState

from .conf import LAB_TUNING, CephPaths, Tuning, render_ceph_conf
from .daemons import CLI_TIMEOUT, write_private
from .keys import ADMIN, BOOTSTRAP_OSD, CephKeys, admin_keyring, bootstrap_osd_keyring, mon_keyring, node_entity, node_keyring
from .ops import ready

BOOTSTRAP = "bootstrap.json"
NODE_FACTS = "node.json"  # this node's id, address and OSD disk policy, for the launcher
MON_SEED = "mon-seed.keyring"


def tuning_for(settings: StorageConfig) -> Tuning:
    base = LAB_TUNING if settings.tuning == "lab" else Tuning()
    return dataclasses.replace(base, bluestore_block_size=settings.osd_file_size, mon_lease=settings.mon_lease,
                               mon_election_timeout=settings.mon_lease)


def render_files(state: ClusterState, node_id: str, paths: CephPaths, tuning: Tuning,
                 osd_disks: str = "file", command_timeout: float = CLI_TIMEOUT) -> dict[str, tuple[str, bool]]:
    """path -> (content, private) of every file this node needs now (pure)."""
    storage = state.storage
    keys = CephKeys.from_wire(storage["keys"])
    conf = render_ceph_conf(storage["fsid"], storage["mons"], storage["public_network"], hosts=max(1, len(state.nodes)),
                            node=node_id, paths=paths, tuning=tuning)
    boot = {"fsid": storage["fsid"], "initial_mons": storage["initial_mons"]}
    facts = {"node_id": node_id, "ip": state.nodes[node_id].ip, "osd_disks": osd_disks,
             "command_timeout": command_timeout}  # for the launcher (launch.py)
    files = {
        str(Path(paths.root) / NODE_FACTS): (json.dumps(facts, sort_keys=True) + "\n", False),
        paths.conf: (conf, False),
        str(Path(paths.root) / BOOTSTRAP): (json.dumps(boot, sort_keys=True, indent=1) + "\n", False),
        paths.keyring(ADMIN): (admin_keyring(keys), True),
        paths.keyring(BOOTSTRAP_OSD): (bootstrap_osd_keyring(keys), True),
        str(Path(paths.keys_dir) / MON_SEED): (mon_keyring(keys), True),
    }
    if node_id in keys.clients:
        files[paths.keyring(node_entity(node_id))] = (node_keyring(keys, node_id), True)
    return files


class StorageFiles:
    """Keeps one node's Ceph files in step with the state."""

    def __init__(self, node_id: str, root: Path, settings: StorageConfig) -> None:
        self.node_id = node_id
        self.paths = CephPaths(str(root))
        self.tuning = tuning_for(settings)
        self.osd_disks = settings.osd_disks
        self.command_timeout = settings.command_timeout
        self._written: dict[str, str] = {}

    def sync(self, state: ClusterState) -> bool:
        """Write what changed; True when the node has its Ceph files."""
        if not ready(state) or self.node_id not in state.nodes:
            return False
        for directory in self.paths.dirs():
            Path(directory).mkdir(parents=True, exist_ok=True, mode=0o700)
        changed = []
        for path, (content, private) in render_files(state, self.node_id, self.paths, self.tuning, self.osd_disks,
                                                   self.command_timeout).items():
            if self._written.get(path) == content and Path(path).exists():
                continue
            if private:
                write_private(path, content)
            else:
                _write_public(path, content)
            self._written[path] = content
            changed.append(Path(path).name)
        if changed:
            log.event("storage.files_written", files=changed)  # names only: keyrings hold secrets
        return True

    def osd_report(self) -> dict[str, Any] | None:
        """What this node's OSD launcher wrote about its disks (launch.py), or None."""
        try:
            data = json.loads((Path(self.paths.root) / "osd-report.json").read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return data if isinstance(data, dict) else None


def _write_public(path: str, content: str) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(content)
    tmp.replace(target)
