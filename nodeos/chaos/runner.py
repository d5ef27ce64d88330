"""`nodeos chaos run`: a seeded campaign of faults on a lab, watched by neutral observers.

Per round: the schedule's fault(s) are injected together (targets the running cluster knows,
the Monitor's node, are resolved then), held for a while (a cable stays out, a crashed node
stays off), undone, and the runner waits until every catalog service is healthy again on a
formed cluster; a round that misses its bound is recorded as a stuck recovery with the
cluster's state, healed by force, and the campaign goes on. Ctrl-C undoes the faults in
force and still writes the history and the report.
"""

from __future__ import annotations

import datetime
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from nodeos.bench.cloud import services_view, settled
from nodeos.bench.cluster import wait_for
from nodeos.cloud.config import GLANCE_PORT
from nodeos.cloud.credentials import keystone_auth_url
from nodeos.cloud.secrets import admin_password
from nodeos.cluster.control import ControlError, request
from nodeos.cluster.identity import load_identity
from nodeos.lab.lab import Lab, LabError, destroy
from nodeos.lab.services import kill_service

from .history import History, event_name
from .invariants import check, incidents
from .observers import ClientObserver, LeaseSampler, MountSampler, WatchSampler, may_act, volume_images
from .report import build, render_html, write_json
from .schedule import MONITOR, Fault, Round, plan

# How long a fault stays in force before it is undone (a crashed node is powered on again).
HOLD = {"agent-kill": 10.0, "agent-hang": 8.0, "load": 30.0, "node-crash": 20.0, "monitor-crash": 20.0,
        "disconnect": 15.0, "partition": 15.0}
# From injection to every service healthy again; the cloud catalog on 2 cores needs minutes after a node's loss.
BOUNDS = {"service-kill": 180.0, "agent-kill": 180.0, "agent-hang": 180.0, "load": 240.0, "node-crash": 600.0,
          "node-reboot": 600.0, "disconnect": 600.0, "partition": 600.0, "monitor-crash": 600.0}
DETECT_EVENTS = ("node.lost", "service.exited", "service.unhealthy", "service.failed", "service.slow",
                 "monitor.elected", "fence.local")
DECIDE_EVENTS = ("service.restart", "service.restarting", "service.migrating", "storage.volume_fenced",
                 "monitor.decision", "cloud.decision")
DETECTION_GRACE = 3.0  # seconds after a fault is undone before its recovery is looked for
CONFIRM_AFTER = 2.0  # a recovery seen twice, this far apart
RESULTS = Path("chaos-results")


@dataclass
class Options:
    seed: int
    rounds: int
    faults: list[str]
    lab: str | None = None  # an existing lab; None: make one with `catalog`
    catalog: str = "lab-cloud"
    overlap: float = 0.25
    bounds: dict[str, float] = field(default_factory=dict)
    out: Path | None = None
    keep: bool = False


