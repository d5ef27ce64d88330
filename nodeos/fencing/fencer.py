"""Taking holdings away, fast and without help: remove VIPs, kill singletons.

Used by the guard process and by the agent's own fence keeper. Nothing here
waits for a service to stop gracefully or for systemd: a fence is SIGKILL and
one netlink call per address. Kill targets (from the runtimes):

* `{"run_dir": PATH}` (process runtime): the process group recorded in
  PATH/pid.json (pid + create_time, so a recycled pid is never signalled),
  and every process whose working directory is inside PATH (a service started
  a moment ago whose record is not written yet, or orphaned workers);
* `{"cgroup": PATH}` (systemd runtime): `cgroup.kill` of the unit's cgroup
  (cgroup v2), else SIGKILL of each pid in its `cgroup.procs`.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import threading
from pathlib import Path
from typing import Iterable

import psutil
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .policy import Vip

_CREATE_TIME_TOLERANCE = 0.01


class Fencer:
    """Removes VIPs and kills kill targets; every method is idempotent."""

    def __init__(self) -> None:
        self._ipr: IPRoute | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self._ipr is not None:
                self._ipr.close()
                self._ipr = None

    # -- VIPs ----------------------------------------------------------------
    def present_vips(self, vips: Iterable[Vip]) -> set[Vip]:
        wanted = list(vips)
        if not wanted:
            return set()
        with self._lock:
            ipr = self._netlink()
            present: set[Vip] = set()
            for ifname in {v.ifname for v in wanted}:
                index = _index(ipr, ifname)
                if index is None:
                    continue
                addresses = {m.get_attr("IFA_ADDRESS") for m in ipr.get_addr(family=2, index=index)}
                present |= {v for v in wanted if v.ifname == ifname and v.ip in addresses}
            return present

    def remove_vips(self, vips: Iterable[Vip]) -> list[str]:
        """Remove each VIP that is present; returns the addresses removed."""
        removed = []
        for vip in self.present_vips(vips):
            with self._lock:
                ipr = self._netlink()
                index = _index(ipr, vip.ifname)
                if index is None:
                    continue
                try:
                    ipr.addr("del", index=index, address=vip.ip, prefixlen=vip.prefixlen)
                    removed.append(vip.ip)
                except NetlinkError as exc:
                    if exc.code not in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ESRCH):
                        raise
        return removed

    def _netlink(self) -> IPRoute:
        # One socket for the process's life: no setup cost when it matters.
        if self._ipr is None:
            self._ipr = IPRoute()
        return self._ipr

    # -- services ----------------------------------------------------------------
    def kill(self, targets: dict[str, dict[str, str]], scan: bool = True) -> dict[str, list[int]]:
        """SIGKILL what runs for each target; returns name -> pids signalled.

        `scan` also looks for processes by working directory (a /proc walk,
        a few ms): done when fencing, skipped by the periodic enforcement.
        """
        out: dict[str, list[int]] = {}
        for name, target in sorted(targets.items()):
            pids: list[int] = []
            if "run_dir" in target:
                pids = _kill_run_dir(Path(target["run_dir"]), scan)
            elif "cgroup" in target:
                pids = _kill_cgroup(Path(target["cgroup"]))
            if pids:
                out[name] = pids
        return out

    def running(self, targets: dict[str, dict[str, str]]) -> set[str]:
        """Names of targets with a live recorded process (cheap: no /proc walk)."""
        alive = set()
        for name, target in targets.items():
            if "run_dir" in target and _recorded_group(Path(target["run_dir"])) is not None:
                alive.add(name)
            elif "cgroup" in target and _cgroup_pids(Path(target["cgroup"])):
                alive.add(name)
        return alive


def _index(ipr: IPRoute, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return int(found[0]) if found else None


def _recorded_group(run_dir: Path) -> int | None:
    """The live process group recorded in run_dir/pid.json, if its leader is the recorded one."""
    try:
        data = json.loads((run_dir / "pid.json").read_text())
        pid, create_time = int(data["pid"]), float(data["create_time"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if pid <= 1:
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE or abs(proc.create_time() - create_time) >= _CREATE_TIME_TOLERANCE:
            return None
    except psutil.Error:
        return None
    return pid


def _kill_run_dir(run_dir: Path, scan: bool) -> list[int]:
    pids: list[int] = []
    group = _recorded_group(run_dir)
    if group is not None:
        try:
            os.killpg(group, signal.SIGKILL)
            pids.append(group)
        except ProcessLookupError:
            pass
    if scan:
        pids += _kill_by_cwd(run_dir)
    return pids


def _kill_by_cwd(run_dir: Path) -> list[int]:
    root = str(run_dir.resolve())
    killed = []
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            cwd = os.readlink(f"/proc/{entry.name}/cwd")
        except OSError:
            continue
        if cwd == root or cwd.startswith(root + "/"):
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
            except ProcessLookupError:
                pass
    return killed


def _cgroup_pids(cgroup: Path) -> list[int]:
    try:
        return [int(line) for line in (cgroup / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def _kill_cgroup(cgroup: Path) -> list[int]:
    pids = _cgroup_pids(cgroup)
    if not pids:
        return []
    try:
        (cgroup / "cgroup.kill").write_text("1")
        return pids
    except OSError:
        pass  # cgroup v1 or an old kernel: one by one
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids
