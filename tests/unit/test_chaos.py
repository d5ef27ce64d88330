"""The chaos campaign's pure parts: the seeded schedule, the invariant checkers over a
recorded history (each shown to report a planted violation), and the report."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeos.chaos.history import History, HistoryError
from nodeos.chaos.invariants import (Window, check, no_acknowledged_write_lost, one_lease_holder, one_mac_per_vip,
                                     one_writer_per_volume, recovered_in_bound, unavailability_windows)
from nodeos.chaos.report import build, load_json, render_html, write_json
from nodeos.chaos.schedule import FAULTS, MONITOR, TAKES_A_NODE, ScheduleError, parse_faults, plan

NODES = ["n1", "n2", "n3"]
SERVICES = ["keystone", "mariadb", "memcached"]
VOLUME = "nodeos-volumes/svc-mariadb"


def watch(node: str, fenced: bool = False, nonce: int = 1) -> dict[str, object]:
    """One watcher row as the watch sampler records it (node n1 is 10.77.0.11)."""
    return {"address": f"10.77.0.{10 + int(node[1:])}:0/{nonce}", "node": node, "fenced": fenced}


def healthy_history() -> History:
    """A fault that recovered, samplers that saw one holder of everything, and every write read back."""
    h = History()
    for i in range(10):
        t = float(i)
        h.record("lease", t, holders=["n1"] if i < 5 else ["n2"])
        h.record("arp", t, vip="10.0.0.200", macs=["02:00:00:00:00:01"] if i < 5 else ["02:00:00:00:00:02"])
        h.record("watch", t, volume=VOLUME, watchers=[watch("n1")] if i < 5 else ([] if i == 5 else [watch("n2")]))
        h.record("poll", t, api="token", ok=i not in (5, 6))
        h.record("write", t, store="mariadb", key=i)
    h.record("readback", 11.0, store="mariadb", keys=list(range(10)))
    h.record("fault", 4.5, id="r1", fault="node-crash", target="n1", phase="injected")
    h.record("fault", 5.2, id="r1", fault="node-crash", target="n1", phase="detected")
    h.record("event", 5.3, node="n2", event="monitor.migrate", service="mariadb")
    h.record("fault", 6.0, id="r1", fault="node-crash", target="n1", phase="undone")
    h.record("fault", 8.0, id="r1", fault="node-crash", target="n1", phase="healthy")
    h.record("fault", 7.0, id="r1", fault="node-crash", target="n1", phase="answering")
    return h


def test_a_clean_history_has_no_violation() -> None:
    assert check(healthy_history()) == []


def test_two_lease_holders_at_one_instant_are_one_violation_per_episode() -> None:
    h = healthy_history()
    h.record("lease", 5.5, holders=["n1", "n2"])  # planted: a forged lease on a second node
    h.record("lease", 5.6, holders=["n2", "n1"])
    h.record("lease", 9.5, holders=["n2", "n3"])
    found = one_lease_holder(h)
    assert [(v.at, v.detail) for v in found] == [
        (5.5, "lease held by ['n1', 'n2'] at 5.500s to 5.600s (2 samples)"),
        (9.5, "lease held by ['n2', 'n3'] at 9.500s")]


def test_a_vip_answered_by_two_macs_is_reported_for_that_vip_only() -> None:
    h = healthy_history()
    h.record("arp", 3.5, vip="10.0.0.200", macs=["02:00:00:00:00:01", "02:00:00:00:00:02"])  # planted
    h.record("arp", 3.5, vip="10.0.0.201", macs=["02:00:00:00:00:03"])
    found = one_mac_per_vip(h)
    assert len(found) == 1 and found[0].invariant == "one-mac-per-vip" and "10.0.0.200" in found[0].detail
    # The same MAC twice (two answers from one holder) is one MAC.
    h2 = History([{"k": "arp", "t": 1.0, "vip": "v", "macs": ["m", "m"]}])
    assert one_mac_per_vip(h2) == []


def test_two_nodes_with_un_blocklisted_watches_on_one_volume_are_reported() -> None:
    h = healthy_history()
    h.record("watch", 5.5, volume=VOLUME, watchers=[watch("n1"), watch("n2")])  # planted: both could write
    h.record("watch", 5.6, volume=VOLUME, watchers=[watch("n2"), watch("n1")])
    found = one_writer_per_volume(h)
    assert [(v.at, v.detail) for v in found] == [
        (5.5, f"volume {VOLUME} writable from ['n1', 'n2'] (un-blocklisted watches) at 5.500s to 5.600s (2 samples)")]
    assert [v.invariant for v in check(h)] == ["one-writer-per-volume"]


def test_an_old_holder_blocklisted_before_the_new_watch_appears_is_no_violation() -> None:
    """The false alarm of the mount observer: the old node's watch lingers, fenced, while the
    new holder's appears; and its file system is still mounted read-write (mapping)."""
    h = healthy_history()
    h.record("watch", 5.5, volume=VOLUME, watchers=[watch("n1", fenced=True)])
    h.record("watch", 5.6, volume=VOLUME, watchers=[watch("n1", fenced=True), watch("n2")])
    h.record("mapping", 5.6, volume="/var/lib/mysql", rw=["n1", "n2"])  # information only
    # Two instances on one node (a dead helper's watch and its successor's) are one node.
    h.record("watch", 5.7, volume=VOLUME, watchers=[watch("n2", nonce=1), watch("n2", nonce=2)])
    assert one_writer_per_volume(h) == [] and check(h) == []
    # A watch from outside the lab stands for itself: with a node's, two writers.
    h.record("watch", 9.5, volume=VOLUME, watchers=[watch("n2"), {"address": "10.9.9.9:0/7", "node": None,
                                                                "fenced": False}])
    assert "['10.9.9.9:0/7', 'n2']" in one_writer_per_volume(h)[0].detail