Progress = Callable[[str], None]


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Campaign:
    def __init__(self, lab: Lab, options: Options, progress: Progress = _say) -> None:
        self.lab, self.options, self.say = lab, options, progress
        self.history = History()
        self.bounds = {**BOUNDS, **options.bounds}
        self.undo: list[Callable[[], None]] = []
        self.clock_offset = time.time() - time.monotonic()  # events carry wall time; the history, monotonic
        self.seen_events: set[int] = set()
        self.recovered_at = 0.0  # when the last confirmed recovery was first seen

    # -- faults ---------------------------------------------------------------
    def resolve(self, fault: Fault) -> str:
        if fault.target != MONITOR:
            return fault.target
        holder = next((n for n in sorted(self.lab.spec.nodes) if may_act(self.lab, n, 0.5)), None)
        if holder is None:
            raise LabError("monitor-crash: no node holds the Monitor lease")
        return holder

    def inject(self, fault: Fault, target: str) -> str:
        lab, kind, hold = self.lab, fault.fault, HOLD.get(fault.fault, 0.0)
        if kind == "service-kill":
            # It may be between lives (an overlapping fault took its node): kill it once it runs again.
            killed = wait_for(lambda: _try_kill(lab, target), 60, interval=0.5)
            if not killed:
                raise LabError(f"service-kill {target}: it did not run anywhere for 60 s")
            return str(killed)
        if kind == "agent-kill":
            lab.kill_agent(target)
            self.undo.append(lambda: lab.start_agent(target))
        elif kind == "agent-hang":
            hung = threading.Thread(target=lab.hang_agent, args=(target, hold), daemon=True)
            hung.start()
            self.undo.append(hung.join)  # it sends SIGCONT itself when its time is up
        elif kind == "load":
            lab.start_load([target], hold)
        elif kind in ("node-crash", "monitor-crash"):
            lab.crash(target)
            self.undo.append(lambda: lab.start_agent(target))
        elif kind == "node-reboot":
            lab.reboot(target)
        elif kind == "disconnect":
            lab.disconnect(target)
            self.undo.append(lambda: lab.reconnect(target))
        elif kind == "partition":
            lab.partition([target])
            self.undo.append(lab.heal)
        else:
            raise LabError(f"unknown fault {kind}")
        return f"{kind} {target}"

    def undo_all(self) -> None:
        while self.undo:
            self.undo.pop()()

    def heal_everything(self) -> None:
        """Whatever state the lab is in: one network, every node booted."""
        self.undo_all()
        if self.lab.spec.partitioned:
            self.lab.heal()
        for name, node in self.lab.spec.nodes.items():
            if node.disconnected:
                self.lab.reconnect(name)
            if not self.lab.agent_alive(name):
                self.lab.start_agent(name)

    # -- rounds ---------------------------------------------------------------
    def recovered(self) -> bool:
        return not self.lab.spec.partitioned and self.lab.cluster_view()["formed"] and settled(self.lab)

    def recovered_for_sure(self) -> bool:
        """Recovered, and still so a moment later (not a status read between a kill and its detection)."""
        if not self.recovered():
            return False
        self.recovered_at = time.monotonic()
        time.sleep(CONFIRM_AFTER)
        return self.recovered()

    def state(self) -> str:
        rows = services_view(self.lab).get("services", [])
        unhealthy = [f"{r['name']}={r['health']}" for r in rows if not str(r["health"]).startswith("healthy")]
        return ", ".join(unhealthy) or self.lab.cluster_view()["summary"]

    def run_round(self, round_: Round) -> None:
        ids = [f"r{round_.number}" + (f"-{i}" if len(round_.faults) > 1 else "") for i in range(1, len(round_.faults) + 1)]
        targets = [self.resolve(f) for f in round_.faults]
        injected = time.monotonic()
        names, done = [], []
        # Faults that take a node first: a service kill then finds its service wherever it runs now.
        order = sorted(zip(ids, round_.faults, targets), key=lambda entry: entry[1].fault == "service-kill")
        for ident, fault, target in order:
            at = time.monotonic()
            try:
                names.append(self.inject(fault, target))
            except LabError as exc:
                self.say(f"round {round_.number}: {fault} skipped: {exc}")
                continue
            self.history.record("fault", at, id=ident, fault=fault.fault, target=target, phase="injected")
            done.append((ident, fault, target))
        self.say(f"round {round_.number}/{self.options.rounds}: {' + '.join(names) or 'nothing injected'}")
        time.sleep(max([HOLD.get(f.fault, 0.0) for f in round_.faults] + [0.0]))  # a load ends by itself then
        self.undo_all()
        for ident, fault, target in done:  # a crashed node back on, a cable back in: the cluster heals from here
            self.history.record("fault", time.monotonic(), id=ident, fault=fault.fault, target=target, phase="undone")
        bound = max(self.bounds[f.fault] for f in round_.faults)
        # The status lags a fault by a check interval or two: a look at once could see the health of before.
        time.sleep(DETECTION_GRACE)
        ok = wait_for(self.recovered_for_sure, max(1.0, bound - (time.monotonic() - injected)), interval=1.0)
        now = self.recovered_at if ok else time.monotonic()
        for ident, fault, target in done:
            if ok:
                self.history.record("fault", now, id=ident, fault=fault.fault, target=target, phase="healthy")
            else:
                self.history.record("fault", now, id=ident, fault=fault.fault, target=target, phase="stuck",
                                    state=self.state())
        self.say(f"  healthy again after {now - injected:.1f}s" if ok else
                 f"  STUCK after {now - injected:.1f}s: {self.state()}; healing by force")
        if not ok:
            self.heal_everything()
            if not wait_for(self.recovered, 600, interval=2.0):
                raise LabError(f"the lab did not recover even when healed by force: {self.state()}")
        self.collect_events()

    def collect_events(self) -> None:
        for name in sorted(self.lab.spec.nodes):
            try:
                code, events = request(self.lab.node_socket(name), "GET", "/events?limit=1000", timeout=2.0)
            except ControlError:
                continue
            if code != 200:
                continue
            for event in events:
                if event["seq"] not in self.seen_events:
                    self.seen_events.add(event["seq"])
                    fields = {k: v for k, v in event.items() if k not in ("ts", "event", "k", "t")}
                    self.history.record("event", event["ts"] - self.clock_offset, event=event_name(event), **fields)
            return  # one node's log is the replicated one

    # -- the campaign ---------------------------------------------------------------
    def observers(self, prefix: str) -> tuple[list[Any], ClientObserver]:
        rows = services_view(self.lab).get("services", [])
        vips = sorted({r["vip"] for r in rows if r.get("vip")})
        vip_of = {r["name"]: r["vip"] for r in rows if r.get("vip")}
        http = {"nginx": f"http://{vip_of['nginx']}/"} if "nginx" in vip_of else {}
        auth = keystone_auth_url(services_view(self.lab))
        reads = {}
        if auth:
            reads["projects"] = auth.rstrip("/") + "/projects"
            if "glance-api" in vip_of:
                reads["images"] = f"http://{vip_of['glance-api']}:{GLANCE_PORT}/v2/images"
        password = admin_password(load_identity(self.lab.identity_path)) if auth else ""
        samplers: list[Any] = [LeaseSampler(self.lab, self.history)]
        images = volume_images(self.lab.spec.catalog)
        if images:  # the `lab` catalog has no volume: nothing to watch, no Ceph to ask
            samplers += [WatchSampler(self.lab, self.history, images), MountSampler(self.lab, self.history)]
        for sampler in samplers:
            sampler.start()
        return samplers, ClientObserver(self.lab, vips, http, auth, password, reads, prefix)

    def run(self) -> dict[str, Any]:
        started = time.time()
        schedule = plan(self.options.seed, self.options.rounds, self.options.faults, sorted(self.lab.spec.nodes),
                        [r["name"] for r in services_view(self.lab).get("services", [])], self.options.overlap)
        samplers, client = self.observers(f"chaos-{self.options.seed}-{int(started)}-")
        interrupted, aborted = False, ""
        try:
            time.sleep(2.0)  # the observers' first samples before the first fault
            for round_ in schedule:
                self.run_round(round_)
        except LabError as exc:  # the lab could not be healed: the history so far is still written
            aborted = str(exc)
            self.say(f"aborted: {exc}")
        except KeyboardInterrupt:
            interrupted = True
            self.say("interrupted: undoing the faults in force and healing the lab")
            self.heal_everything()
            wait_for(self.recovered, 300, interval=2.0)
        finally:
            for sampler in samplers:
                sampler.stop()
            client.stop(self.history)
            self.collect_events()
        try:
            problem = client.read_back(self.history)
        except (OSError, ValueError) as exc:  # the report is written all the same; the checker flags the writes
            problem = f"reading the writes back failed: {exc}"
        if problem:
            self.say(problem)
        client.close()
        self.add_derived_phases()
        meta = {"seed": self.options.seed, "rounds": self.options.rounds, "faults": ",".join(self.options.faults),
                "lab": self.lab.spec.name, "catalog": self.lab.spec.catalog, "nodes": len(self.lab.spec.nodes),
                "started": datetime.datetime.fromtimestamp(started, datetime.timezone.utc).isoformat(timespec="seconds"),
                "duration_s": round(time.time() - started, 1), "interrupted": interrupted, "aborted": aborted}
        return build(self.history, check(self.history, self.bounds), meta)

    def add_derived_phases(self) -> None:
        """detected / decided from the event log, answering from the client's polls."""
        events = self.history.of("event")
        polls = self.history.of("poll")
        for incident in incidents(self.history).values():
            start, end = incident["phases"].get("injected"), incident["phases"].get("healthy")
            if start is None or end is None:
                continue
            detected = next((e["t"] for e in events if start <= e["t"] <= end and event_name(e) in DETECT_EVENTS), None)
            decided = next((e["t"] for e in events if (detected or start) <= e["t"] <= end
                            and event_name(e) in DECIDE_EVENTS), None)
            failed = [p["t"] for p in polls if start <= p["t"] <= end and not p["ok"]]
            answering = start if not failed else next((p["t"] for p in polls if p["t"] > max(failed) and p["ok"]), None)
            for phase, t in (("detected", detected), ("decided", decided), ("answering", answering)):
                if t is not None:
                    self.history.record("fault", t, id=incident["id"], fault=incident["fault"],
                                        target=incident["target"], phase=phase)


