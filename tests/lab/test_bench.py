"""The benchmark commands run end to end and write their figures (no timing asserted)."""

from __future__ import annotations

import json

import pytest

from .cluster_helpers import cli, is_root

pytestmark = [pytest.mark.lab, pytest.mark.skipif(not is_root(), reason="needs root for namespaces")]


def test_election_and_failover_benchmarks_write_figures(tmp_path):
    out = tmp_path / "election.json"
    result = cli("bench", "election", "--rounds", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(out.read_text())["results"]["leader_kill_to_new_lease_3_nodes"]
    assert figures["n"] == 2 and 0 < figures["median"] <= figures["p95"]
    assert "median s" in result.stdout

    out = tmp_path / "failover.json"
    result = cli("bench", "failover", "--rounds", "1", "--faults", "service-kill", "node-crash", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads(out.read_text())["results"]
    for fault in ("service-kill", "node-crash"):
        assert results[f"{fault}: VIP serving again"]["n"] == 1
        assert results[f"{fault}: detection"]["n"] == 1
        assert results[f"{fault}: other nodes fenced"]["rounds"] == 1
