"""Storage: Ceph that bootstraps itself, pure decisions apart from the I/O.

Pure (no I/O; time and randomness are arguments):
* keys.py: cephx keys in Ceph's format and keyrings (`make_keys`, `CephKeys`);
* conf.py: the fsid from the cluster id (`fsid_for`) and ceph.conf (`render_ceph_conf`);
* mons.py: where mons run, one monmap change at a time (`choose_mons`);
* pools.py: pool replication from the host count (`pool_size`);
* clients.py: the cephx users of the cloud's services and their pools (`ServiceClient`);
* disks.py: which disks become OSDs, from lsblk (`parse_lsblk`, `choose_osd_disks`);
* status.py: `ceph -s` reduced to what nodeos shows and waits for (`summarize`);
* ops.py: Ceph's part of the replicated state and the ops that change it;
* decide.py: the Monitor's storage decisions (init, keys, mons, the volumes pool,
  volume images and fences);
* volume_spec.py: volumes' commands, parsing and the attachment record.

I/O (imported where used, not here):
* daemons.py: real Ceph daemons (mon, mgr, OSD on a file or a blank disk) as
  processes under one node's directory; `ceph_status`, `health`;
* probe.py: lsblk, the boot disk, and a second look at a disk before use;
* files.py: a node's ceph.conf, keyrings and facts, written from the state;
* launch.py: `nodeos storage run mon|mgr|osd`, the catalog's Ceph services;
* asok.py: the daemons' admin sockets (the `ceph` health check);
* actions.py, layer.py: the Monitor's Ceph I/O and an agent's storage duties;
* volumes.py: attach (kernel rbd or rbd-fuse + loop, probed), mount, detach, blocklist;
* node_volumes.py: a node's side of volumes, in the fence's order (attach, record, mount).

Public names below. Sits above `cluster` (its ops live in the replicated
state) and below `services` (which runs the Ceph daemons as catalog services).
"""

from .conf import CephPaths, Tuning, fsid_for, render_ceph_conf
from .disks import DiskChoice, DiskInfo, choose_osd_disks, parse_lsblk
from .keys import CephKeys, make_key, make_keys
from .mons import MonChange, choose_mons, initial_mons, mon_target
from .pools import pool_size
from .status import CephSummary, summarize

__all__ = ["CephKeys", "CephPaths", "CephSummary", "DiskChoice", "DiskInfo", "MonChange", "Tuning", "choose_mons",
           "choose_osd_disks", "fsid_for", "initial_mons", "make_key", "make_keys", "mon_target", "parse_lsblk",
           "pool_size", "render_ceph_conf", "summarize"]
