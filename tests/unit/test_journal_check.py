"""A Raft journal pysyncobj cannot load whole is refused with its path and the remedy."""

from __future__ import annotations

import os
import socket
import struct
import threading
from pathlib import Path

import pytest

from nodeos.cluster.config import Timing
from nodeos.cluster.consensus import TICK_FAILURES_FATAL, Consensus, ConsensusError, check_journal, journal_problem
from nodeos.cluster.state import ClusterState

END_AT = 36  # offset of the header's end-of-records field


def make_journal(path: Path, entries: int = 6) -> int:
    """A journal written by pysyncobj itself; returns where its records end."""
    # Imported here: importing pysyncobj before nodeos.cluster.consensus would let it
    # replace socket.inet_ntop for good (see consensus.py).
    from pysyncobj.journal import FileJournal

    journal = FileJournal(str(path))
    for index in range(1, entries + 1):
        journal.add(b"\x01" + os.urandom(40 + index), index, 1)
    journal.flush()
    journal._destroy()
    (end,) = struct.unpack_from("<I", path.read_bytes(), END_AT)
    return end


def truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(size)


def test_a_whole_journal_and_a_missing_one_pass(tmp_path):
    journal = tmp_path / "raft.journal"
    check_journal(journal)  # first start: nothing yet
    end = make_journal(journal)
    assert journal.stat().st_size > end  # pysyncobj pads the file; padding is not damage
    check_journal(journal)


@pytest.mark.parametrize("cut", ["empty", "in the header", "100 bytes", "half", "inside the last record", "last size field"])
def test_truncated_journals_are_refused_with_path_and_remedy(tmp_path, cut):
    journal = tmp_path / "raft.journal"
    end = make_journal(journal)
    size = {"empty": 0, "in the header": 20, "100 bytes": 100, "half": end // 2, "inside the last record": end - 30,
            "last size field": end - 2}[cut]
    truncate(journal, size)
    with pytest.raises(ConsensusError) as caught:
        check_journal(journal)
    message = str(caught.value)
    assert str(journal) in message and "damaged" in message
    assert "move it aside" in message and "raft.journal.meta" in message


def test_zeroed_records_are_refused(tmp_path):
    """What pysyncobj leaves after padding a cut file: the records' end is right, their bytes are zeros."""
    journal = tmp_path / "raft.journal"
    end = make_journal(journal)
    data = bytearray(journal.read_bytes())
    data[end - 30:end] = bytes(30)
    journal.write_bytes(bytes(data))
    assert "garbled" in (journal_problem(bytes(data)) or "")


def test_not_a_journal_is_refused(tmp_path):
    assert journal_problem(b"x" * 100) == "no pysyncobj journal header"


def test_consensus_refuses_before_pysyncobj_touches_the_file(tmp_path):
    journal = tmp_path / "raft.journal"
    make_journal(journal)
    truncate(journal, 100)
    with pytest.raises(ConsensusError, match="raft journal .* is damaged"):
        Consensus("127.0.0.1:1", ["127.0.0.1:1"], "secret-for-test", tmp_path, Timing())
    assert journal.stat().st_size == 100  # pysyncobj would have padded it with zeros


def test_a_tick_thread_that_keeps_failing_is_reported(tmp_path, monkeypatch):
    """pysyncobj retries a failing tick forever; Consensus reports it once and stops counting as running."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    failed = threading.Event()
    reports: list[str] = []

    def on_failed(message: str) -> None:
        reports.append(message)
        failed.set()

    consensus = Consensus(f"127.0.0.1:{port}", [f"127.0.0.1:{port}"], "secret-for-test", tmp_path, Timing(), on_failed=on_failed)
    try:
        assert consensus.submit_sync({"op": "heartbeat", "now": 1.0, "leader": "solo"}, timeout=10)["ok"]
        assert consensus.running()

        def broken(self, op):
            raise RuntimeError("cannot apply")

        monkeypatch.setattr(ClusterState, "apply", broken)
        consensus.submit({"op": "heartbeat", "now": 2.0, "leader": "solo"})
        assert failed.wait(20), "no failure reported"
        assert not consensus.running()
        assert len(reports) == 1 and f"{TICK_FAILURES_FATAL} times" in reports[0] and "cannot apply" in reports[0]
        assert str(tmp_path / "raft.journal") in reports[0]
    finally:
        monkeypatch.undo()
        consensus.stop()
    assert not consensus.running()
