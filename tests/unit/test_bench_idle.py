"""`bench idle`'s summary: CPU medians, RSS growth per hour, journal size (pure)."""

from __future__ import annotations

from nodeos.bench.idle import summarize


def row(t_s: int, cpu: float, rss: float, raft: int) -> dict:
    node = {"agent_cpu_pct": cpu, "agent_rss_mib": rss, "guard_cpu_pct": 0.5, "guard_rss_mib": 20.0, "raft_bytes": raft}
    return {"t_s": t_s, "nodes": {"n1": node, "n2": {**node, "agent_cpu_pct": cpu + 1}}}


def test_growth_is_per_hour_from_the_first_to_the_last_sample() -> None:
    samples = [row(0, 1.0, 50.0, 1000), row(1800, 2.0, 51.0, 3000), row(3600, 1.0, 52.5, 2000)]
    out = summarize(samples, 60)
    assert out["agent"]["rss_mib_first"] == 50.0 and out["agent"]["rss_mib_last"] == 52.5
    assert out["agent"]["rss_growth_mib_per_h"] == 2.5
    assert out["agent"]["cpu_pct_median"] == 2.0 and out["agent"]["cpu_pct_max"] == 3.0
    assert out["guard"]["rss_growth_mib_per_h"] == 0.0
    assert (out["raft_bytes_first"], out["raft_bytes_last"]) == (1000, 2000)


def test_a_process_that_vanished_is_left_out() -> None:
    samples = [row(0, 1.0, 50.0, 0), row(60, 1.0, 50.0, 0)]
    samples[1]["nodes"]["n2"]["agent_cpu_pct"] = None
    samples[1]["nodes"]["n2"]["agent_rss_mib"] = None
    out = summarize(samples, 1)
    assert out["agent"]["cpu_pct_max"] == 2.0 and out["agent"]["rss_mib_last"] == 50.0