def test_unknown_watch_samples_are_neither_a_writer_nor_a_pass() -> None:
    def history(*samples: tuple[float, list[dict[str, object]] | None]) -> History:
        h = History()
        for t, rows in samples:
            h.record("watch", t, volume=VOLUME, watchers=rows, **({} if rows is not None else {"error": "timed out"}))
        return h

    # Blind while one node held it, before and after: no writer counted from the gap, no violation.
    steady = history((0.0, [watch("n1")]), (0.5, None), (1.0, None), (1.5, [watch("n1")]))
    assert one_writer_per_volume(steady) == []
    # Blind while its one writer left (its node crashed: the image's header on a dead OSD), or
    # while one arrived: one writer at most in the gap either way.
    leaving = history((0.0, [watch("n1")]), (0.5, None), (1.0, [watch("n1", fenced=True)]), (1.5, None), (2.0, []))
    assert one_writer_per_volume(leaving) == []
    assert one_writer_per_volume(history((0.0, []), (0.5, None), (1.0, [watch("n2")]))) == []
    # Blind across a handover whose old writer is blocklisted at its end (still watching, or gone
    # and named in fenced_seen): Ceph refuses the old writer's writes, no violation.
    fenced_after = history((0.0, [watch("n1")]), (0.5, None), (1.0, [watch("n1", fenced=True), watch("n2")]))
    assert one_writer_per_volume(fenced_after) == []
    gone = history((0.0, [watch("n1")]), (0.5, None), (1.0, [watch("n2")]))
    gone.of("watch")[-1]["fenced_seen"] = [watch("n1")["address"]]
    assert one_writer_per_volume(gone) == []
    # Blind across a handover whose old writer is not known fenced: whether n1 could still write
    # while n2 did was not seen.
    hidden = history((0.0, [watch("n1")]), (0.5, None), (1.0, None), (1.5, [watch("n2")]))
    found = one_writer_per_volume(hidden)
    assert [(v.invariant, v.at) for v in found] == [("one-writer-per-volume", 0.5)]
    assert found[0].detail == (f"volume {VOLUME} not verified: its watchers unknown at 0.500s to 1.000s (2 samples), "
                               "writers before ['n1'], after ['n2']; first error: timed out")
    # Never seen at all, or blind at the end: no pass either.
    assert len(one_writer_per_volume(history((0.0, None), (0.5, None)))) == 1
    assert "after unknown" in one_writer_per_volume(history((0.0, [watch("n1")]), (0.5, None)))[0].detail
    # Unknown samples between two writers' samples do not merge or make an episode of their own.
    split = history((0.0, [watch("n1"), watch("n2")]), (0.5, None), (1.0, [watch("n1"), watch("n2")]))
    assert sorted(v.detail.split(" at ")[0] for v in one_writer_per_volume(split)) == [
        f"volume {VOLUME} not verified: its watchers unknown",
        f"volume {VOLUME} writable from ['n1', 'n2'] (un-blocklisted watches)"]


