"""The neutral observers of a campaign on a lab: none of them asks the Monitor what it believes.

* leases: every node's control socket, `/lease` (whether that node may act), every 50 ms;
* mounts: the host's mount table, every 200 ms: a volume is mounted read-write under which
  node's root (the lab's nodes share the host's kernel, so this is the kernel's own view);
* the client (a process in the lab's client namespace, on the LAN like any client): an ARP
  who-has for every VIP, the APIs through their VIPs every 0.5 s, and a writer whose
  acknowledged writes are read back at the end.

Every record carries the host's monotonic clock, shared by every process and namespace.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from nodeos.cluster.control import ControlError, request
from nodeos.lab.lab import Lab
from nodeos.lab.mountns import node_root

from .history import History

LEASE_INTERVAL = 0.05
MOUNT_INTERVAL = 0.2
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

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

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
        self.lab, self.history = lab, history

    def sample(self, t: float) -> None:
        self.history.record("lease", t, holders=[n for n in sorted(self.lab.spec.nodes) if may_act(self.lab, n, 0.3)])


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
    interval = MOUNT_INTERVAL

    def __init__(self, lab: Lab, history: History) -> None:
        super().__init__()
        self.history = history
        self.roots = {name: str(node_root(Path(node.state_dir))) for name, node in lab.spec.nodes.items()}
        self.seen: set[str] = set()

    def sample(self, t: float) -> None:
        mounts = volume_mounts(Path("/proc/self/mountinfo").read_text(), self.roots)
        self.seen |= set(mounts)
        for volume in sorted(self.seen):  # a volume mounted nowhere is a sample too (none is not two)
            self.history.record("mapping", t, volume=volume, rw=sorted(mounts.get(volume, [])))


CLIENT = r'''
import json, os, sys, threading, time, urllib.request
from nodeos.services.arp import who_has
from nodeos.cloud.probes import keystone_token, authenticated_get

cfg = json.loads(sys.stdin.readline())  # the password too: never on a command line
out = open(cfg["out"], "a", buffering=1)
lock = threading.Lock()
stop = lambda: os.path.exists(cfg["stop"])

def emit(**record):
    with lock:
        out.write(json.dumps(record) + "\n")

def arp_loop():
    while not stop():
        for vip in cfg["vips"]:
            t = time.monotonic()
            try:
                emit(k="arp", t=t, vip=vip, macs=sorted(who_has("eth0", vip, 0.1)))
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
                    emit(k="poll", t=t, api=name, ok=answer.status < 400, detail=str(answer.status))
            except Exception as exc:
                emit(k="poll", t=t, api=name, ok=False, detail=type(exc).__name__)
        if cfg["auth"]:
            token, detail = keystone_token(cfg["auth"], "admin", cfg["password"], "admin", 2.0)
            emit(k="poll", t=t, api="token", ok=token is not None, detail="" if token else detail[:200])
            for name, url in cfg["reads"].items():
                ok, detail = authenticated_get(url, token, 2.0) if token else (False, "no token")
                emit(k="poll", t=time.monotonic(), api=name, ok=ok, detail="" if ok else detail[:200])
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
