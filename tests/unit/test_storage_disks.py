"""OSD disk choice (nodeos/storage/disks.py) over realistic lsblk JSON."""

from __future__ import annotations

import json

import pytest

from nodeos.storage.disks import DiskInfo, LsblkError, choose_osd_disks, parse_lsblk

GiB = 1 << 30

# A storage server as util-linux 2.38 (Debian 12) prints it: booted from NVMe.
SERVER = """
{
   "blockdevices": [
      {"name": "sda", "path": "/dev/sda", "type": "disk", "size": 4000787030016, "ro": false, "rm": false,
       "mountpoints": [null], "pkname": null, "fstype": null, "pttype": null},
      {"name": "sdb", "path": "/dev/sdb", "type": "disk", "size": 4000787030016, "ro": false, "rm": false,
       "mountpoints": [null], "pkname": null, "fstype": null, "pttype": "gpt",
       "children": [
          {"name": "sdb1", "path": "/dev/sdb1", "type": "part", "size": 4000785104896, "ro": false, "rm": false,
           "mountpoints": ["/srv/backup"], "pkname": "sdb", "fstype": "xfs", "pttype": "gpt"}
       ]},
      {"name": "sdc", "path": "/dev/sdc", "type": "disk", "size": 2000398934016, "ro": false, "rm": false,
       "mountpoints": [null], "pkname": null, "fstype": "LVM2_member", "pttype": null,
       "children": [
          {"name": "vg0-data", "path": "/dev/mapper/vg0-data", "type": "lvm", "size": 2000393691136, "ro": false,
           "rm": false, "mountpoints": ["/var/lib/data"], "pkname": "sdc", "fstype": "ext4", "pttype": null}
       ]},
      {"name": "sdd", "path": "/dev/sdd", "type": "disk", "size": 1000204886016, "ro": true, "rm": false,
       "mountpoints": [null], "pkname": null, "fstype": null, "pttype": null},
      {"name": "sde", "path": "/dev/sde", "type": "disk", "size": 30752636928, "ro": false, "rm": true,
       "mountpoints": [null], "pkname": null, "fstype": null, "pttype": null},
      {"name": "sdf", "path": "/dev/sdf", "type": "disk", "size": 960197124096, "ro": false, "rm": false,
       "mountpoints": [null], "pkname": null, "fstype": "linux_raid_member", "pttype": null,
       "children": [
          {"name": "md0", "path": "/dev/md0", "type": "raid1", "size": 960062881792, "ro": false, "rm": false,
           "mountpoints": [null], "pkname": "sdf", "fstype": null, "pttype": null}
       ]},
      {"name": "sdg", "path": "/dev/sdg", "type": "disk", "size": 536870912, "ro": false, "rm": false,
       "mountpoints": [null], "pkname": null, "fstype": null, "pttype": null},
      {"name": "sdh", "path": "/dev/sdh", "type": "disk", "size": 8001563222016, "ro": false, "rm": false,
       "mountpoints": [null], "pkname": null, "fstype": "ceph_bluestore", "pttype": null},
      {"name": "sr0", "path": "/dev/sr0", "type": "rom", "size": 1073741312, "ro": false, "rm": true,
       "mountpoints": [null], "pkname": null, "fstype": null, "pttype": null},
      {"name": "loop0", "path": "/dev/loop0", "type": "loop", "size": 67108864, "ro": true, "rm": false,
       "mountpoints": ["/snap/core/1"], "pkname": null, "fstype": "squashfs", "pttype": null},
      {"name": "rbd0", "path": "/dev/rbd0", "type": "disk", "size": 10737418240, "ro": false, "rm": false,
       "mountpoints": [null], "pkname": null, "fstype": null, "pttype": null},
      {"name": "zram0", "path": "/dev/zram0", "type": "disk", "size": 4294967296, "ro": false, "rm": false,
       "mountpoints": ["[SWAP]"], "pkname": null, "fstype": "swap", "pttype": null},
      {"name": "nvme0n1", "path": "/dev/nvme0n1", "type": "disk", "size": 512110190592, "ro": false, "rm": false,
       "mountpoints": [null], "pkname": null, "fstype": null, "pttype": "gpt",
       "children": [
          {"name": "nvme0n1p1", "path": "/dev/nvme0n1p1", "type": "part", "size": 536870912, "ro": false, "rm": false,
           "mountpoints": ["/boot/efi"], "pkname": "nvme0n1", "fstype": "vfat", "pttype": "gpt"},
          {"name": "nvme0n1p2", "path": "/dev/nvme0n1p2", "type": "part", "size": 511571492864, "ro": false,
           "rm": false, "mountpoints": ["/"], "pkname": "nvme0n1", "fstype": "ext4", "pttype": "gpt"}
       ]},
      {"name": "nvme1n1", "path": "/dev/nvme1n1", "type": "disk", "size": 1920383410176, "ro": false, "rm": false,
       "mountpoints": [null], "pkname": null, "fstype": null, "pttype": null}
   ]
}
"""

