"""A node's side of volumes: attach, record, mount before a service starts; the reverse after it stops.

The order is the fence's (ops.py, DESIGN.md invariant 3):
1. attach (rbd-fuse + loop here, kernel rbd on real nodes: volumes.py),
   after blocklisting this node's own dead earlier clients of the image (a
   reboot's: `volumes.fence_own_stale`), which the record names (`fenced_own`);
2. record the client instance address in the replicated state and wait for
   the commit (`volume_attached`): a node that dies after writing must be
   fenceable by that address, so nothing is written before it is known;
3. mkfs if blank, fsck, mount; then the service starts.
Stopping: the service first, then unmount, detach, and `volume_detached`.
A volume attached here that the state gives to nobody here (after a crash, a
fence, a move) is detached before anything else uses it.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

from nodeos import log
from nodeos.cluster.state import ClusterState

from . import volumes
from .daemons import CephNode
from .ops import POOL_VOLUMES, volume_image
from .volume_spec import Attachment, VolumeError

SubmitSync = Callable[[dict[str, Any]], dict[str, Any]]
FENCED_STUCK = 1.0  # s a fenced node waits for a sync or unmount before dropping the mount
RETRY_RELEASE = 5.0


class NodeVolumes:
    def __init__(self, node_id: str, ceph: CephNode, submit_sync: SubmitSync, io: Any = volumes) -> None:
        self.node_id = node_id
        # Who attaches and mounts: volumes.py in this process (the lab), or the privileged
        # volume helper (volumed.RemoteVolumes) for an agent sandboxed by systemd.
        self.io = io
        self.ceph = ceph
        self.submit_sync = submit_sync
        self._attached: dict[str, Attachment] = {}
        self._failed_at: dict[str, float] = {}  # a failed release is retried every RETRY_RELEASE, not every pass
        # Services whose volume this node held before: a leftover released (a reboot in the lab keeps
        # /run), or the state naming this node the holder (a real reboot: /run is empty). Their attach
        # fences this node's dead earlier clients first (volumes.fence_own_stale).
        self._held_before: set[str] = set()

    def prepare(self, service: str, fs: str, mount_point: str) -> None:
        """Attach, record and mount `service`'s volume at `mount_point`; VolumeError if anything fails."""
        started = time.monotonic()
        image = volume_image(service)
        attachment = self.io.attach(self.ceph, POOL_VOLUMES, image, fence_own=service in self._held_before)
        self._held_before.discard(service)
        self._attached[service] = attachment
        try:
            result = self.submit_sync({"op": "volume_attached", "now": time.time(), "service": service,
                                       "node": self.node_id, "client": attachment.address,
                                       "fenced_own": list(attachment.fenced_own)})
        except Exception as exc:  # no commit: nothing may be written under this address
            raise VolumeError(f"{service}: recording the attachment failed: {exc}") from None
        if not result.get("ok"):
            self._drop(service)
            raise VolumeError(f"{service}: the state refused the attachment: {result.get('error')}")
        recorded = time.monotonic()
        self._attached[service] = self.io.mount(attachment, fs, mount_point, make_fs_if_blank=True)
        log.event("volume.ready", service=service, image=f"{POOL_VOLUMES}/{image}", client=attachment.address,
                  mount_point=mount_point, attach_record_s=round(recorded - started, 3),
                  mount_s=round(time.monotonic() - recorded, 3))

    def release(self, service: str, submit: Callable[[dict[str, Any]], None], fenced: bool = False) -> None:
        """Unmount and detach after the service stopped; report a clean detach.

        `fenced`: this node lost its grant and may be cut off from the OSDs, so
        a sync would hang: after FENCED_STUCK the helper is killed and the
        mount dropped. Nothing acknowledged is lost: the service is dead and
        what it acknowledged it had fsynced.
        """
        attachment = self._attached.pop(service, None)
        stuck_after = FENCED_STUCK if fenced else self.io.UMOUNT_TIMEOUT
        try:
            if attachment is not None:
                self.io.detach(self.io.unmount(attachment, force=True, stuck_after=stuck_after), force=True,
                               stuck_after=stuck_after)
            else:
                self.io.detach_volume(self.ceph, POOL_VOLUMES, volume_image(service), force=True,
                                      stuck_after=stuck_after)
        except VolumeError as exc:
            self._failed_at[service] = time.monotonic()
            log.event("volume.release_failed", level="error", service=service, error=str(exc))
            return  # still attached: the Monitor fences it before anyone else attaches
        self._failed_at.pop(service, None)
        submit({"op": "volume_detached", "now": time.time(), "service": service, "node": self.node_id,
                "client": attachment.address if attachment else None})

    def held_here(self) -> set[str]:
        """Services whose volume has an attachment (state file) on this node, known or left by a crash."""
        root = os.path.join(self.ceph.paths.run_dir, "volumes", POOL_VOLUMES)
        try:
            with os.scandir(root) as entries:  # not Path.glob: the node pass asks 10 times a second
                found = {e.name[len("svc-"):] for e in entries
                         if e.name.startswith("svc-") and os.path.exists(os.path.join(e.path, "state.json"))}
        except FileNotFoundError:
            found = set()
        return found | set(self._attached)

    def detach_unwanted(self, state: ClusterState, keep: set[str], submit: Callable[[dict[str, Any]], None]) -> None:
        """Detach every volume here that no service here should use now (crash leftovers, fenced, moved)."""
        volumes_state = state.storage.get("volumes") or {}
        self._held_before |= {service for service, volume in volumes_state.items()
                              if isinstance(volume, dict) and volume.get("holder") == self.node_id
                              and volume.get("client") and service not in self._attached}
        for service in sorted(self.held_here() - keep):
            if time.monotonic() - self._failed_at.get(service, float("-inf")) < RETRY_RELEASE:
                continue
            log.event("volume.detaching_unwanted", level="warning", service=service,
                      holder=((state.storage.get("volumes") or {}).get(service) or {}).get("holder"))
            self._held_before.add(service)
            self.release(service, submit)

    def _drop(self, service: str) -> None:
        attachment = self._attached.pop(service, None)
        if attachment is not None:
            try:
                self.io.detach(attachment, force=True)
            except VolumeError as exc:
                log.event("volume.release_failed", level="error", service=service, error=str(exc))
