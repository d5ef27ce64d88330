"""The chaos campaign's volume observer on real Ceph (issue 10, item 2): it sees the holder's
watch on MariaDB's image, and a volume the Monitor moves after an agent kill breaks nothing.

One 3-node lab with the `lab-storage` catalog (Ceph + MariaDB on a 1 GiB RBD volume). The
observer is the campaign's own `WatchSampler` (`rbd status` and the blocklist from the
client namespace), checked by the campaign's `one_writer_per_volume`; a second client planted on
another node's address (`rbd watch`, an open image no blocklist fences) must be reported. The host's mount
table is sampled alongside, for comparison only: after an agent kill it may show the old
node's file system still mounted while the new holder mounts its own (fenced: no violation).
"""

from __future__ import annotations

import resource
import statistics
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from nodeos.bench.stateful import healthy_on
from nodeos.chaos.history import History
from nodeos.chaos.invariants import one_writer_per_volume, writers
from nodeos.chaos.observers import MountSampler, WatchSampler, observer_conf, volume_images
from nodeos.lab.lab import Lab
from nodeos.storage.conf import CephPaths
from nodeos.storage.keys import ADMIN

from .cluster_helpers import lab_marks, mariadb_storage_lab, wait_until

pytestmark = lab_marks("ceph-mon", "mariadbd", what="Ceph or MariaDB")

SETTLE = 240.0
MOVE = 150.0  # an agent kill: the node is lost, the holder fenced, MariaDB attached and healthy elsewhere


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from mariadb_storage_lab(SETTLE)


class Watching:
    """The campaign's volume observers on `lab`, stopped (and their files removed) by `stop`."""

    def __init__(self, lab: Lab) -> None:
        self.history = History()
        self.images = volume_images(lab.spec.catalog)
        self.samplers = [WatchSampler(lab, self.history, self.images), MountSampler(lab, self.history)]
        for sampler in self.samplers:
            sampler.recorder.keepalive = 0.0  # every sample recorded: these tests count and time them
            sampler.start()

    def stop(self) -> None:
        for sampler in self.samplers:
            sampler.stop()

    def known(self) -> list[dict]:
        return [r for r in self.history.of("watch") if r["watchers"] is not None]


@pytest.fixture
def watching(lab: Lab) -> Iterator[Watching]:
    observers = Watching(lab)
    try:
        yield observers
    finally:
        observers.stop()


def intervals(records: list[dict]) -> list[float]:
    return [b["t"] - a["t"] for a, b in zip(records, records[1:])]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # reaped children: the sampler's CLI calls
    return usage.ru_utime + usage.ru_stime


def test_the_observer_records_the_holder_s_watch(lab: Lab, watching: Watching) -> None:
    holder = wait_until(lambda: healthy_on(lab), 60, "MariaDB healthy")
    cpu, started = children_cpu(), time.monotonic()
    wait_until(lambda: len(watching.known()) >= 20, 60, "20 watch samples", interval=0.2)
    watching.stop()
    cpu_share = (children_cpu() - cpu) / (time.monotonic() - started)
    samples = watching.history.of("watch")
    known = watching.known()
    assert watching.images == ["nodeos-volumes/svc-mariadb"]
    assert {r["volume"] for r in samples} == set(watching.images)
    assert all(writers(r["watchers"]) == {holder} for r in known), known[-3:]
    assert all(not row["fenced"] for r in known for row in r["watchers"])
    assert one_writer_per_volume(watching.history) == []
    gaps = intervals(known)
    print(f"\nwatch samples: {len(known)} of {len(samples)} answered; holder {holder}; "
          f"interval median {statistics.median(gaps):.2f}s, max {max(gaps):.2f}s; "
          f"its Ceph CLI calls cost {cpu_share:.2f} s CPU per second")


def test_a_volume_moved_after_an_agent_kill_has_one_writer_throughout(lab: Lab, watching: Watching) -> None:
    holder = wait_until(lambda: healthy_on(lab), 60, "MariaDB healthy before the fault")
    wait_until(lambda: len(watching.known()) >= 4, 30, "a baseline of watch samples", interval=0.2)
    killed_at = time.monotonic()
    lab.kill_agent(holder)
    try:
        new_home = wait_until(lambda: (lambda n: n if n not in (None, holder) else None)(healthy_on(lab)), MOVE,
                              "MariaDB healthy on another node", interval=0.5)
        wait_until(lambda: any(writers(r["watchers"]) == {new_home} for r in watching.known()
                               if r["t"] > killed_at), 30, "the new holder's watch sampled", interval=0.2)
        time.sleep(2.0)  # a few samples of the settled state
    finally:
        watching.stop()
        lab.start_agent(holder)
    history = watching.history
    found = one_writer_per_volume(history)
    assert found == [], [v.detail for v in found]
    after = [r for r in watching.known() if r["t"] > killed_at]
    old_fenced = next((r["t"] for r in after if any(w["node"] == holder and w["fenced"] for w in r["watchers"])), None)
    old_gone = next((r["t"] for r in after if holder not in writers(r["watchers"])), None)
    new_seen = next(r["t"] for r in after if new_home in writers(r["watchers"]))
    both_watching = [r for r in after if {w["node"] for w in r["watchers"]} >= {holder, new_home}]
    both_mounted = [r for r in history.of("mapping") if r["t"] > killed_at and len(r["rw"]) > 1]
    assert old_gone is not None and old_gone <= new_seen  # the old writer went (fenced or gone) first
    samples = [r for r in history.of("watch") if r["t"] > killed_at]
    unknown = [r for r in samples if r["watchers"] is None]
    print(f"\nagent kill on {holder}, MariaDB moved to {new_home}: old watch "
          + (f"seen fenced {old_fenced - killed_at:.1f}s, " if old_fenced is not None else "never seen fenced, ")
          + f"no longer a writer {old_gone - killed_at:.1f}s, new holder's watch {new_seen - killed_at:.1f}s "
          f"after the kill; {len(both_watching)} samples with both nodes' watches (the old one fenced); "
          f"{len(both_mounted)} mount-table samples with both mounted read-write; "
          f"{len(unknown)} of {len(samples)} watch samples unknown"
          + (f" ({unknown[0].get('error')})" if unknown else ""))


