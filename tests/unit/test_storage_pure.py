"""The storage model is pure: no clock, no randomness, no files, no processes (invariant 4)."""

from __future__ import annotations

import builtins
import os
import random
import subprocess
import time
from typing import Any

import pytest

from nodeos.storage import (CephPaths, choose_mons, choose_osd_disks, fsid_for, make_keys, parse_lsblk, pool_size,
                            render_ceph_conf, summarize)
from nodeos.storage.keys import mon_keyring

LSBLK = '{"blockdevices": [{"name": "sdb", "path": "/dev/sdb", "type": "disk", "size": 4000787030016,' \
        ' "ro": false, "rm": false, "mountpoints": [null], "pkname": null, "fstype": null, "pttype": null}]}'


@pytest.fixture
def no_io(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("the storage model read the clock, randomness, a file or ran a process")

    for module, names in ((time, ("time", "monotonic", "time_ns")), (os, ("urandom", "open", "listdir")),
                          (random, ("random", "randint", "getrandbits")), (subprocess, ("run", "Popen")),
                          (builtins, ("open",))):
        for name in names:
            monkeypatch.setattr(module, name, forbidden)


def test_every_pure_function_runs_without_io(no_io: None) -> None:
    counter = iter(range(1000))
    keys = make_keys(lambda n: bytes([next(counter) % 256]) * n, ["n1", "n2", "n3"], created=12.5)
    assert "[mon.]" in mon_keyring(keys)
    fsid = fsid_for("cluster")
    conf = render_ceph_conf(fsid, {"n1": "10.0.0.1"}, "10.0.0.0/24", hosts=3, node="n1", paths=CephPaths("/x"))
    assert fsid in conf
    assert choose_mons(["n1", "n2", "n4"], ["n1", "n2", "n3"], {"n3": 0.0}, 500.0) is not None
    assert pool_size(3) == (3, 2)
    assert [d.name for d in choose_osd_disks(parse_lsblk(LSBLK), "sda").taken] == ["sdb"]
    assert summarize({}).health == "HEALTH_UNKNOWN"


def test_the_mon_connect_wait_grows_with_a_raised_command_timeout() -> None:
    from nodeos.storage.daemons import CONNECT_TIMEOUT, connect_timeout

    assert connect_timeout(30.0) == CONNECT_TIMEOUT == 10  # the default stays
    assert connect_timeout(5.0) == 10
    assert connect_timeout(180.0) == 30  # the image tier under TCG
