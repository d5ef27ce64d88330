"""Load must not look like failure (issue 7, item 5): `load all` on an idle lab fences nothing.

The benchmark (`nodeos bench load`, 10 minutes) prints the same counts and
the agents' loop lag; CI runs a minute of it and fails on any false failover.
"""

from __future__ import annotations

import pytest

from nodeos.bench.load import run_phase

from .cluster_helpers import is_root, new_lab, teardown, wait_services_healthy

pytestmark = [pytest.mark.lab, pytest.mark.skipif(not is_root(), reason="needs root for namespaces")]

LOAD_SECONDS = 60.0


@pytest.fixture
def lab():
    lab = new_lab(3, catalog="lab")
    try:
        lab.wait_formed(timeout=60)
        wait_services_healthy(lab)
        yield lab
    finally:
        teardown(lab)


def test_load_on_every_node_causes_no_fence_no_lease_change_no_service_stop(lab) -> None:
    result = run_phase(lab, LOAD_SECONDS, loaded=True)
    assert result["loop_lag_p99_ms_median"] is not None, "no loop-lag samples: the agents did not answer under load"
    false_failovers = {k: result[k] for k in ("fences", "lease_changes", "service_stops", "nodes_lost")}
    assert false_failovers == {"fences": 0, "lease_changes": 0, "service_stops": 0, "nodes_lost": 0}, result