def test_the_watch_observer_maps_addresses_to_nodes_and_fences_by_instance_or_ip() -> None:
    from nodeos.chaos.observers import (_last_line, address_ip, image_missing, is_fenced, observer_conf,
                                        volume_images, watch_rows)
    from nodeos.storage.volume_spec import VolumeError, Watcher

    assert address_ip("10.77.0.11:0/3016213853") == "10.77.0.11"
    assert address_ip("v1:10.77.0.12:6789/0") == "10.77.0.12" and address_ip("[fd00::1]:0/5") == "fd00::1"
    blocklist = {"10.77.0.11:0/111", "10.77.0.13:0/0"}
    assert is_fenced("10.77.0.11:0/111", blocklist) and not is_fenced("10.77.0.11:0/222", blocklist)
    assert is_fenced("10.77.0.13:0/999", blocklist)  # the whole IP fenced
    ips = {"10.77.0.11": "n1", "10.77.0.12": "n2"}
    rows = watch_rows([Watcher("10.77.0.11:0/111", "client.4", 1), Watcher("10.77.0.12:0/5", "client.9", 2),
                       Watcher("10.77.0.5:0/6", "client.10", 3)], blocklist, ips)
    assert rows == [{"address": "10.77.0.11:0/111", "node": "n1", "fenced": True},
                    {"address": "10.77.0.12:0/5", "node": "n2", "fenced": False},
                    {"address": "10.77.0.5:0/6", "node": None, "fenced": False}]
    assert image_missing("rbd: error opening image svc-x: (2) No such file or directory")
    assert not image_missing("auth: unable to find a keyring on /k: (2) No such file or directory")
    assert _last_line("2026-12-02T03:08:51 7f1b -1 librbd: failed\nrbd: error opening image x: (110) Connection "
                      "timed out\n") == "rbd: error opening image x: (110) Connection timed out"
    conf = observer_conf("[global]\nfsid = f\nmon_host = [v2:10.77.0.11:3300]\nlog_file = /node/log\n", "/k", "/tmp/w")
    assert "fsid = f" in conf and "mon_host = [v2:10.77.0.11:3300]" in conf and "keyring = /k" in conf
    assert "/node/" not in conf and "run_dir = /tmp/w" in conf and "rados_osd_op_timeout" in conf
    with pytest.raises(VolumeError, match="no fsid or mon_host"):
        observer_conf("[global]\n", "/k", "/tmp/w")
    assert volume_images("lab-storage") == ["nodeos-volumes/svc-mariadb"]
    assert volume_images("lab") == [] and volume_images(None) == []


def test_the_watch_observer_does_nothing_without_volumes() -> None:
    from types import SimpleNamespace

    from nodeos.chaos.observers import WatchSampler

    h = History()
    lab = SimpleNamespace(spec=SimpleNamespace(nodes={}))  # never asked for a client namespace
    sampler = WatchSampler(lab, h, [])  # type: ignore[arg-type]
    sampler.start()
    sampler.stop()
    assert len(h) == 0 and not sampler.dir.exists() and not sampler.started


def test_a_dropped_acknowledged_write_is_reported_and_so_is_a_store_never_read_back() -> None:
    h = healthy_history()
    h.record("readback", 12.0, store="mariadb", keys=[k for k in range(10) if k != 7])  # planted: 7 dropped
    h.record("write", 2.0, store="images", key="img-1")
    found = no_acknowledged_write_lost(h)
    assert [(v.at, v.detail) for v in found] == [
        (2.0, "images: 1 acknowledged writes never read back"),
        (7.0, "mariadb: 1 of 10 acknowledged writes lost (7)")]


def test_a_fault_never_healthy_or_healthy_too_late_is_a_stuck_recovery() -> None:
    h = healthy_history()
    h.record("fault", 20.0, id="r2", fault="partition", target="n3", phase="injected")
    h.record("fault", 80.0, id="r2", fault="partition", target="n3", phase="stuck", state="keystone=restarting")
    found = recovered_in_bound(h, {"partition": 60.0})
    assert [v.detail for v in found] == [
        "r2 partition n3: healthy never, bound 60s (stuck recovery); cluster then: keystone=restarting"]
    assert [v.invariant for v in recovered_in_bound(h, {"node-crash": 3.0, "partition": 60.0})] == \
        ["recovered-in-bound", "recovered-in-bound"]  # r1 took 3.5 s


def test_unavailability_windows_run_from_the_last_answer_to_the_next() -> None:
    h = History()
    for t, ok in [(0.0, False), (1.0, True), (2.0, False), (3.0, False), (4.0, True), (5.0, True), (6.0, False)]:
        h.record("poll", t, api="token", ok=ok)
    # Before the first answer is start-up; an outage still open at the end has no end.
    assert unavailability_windows(h) == [Window("token", 1.0, 4.0), Window("token", 5.0, None)]
    assert unavailability_windows(h)[0].seconds == 3.0


