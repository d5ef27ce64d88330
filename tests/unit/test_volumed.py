"""The volume helper's socket: the agent's calls reach volumes.py's functions and their errors come back.

volumes.py itself is replaced by a recorder here (its real I/O is covered by the lab's
test_volumes.py and test_volume_failover.py); what is tested is the daemon and its client.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import pytest

from nodeos.storage import volumed
from nodeos.storage.conf import CephPaths
from nodeos.storage.daemons import CephNode
from nodeos.storage.node_volumes import NodeVolumes
from nodeos.storage.volume_spec import FUSE, Attachment, VolumeError

NODE = CephNode("node1", "10.77.0.11", CephPaths("/var/lib/nodeos/ceph"), ("ip", "netns", "exec", "n1"), 20.0)
ATTACHMENT = Attachment("node1", "volumes", "svc-db", "client.node-node1", FUSE, "/dev/loop3", "10.77.0.11:0/123",
                        "/var/lib/nodeos/ceph/run/volumes/volumes/svc-db", (4242,), (17.5,), "/x/fuse")


class Recorder:
    """Stands in for volumes.py in the daemon: records calls, answers like it."""

    UMOUNT_TIMEOUT = 20.0

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple, dict]] = []
        self.fail: str | None = None

    def _record(self, name: str, *args: object, **kwargs: object) -> None:
        self.calls.append((name, args, kwargs))
        if self.fail == name:
            raise VolumeError(f"{name}: rbd device map failed: no lock")

    def probe_backend(self) -> str:
        return FUSE

    def attach(self, node: CephNode, pool: str, image: str, fence_own: bool = False) -> Attachment:
        self._record("attach", node, pool, image, fence_own=fence_own)
        return ATTACHMENT

    def mount(self, attachment: Attachment, fs: str, mount_point: str, make_fs_if_blank: bool = False) -> Attachment:
        self._record("mount", attachment, fs, mount_point, make_fs_if_blank=make_fs_if_blank)
        return dataclasses.replace(attachment, mount_point=mount_point, fs=fs)

    def unmount(self, attachment: Attachment, *, force: bool = False, stuck_after: float = 20.0) -> Attachment:
        self._record("unmount", attachment, force=force, stuck_after=stuck_after)
        return dataclasses.replace(attachment, mount_point=None)

    def detach(self, attachment: Attachment, *, force: bool = False, stuck_after: float = 20.0) -> None:
        self._record("detach", attachment, force=force, stuck_after=stuck_after)

    def detach_volume(self, node: CephNode, pool: str, image: str, *, force: bool = True, stuck_after: float = 20.0) -> bool:
        self._record("detach_volume", node, pool, image, force=force, stuck_after=stuck_after)
        return True


@pytest.fixture
def helper(tmp_path: Path, monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(volumed, "volumes", recorder)
    path = str(tmp_path / "volumed" / "volumed.sock")
    ready, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=volumed.serve, args=(path, ready, stop), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield recorder, volumed.RemoteVolumes(path, timeout=10)
    stop.set()
    thread.join(10)


def test_the_socket_is_roots_only(helper, tmp_path: Path):
    socket_path = tmp_path / "volumed" / "volumed.sock"
    assert socket_path.stat().st_mode & 0o077 == 0
    assert socket_path.parent.stat().st_mode & 0o077 == 0


def test_attach_and_mount_reach_volumes_with_the_node_and_the_attachment_intact(helper):
    recorder, remote = helper
    attachment = remote.attach(NODE, "volumes", "svc-db")
    assert attachment == ATTACHMENT
    name, (node, pool, image), kwargs = recorder.calls[0]
    assert (name, node, pool, image, kwargs) == ("attach", NODE, "volumes", "svc-db", {"fence_own": False})
    remote.attach(NODE, "volumes", "svc-db", fence_own=True)  # a node that held the image before (a reboot)
    assert recorder.calls[1][2] == {"fence_own": True}
    recorder.calls.pop()
    mounted = remote.mount(attachment, "ext4", "/var/lib/mysql", make_fs_if_blank=True)
    assert mounted.mount_point == "/var/lib/mysql" and mounted.fs == "ext4"
    assert recorder.calls[1] == ("mount", (ATTACHMENT, "ext4", "/var/lib/mysql"), {"make_fs_if_blank": True})


def test_release_calls_keep_force_and_stuck_after(helper):
    recorder, remote = helper
    remote.detach(remote.unmount(ATTACHMENT, force=True, stuck_after=1.0), force=True, stuck_after=1.0)
    assert remote.detach_volume(NODE, "volumes", "svc-db", force=True, stuck_after=1.0) is True
    assert [(c[0], c[2]) for c in recorder.calls] == [
        ("unmount", {"force": True, "stuck_after": 1.0}),
        ("detach", {"force": True, "stuck_after": 1.0}),
        ("detach_volume", {"force": True, "stuck_after": 1.0}),
    ]


def test_a_volume_error_comes_back_as_one(helper):
    recorder, remote = helper
    recorder.fail = "attach"
    with pytest.raises(VolumeError, match="rbd device map failed: no lock"):
        remote.attach(NODE, "volumes", "svc-db")


def test_bad_requests_are_answered_not_fatal():
    assert "unknown call" in volumed.answer({"call": "format_everything", "args": {}})["error"]
    assert "bad arguments" in volumed.answer({"call": "attach", "args": {}})["error"]
    assert volumed.answer(["attach"])["ok"] is False


def test_no_helper_is_a_volume_error_that_names_the_unit(tmp_path: Path):
    remote = volumed.RemoteVolumes(str(tmp_path / "none.sock"), timeout=1)
    with pytest.raises(VolumeError, match="nodeos-volumed.service"):
        remote.attach(NODE, "volumes", "svc-db")


def test_node_volumes_prepares_through_the_helper(helper):
    """The agent's order with the helper: attach there, record the address in the state, mount there."""
    recorder, remote = helper
    recorded: list[dict] = []

    def submit_sync(op: dict) -> dict:
        recorded.append(op)
        assert [c[0] for c in recorder.calls] == ["attach"]  # nothing mounted before the commit
        return {"ok": True}

    node_volumes = NodeVolumes("node1", NODE, submit_sync, io=remote)
    node_volumes.prepare("db", "ext4", "/var/lib/mysql")
    assert recorded[0]["op"] == "volume_attached" and recorded[0]["client"] == ATTACHMENT.address
    assert [c[0] for c in recorder.calls] == ["attach", "mount"]
