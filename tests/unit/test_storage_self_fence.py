"""A node fences its own dead clients before it attaches a volume (volume_spec.own_stale_holders,
volumes.fence_own_stale): only instances at its own IP, never a recorded live one, never a bare IP."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from nodeos.storage import volumes
from nodeos.storage.conf import CephPaths
from nodeos.storage.daemons import CephNode
from nodeos.storage.volume_spec import VolumeError, Watcher, own_stale_holders

OWN = "10.77.0.1"
DEAD = "10.77.0.1:0/3021"  # the previous boot's rbd-fuse
OTHER = "10.77.0.2:0/4410"  # another node's client


@pytest.mark.parametrize("holders, live, expected", [
    ([], [], []),
    ([DEAD], [], [DEAD]),  # the reboot: the dead client's watch and lock
    ([DEAD, OTHER], [], [DEAD]),  # another node's client is the Monitor's to fence, never ours
    ([OTHER], [], []),
    ([DEAD], [DEAD], []),  # an attachment of this node still names it: not ours to fence
    ([DEAD, "10.77.0.1:0/77"], [], [DEAD, "10.77.0.1:0/77"]),  # two dead boots
    (["10.77.0.1:0/0", "10.77.0.1", "garbage"], [], []),  # a whole IP or no instance: never
    (["10.77.0.10:0/5", "10.77.0.1:6800/9"], [], ["10.77.0.1:6800/9"]),  # the IP matched whole, not as a prefix
])
def test_only_this_nodes_own_instances_are_chosen(holders: list[str], live: list[str], expected: list[str]) -> None:
    assert own_stale_holders(holders, OWN, live) == expected


def test_addresses_are_compared_as_ips() -> None:
    assert own_stale_holders(["[fd00::1]:0/7", "[fd00::2]:0/8"], "fd00:0::1") == ["[fd00::1]:0/7"]
    assert own_stale_holders([DEAD], "not-an-ip") == []


class FakeCeph:
    """`ceph osd blocklist add/ls` as the mon answers them, recording every call."""

    def __init__(self, fail: bool = False) -> None:
        self.listed: dict[str, str] = {}
        self.calls: list[tuple[str, ...]] = []
        self.fail = fail

    def __call__(self, node: CephNode, name: str, *args: str, what: str) -> subprocess.CompletedProcess[str]:
        self.calls.append(args)
        if args[:3] == ("osd", "blocklist", "add"):
            if self.fail:
                raise VolumeError("blocklist add: no answer")
            until = "2036-11-27T10:47:23.301055+0000"
            self.listed.setdefault(args[3], until)
            return subprocess.CompletedProcess(args, 0, "", f"blocklisting {args[3]} until {until} (1 sec)\n")
        entries = ",".join(f'{{"addr":"{a}","until":"{u}"}}' for a, u in self.listed.items())
        return subprocess.CompletedProcess(args, 0, f"[{entries}][]", "")


def fake_image(monkeypatch: pytest.MonkeyPatch, watching: list[str], owners: list[str], ceph: FakeCeph) -> None:
    monkeypatch.setattr(volumes, "_watchers_patiently",
                        lambda *a, **k: [Watcher(w, "client.1", 1) for w in watching])
    monkeypatch.setattr(volumes, "_lock_owners_patiently", lambda *a, **k: list(owners))
    monkeypatch.setattr(volumes, "_ceph", ceph)


def node(tmp_path: Path) -> CephNode:
    return CephNode("node1", OWN, CephPaths(str(tmp_path / "ceph")))


def test_the_dead_previous_client_is_blocklisted_for_years(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ceph = FakeCeph()
    fake_image(monkeypatch, [DEAD, OTHER], [DEAD], ceph)
    assert volumes.fence_own_stale(node(tmp_path), "volumes", "svc-db") == [DEAD]
    adds = [c for c in ceph.calls if c[:3] == ("osd", "blocklist", "add")]
    assert adds == [("osd", "blocklist", "add", DEAD, str(volumes.BLOCKLIST_EXPIRE))]


def test_an_address_an_attachment_record_names_is_left(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ceph = FakeCeph()
    fake_image(monkeypatch, [DEAD], [], ceph)
    record = tmp_path / "ceph" / "run" / "volumes" / "volumes" / "svc-other" / "state.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"attachment": {"address": DEAD}, "leftovers": {}}))
    assert volumes.fence_own_stale(node(tmp_path), "volumes", "svc-db") == []
    assert not ceph.calls


def test_a_failed_self_fence_lets_the_attach_go_on(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_image(monkeypatch, [DEAD], [DEAD], FakeCeph(fail=True))
    assert volumes.fence_own_stale(node(tmp_path), "volumes", "svc-db") == []

    def no_answer(*_a: object, **_k: object) -> list[str]:
        raise VolumeError("rbd status: no answer")

    monkeypatch.setattr(volumes, "_watchers_patiently", no_answer)
    assert volumes.fence_own_stale(node(tmp_path), "volumes", "svc-db") == []


def test_attach_fences_its_own_dead_client_before_the_helper_starts(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    order: list[str] = []
    monkeypatch.setattr(volumes, "fence_own_stale", lambda *a, **k: order.append("fence") or [DEAD])

    def fake_attach(*_a: object) -> volumes.Attachment:
        order.append("attach")
        return volumes.Attachment("node1", "volumes", "svc-db", "client.node-node1", "fuse", "/dev/loop9",
                                  "10.77.0.1:0/5", str(tmp_path))

    monkeypatch.setattr(volumes, "_attach_fuse", fake_attach)
    attachment = volumes.attach(node(tmp_path), "volumes", "svc-db", backend="fuse", fence_own=True)
    assert order == ["fence", "attach"]
    assert attachment.fenced_own == (DEAD,)  # for the replicated record (volume_attached)
    assert volumes.Attachment.from_wire(attachment.to_wire()) == attachment
    # A node that did not hold the image before (a failover to it) asks Ceph nothing more.
    order.clear()
    assert volumes.attach(node(tmp_path), "volumes", "svc-db", backend="fuse").fenced_own == ()
    assert order == ["attach"]


class RecordingIO:
    """What NodeVolumes asks of volumes.py: only whether it asked for the self-fence."""

    UMOUNT_TIMEOUT = 1.0

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.fence_own: list[bool] = []

    def attach(self, _node: object, pool: str, image: str, fence_own: bool = False) -> volumes.Attachment:
        self.fence_own.append(fence_own)
        return volumes.Attachment("node1", pool, image, "client.node-node1", "fuse", "/dev/loop9", "10.77.0.1:0/5",
                                  str(self.tmp_path))

    def mount(self, attachment: volumes.Attachment, *_a: object, **_k: object) -> volumes.Attachment:
        return attachment


def test_only_a_volume_this_node_held_before_is_attached_with_the_self_fence(tmp_path: Path) -> None:
    from nodeos.cluster.state import ClusterState
    from nodeos.storage.node_volumes import NodeVolumes

    io = RecordingIO(tmp_path)
    volumes_ = NodeVolumes("node1", node(tmp_path), lambda op: {"ok": True}, io=io)
    state = ClusterState()
    state.storage["volumes"] = {"db": {"holder": "node1", "client": DEAD},  # this node's, before a reboot
                                "mq": {"holder": "node2", "client": "10.77.0.2:0/7"}}  # moving here from node2
    volumes_.detach_unwanted(state, {"db", "mq"}, lambda op: None)
    volumes_.prepare("db", "ext4", str(tmp_path / "db"))
    volumes_.prepare("mq", "ext4", str(tmp_path / "mq"))
    assert io.fence_own == [True, False]