def test_the_history_round_trips_and_a_bad_line_is_named(tmp_path: Path) -> None:
    h = healthy_history()
    path = tmp_path / "history.jsonl"
    h.dump(path)
    again = History.load(path)
    assert list(again) == list(h) and len(again) == len(h)
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(HistoryError, match=r"history.jsonl:\d+:"):
        History.load(path)
    with pytest.raises(HistoryError):
        History().record("bogus", 1.0)


def test_the_schedule_comes_from_the_seed_alone() -> None:
    faults = list(FAULTS)
    first = plan(7, 50, faults, NODES, SERVICES)
    assert first == plan(7, 50, faults, list(reversed(NODES)), SERVICES)
    assert first != plan(8, 50, faults, NODES, SERVICES)
    assert [r.number for r in first] == list(range(1, 51))
    assert {f.fault for r in first for f in r.faults} <= set(faults)


def test_overlapping_faults_never_take_the_majority_away() -> None:
    for seed in range(20):
        for round_ in plan(seed, 40, list(FAULTS), NODES, SERVICES, overlap=1.0):
            taken = {f.target for f in round_.faults if f.fault in TAKES_A_NODE}
            assert len(taken) <= 1, round_  # three nodes: one may go
    five = [f"n{i}" for i in range(1, 6)]
    rounds = plan(3, 200, ["node-crash"], five, [], overlap=1.0)
    assert any(len(r.faults) == 2 for r in rounds)  # five nodes: two may go together
    assert all(len({f.target for f in r.faults}) == len(r.faults) for r in rounds)


def test_targets_fit_their_fault() -> None:
    for round_ in plan(1, 100, list(FAULTS), NODES, SERVICES):
        for fault in round_.faults:
            expected = {"service": SERVICES, "monitor": [MONITOR], "node": NODES}[FAULTS[fault.fault]]
            assert fault.target in expected, fault


def test_bad_fault_lists_and_arguments_are_refused_with_the_choices() -> None:
    assert parse_faults("all") == list(FAULTS)
    assert parse_faults("node-crash, service-kill") == ["node-crash", "service-kill"]
    with pytest.raises(ScheduleError, match="unknown fault.*node-explode.*choose from: service-kill"):
        parse_faults("node-crash,node-explode")
    with pytest.raises(ScheduleError, match="rounds"):
        plan(1, 0, ["node-crash"], NODES, SERVICES)
    with pytest.raises(ScheduleError, match="service-kill needs"):
        plan(1, 3, ["service-kill"], NODES, [])


def test_the_report_sums_recoveries_per_fault_and_renders_a_self_contained_page(tmp_path: Path) -> None:
    h = healthy_history()
    h.record("lease", 5.5, holders=["n1", "n2"])
    violations = check(h)
    report = build(h, violations, {"seed": 7, "rounds": 1})
    assert not report["ok"] and report["violations"][0]["invariant"] == "one-lease-holder"
    assert report["per_fault"]["node-crash"]["count"] == 1
    assert report["per_fault"]["node-crash"]["healthy_s"]["median"] == 3.5
    assert report["per_fault"]["node-crash"]["answering_s"]["median"] == 2.5
    assert report["unavailability_s"]["token"]["median"] == 3.0  # last answer 4.0, next 7.0
    incident = report["incidents"][0]
    assert report["per_fault"]["node-crash"]["healthy_after_undo_s"]["median"] == 2.0
    assert incident["phases"] == {"injected": 0.0, "detected": 0.7, "undone": 1.5, "answering": 2.5, "healthy": 3.5}
    assert incident["events"] == [{"t": 0.8, "node": "n2", "event": "monitor.migrate"}]
    assert incident["windows"] == [{"api": "token", "start": -0.5, "end": 2.5}]
    again = load_json(write_json(report, tmp_path / "chaos.json"))
    page = render_html(again)
    assert "<svg" in page and "node-crash" in page and "one-lease-holder" in page
    assert "<script" not in page and "http" not in page.replace("http-equiv", "")  # nothing fetched from outside
    with pytest.raises(ValueError, match="not a chaos report"):
        (tmp_path / "other.json").write_text("{}")
        load_json(tmp_path / "other.json")


