"""The neutral observers of a campaign on a lab: none of them asks the Monitor what it believes.

* leases: every node's control socket, `/lease` (whether that node may act), every 50 ms;
* watchers: Ceph itself, from the client namespace with the admin key, every 0.5 s: each
  volume image's watchers (`rbd status`: the client instances that have it open, each mapped
  to a lab node by its IP) and whether the cluster's blocklist fences each one. Only a watch
  that is not blocklisted can write; the mount table cannot tell (a fenced node's file
  system stays mounted until its agent unmounts it);
* mounts: the host's mount table, every 200 ms, for information only: a volume is mounted
  read-write under which node's directory (how long a fenced node kept it mounted);
* the client (a process in the lab's client namespace, on the LAN like any client): an ARP
  who-has for every VIP, the APIs through their VIPs every 0.5 s, and a writer whose
  acknowledged writes are read back at the end.

Every record carries the host's monotonic clock, shared by every process and namespace.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from nodeos.cluster.control import ControlError, request
from nodeos.lab.lab import Lab
from nodeos.services.catalog import load_catalog
from nodeos.services.layer import resolve_catalog_path
from nodeos.storage.conf import CephPaths
from nodeos.storage.keys import ADMIN
from nodeos.storage.ops import POOL_VOLUMES, volume_image
from nodeos.storage.volume_spec import VolumeError, Watcher, parse_blocklist, parse_watchers

from .history import ChangeRecorder, History
from .invariants import writers

LEASE_INTERVAL = 0.05
MOUNT_INTERVAL = 0.2
WATCH_INTERVAL = 0.5
# One CLI call; then it is killed and the sample is unknown (a client stuck on a dead OSD
# stays stuck for 20 s, storage/volumes.py). The conf's own op time-outs end it sooner.
WATCH_TIMEOUT = 5.0
WATCH_OP_TIMEOUT = 3
# The blocklist only grows (10-year fences), so a copy from before a status is a sound
# "fenced"; it is read again this often, and at once before two nodes' watches are recorded.
BLOCKLIST_EVERY = 5.0
ENOENT = 2
POLL_INTERVAL = 0.5
WRITE_INTERVAL = 1.0
VOLUME_FS = ("ext4", "xfs")


class _Sampler:
    """A thread calling `sample()` every `interval` until stopped."""

    interval = 1.0

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout=timeout)
        self.flush()

    def flush(self) -> None:
        """Record the samples a ChangeRecorder held back (the last of each value)."""

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.sample(started)
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def sample(self, t: float) -> None:
        raise NotImplementedError


class LeaseSampler(_Sampler):
    interval = LEASE_INTERVAL

    def __init__(self, lab: Lab, history: History) -> None:
        super().__init__()
        self.lab = lab
        self.recorder = ChangeRecorder(history.add, "lease", lambda f: tuple(f["holders"]))

    def sample(self, t: float) -> None:
        self.recorder.sample(t, "lease", holders=[n for n in sorted(self.lab.spec.nodes) if may_act(self.lab, n, 0.3)])

    def flush(self) -> None:
        self.recorder.flush()


def may_act(lab: Lab, name: str, timeout: float) -> bool:
    """The node's own answer: it holds the Monitor lease. Down, hung or cut off: it answers
    nothing, so it holds nothing we can see."""
    try:
        code, body = request(lab.node_socket(name), "GET", "/lease", timeout=timeout)
    except ControlError:
        return False
    return code == 200 and bool(body.get("may_act"))


def volume_mounts(mountinfo: str, roots: dict[str, str]) -> dict[str, list[str]]:
    """{path under a node's root: [nodes that have a volume file system mounted read-write there]}."""
    found: dict[str, list[str]] = {}
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 6:
            continue
        point, options = fields[4], fields[5].split(",")
        fs = line.split(" - ", 1)[1].split()[0]
        if fs not in VOLUME_FS or "rw" not in options:
            continue
        for name, root in roots.items():
            if point.startswith(root + "/"):
                found.setdefault(point[len(root):], []).append(name)
    return found


class MountSampler(_Sampler):
    """Informational: `one_writer_per_volume` checks the watchers, not the mounts."""

    interval = MOUNT_INTERVAL

    def __init__(self, lab: Lab, history: History) -> None:
        super().__init__()
        self.recorder = ChangeRecorder(history.add, "mapping", lambda f: tuple(f["rw"]))
        # The node's whole state dir: lab-cloud mounts under its root/, lab-storage under services/.
        self.roots = {name: str(Path(node.state_dir)) for name, node in lab.spec.nodes.items()}
        self.seen: set[str] = set()

    def sample(self, t: float) -> None:
        mounts = volume_mounts(Path("/proc/self/mountinfo").read_text(), self.roots)
        self.seen |= set(mounts)
        for volume in sorted(self.seen):  # a volume mounted nowhere is a sample too (none is not two)
            self.recorder.sample(t, volume, volume=volume, rw=sorted(mounts.get(volume, [])))

    def flush(self) -> None:
        self.recorder.flush()


# -- Ceph's watchers ---------------------------------------------------------------------

def volume_images(catalog: str | None) -> list[str]:
    """pool/image of every volume the catalog declares, sorted; [] without a catalog or volumes."""
    path = resolve_catalog_path(catalog)
    if path is None:
        return []
    return sorted(f"{POOL_VOLUMES}/{volume_image(spec.name)}" for spec in load_catalog(path) if spec.volume)


def address_ip(address: str) -> str:
    """The IP of a Ceph entity address (`10.0.0.1:0/123`, `v1:10.0.0.1:6789/0`, `[fd00::1]:0/5`)."""
    host = address.split("/", 1)[0]
    for kind in ("v1:", "v2:", "any:"):
        host = host.removeprefix(kind)
    return host.rpartition(":")[0].strip("[]")


def is_fenced(address: str, blocklist: set[str]) -> bool:
    """Listed as this instance, or its whole IP listed (`IP:0/0`, which fences every client there)."""
    ip = address_ip(address)
    return address in blocklist or any(address_ip(b) == ip and b.endswith(":0/0") for b in blocklist)


def watch_rows(watchers: list[Watcher], blocklist: set[str], ips: dict[str, str]) -> list[dict[str, Any]]:
    """One row per watcher: its address, the lab node with its IP (None: not a node), fenced or not."""
    return [{"address": w.address, "node": ips.get(address_ip(w.address)), "fenced": is_fenced(w.address, blocklist)}
            for w in watchers]


def image_missing(stderr: str) -> bool:
    """`rbd status` failed because the pool or image does not exist (nobody can write it), not for
    another ENOENT (a keyring not found)."""
    return "error opening" in stderr and "No such file or directory" in stderr


def _last_line(stderr: str) -> str:
    """The CLI's own message (librados logs lines with timestamps before it)."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1][-200:] if lines else "no message"


def observer_conf(node_conf: str, keyring: str, run_dir: str) -> str:
    """A client conf of the observer's own: a node's fsid and mons, short time-outs, nothing in the
    node's directories (its admin socket and log stay in `run_dir`)."""
    keep = [line.strip() for line in node_conf.splitlines()
            if line.strip().split("=", 1)[0].strip() in ("fsid", "mon_host")]
    if len(keep) < 2:
        raise VolumeError("the node's ceph.conf names no fsid or mon_host")
    options = [*keep, "auth_client_required = cephx", "mon_client_hunt_interval = 1.0",
               f"client_mount_timeout = {WATCH_OP_TIMEOUT}", f"rados_mon_op_timeout = {WATCH_OP_TIMEOUT}",
               f"rados_osd_op_timeout = {WATCH_OP_TIMEOUT}", f"run_dir = {run_dir}",
               f"admin_socket = {run_dir}/$name.$pid.asok", f"log_file = {run_dir}/$name.log", f"keyring = {keyring}"]
    return "[global]\n" + "\n".join(options) + "\n"


class CephUnknown(Exception):
    """A Ceph question the observer could not get answered (why, in the message)."""


class WatchSampler(_Sampler):
    """Every volume image's watchers and their fencing, from the client namespace (on the LAN, with
    the majority in a partition), so a down or cut-off node does not blind it. Nothing to do, and
    no thread, when the catalog has no volume."""

    interval = WATCH_INTERVAL

    def __init__(self, lab: Lab, history: History, images: list[str]) -> None:
        super().__init__()
        self.lab, self.history, self.images = lab, history, images
        self.ips = {node.ip: name for name, node in lab.spec.nodes.items()}
        self.dir = Path(tempfile.mkdtemp(prefix="nodeos-chaos-watch-"))
        self.conf = self.dir / "ceph.conf"
        self.prefix = ["nsenter", f"--net=/run/netns/{lab.add_client()}"] if images else []
        self.blocklist: set[str] | None = None
        self.blocklist_at = float("-inf")  # when the cached copy was asked for
        self.seen: dict[str, set[str]] = {image: set() for image in images}  # every watcher address so far
        self.writers: dict[str, set[str]] = {}  # image -> the writers of its last known sample
        self.started = False
        # Unknown samples are one value whatever their error (the first one's is kept).
        self.recorder = ChangeRecorder(history.add, "watch", lambda f: (
            json.dumps(f["watchers"], sort_keys=True), bool(f.get("absent")), tuple(f.get("fenced_seen") or ())))

    def flush(self) -> None:
        self.recorder.flush()

    def start(self) -> None:
        if self.images:
            self.started = True
            super().start()

    def stop(self, timeout: float = 4 * WATCH_TIMEOUT) -> None:
        if self.started:  # a round in flight ends within its CLI time-outs, unrecorded
            super().stop(timeout)
        shutil.rmtree(self.dir, ignore_errors=True)

    def sample(self, t: float) -> None:
        try:
            self._write_conf()
        except (OSError, VolumeError) as exc:
            for image in self.images:
                self._unknown(image, time.monotonic(), f"no client conf: {exc}")
            return
        for image in self.images:
            if self._stop.is_set():
                return
            self.sample_image(image)

    def sample_image(self, image: str) -> None:
        """One record. Two nodes' un-fenced watches, or writers other than the last sample's (a
        handover, maybe seen only after a blind stretch), are asked again with a fresh blocklist
        first: a fence may have landed after the cached copy was read."""
        try:
            if time.monotonic() - self.blocklist_at > BLOCKLIST_EVERY:
                self._refresh_blocklist()
            t, rows = self._status_rows(image)
            if rows is not None and (len(writers(rows)) > 1 or writers(rows) != self.writers.get(image)):
                self._refresh_blocklist()
                t, rows = self._status_rows(image)
        except CephUnknown as exc:
            self.writers.pop(image, None)
            self._unknown(image, time.monotonic(), str(exc))
            return
        if self._stop.is_set():
            return  # asked while stopping: the campaign's history has ended
        if rows is None:
            self.recorder.sample(t, image, volume=image, watchers=[], absent=True)
            return
        assert self.blocklist is not None
        # Earlier watchers the blocklist names now: a holder fenced while the observer was blind.
        fenced_seen = sorted(a for a in self.seen[image] if is_fenced(a, self.blocklist))
        self.seen[image] |= {row["address"] for row in rows}
        self.writers[image] = writers(rows)
        self.recorder.sample(t, image, volume=image, watchers=rows, fenced_seen=fenced_seen)

    def _status_rows(self, image: str) -> tuple[float, list[dict[str, Any]] | None]:
        """(when asked, rows); rows None when the image does not exist (nobody can write it)."""
        assert self.blocklist is not None
        t = time.monotonic()
        done = self._cli("rbd status", ["rbd", "--conf", str(self.conf), "--id", "admin", "status", image,
                                        "--format", "json"], ok=(0, ENOENT))
        if done.returncode == ENOENT:
            if not image_missing(done.stderr):
                raise CephUnknown(f"rbd status failed ({ENOENT}): {_last_line(done.stderr)}")
            return t, None
        try:
            return t, watch_rows(parse_watchers(done.stdout), self.blocklist, self.ips)
        except (VolumeError, ValueError, KeyError, TypeError) as exc:  # odd output: unknown, never "nobody"
            raise CephUnknown(f"rbd status: {exc}") from None

    def _refresh_blocklist(self) -> None:
        self.blocklist, self.blocklist_at = None, float("-inf")
        asked = time.monotonic()
        done = self._cli("blocklist ls", ["ceph", "--conf", str(self.conf), "--name", ADMIN, "--connect-timeout",
                          str(WATCH_OP_TIMEOUT), "osd", "blocklist", "ls", "--format", "json"])
        try:
            self.blocklist = {entry.address for entry in parse_blocklist(done.stdout)}
        except (VolumeError, ValueError, KeyError, TypeError) as exc:
            raise CephUnknown(f"blocklist ls: {exc}") from None
        self.blocklist_at = asked

    def _cli(self, what: str, argv: list[str], ok: tuple[int, ...] = (0,)) -> "subprocess.CompletedProcess[str]":
        try:
            done = subprocess.run([*self.prefix, *argv], capture_output=True, text=True, timeout=WATCH_TIMEOUT,
                                  stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:
            raise CephUnknown(f"{what}: no answer in {WATCH_TIMEOUT:.0f}s") from None
        except OSError as exc:
            raise CephUnknown(f"{what}: {exc}") from None
        if done.returncode not in ok:
            raise CephUnknown(f"{what} failed ({done.returncode}): {_last_line(done.stderr)}")
        return done

    def _write_conf(self) -> None:
        """From the node conf written last (a down node's conf stops changing), read each round:
        the mons may change during a campaign."""
        confs = [CephPaths(str(Path(n.state_dir) / "ceph")) for n in self.lab.spec.nodes.values()]
        present = [p for p in confs if Path(p.conf).exists() and Path(p.keyring(ADMIN)).exists()]
        if not present:
            raise VolumeError("no node has a ceph.conf and the admin keyring yet")
        newest = max(present, key=lambda p: Path(p.conf).stat().st_mtime)
        text = observer_conf(Path(newest.conf).read_text(), newest.keyring(ADMIN), str(self.dir))
        if not self.conf.exists() or self.conf.read_text() != text:
            tmp = self.conf.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(self.conf)

    def _unknown(self, image: str, t: float, why: str) -> None:
        if not self._stop.is_set():  # a call cut short by stopping is no blind spot of the campaign
            self.recorder.sample(t, image, volume=image, watchers=None, error=why)


CLIENT = r'''
import json, os, sys, threading, time, urllib.request
from nodeos.services.arp import who_has
from nodeos.cloud.probes import keystone_token, authenticated_get
from nodeos.chaos.history import ChangeRecorder

cfg = json.loads(sys.stdin.readline())  # the password too: never on a command line
out = open(cfg["out"], "a", buffering=1)
lock = threading.Lock()
stop = lambda: os.path.exists(cfg["stop"])

def emit(**record):
    with lock:
        out.write(json.dumps(record) + "\n")

sink = lambda record: emit(**record)
arps = ChangeRecorder(sink, "arp", lambda f: tuple(f["macs"]))  # the ARP thread's
polls = ChangeRecorder(sink, "poll", lambda f: f["ok"])  # the API thread's: an outage's ends, not each poll

def arp_loop():
    while not stop():
        for vip in cfg["vips"]:
            t = time.monotonic()
            try:
                arps.sample(t, vip, vip=vip, macs=sorted(who_has("eth0", vip, 0.1)))
            except OSError:
                pass
        time.sleep(0.2)

def create_project(auth, token, name):
    body = json.dumps({"project": {"name": name, "domain_id": "default"}}).encode()
    req = urllib.request.Request(auth.rstrip("/") + "/projects", body, method="POST",
                                 headers={"X-Auth-Token": token, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=3) as answer:
        return answer.status == 201

def api_loop():
    seq, next_write = 0, 0.0
    while not stop():
        t = time.monotonic()
        for name, url in cfg["http"].items():
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    polls.sample(t, name, api=name, ok=answer.status < 400, detail=str(answer.status))
            except Exception as exc:
                polls.sample(t, name, api=name, ok=False, detail=type(exc).__name__)
        if cfg["auth"]:
            token, detail = keystone_token(cfg["auth"], "admin", cfg["password"], "admin", 2.0)
            polls.sample(t, "token", api="token", ok=token is not None, detail="" if token else detail[:200])
            for name, url in cfg["reads"].items():
                ok, detail = authenticated_get(url, token, 2.0) if token else (False, "no token")
                polls.sample(time.monotonic(), name, api=name, ok=ok, detail="" if ok else detail[:200])
            if token and t >= next_write:
                key = f"{cfg['prefix']}{seq}"
                try:
                    if create_project(cfg["auth"], token, key):
                        emit(k="write", t=time.monotonic(), store="keystone-projects", key=key)  # acknowledged
                        seq += 1
                except Exception:
                    pass  # not acknowledged: the checker does not count it (it may or may not exist)
                next_write = t + cfg["write_interval"]
        time.sleep(max(0.0, cfg["interval"] - (time.monotonic() - t)))

threads = [threading.Thread(target=f, daemon=True) for f in (arp_loop, api_loop)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
arps.flush()
polls.flush()
'''

READ_BACK = r'''
import json, sys, urllib.request
from nodeos.cloud.probes import keystone_token
cfg = json.loads(sys.stdin.readline())
token, detail = keystone_token(cfg["auth"], "admin", cfg["password"], "admin", 5.0)
if token is None:
    sys.exit(f"no token: {detail}")
req = urllib.request.Request(cfg["auth"].rstrip("/") + "/projects", headers={"X-Auth-Token": token})
with urllib.request.urlopen(req, timeout=30) as answer:
    names = [p["name"] for p in json.load(answer)["projects"]]
print(json.dumps([n for n in names if n.startswith(cfg["prefix"])]))
'''


class ClientObserver:
    """The client process on the lab LAN; its records join the history when it stops."""

    def __init__(self, lab: Lab, vips: list[str], http: dict[str, str], auth: str | None, password: str,
                 reads: dict[str, str], prefix: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="nodeos-chaos-client-"))
        self.lab, self.prefix, self.auth, self.password = lab, prefix, auth, password
        self.cfg = {"vips": vips, "http": http, "auth": auth, "password": password, "reads": reads, "prefix": prefix,
                    "out": str(self.dir / "records"), "stop": str(self.dir / "stop"), "interval": POLL_INTERVAL,
                    "write_interval": WRITE_INTERVAL}
        self.proc = self._spawn(CLIENT, self.cfg)

    def _spawn(self, script: str, cfg: dict[str, Any]) -> subprocess.Popen:
        proc = subprocess.Popen(["ip", "netns", "exec", self.lab.add_client(), sys.executable, "-c", script],
                                stdin=subprocess.PIPE, text=True, start_new_session=True)
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(cfg) + "\n")
        proc.stdin.close()
        return proc

    def stop(self, history: History) -> None:
        (self.dir / "stop").touch()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        records = self.dir / "records"
        for line in records.read_text().splitlines() if records.exists() else []:
            history.add(json.loads(line))

    def read_back(self, history: History, timeout: float = 60.0) -> str | None:
        """The writer's store read back whole, as a `readback` record; None, or why it could not be."""
        if not self.auth:
            return None
        cfg = {"auth": self.auth, "password": self.password, "prefix": self.prefix}
        try:
            done = subprocess.run(["ip", "netns", "exec", self.lab.add_client(), sys.executable, "-c", READ_BACK],
                                  input=json.dumps(cfg) + "\n", capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return "reading the projects back timed out"
        if done.returncode != 0:
            return f"reading the projects back failed: {done.stderr.strip()[-300:]}"
        history.record("readback", time.monotonic(), store="keystone-projects", keys=json.loads(done.stdout))
        return None

    def close(self) -> None:
        subprocess.run(["rm", "-rf", str(self.dir)], check=False)
