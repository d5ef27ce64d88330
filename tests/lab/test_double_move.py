"""A second move while one is in flight (issue 7, item 7), with real agents.

The source's memcached is SIGSTOPped, so it is slow to stop (the process
runtime sends SIGTERM, then SIGKILL after 5 s); meanwhile memcached is moved
to one node and, before that finished, to another. The final target must not
start it before the real source released it: no ARP window answered by two
MACs, and no moment with memcached running on two nodes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from nodeos.lab.lab import Lab
from nodeos.lab.services import service_hosts

from .cluster_helpers import (CLIENT_SCRIPT, cli, host_of, in_client, is_root, lease_holders, new_lab, node_mac, service_row, status_json,
                              teardown, wait_services_healthy, wait_until)

pytestmark = [pytest.mark.lab, pytest.mark.skipif(not is_root(), reason="needs root for namespaces")]

CENSUS_INTERVAL = 0.05
STOPPED_FOR = 4.0


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Lab:
    lab = new_lab(3, catalog="lab")
    request.addfinalizer(lambda: teardown(lab))
    lab.add_client()
    return lab


def pid_record(lab: Lab, node: str) -> int | None:
    path = Path(lab.node(node).state_dir) / "services" / "memcached" / "pid.json"
    try:
        return int(json.loads(path.read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


def is_live_memcached(pid: int) -> bool:
    """Alive (a stopped process counts, a zombie does not) and still memcached."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return comm == "memcached" and state not in ("Z", "X")


def memcached_processes(lab: Lab) -> list[str]:
    """Nodes with a live memcached by their pid records (the agents' /local hides one being stopped)."""
    return [n for n in sorted(lab.spec.nodes) if (pid := pid_record(lab, n)) is not None and is_live_memcached(pid)]


class Census:
    """Samples `probe` every CENSUS_INTERVAL in its own thread."""

    def __init__(self, probe: Callable[[], list[str]]) -> None:
        self.samples: list[tuple[float, list[str]]] = []
        self._probe = probe
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), self._probe()))
            self._stop.wait(CENSUS_INTERVAL)

    def stop(self) -> list[tuple[float, list[str]]]:
        self._stop.set()
        self._thread.join(timeout=10)
        return self.samples


def move(lab: Lab, node_id: str, via: str) -> None:
    result = cli("service", "move", "memcached", "--to", node_id, "--lab-node", via, "--lab", lab.spec.name)
    assert result.returncode == 0, result.stdout + result.stderr


def source_away_from_the_monitor(lab: Lab, ids: dict[str, str]) -> str:
    """memcached's host, moved off the Monitor's node first if needed.

    The Monitor decides in the services thread of its node; on the stuck
    source that thread waits for the stop too, so no decision could be late.
    """
    names = sorted(lab.spec.nodes)
    monitor = wait_until(lambda: lease_holders(lab, names), 10, "a Monitor")[0]
    source = host_of(lab, "memcached")
    if source != monitor:
        return source
    other = next(n for n in names if n != monitor)
    move(lab, ids[other], other)
    wait_until(lambda: host_of(lab, "memcached") == other and (r := service_row(lab, other, "memcached"))["migration"] is None
               and r["health"] == "healthy", 30, "the preparatory move")
    return other


def signal_if_memcached(pid: int, sig: signal.Signals) -> None:
    if is_live_memcached(pid):  # never signal a recycled pid
        os.kill(pid, sig)


def test_second_move_in_flight_never_runs_memcached_twice(lab, tmp_path):
    lab.wait_formed(timeout=60)
    rows = wait_services_healthy(lab)
    vip = rows["memcached"]["vip"]
    ids = {n: status_json(lab, n)["node_id"] for n in lab.spec.nodes}
    source = source_away_from_the_monitor(lab, ids)
    first, second = [n for n in sorted(lab.spec.nodes) if n != source]
    pid = pid_record(lab, source)
    assert pid is not None and is_live_memcached(pid)

    stop = tmp_path / "stop"
    arp_out = (tmp_path / "arp.jsonl").open("w")  # a file, not a pipe: a full pipe would stall the sampler
    sampler = subprocess.Popen(["ip", "netns", "exec", lab.add_client(), sys.executable, "-c", CLIENT_SCRIPT, "sample_arp", vip,
                                str(stop), "0.025"], stdout=arp_out, text=True)
    processes = Census(lambda: memcached_processes(lab))
    agents = Census(lambda: service_hosts(lab, "memcached"))
    try:
        time.sleep(1.0)
        os.kill(pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        try:
            move(lab, ids[first], first)
            assert service_row(lab, first, "memcached")["migration"]["phase"] == "releasing"
            move(lab, ids[second], first)  # the first move is still waiting for the stuck source
            time.sleep(max(0.0, STOPPED_FOR - (time.monotonic() - stopped_at)))
            assert is_live_memcached(pid), "the source's memcached died before SIGCONT: the test proves nothing"
        finally:
            signal_if_memcached(pid, signal.SIGCONT)
        continued_at = time.monotonic()

        def moved() -> bool:
            row = service_row(lab, second, "memcached")
            return row["node"] == ids[second] and row["migration"] is None and row["health"] == "healthy"

        wait_until(moved, 40, "memcached healthy on the second move's target")
        wait_until(lambda: in_client(lab, "who_has", vip, "0.3") == [node_mac(lab, second)], 10, f"ARP for {vip} answered by {second}")
        time.sleep(1.0)
    finally:
        stop.touch()
        sampler.wait(timeout=30)
        arp_out.close()
        process_samples, agent_samples = processes.stop(), agents.stop()

    windows = [json.loads(line) for line in (tmp_path / "arp.jsonl").read_text().splitlines()]
    times = [w["t"] for w in windows]
    gaps = sorted(b - a for a, b in zip(times, times[1:]))
    assert len(windows) > 100 and gaps[int(0.95 * len(gaps))] <= 0.05, "ARP sampled too slowly"
    doubles = [w for w in windows if len(w["macs"]) > 1]
    assert not doubles, doubles[:5]
    assert [node_mac(lab, second)] in [w["macs"] for w in windows]

    for samples in (process_samples, agent_samples):
        twice = [(t, hosts) for t, hosts in samples if len(hosts) > 1]
        assert not twice, twice[:5]
        assert not any(first in hosts for _, hosts in samples), "the first move's target ran it"
    started = [t for t, hosts in process_samples if second in hosts]
    assert started and started[0] > continued_at  # it waited for the stuck source
    assert len(process_samples) > 10 * (continued_at - stopped_at)  # the census kept its pace

    events = [json.loads(line) for line in cli("events", "--json", "--lab-node", second, "--lab", lab.spec.name).stdout.splitlines()]
    released = [e for e in events if e["kind"] == "service.released" and e["service"] == "memcached"][-1]
    assert ids[source] in released["node"] and f"{ids[source]} stopped it" in released["detail"], released