# This very build machine (no udev in the VM): the root filesystem's disk shows no FSTYPE at all.
BUILD_VM = """
{
   "blockdevices": [
      {"name": "zram0", "path": "/dev/zram0", "type": "disk", "size": 0, "ro": false, "rm": false,
       "mountpoints": [null], "pkname": null, "fstype": null, "pttype": null},
      {"name": "vda", "path": "/dev/vda", "type": "disk", "size": 274877906944, "ro": false, "rm": false,
       "mountpoints": ["/run/netns", "/"], "pkname": null, "fstype": null, "pttype": null}
   ]
}
"""

# util-linux 2.36 (Debian 11): flags as "0"/"1" strings, one MOUNTPOINT, sizes as strings.
OLD_UTIL_LINUX = """
{"blockdevices": [
   {"name": "vda", "path": "/dev/vda", "type": "disk", "size": "21474836480", "ro": "0", "rm": "0",
    "mountpoint": null, "pkname": null, "fstype": null, "pttype": "dos",
    "children": [{"name": "vda1", "path": "/dev/vda1", "type": "part", "size": "21473787904", "ro": "0", "rm": "0",
                  "mountpoint": "/", "pkname": "vda", "fstype": "ext4", "pttype": "dos"}]},
   {"name": "vdb", "path": "/dev/vdb", "type": "disk", "size": "10737418240", "ro": "0", "rm": "0",
    "mountpoint": null, "pkname": null, "fstype": null, "pttype": null}
]}
"""


def test_a_server_gives_only_its_blank_fixed_disks() -> None:
    taken, skipped = choose_osd_disks(parse_lsblk(SERVER), "/dev/nvme0n1")
    assert [d.path for d in taken] == ["/dev/sda", "/dev/nvme1n1"]
    assert skipped == {
        "/dev/sdb": "has a partition table (gpt)",
        "/dev/sdc": "has a LVM2_member signature",
        "/dev/sdd": "read-only",
        "/dev/sde": "removable",
        "/dev/sdf": "has a linux_raid_member signature",
        "/dev/sdg": f"too small (536870912 bytes, at least {GiB})",
        "/dev/sdh": "has a ceph_bluestore signature",
        "/dev/sr0": "a rom device, not a whole disk",
        "/dev/loop0": "a loop device, not a whole disk",
        "/dev/rbd0": "a virtual block device",
        "/dev/zram0": "a virtual block device",
        "/dev/nvme0n1": "the boot disk",
    }


def test_the_boot_disk_is_skipped_by_name_or_path() -> None:
    disks = parse_lsblk(SERVER)
    assert "/dev/nvme1n1" in choose_osd_disks(disks, "nvme1n1").skipped
    assert "/dev/sda" in choose_osd_disks(disks, "/dev/sda").skipped


def test_a_mounted_disk_without_udev_signatures_is_never_taken() -> None:
    taken, skipped = choose_osd_disks(parse_lsblk(BUILD_VM), boot_disk=None)  # boot disk unknown
    assert taken == []
    assert skipped == {"/dev/zram0": "a virtual block device", "/dev/vda": "mounted at /run/netns, /"}


def test_a_disk_with_children_but_no_signature_is_in_use() -> None:
    holder = DiskInfo("dm-9", "/dev/mapper/crypt", "crypt", GiB, False, False, ("/secret",))
    disk = DiskInfo("sdz", "/dev/sdz", "disk", 4 * GiB, False, False, children=(holder,))
    assert choose_osd_disks([disk], None).skipped == {"/dev/sdz": "in use by dm-9"}


def test_old_util_linux_output_is_read_too() -> None:
    disks = parse_lsblk(OLD_UTIL_LINUX)
    assert disks[0].children[0].mountpoints == ("/",) and disks[1].size == 10 * GiB and disks[1].ro is False
    taken, skipped = choose_osd_disks(disks, "vda")
    assert [d.name for d in taken] == ["vdb"] and skipped == {"/dev/vda": "the boot disk"}


def test_parsed_fields() -> None:
    sdb = next(d for d in parse_lsblk(SERVER) if d.name == "sdb")
    assert sdb == DiskInfo("sdb", "/dev/sdb", "disk", 4000787030016, False, False, (), None, None, "gpt",
                           (DiskInfo("sdb1", "/dev/sdb1", "part", 4000785104896, False, False, ("/srv/backup",),
                                     "sdb", "xfs", "gpt"),))


@pytest.mark.parametrize("text, message", [
    ("not json", "not JSON"),
    ("[]", "no 'blockdevices'"),
    ('{"blockdevices": [{"size": 1}]}', "with a name"),
    ('{"blockdevices": [{"name": "sda", "size": "1.8T"}]}', "sda: bad size"),
    ('{"blockdevices": [{"name": "sda", "size": 1, "ro": "yes"}]}', "sda: bad flag"),
    ('{"blockdevices": [{"name": "sda", "size": 1, "children": [{"name": "sda1", "size": -1}]}]}',
     "sda: sda1: bad size"),
])
def test_malformed_lsblk_output_is_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(LsblkError, match=message):
        parse_lsblk(text)


def test_an_empty_machine_has_nothing_to_offer() -> None:
    assert choose_osd_disks(parse_lsblk(json.dumps({"blockdevices": []})), None) == ([], {})
