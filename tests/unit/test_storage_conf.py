"""fsid, ceph.conf, pool sizes and the status summary (nodeos/storage/conf.py, pools.py, status.py)."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from nodeos.storage.conf import LAB_TUNING, CephPaths, fsid_for, render_ceph_conf
from nodeos.storage.pools import pool_size
from nodeos.storage.status import summarize

FSID = fsid_for("cluster-1")
MONS = {"node2": "10.77.0.2", "node1": "10.77.0.1", "node3": "10.77.0.3"}


def parse(text: str) -> configparser.ConfigParser:
    conf = configparser.ConfigParser(interpolation=None, delimiters=("=",))
    conf.read_string(text)
    return conf


def test_the_fsid_is_a_stable_uuid_of_the_cluster_id() -> None:
    assert fsid_for("cluster-1") == fsid_for("cluster-1") != fsid_for("cluster-2")
    assert uuid.UUID(FSID).version == 5
    assert FSID == "7ba6c90a-55b4-5729-ad04-d3d17533040c"  # pinned: a change would orphan every cluster's data
    with pytest.raises(ValueError):
        fsid_for("")


@pytest.mark.parametrize("hosts, sizes", [(1, (1, 1)), (2, (2, 2)), (3, (3, 2)), (4, (3, 2)), (50, (3, 2))])
def test_pool_size_follows_the_hosts(hosts: int, sizes: tuple[int, int]) -> None:
    assert pool_size(hosts) == sizes


def test_pool_size_needs_a_host() -> None:
    with pytest.raises(ValueError):
        pool_size(0)


def test_a_real_node_conf_keeps_cephs_paths() -> None:
    conf = parse(render_ceph_conf(FSID, MONS, "10.77.0.0/24", hosts=3, node="node2"))
    glob = conf["global"]
    assert glob["fsid"] == FSID
    assert glob["mon_host"] == ("[v2:10.77.0.1:3300,v1:10.77.0.1:6789],[v2:10.77.0.2:3300,v1:10.77.0.2:6789],"
                                "[v2:10.77.0.3:3300,v1:10.77.0.3:6789]")
    assert glob["public_network"] == "10.77.0.0/24"
    assert all(glob[f"auth_{kind}_required"] == "cephx" for kind in ("cluster", "service", "client"))
    assert (glob["osd_pool_default_size"], glob["osd_pool_default_min_size"]) == ("3", "2")
    assert glob["mon_allow_pool_delete"] == "false"
    assert glob["auth_allow_insecure_global_id_reclaim"] == "false"
    assert "mon_allow_pool_size_one" not in glob
    assert conf["osd"]["crush_location"] == "root=default host=node2"
    assert int(conf["osd"]["osd_memory_target"]) == 1 << 30
    assert not any(value.startswith("/") for s in conf.sections() for value in conf[s].values())
    assert not conf.has_section("client")


def test_a_single_node_cloud_allows_one_copy_without_warning() -> None:
    glob = parse(render_ceph_conf(FSID, {"solo": "10.0.0.5"}, "10.0.0.0/24", hosts=1))["global"]
    assert (glob["osd_pool_default_size"], glob["osd_pool_default_min_size"]) == ("1", "1")
    assert glob["mon_allow_pool_size_one"] == "true" and glob["mon_warn_on_pool_no_redundancy"] == "false"


def test_a_lab_node_keeps_everything_under_its_directory() -> None:
    paths = CephPaths("/tmp/lab/node1")
    text = render_ceph_conf(FSID, MONS, "10.77.0.0/24", hosts=3, node="node1", paths=paths, tuning=LAB_TUNING)
    conf = parse(text)
    assert conf["global"]["run_dir"] == "/tmp/lab/node1/run"
    assert conf["mon"]["mon_data"] == "/tmp/lab/node1/mon/$cluster-$id"
    assert conf["osd"]["osd_data"] == "/tmp/lab/node1/osd/$cluster-$id"
    assert conf["client"]["keyring"] == "/tmp/lab/node1/keys/$cluster.$name.keyring"
    assert int(conf["osd"]["bluestore_block_size"]) == 1 << 30
    for host_path in ("/var/lib/ceph", "/etc/ceph", "/var/run/ceph", "/var/log/ceph"):
        assert host_path not in text


@pytest.mark.parametrize("kwargs, message", [
    ({"mons": {}}, "at least one mon"),
    ({"mons": {"a": "not-an-ip"}}, "not-an-ip"),
    ({"mons": {"a b": "10.0.0.1"}}, "cannot name"),
    ({"fsid": "nope"}, None),
    ({"public_network": "10.0.0/33"}, None),
    ({"hosts": 0}, "at least one host"),
])
def test_bad_inputs_are_refused(kwargs: dict[str, Any], message: str | None) -> None:
    args: dict[str, Any] = {"fsid": FSID, "mons": MONS, "public_network": "10.77.0.0/24", "hosts": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        render_ceph_conf(args.pop("fsid"), args.pop("mons"), args.pop("public_network"), **args)


@pytest.mark.skipif(shutil.which("ceph-conf") is None, reason="needs ceph-conf (ceph-common)")
def test_ceph_reads_the_conf_as_meant(tmp_path: Path) -> None:
    paths = CephPaths(str(tmp_path / "n1"))
    conf = tmp_path / "ceph.conf"
    conf.write_text(render_ceph_conf(FSID, MONS, "10.77.0.0/24", hosts=3, node="node1", paths=paths))

    def lookup(name: str, option: str) -> str:
        argv = ["ceph-conf", "-c", str(conf), "--name", name, "--show-config-value", option]
        return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()

    assert lookup("osd.3", "osd_data") == f"{paths.root}/osd/ceph-3"
    assert lookup("osd.3", "keyring") == f"{paths.root}/osd/ceph-3/keyring"  # the daemon's own, not [client]'s
    assert lookup("mon.node1", "admin_socket") == f"{paths.root}/run/ceph-mon.node1.asok"
    assert lookup("client.admin", "keyring") == paths.keyring("client.admin")
    assert lookup("osd.3", "crush_location") == "root=default host=node1"
    assert lookup("mgr.node1", "crash_dir") == f"{paths.root}/crash"


# `ceph -s -f json` of the lab cluster (Ceph 16.2.15), trimmed.
STATUS: dict[str, Any] = {
    "fsid": "24f60b7b-fff3-523b-bde5-664e68737e76",
    "health": {"status": "HEALTH_OK", "checks": {}, "mutes": []},
    "quorum_names": ["node1", "node2", "node3"],
    "monmap": {"epoch": 1, "min_mon_release_name": "pacific", "num_mons": 3},
    "osdmap": {"epoch": 9, "num_osds": 3, "num_up_osds": 3, "num_in_osds": 3, "num_remapped_pgs": 0},
    "pgmap": {"pgs_by_state": [{"state_name": "active+clean", "count": 9}], "num_pgs": 9, "num_pools": 2},
    "mgrmap": {"available": True, "num_standbys": 0, "modules": ["iostat"], "services": {}},
}


def test_a_settled_cluster() -> None:
    summary = summarize(STATUS)
    assert summary.settled(osds=3, pools=2)
    assert summary.line() == ("HEALTH_OK; mons 3/3 in quorum; OSDs 3 up, 3 in of 3; 2 pools, PGs 9/9 active+clean; "
                              "mgr available")


def test_health_ok_before_the_mgr_saw_the_pool_is_not_settled() -> None:
    early = {**STATUS, "pgmap": {"pgs_by_state": [], "num_pgs": 0, "num_pools": 0}}
    assert not summarize(early).settled(osds=3)
    assert not summarize(STATUS).settled(osds=4)
    states = [{"state_name": "active+clean", "count": 8}, {"state_name": "peering", "count": 1}]
    peering = {**STATUS, "pgmap": {"pgs_by_state": states, "num_pgs": 9, "num_pools": 2}}
    assert not summarize(peering).settled(osds=3)


def test_a_garbled_status_reads_as_unknown() -> None:
    summary = summarize({"health": None, "osdmap": {"num_osds": "3"}})
    assert summary.health == "HEALTH_UNKNOWN" and summary.osds == 0 and not summary.settled(osds=0)


def test_a_slow_machine_gets_a_longer_mon_lease_and_election_timeout() -> None:
    from nodeos.cluster.config import ConfigError, StorageConfig, parse_config
    from nodeos.storage.files import tuning_for

    default = parse(render_ceph_conf(FSID, MONS, "10.77.0.0/24", hosts=3, tuning=tuning_for(StorageConfig())))
    assert (default["global"]["mon_lease"], default["global"]["mon_election_timeout"]) == ("2.0", "2.0")
    slow = parse_config({"storage": {"mon_lease": 10}}).storage
    conf = parse(render_ceph_conf(FSID, MONS, "10.77.0.0/24", hosts=3, tuning=tuning_for(slow)))
    assert (conf["global"]["mon_lease"], conf["global"]["mon_election_timeout"]) == ("10.0", "10.0")
    with pytest.raises(ConfigError, match="storage.mon_lease must be 1 to 60"):
        parse_config({"storage": {"mon_lease": 0.5}})