def _try_kill(lab: Lab, service: str) -> str | None:
    try:
        return kill_service(lab, service)
    except LabError:
        return None


def write_outputs(campaign: Campaign, report: dict[str, Any], out: Path) -> tuple[Path, Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    history = out / "history.jsonl"
    campaign.history.dump(history)
    json_path = write_json(report, out / "report.json")
    html = out / "report.html"
    html.write_text(render_html(report))
    return history, json_path, html


def run_campaign(options: Options, progress: Progress = _say) -> tuple[dict[str, Any], Path]:
    """Make (or use) the lab, run the campaign, write history, JSON and HTML; tear down what it made."""
    made = options.lab is None
    name = options.lab or "chaos"
    if made:
        destroy(name)
        lab = Lab.create(name, 3, catalog=options.catalog)
        lab.start_all()
        progress(f"lab {name} with catalog {options.catalog}: waiting until every service is healthy")
        lab.wait_formed(timeout=120)
        lab.wait_services(timeout=900, progress=lambda s: progress(f"  {s}"))
    else:
        lab = Lab.load(name)
    campaign = Campaign(lab, options, progress)
    try:
        if not campaign.recovered():
            raise LabError(f"lab {name} is not healthy; a campaign starts from a healthy cluster: {campaign.state()}")
        report = campaign.run()
        out = options.out or RESULTS / f"{name}-seed{options.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
        write_outputs(campaign, report, out)
        return report, out
    finally:
        if made and not options.keep:
            destroy(name)
