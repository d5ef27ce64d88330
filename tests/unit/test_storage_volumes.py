"""Volumes without Ceph (nodeos/storage/volume_spec.py, the choices in volumes.py).

The kernel back-end cannot run on the lab host (no rbd module): its
commands and the parsing of `rbd device list` are pinned here. Outputs
marked "captured" were printed by Ceph 16.2.15 in the lab.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from nodeos.storage import volumes
from nodeos.storage.conf import CephPaths
from nodeos.storage.daemons import CephNode
from nodeos.storage.volume_spec import (FUSE, KRBD, Attachment, BlocklistEntry, Leftovers, VolumeError,
                                        blocklist_reply_until, check_instance_address, check_name, choose_backend,
                                        create_argv, find_mapping, fsck_argv, fsck_ok, fuse_argv, fuse_ceph_args,
                                        fuse_prefix, krbd_list_argv, krbd_map_argv, krbd_unmap_argv, looks_blank,
                                        losetup_argv, mkfs_argv, mount_of, mount_options, parse_blkid,
                                        parse_blocklist, parse_lockers, parse_mountinfo, parse_showmapped,
                                        parse_watchers, until_seconds)

CONF = "/tmp/nvol-x/node1/ceph.conf"
NODE = "client.node-node1"


# -- names and addresses ------------------------------------------------------------

@pytest.mark.parametrize("address", ["10.77.0.1:0/4284013410", "10.0.0.5:6800/12", "[fd00::1]:0/77"])
def test_client_instance_addresses_are_accepted(address: str) -> None:
    assert check_instance_address(address) == address


@pytest.mark.parametrize("address", [
    "10.77.0.1",  # the node's IP: every client of the node
    "10.77.0.1:0/0",  # nonce 0: Ceph reads it as the whole IP
    "10.77.0.1:0",
    "10.77.0.1/123",
    "300.1.1.1:0/5",
    "10.77.0.1:70000/5",
    "v2:10.77.0.1:0/5",
    "",
])
def test_anything_but_one_client_instance_is_refused_as_a_fence(address: str) -> None:
    with pytest.raises(VolumeError):
        check_instance_address(address)


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a@snap", "a b", "-x", "x" * 101, "é"])
def test_pool_and_image_names_stay_plain(name: str) -> None:
    with pytest.raises(VolumeError):
        check_name("image", name)
    assert check_name("image", "mariadb-data.v1_2") == "mariadb-data.v1_2"


def test_backend_choice_prefers_the_kernel_client() -> None:
    assert choose_backend(True, False, True) == KRBD
    assert choose_backend(False, True, True) == KRBD  # modprobe rbd worked
    assert choose_backend(False, False, True) == FUSE
    with pytest.raises(VolumeError, match="no kernel rbd module and no /dev/fuse"):
        choose_backend(False, False, False)


# -- commands -------------------------------------------------------------------------

def test_create_asks_for_the_features_and_exact_size() -> None:
    argv = create_argv(CONF, NODE, "volumes", "db", 128 << 20)
    assert argv == ["rbd", "--conf", CONF, "--id", "node-node1", "create", "volumes/db", "--size", "134217728B",
                    "--image-feature", "layering,exclusive-lock,object-map,fast-diff"]
    for bad in (0, -512, 1000, 1.5):
        with pytest.raises(VolumeError):
            create_argv(CONF, NODE, "volumes", "db", bad)  # type: ignore[arg-type]


def test_krbd_map_is_exclusive_unshared_and_bounded() -> None:
    argv = krbd_map_argv(CONF, NODE, "volumes", "db")
    assert argv == ["rbd", "--conf", CONF, "--id", "node-node1", "device", "map", "--device-type", "krbd",
                    "--exclusive", "--options", "noshare,lock_timeout=30", "volumes/db"]
    with pytest.raises(VolumeError):
        krbd_map_argv(CONF, NODE, "volumes", "db@snap")


def test_krbd_unmap_and_list() -> None:
    assert krbd_unmap_argv(CONF, NODE, "/dev/rbd3")[-3:] == ["--device-type", "krbd", "/dev/rbd3"]
    assert krbd_unmap_argv(CONF, NODE, "/dev/rbd3", force=True)[-3:] == ["--options", "force", "/dev/rbd3"]
    with pytest.raises(VolumeError):
        krbd_unmap_argv(CONF, NODE, "/dev/loop0")
    assert krbd_list_argv(CONF, NODE)[-6:] == ["device", "list", "--device-type", "krbd", "--format", "json"]


def test_showmapped_finds_the_head_of_our_image() -> None:
    # The shape Ceph 16's krbd `dump_one_image` writes (src/tools/rbd/action/Kernel.cc).
    text = ('[{"id":"0","pool":"volumes","namespace":"","name":"db","snap":"snap1","device":"/dev/rbd0"},'
            '{"id":"1","pool":"volumes","namespace":"ns","name":"db","snap":"-","device":"/dev/rbd1"},'
            '{"id":"2","pool":"volumes","namespace":"","name":"db","snap":"-","device":"/dev/rbd2"}]')
    rows = parse_showmapped(text)
    assert find_mapping(rows, "volumes", "db") == "/dev/rbd2"
    assert find_mapping(rows, "volumes", "other") is None
    assert parse_showmapped("[]") == [] and parse_showmapped('{"devices": []}') == []


def test_rbd_fuse_gets_its_identity_from_the_environment_not_argv() -> None:
    argv = fuse_argv(CONF, "volumes", "db", "/run/v/fuse")
    assert argv == ["rbd-fuse", "-f", "-p", "volumes", "-r", "db", "-c", CONF, "/run/v/fuse"]
    args = fuse_ceph_args(NODE)
    assert args.split() == ["--id", "node-node1", "--rbd_cache=false", "--client_mount_timeout=20"]
    assert "key" not in args and "blocklist" not in args  # the 16.2.15 string-expiry bug stays away


def test_rbd_fuse_enters_only_the_network_namespace() -> None:
    assert fuse_prefix(("ip", "netns", "exec", "nns1")) == ["nsenter", "--net=/run/netns/nns1"]
    assert fuse_prefix(()) == []
    with pytest.raises(VolumeError):
        fuse_prefix(("sudo",))


def test_filesystem_commands() -> None:
    assert losetup_argv("/r/fuse/db") == ["losetup", "--find", "--show", "--direct-io=on", "/r/fuse/db"]
    assert mkfs_argv("ext4", "/dev/loop0") == ["mkfs.ext4", "-q", "/dev/loop0"]
    assert mkfs_argv("xfs", "/dev/loop0") == ["mkfs.xfs", "-q", "/dev/loop0"]
    assert fsck_argv("ext4", "/dev/loop0") == ["e2fsck", "-p", "/dev/loop0"]
    assert fsck_argv("xfs", "/dev/loop0") is None  # xfs replays its log at mount; no xfs_repair -L
    assert mount_options("ext4") == "errors=remount-ro"
    assert [fsck_ok("ext4", rc) for rc in (0, 1, 2, 4, 8)] == [True, True, True, False, False]
    for call in (lambda: mkfs_argv("btrfs", "/dev/x"), lambda: fsck_argv("zfs", "/dev/x"),
                 lambda: mount_options("vfat")):
        with pytest.raises(VolumeError):
            call()


# -- parsers (captured outputs) ----------------------------------------------------------

def test_watchers_lockers_and_blocklist_as_ceph_prints_them() -> None:
    status = '{"watchers":[{"address":"10.77.0.1:0/4284013410","client":4211,"cookie":140042039201968}]}'
    (watcher,) = parse_watchers(status)
    assert (watcher.address, watcher.client, watcher.cookie) == ("10.77.0.1:0/4284013410", "client.4211",
                                                                 140042039201968)
    assert parse_watchers('{"watchers":[]}') == []
    locks = '[{"id":"auto 140681989328752","locker":"client.4279","address":"10.77.0.2:0/685039501"}]'
    assert [(x.address, x.lock_id) for x in parse_lockers(locks)] == [("10.77.0.2:0/685039501",
                                                                       "auto 140681989328752")]
    assert parse_lockers('{"auto 1": {"locker": "client.9", "address": "10.0.0.1:0/9"}}')[0].lock_id == "auto 1"
    # 16.2.15 prints the range blocklist ([]) right after the list, and a blank line before it.
    text = '\n[{"addr":"10.77.0.1:0/4284013410","until":"2036-11-27T10:47:23.301055+0000"}][]'
    assert parse_blocklist(text) == [BlocklistEntry("10.77.0.1:0/4284013410", "2036-11-27T10:47:23.301055+0000")]
    with pytest.raises(VolumeError):
        parse_blocklist("Error EACCES: access denied")


def test_blocklist_expiries() -> None:
    reply = "blocklisting 10.77.0.9:0/1 until 2036-11-27T10:47:53.519846+0000 (3.1536e+08 sec)\n"
    assert blocklist_reply_until(reply) == until_seconds("2036-11-27T10:47:53.519846+0000")
    assert until_seconds("2026-11-30T10:48:54.490191+0000") < until_seconds("2036-11-27T10:47:53.519846+0000")
    assert blocklist_reply_until("un-blocklisting 10.77.0.8:0/5") is None
    with pytest.raises(VolumeError):
        until_seconds("tomorrow")


def test_blkid_and_blankness() -> None:
    found = parse_blkid("DEVNAME=/dev/loop0\nUUID=9fc4d783-4cab\nVERSION=1.0\nBLOCK_SIZE=1024\nTYPE=ext4\n"
                        "USAGE=filesystem\n")
    assert found["TYPE"] == "ext4" and parse_blkid("") == {}
    assert looks_blank(bytes(1 << 20))
    assert not looks_blank(bytes(4096) + b"\x53\xef" + bytes(100))  # a stray superblock magic is data


def test_mountinfo_with_propagation_and_escapes() -> None:
    text = ("27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
            "183 27 254:0 /tmp/nvol-a /tmp/nvol-a rw,relatime shared:9 - ext4 /dev/vda rw\n"
            "201 183 0:48 / /tmp/nvol-a/n1/run/volumes/v/db/fuse rw,nosuid shared:12 - fuse.rbd-fuse rbd-fuse rw\n"
            "202 183 7:2 / /tmp/nvol-a/n1/mnt/my\\040db rw,relatime shared:13 - ext4 /dev/loop2 rw\n")
    mounts = parse_mountinfo(text)
    assert mounts["/tmp/nvol-a/n1/mnt/my db"].source == "/dev/loop2"
    assert not mounts["/"].shared and mounts["/tmp/nvol-a"].shared
    assert mount_of(mounts, "/tmp/nvol-a/n1/keys").mount_point == "/tmp/nvol-a"  # type: ignore[union-attr]
    assert mount_of(mounts, "/tmp/nvol-ab").mount_point == "/"  # type: ignore[union-attr]


def test_attachment_round_trips_through_its_state_file() -> None:
    attachment = Attachment("node1", "volumes", "db", NODE, FUSE, "/dev/loop0", "10.77.0.1:0/5", "/r/v", (42,),
                            (1796035928.82,), "/r/v/fuse", "/r/mnt/db", "ext4")
    assert Attachment.from_wire(attachment.to_wire()) == attachment
    assert Attachment.from_wire({**attachment.to_wire(), "future_field": 1}) == attachment
    left = Leftovers([42], [1.5], "/dev/loop0", None, "/r/v/fuse", None)
    assert Leftovers.from_wire(left.to_wire()) == left


# -- choices in volumes.py, with Ceph's answers faked ------------------------------------

NODE1 = CephNode("node1", "10.77.0.1", CephPaths("/tmp/nvol-x/node1"))


def fake_holders(monkeypatch: pytest.MonkeyPatch, watching: list[str], owners: list[str]) -> None:
    from nodeos.storage.volume_spec import Watcher
    monkeypatch.setattr(volumes, "watchers", lambda *a, **k: [Watcher(w, "client.1", 1) for w in watching])
    monkeypatch.setattr(volumes, "_lock_owners", lambda *a, **k: list(owners))


@pytest.mark.parametrize("watching, owners, expected", [
    ([], [], None),
    (["10.77.0.1:0/5"], [], "10.77.0.1:0/5"),  # attached, nothing written yet
    (["10.77.0.1:0/5"], ["10.77.0.1:0/5"], "10.77.0.1:0/5"),
    (["10.77.0.1:0/5", "10.77.0.2:0/6"], ["10.77.0.2:0/6"], "10.77.0.2:0/6"),  # the writer
    ([], ["10.77.0.1:0/5"], "10.77.0.1:0/5"),  # a dead holder still owning the lock
    (["10.77.0.2:0/6"], ["10.77.0.1:0/5"], "10.77.0.2:0/6"),  # a new one attached, the dead one's lock
])
def test_client_address_names_the_holder(monkeypatch: pytest.MonkeyPatch, watching: list[str], owners: list[str],
                                         expected: str | None) -> None:
    fake_holders(monkeypatch, watching, owners)
    assert volumes.client_address(NODE1, "volumes", "db") == expected


def test_client_address_will_not_guess_between_two_writers(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_holders(monkeypatch, ["10.77.0.1:0/5", "10.77.0.2:0/6"], [])
    with pytest.raises(VolumeError, match="several possible holders"):
        volumes.client_address(NODE1, "volumes", "db")
    assert volumes.holders(NODE1, "volumes", "db") == ["10.77.0.1:0/5", "10.77.0.2:0/6"]


class FakeCeph:
    """`ceph osd blocklist` as the mon behaves: a re-add keeps the first expiry."""

    def __init__(self, listed: dict[str, str]) -> None:
        self.listed = dict(listed)
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, node: CephNode, name: str, *args: str, what: str) -> subprocess.CompletedProcess[str]:
        self.calls.append(args)
        if args[:3] == ("osd", "blocklist", "add"):
            until = "2036-11-27T10:47:23.301055+0000" if int(args[4]) > 3600 else "2026-11-30T11:47:23.301055+0000"
            self.listed.setdefault(args[3], until)
            return subprocess.CompletedProcess(args, 0, "", f"blocklisting {args[3]} until {until} (1 sec)\n")
        if args[:3] == ("osd", "blocklist", "rm"):
            self.listed.pop(args[3], None)
            return subprocess.CompletedProcess(args, 0, "", "")
        entries = ",".join(f'{{"addr":"{a}","until":"{u}"}}' for a, u in self.listed.items())
        return subprocess.CompletedProcess(args, 0, f"[{entries}][]", "listed")


def test_blocklist_add_fences_one_instance_for_years(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeCeph({})
    monkeypatch.setattr(volumes, "_ceph", fake)
    entry = volumes.blocklist_add(NODE1, "10.77.0.1:0/5")
    assert entry.until.startswith("2036")
    assert fake.calls[0] == ("osd", "blocklist", "add", "10.77.0.1:0/5", "315360000")
    with pytest.raises(VolumeError, match="nonce 0"):
        volumes.blocklist_add(NODE1, "10.77.0.1:0/0")
    with pytest.raises(VolumeError, match="positive expiry"):
        volumes.blocklist_add(NODE1, "10.77.0.1:0/5", 0)


def test_blocklist_add_lengthens_a_short_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeCeph({"10.77.0.1:0/5": "2026-11-30T11:47:23.301055+0000"})  # a lock break's 1 h
    monkeypatch.setattr(volumes, "_ceph", fake)
    entry = volumes.blocklist_add(NODE1, "10.77.0.1:0/5")
    assert entry.until.startswith("2036")
    assert [c[2] for c in fake.calls if c[:2] == ("osd", "blocklist")] == ["add", "ls", "rm", "add", "ls"]


def test_detach_of_what_is_gone_is_a_no_op(tmp_path: Path) -> None:
    state_dir = tmp_path / "volumes" / "volumes" / "db"
    attachment = Attachment("node1", "volumes", "db", NODE, FUSE, "/dev/loop250", "10.77.0.1:0/5", str(state_dir),
                            (2 ** 22 + 7,), (1.0,), str(state_dir / "fuse"), str(tmp_path / "mnt"), "ext4")
    volumes.detach(attachment)
    volumes.detach(attachment)
    assert not (state_dir / "state.json").exists()


def test_mount_refuses_to_format_data_it_does_not_recognise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    device = tmp_path / "disk"
    device.write_bytes(bytes(8192) + b"some old data" + bytes(8192))
    attachment = Attachment("node1", "volumes", "db", NODE, FUSE, str(device), "10.77.0.1:0/5", str(tmp_path))
    calls: list[list[str]] = []

    def fake_run(argv: Any, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(list(argv))
        return subprocess.CompletedProcess(argv, 2, "", "")  # blkid: no signature

    monkeypatch.setattr(volumes, "_run", fake_run)
    with pytest.raises(VolumeError, match="refusing mkfs"):
        volumes.mount(attachment, "ext4", str(tmp_path / "mnt"), make_fs_if_blank=True)
    assert [c[0] for c in calls] == ["blkid"]  # no mkfs ran
    device.write_bytes(bytes(1 << 20))
    with pytest.raises(VolumeError, match="mkfs was not asked for"):
        volumes.mount(attachment, "ext4", str(tmp_path / "mnt"))