def test_chaos_report_checks_a_history_and_exits_by_what_it_found(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from nodeos.cli.main import main

    clean, planted = tmp_path / "clean.jsonl", tmp_path / "planted.jsonl"
    healthy_history().dump(clean)
    h = healthy_history()
    h.record("watch", 5.5, volume=VOLUME, watchers=[watch("n1"), watch("n2")])
    h.dump(planted)
    assert main(["chaos", "report", str(clean)]) == 0
    assert "no invariant violated" in capsys.readouterr().out and (tmp_path / "clean.html").exists()
    assert main(["chaos", "report", str(planted), "--html", str(tmp_path / "p.html")]) == 1
    out = capsys.readouterr().out
    assert "VIOLATION one-writer-per-volume" in out and "node-crash" in out
    assert "one-writer-per-volume" in (tmp_path / "p.html").read_text()
    # A bound the recovery missed is a stuck recovery.
    assert main(["chaos", "report", str(clean), "--bound", "node-crash=2"]) == 1
    assert "recovered-in-bound" in capsys.readouterr().out
    assert main(["chaos", "report", str(tmp_path / "missing.jsonl")]) == 2
    (tmp_path / "bad.jsonl").write_text('{"k": "lease"}\n')
    assert main(["chaos", "report", str(tmp_path / "bad.jsonl")]) == 2
    assert "bad.jsonl:1:" in capsys.readouterr().err


def test_the_mount_observer_names_the_nodes_with_a_volume_mounted_read_write() -> None:
    from nodeos.chaos.observers import volume_mounts

    mountinfo = "\n".join([
        "36 25 0:32 / /run/lab/n1/root/var/lib/mysql rw,relatime shared:1 - ext4 /dev/rbd0 rw",
        "37 25 0:33 / /run/lab/n2/root/var/lib/mysql ro,relatime shared:2 - ext4 /dev/rbd1 ro",  # read-only: not a writer
        "38 25 0:34 / /run/lab/n3/root/var/lib/mysql rw,relatime - ext4 /dev/loop3 rw",
        "39 25 0:35 / /run/lab/n3/root/proc rw - proc proc rw",  # not a volume's file system
        "40 25 0:36 / /srv/other rw - ext4 /dev/sda1 rw",  # not under a node
    ])
    roots = {"n1": "/run/lab/n1/root", "n2": "/run/lab/n2/root", "n3": "/run/lab/n3/root"}
    assert volume_mounts(mountinfo, roots) == {"/var/lib/mysql": ["n1", "n3"]}


def test_an_event_with_fields_named_like_the_records_own_is_kept() -> None:
    h = History()
    h.record("event", 1.0, kind="restart", node="n1", event="service.restart")
    assert h.of("event") == [{"k": "event", "t": 1.0, "kind": "restart", "node": "n1", "event": "service.restart"}]


def test_the_event_log_s_kind_names_an_event_on_the_timeline() -> None:
    from nodeos.chaos.history import event_name

    h = healthy_history()
    h.record("event", 5.4, kind="service.migrating", event="", service="mariadb", node="n2")  # as /events gives it
    assert event_name(h.of("event")[-1]) == "service.migrating"
    incident = build(h, [], {})["incidents"][0]
    assert {"t": 0.9, "node": "n2", "event": "service.migrating"} in incident["events"]


def test_samples_are_recorded_by_change_with_each_value_s_first_and_last_and_a_keepalive() -> None:
    from nodeos.chaos.history import ChangeRecorder
    from nodeos.chaos.invariants import unavailability_windows

    h = History()
    leases = ChangeRecorder(h.add, "lease", lambda f: tuple(f["holders"]), keepalive=1.0)
    timeline = [["n1"]] * 30 + [["n1", "n2"]] * 3 + [["n2"]] * 10  # 20 samples a second
    for i, holders in enumerate(timeline):
        leases.sample(i * 0.05, "lease", holders=holders)
    leases.flush()
    kept = [(round(r["t"], 2), r["holders"]) for r in h.of("lease")]
    # n1: first, a keepalive after 1 s, last; both holders: first and last; n2: first and last (flushed).
    assert kept == [(0.0, ["n1"]), (1.0, ["n1"]), (1.45, ["n1"]), (1.5, ["n1", "n2"]), (1.6, ["n1", "n2"]),
                    (1.65, ["n2"]), (2.1, ["n2"])]
    # The checker sees the episode with its exact ends, as from every sample.
    assert [v.detail for v in one_lease_holder(h)] == ["lease held by ['n1', 'n2'] at 1.500s to 1.600s (2 samples)"]
    # An outage keeps its exact window: from the last answer before it to the first after.
    polls = ChangeRecorder(h.add, "poll", lambda f: f["ok"])
    for i in range(20):
        polls.sample(i * 0.5, "token", api="token", ok=not 8 <= i < 12, detail="")
    polls.flush()
    assert [(w.api, w.start, w.end) for w in unavailability_windows(h)] == [("token", 3.5, 6.0)]
    assert [p["t"] for p in h.of("poll")] == [0.0, 3.5, 4.0, 5.5, 6.0, 9.5]  # each value's first and last of 20
