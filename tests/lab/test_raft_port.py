"""Unauthenticated bytes on the Raft port are never unpickled and cannot grow memory."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nodeos.cluster.consensus import Consensus, ConsensusError
from nodeos.cluster.config import Timing

from .cluster_helpers import is_root, lease_holders, new_lab, rss_mb, status_json, teardown, wait_until

pytestmark = [pytest.mark.lab, pytest.mark.skipif(not is_root(), reason="needs root for namespaces")]

ATTACK = r'''
import json, os, pickle, socket, struct, sys, time, zlib
target = (sys.argv[1], 7371)
marker = sys.argv[2]
report = {}

class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {marker}",))

def attempt(name, payload, stream_mb=0):
    s = socket.create_connection(target, timeout=5)
    sent = 0
    closed = False
    try:
        s.sendall(payload)
        sent = len(payload)
        chunk = b"\0" * 65536
        for _ in range(stream_mb * 16):
            s.sendall(chunk)
            sent += len(chunk)
        s.settimeout(5)
        closed = s.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError, socket.timeout):
        closed = True
    finally:
        s.close()
    report[name] = {"sent": sent, "closed": closed}

raw = pickle.dumps(Evil())
attempt("random", os.urandom(65536))
attempt("huge_length", struct.pack("i", 0x7FFFFFFF), stream_mb=32)
attempt("negative_length", struct.pack("i", -5) + os.urandom(100))
attempt("pickle", struct.pack("i", len(raw)) + raw)
packed = zlib.compress(raw)
attempt("zlib_pickle", struct.pack("i", len(packed)) + packed)
# Many half-open connections at once.
socks = [socket.create_connection(target, timeout=5) for _ in range(60)]
time.sleep(1.0)
for s in socks:
    s.close()
print(json.dumps(report))
'''


@pytest.fixture
def single_node_lab():
    lab = new_lab(1, expect=1)
    yield lab
    teardown(lab)


def test_consensus_refuses_to_start_without_password(tmp_path):
    with pytest.raises(ConsensusError, match="password"):
        Consensus("127.0.0.1:17371", [], "", tmp_path, Timing())


def test_garbage_on_raft_port_is_never_unpickled_and_memory_stays_bounded(single_node_lab, tmp_path):
    lab = single_node_lab
    lab.wait_formed(timeout=60)
    wait_until(lambda: lease_holders(lab, ["n1"]), 10, "the single node to hold the lease")
    client = lab.add_client()
    pid = lab.node("n1").pid
    marker = tmp_path / "unpickled-marker"
    rss_before = rss_mb(pid)
    result = subprocess.run(["ip", "netns", "exec", client, sys.executable, "-c", ATTACK, lab.node("n1").ip, str(marker)],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    time.sleep(1.0)
    assert not marker.exists(), "a pickle sent without the key was unpickled"
    assert all(entry["closed"] for entry in report.values()), report
    # The 2 GiB length prefix: the agent hung up long before 32 MiB were accepted.
    assert report["huge_length"]["sent"] < 32 * 1024 * 1024, report
    assert rss_mb(pid) - rss_before < 30, f"RSS grew from {rss_before:.1f} MiB to {rss_mb(pid):.1f} MiB"
    status = status_json(lab, "n1")
    drops = status["raft"]["dropped_connections"]
    assert drops["pre_auth_overflow"] >= 1 and drops["too_many_connections"] >= 1, drops
    assert lease_holders(lab, ["n1"]) == ["n1"]  # still healthy and acting
    log = Path(lab.node("n1").state_dir, "agent.log").read_text()
    assert "Traceback" not in log