@pytest.fixture
def planted(lab: Lab, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`rbd watch` on MariaDB's image from a node that does not hold it: a second client with the
    image open and no fence, as a split brain would leave. Ended by a line on its stdin (it then
    drops its watch at once; a killed one's would linger 30 s)."""
    holder = wait_until(lambda: healthy_on(lab), 60, "MariaDB healthy")
    other = next(n for n in sorted(lab.spec.nodes) if n != holder)
    paths = CephPaths(str(Path(lab.node(other).state_dir) / "ceph"))
    conf = tmp_path / "ceph.conf"
    conf.write_text(observer_conf(Path(paths.conf).read_text(), paths.keyring(ADMIN), str(tmp_path)))
    proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{lab.node(other).ns}", "rbd", "--conf", str(conf), "--id",
                             "admin", "watch", volume_images(lab.spec.catalog)[0]],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    try:
        yield other, proc
    finally:
        if proc.poll() is None:
            try:
                proc.communicate("\n", timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_a_second_client_on_another_node_is_reported(lab: Lab, watching: Watching,
                                                    planted: tuple[str, subprocess.Popen[str]]) -> None:
    other, proc = planted
    holder = wait_until(lambda: healthy_on(lab), 60, "MariaDB healthy")
    wait_until(lambda: any(len(writers(r["watchers"])) > 1 for r in watching.known()), 30,
               f"the planted watch from {other} sampled", interval=0.2)
    planted_at = time.monotonic()
    proc.communicate("\n", timeout=10)  # the planted client leaves
    wait_until(lambda: any(writers(r["watchers"]) == {holder} for r in watching.known() if r["t"] > planted_at), 30,
               "the holder's watch alone again", interval=0.2)
    watching.stop()
    found = one_writer_per_volume(watching.history)
    assert len(found) == 1, [v.detail for v in found]  # one episode, and its end was seen
    assert str(sorted([holder, other])) in found[0].detail and "writable from" in found[0].detail
    print(f"\nplanted watch on {other} (holder {holder}) reported: {found[0].detail}")


def test_a_partitioned_holder_s_watch_is_fenced_before_the_next_one_appears(lab: Lab, watching: Watching) -> None:
    """Cut off, the old holder's client lives on with its watch: only the blocklist stops it."""
    holder = wait_until(lambda: healthy_on(lab), 60, "MariaDB healthy before the partition")
    wait_until(lambda: len(watching.known()) >= 4, 30, "a baseline of watch samples", interval=0.2)
    cut_at = time.monotonic()
    lab.partition([holder])
    try:
        new_home = wait_until(lambda: (lambda n: n if n not in (None, holder) else None)(healthy_on(lab)), MOVE,
                              "MariaDB healthy on the majority side", interval=0.5)
        wait_until(lambda: any(new_home in writers(r["watchers"]) for r in watching.known() if r["t"] > cut_at), 30,
                   "the new holder's watch sampled", interval=0.2)
        time.sleep(2.0)
    finally:
        watching.stop()
        lab.heal()
    found = one_writer_per_volume(watching.history)
    assert found == [], [v.detail for v in found]
    after = [r for r in watching.history.of("watch") if r["t"] > cut_at]
    known = [r for r in after if r["watchers"] is not None]
    fenced = next((r["t"] for r in known if any(w["node"] == holder and w["fenced"] for w in r["watchers"])), None)
    gone = next(r["t"] for r in known if holder not in writers(r["watchers"]))
    new_seen = next(r["t"] for r in known if new_home in writers(r["watchers"]))
    both_mounted = [r for r in watching.history.of("mapping") if r["t"] > cut_at and len(r["rw"]) > 1]
    print(f"\npartition of {holder}, MariaDB moved to {new_home}: old watch "
          + (f"seen fenced {fenced - cut_at:.1f}s, " if fenced is not None else "never seen fenced, ")
          + f"no longer a writer {gone - cut_at:.1f}s, new holder's watch {new_seen - cut_at:.1f}s after the cut; "
          f"{len(both_mounted)} mount-table samples with both mounted read-write; "
          f"{len(after) - len(known)} of {len(after)} watch samples unknown")
