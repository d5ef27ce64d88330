"""A Raft journal that cannot be loaded stops the agent with exit 2, the path and the remedy.

Before, pysyncobj failed in its constructor and the agent retried every
0.5 s forever (or, for some cuts, silently loaded a shorter or zero-filled
log): a dead member that counted toward quorum.
"""

from __future__ import annotations

import os
import shutil
import struct
import time
from pathlib import Path

import pytest

from nodeos.lab.lab import Lab

from .cluster_helpers import agent_events, is_root, new_lab, teardown

pytestmark = [pytest.mark.lab, pytest.mark.skipif(not is_root(), reason="needs root for namespaces")]

LAST_RECORD_OFFSET_AT = 36  # pysyncobj journal header: name (24) + version (8) + format (4)


@pytest.fixture
def formed_lab(request: pytest.FixtureRequest) -> Lab:
    lab = new_lab(3)
    request.addfinalizer(lambda: teardown(lab))
    lab.wait_formed(timeout=60)
    return lab


def exit_code(pid: int, timeout: float) -> int | None:
    """The agent's exit code (this process is its parent); None if it still runs.

    No subprocess may start while we wait: subprocess reaps orphaned children.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    return None


def records_end(journal: Path) -> int:
    (end,) = struct.unpack_from("<I", journal.read_bytes(), LAST_RECORD_OFFSET_AT)
    return end


def test_truncated_journal_exits_2_naming_the_path_and_the_remedy(formed_lab: Lab) -> None:
    lab = formed_lab
    time.sleep(2.0)  # a few heartbeats in every journal
    lab.stop_agent("n3")
    state = Path(lab.node("n3").state_dir)
    journal = state / "raft.journal"
    intact = state / "raft.journal.intact"
    shutil.copy2(journal, intact)
    end = records_end(journal)
    cuts = {"100 bytes": 100, "half the records": end // 2, "inside the last record": end - 3, "inside the header": 20}
    for what, size in cuts.items():
        shutil.copy2(intact, journal)
        with open(journal, "r+b") as handle:
            handle.truncate(size)
        pid = lab.start_agent("n3")
        code = exit_code(pid, timeout=15)
        assert code == 2, f"{what}: expected exit 2, got {code}"
        refused = [e for e in agent_events(lab, "n3") if e["event"] == "agent.refused" and e["ts"] >= time.time() - 20]
        assert refused and str(journal) in refused[-1]["error"] and "move it aside" in refused[-1]["error"], (what, refused[-1:])
        assert journal.stat().st_size == size, f"{what}: the damaged journal was modified"
        lab.crash("n3")
    # The remedy the message gives works: the node rejoins and catches up.
    for name in ("raft.journal", "raft.journal.meta"):
        os.replace(state / name, state / f"{name}.damaged")
    lab.start_agent("n3")
    view = lab.wait_formed(timeout=60)
    assert len(view["statuses"]["n3"]["members"]) == 3
    assert not [e for e in agent_events(lab, "n3") if e["event"] == "agent.tick_failed"]
