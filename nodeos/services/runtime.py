"""Runtime backends: how a node starts and stops the services it was given.

One interface (`Runtime`), two backends:

- `ProcessRuntime` (lab): every service is a plain process group under
  `run_root/<name>/`. A pid record (`pid.json`: pid + create_time) lets a
  NEW agent process, after the previous one crashed, find and stop leftovers;
  the create_time check makes sure a recycled pid is never signalled.
- `SystemdRuntime` (real nodes): `systemctl` on the service's unit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Protocol, Sequence, runtime_checkable

import psutil

from nodeos import log
from .catalog import ServiceSpec
from .systemd_bus import AT_REST, BusError, UnitStates

PID_FILE = "pid.json"
LOG_FILE = "service.log"
# psutil create_time comes from clock ticks (10 ms); equal records match exactly.
_CREATE_TIME_TOLERANCE = 0.01
_POLL = 0.05


class ServiceRuntimeError(RuntimeError):
    """A service could not be started or stopped; the message says why."""


@dataclass(frozen=True)
class ServiceContext:
    """Node facts a service is started with (the template values)."""

    node_id: str
    vip: str | None = None
    bind: str = "0.0.0.0"
    # None: the runtime's own choice (ProcessRuntime: run_root/<name>).
    run_dir: Path | None = None
    ceph_dir: Path | None = None  # this node's Ceph files (nodeos/storage/files.py)
    root: Path = Path("/")  # packaged services' /etc, /var/lib...: the node's private root in the lab


@runtime_checkable
class Runtime(Protocol):
    def start(self, spec: ServiceSpec, ctx: ServiceContext) -> None: ...

    def stop(self, name: str, timeout: float = 5.0) -> None: ...

    def is_running(self, name: str) -> bool: ...

    def main_pid(self, name: str) -> int | None: ...

    def running(self) -> set[str]: ...

    def stop_all(self) -> None: ...

    def fence_target(self, name: str) -> dict[str, str]:
        """What the fencer kills for this service (fencer.py), without asking the runtime."""
        ...

    def know(self, specs: Iterable[ServiceSpec]) -> None:
        """The catalog's services, before any is started or asked about."""
        ...


# ---------------------------------------------------------------- process runtime


@dataclass(frozen=True)
class PidRecord:
    pid: int
    create_time: float

    @property
    def pgid(self) -> int:
        return self.pid  # start_new_session: the main process leads its own group

    def matches(self, proc: psutil.Process) -> bool:
        try:
            return bool(abs(proc.create_time() - self.create_time) < _CREATE_TIME_TOLERANCE)
        except psutil.Error:
            return False


class ProcessRuntime:
    """Services as process groups under `run_root`; safe to re-create after a crash."""

    def __init__(self, run_root: Path, enter: Sequence[str] = ()) -> None:
        self.run_root = Path(run_root)
        # A prefix that runs a service elsewhere and execs it (the lab node's
        # mount namespace: nsenter), so the recorded pid stays the service's.
        self.enter = list(enter)
        self._children: dict[str, subprocess.Popen[bytes]] = {}  # started by THIS instance
        self._lock = threading.RLock()
        # The last pid record read per service, by its file's identity: the node pass asks
        # 20 times a second, the record changes only when the service starts.
        self._records: dict[str, tuple[tuple[int, int, int], PidRecord | None]] = {}

    def run_dir(self, name: str) -> Path:
        return self.run_root / name

    def fence_target(self, name: str) -> dict[str, str]:
        return {"run_dir": str(self.run_dir(name))}

    def know(self, specs: Iterable[ServiceSpec]) -> None:
        """Nothing to learn: a service's place is its name (run_dir)."""

    # -- interface

    def start(self, spec: ServiceSpec, ctx: ServiceContext) -> None:
        """Start the service unless it already runs (reconcile-safe)."""
        with self._lock:
            if self.is_running(spec.name):
                return
            self.stop(spec.name)  # leftovers of a dead instance (orphaned workers)
            run_dir = self.run_dir(spec.name)
            if ctx.run_dir is not None and Path(ctx.run_dir) != run_dir:
                raise ServiceRuntimeError(
                    f"{spec.name}: ProcessRuntime keeps services in {run_dir}, not {ctx.run_dir}"
                )
            argv = self._prepare_run_dir(spec, ctx, run_dir)
            proc = self._spawn(spec.name, self._entered(argv, run_dir), run_dir)
            record = self._record_for(proc)
            self._write_record(run_dir, record, argv)
            self._children[spec.name] = proc
            log.event("runtime.started", service=spec.name, pid=proc.pid, argv=argv)

    def stop(self, name: str, timeout: float = 5.0) -> None:
        """SIGTERM the service's process group, SIGKILL after `timeout`; idempotent."""
        with self._lock:
            child = self._children.pop(name, None)
            record = self._read_record(name)
            if record is None and child is not None and child.poll() is None:
                record = self._record_for(child)  # our child, its pid.json lost
            if record is not None and self._group_is_ours(record):
                self._terminate_group(name, record.pgid, child, timeout)
            elif record is not None and _live_process(record.pid) is not None:
                # The recorded pid now belongs to someone else: never signal it.
                log.event("runtime.recycled_pid", level="warning", service=name, pid=record.pid)
            if child is not None:
                _reap(child, 0.5)
            self._remove_record(name)

    def is_running(self, name: str) -> bool:
        return self.main_pid(name) is not None

    def main_pid(self, name: str) -> int | None:
        with self._lock:
            child = self._children.get(name)
            alive = child is not None and child.poll() is None  # reaps our own dead child, so it is not a zombie
            record = self._read_record(name)
            if record is None:
                return None
            if child is not None and child.pid == record.pid:
                # Our own child: waitpid knows whether it lives, and its pid is not reused before we reap it.
                return record.pid if alive else None
            proc = _live_process(record.pid)
            return record.pid if proc is not None and record.matches(proc) else None

    def running(self) -> set[str]:
        return {name for name in self._recorded_names() if self.is_running(name)}

    def stop_all(self, timeout: float = 5.0) -> None:
        with self._lock:
            for name in sorted(self._recorded_names() | set(self._children)):
                self.stop(name, timeout)

    # -- helpers

    def _prepare_run_dir(self, spec: ServiceSpec, ctx: ServiceContext, run_dir: Path) -> list[str]:
        if spec.command is None:
            raise ServiceRuntimeError(f"{spec.name}: no start.command for the process runtime")
        run_dir.mkdir(parents=True, exist_ok=True)
        values = spec.template_values(node_id=ctx.node_id, run_dir=run_dir, vip=ctx.vip, bind=ctx.bind,
                                      ceph_dir=ctx.ceph_dir or "", root=ctx.root)
        for file_name, content in spec.render_files(values).items():
            _write_atomic(run_dir / file_name, content)
        return spec.render_command(values)

    def _entered(self, argv: list[str], run_dir: Path) -> list[str]:
        """`argv` behind the `enter` prefix. Entering a mount namespace moves the working
        directory to its /: `env --chdir` goes back to the run dir by its path, resolved
        inside (nsenter's --wd opens the directory before entering, on the host's mounts)."""
        if not self.enter:
            return argv
        return [*self.enter, "env", f"--chdir={run_dir}", *argv]

    def _spawn(self, name: str, argv: list[str], run_dir: Path) -> subprocess.Popen[bytes]:
        with open(run_dir / LOG_FILE, "ab") as log_file:
            log_file.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} start {argv}\n".encode())
            log_file.flush()
            try:
                # Own session = own process group: stop() signals the whole group,
                # and the service survives a crash of the agent.
                return subprocess.Popen(
                    argv,
                    cwd=run_dir,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                    env=_child_env(),
                )
            except OSError as exc:
                raise ServiceRuntimeError(f"{name}: cannot execute {argv[0]!r}: {exc.strerror or exc}") from exc

    def _record_for(self, proc: subprocess.Popen[bytes]) -> PidRecord:
        # Our unreaped child cannot vanish from /proc, so create_time is readable.
        return PidRecord(pid=proc.pid, create_time=psutil.Process(proc.pid).create_time())

    def _write_record(self, run_dir: Path, record: PidRecord, argv: list[str]) -> None:
        data = {"pid": record.pid, "create_time": record.create_time, "argv": argv}
        _write_atomic(run_dir / PID_FILE, json.dumps(data) + "\n")

    def _read_record(self, name: str) -> PidRecord | None:
        path = self.run_dir(name) / PID_FILE
        try:
            info = path.stat()
        except FileNotFoundError:
            return None
        except OSError:
            info = None
        key = (info.st_ino, info.st_mtime_ns, info.st_size) if info is not None else None
        cached = self._records.get(name)
        if key is not None and cached is not None and cached[0] == key:
            return cached[1]
        record = self._parse_record(name, path)
        if key is not None:
            self._records[name] = (key, record)
        return record

    def _parse_record(self, name: str, path: Path) -> PidRecord | None:
        try:
            data = json.loads(path.read_text())
            pid, create_time = data["pid"], data["create_time"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.event("runtime.bad_pid_record", level="warning", service=name, error=str(exc))
            return None
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 1 or not isinstance(create_time, (int, float)):
            log.event("runtime.bad_pid_record", level="warning", service=name, data=data)
            return None
        return PidRecord(pid=pid, create_time=float(create_time))

    def _remove_record(self, name: str) -> None:
        try:
            (self.run_dir(name) / PID_FILE).unlink()
        except FileNotFoundError:
            pass

    def _recorded_names(self) -> set[str]:
        if not self.run_root.is_dir():
            return set()
        return {p.parent.name for p in self.run_root.glob(f"*/{PID_FILE}")}

    def _group_is_ours(self, record: PidRecord) -> bool:
        """May we signal process group `record.pgid`?

        If a process with pid == pgid lives, it must be our recorded leader
        (same create_time). If the leader is gone, any remaining members are
        our orphans: the kernel never hands out a pid that is still in use as
        a process group id, so nobody else can lead a group with that number.
        """
        leader = _live_process(record.pid)
        if leader is not None:
            return record.matches(leader)
        return bool(_group_members(record.pgid))

    def _terminate_group(
        self, name: str, pgid: int, child: subprocess.Popen[bytes] | None, timeout: float
    ) -> None:
        _signal_group(pgid, signal.SIGTERM)
        if _wait_group_gone(pgid, child, timeout):
            log.event("runtime.stopped", service=name, pgid=pgid, how="SIGTERM")
            return
        _signal_group(pgid, signal.SIGKILL)
        if not _wait_group_gone(pgid, child, 5.0):
            raise ServiceRuntimeError(f"{name}: process group {pgid} survived SIGKILL")
        log.event("runtime.stopped", service=name, pgid=pgid, how="SIGKILL", level="warning")


def _child_env() -> dict[str, str]:
    """The agent's environment, with its own installation's bin first: `nodeos` in a
    catalog command is the nodeos of the running agent (lab venv or /opt/nodeos)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", os.defpath)])
    return env


def _live_process(pid: int) -> psutil.Process | None:
    """The process, unless it does not exist or is a zombie (dead, unreaped)."""
    try:
        proc = psutil.Process(pid)
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc
    except psutil.Error:
        return None


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) pids in process group `pgid`."""
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) == pgid:
                members.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _wait_group_gone(pgid: int, child: subprocess.Popen[bytes] | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if child is not None:
            child.poll()
        _reap_group(pgid)
        if not _group_members(pgid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL)


def _reap_group(pgid: int) -> None:
    """Reap any of our children in the group (workers adopted by a subreaper agent)."""
    while True:
        try:
            pid, _ = os.waitpid(-pgid, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _reap(child: subprocess.Popen[bytes], timeout: float) -> None:
    try:
        child.wait(timeout)
    except subprocess.TimeoutExpired:
        pass


def _write_atomic(path: Path, content: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(content)
    os.replace(tmp, path)


# ---------------------------------------------------------------- systemd runtime

# (argv, timeout) -> CompletedProcess; injectable so unit tests need no systemd.
Runner = Callable[[Sequence[str], float], "subprocess.CompletedProcess[str]"]


def _run_subprocess(argv: Sequence[str], timeout: float) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)


CGROUP_ROOT = "/sys/fs/cgroup"


def mount_namespace_argv(ns_file: Path) -> list[str]:
    """Prefix that runs a command in a mount namespace (nsenter execs it: same pid).

    Entering a mount namespace moves the working directory to its /.
    """
    return ["nsenter", f"--mount={ns_file}"]


def _parse_show(name: str, text: str, units: list[str]) -> dict[str, UnitStatus]:
    """`systemctl show -p Id -p ActiveState -p MainPID U1 U2 ...`: one block of KEY=value lines
    per unit, in the order asked, blank lines between. By Id where every block names one asked
    for; by order otherwise (an alias asked for shows its unit's own Id)."""
    blocks = [block for block in text.strip().split("\n\n") if block.strip()]
    if len(blocks) != len(units):
        raise ServiceRuntimeError(f"{name}: systemctl show gave {len(blocks)} units' status for {len(units)} asked")
    parsed = []
    for block in blocks:
        fields = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        try:
            pid = int(fields.get("MainPID", ""))
        except ValueError:
            raise ServiceRuntimeError(f"{name}: systemctl show gave MainPID {fields.get('MainPID')!r}") from None
        parsed.append((fields.get("Id", ""), UnitStatus(fields.get("ActiveState", "unknown"), pid if pid > 0 else None)))
    if sorted(unit_id for unit_id, _ in parsed) == sorted(units):
        return dict(parsed)
    return {unit: status for unit, (_, status) in zip(units, parsed)}


def _parse_list_units(text: str) -> dict[str, str]:
    """`systemctl list-units --all --plain --no-legend U...`: "UNIT LOAD ACTIVE SUB DESCRIPTION"
    per unit systemd holds (by its own name: an alias asked for is listed under its unit's)."""
    states = {}
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] in ("●", "*"):  # a failed or not-found unit's mark, where shown
            fields = fields[1:]
        if len(fields) >= 3:
            states[fields[0]] = fields[2]
    return states


def unit_cgroup(unit: str) -> str:
    """The cgroup systemd gives a system unit: an instance of a template unit
    (ceph-mon@x.service) sits in its template's slice, system-ceph\\x2dmon.slice."""
    if "@" not in unit:
        return f"{CGROUP_ROOT}/system.slice/{unit}"
    prefix = unit.split("@", 1)[0].replace("-", "\\x2d")  # systemd-escape
    return f"{CGROUP_ROOT}/system.slice/system-{prefix}.slice/{unit}"


# Seconds one `systemctl show` of every known unit answers is_running and main_pid. The
# services pass asks about each service every turn: a systemctl process per service and
# per turn (17 with the cloud catalog, 10 turns a second) was most of a real node's idle CPU.
STATUS_MAX_AGE = 1.0
RUNNING_STATES = ("active", "reloading")  # what `systemctl is-active` answers 0 for


@dataclass(frozen=True)
class UnitStatus:
    active_state: str
    main_pid: int | None


class SystemdRuntime:
    """systemctl on each service's unit (real nodes).

    Not integration-tested here: the lab and test machines have no systemd as
    PID 1 (the image tier boots it). Unit tests inject a fake `runner` and
    check the commands built. A catalog names each unit by its own name, not
    an alias (`list-units` lists a unit under its own).
    """

    def __init__(
        self,
        units: Mapping[str, str] | None = None,
        runner: Runner = _run_subprocess,
        command_timeout: float = 30.0,
        systemctl: str = "systemctl",
        pid_alive: Callable[[int], bool] = psutil.pid_exists,
        bus: UnitStates | None = None,
    ) -> None:
        # name -> unit; pass the catalog's units so a restarted agent can stop them.
        self._units: dict[str, str] = dict(units or {})
        self._runner = runner
        self._timeout = command_timeout
        self._systemctl = systemctl
        self._pid_alive = pid_alive
        self._bus = bus  # states without a systemctl process (systemd_bus.py); systemctl when it fails
        self._bus_failed = False
        self._lock = threading.Lock()
        self._status: dict[str, UnitStatus] = {}  # unit -> its state at _status_at (one batched call)
        self._status_at = float("-inf")

    def unit_for(self, name: str) -> str:
        return self._units.get(name, f"{name}.service")

    def fence_target(self, name: str) -> dict[str, str]:
        return {"cgroup": unit_cgroup(self.unit_for(name))}

    def know(self, specs: Iterable[ServiceSpec]) -> None:
        # A unit is often not "<name>.service" (rabbitmq-server, ceph-mon@nodeos): the guard's
        # first claim, and a restarted agent's questions, must name the catalog's unit.
        units = {spec.name: spec.unit for spec in specs if spec.unit is not None}
        with self._lock:
            self._units.update(units)

    def start(self, spec: ServiceSpec, ctx: ServiceContext) -> None:
        if spec.unit is None:
            raise ServiceRuntimeError(f"{spec.name}: no start.unit for the systemd runtime")
        with self._lock:
            self._units[spec.name] = spec.unit
        try:
            self._systemctl_ok(spec.name, ["start", spec.unit], self._timeout)
        finally:
            self._forget_status()
        log.event("runtime.started", service=spec.name, unit=spec.unit)

    def stop(self, name: str, timeout: float = 5.0) -> None:
        # systemd applies the unit's own stop timeout; ours bounds the call itself.
        try:
            self._systemctl_ok(name, ["stop", self.unit_for(name)], max(timeout, self._timeout))
        finally:
            self._forget_status()
        log.event("runtime.stopped", service=name, unit=self.unit_for(name))

    def is_running(self, name: str) -> bool:
        return self._unit_status(name).active_state in RUNNING_STATES

    def main_pid(self, name: str) -> int | None:
        return self._unit_status(name).main_pid

    def _forget_status(self) -> None:
        """After a start or stop: what we changed is asked again."""
        with self._lock:
            self._status_at = float("-inf")

    def _unit_status(self, name: str) -> UnitStatus:
        """From the last batched call if it is recent and its main process still lives (a crash
        is seen at once: systemd reaps the process, and we ask again)."""
        unit = self.unit_for(name)
        with self._lock:
            cached = self._status.get(unit)
            fresh = time.monotonic() - self._status_at < STATUS_MAX_AGE
        if cached is not None and fresh and (cached.main_pid is None or self._pid_alive(cached.main_pid)):
            return cached
        return self._refresh(name, unit)

    def _refresh(self, name: str, unit: str) -> UnitStatus:
        """Every known unit's state at once: over D-Bus when it answers, else from systemctl."""
        with self._lock:
            units = sorted(set(self._units.values()) | {unit})
        asked = time.monotonic()
        status = self._from_bus(units) if self._bus is not None else None
        if status is None:
            status = self._from_systemctl(name, units)
        with self._lock:
            self._status, self._status_at = status, asked
        return status[unit]

    def _from_bus(self, units: list[str]) -> dict[str, UnitStatus] | None:
        assert self._bus is not None
        try:
            states = self._bus(units)
        except BusError as exc:
            if not self._bus_failed:
                log.event("runtime.bus_failed", level="warning", error=str(exc), instead="systemctl")
            self._bus_failed = True
            return None
        if self._bus_failed:
            log.event("runtime.bus_back")
            self._bus_failed = False
        return {unit: UnitStatus(*states[unit]) for unit in units}

    def _from_systemctl(self, name: str, units: list[str]) -> dict[str, UnitStatus]:
        """`list-units` for every unit, then `show` for the main pids of those not at rest.

        list-units answers from the units systemd holds in memory; a unit it does not hold is not
        running. `show` would load such a unit, and what it names After= and Requires=, to answer,
        every time: for the cloud catalog's 17 units on an emulated CPU, over 30 s a call, and
        the agent, its passes stalled, was restarted by its watchdog every 70 s (2026-12-02).
        """
        listed = self._systemctl_ok(name, ["list-units", "--all", "--plain", "--no-legend", "--no-pager", *units],
                                    self._timeout)
        states = _parse_list_units(listed.stdout)
        status = {u: UnitStatus(states.get(u, "inactive"), None) for u in units}
        busy = [u for u in units if status[u].active_state not in AT_REST]
        if busy:
            shown = self._systemctl_ok(name, ["show", "-p", "Id", "-p", "ActiveState", "-p", "MainPID", *busy], self._timeout)
            status.update(_parse_show(name, shown.stdout, busy))
        return status

    def running(self) -> set[str]:
        with self._lock:
            names = list(self._units)
        return {name for name in names if self.is_running(name)}

    def stop_all(self) -> None:
        with self._lock:
            names = list(self._units)
        for name in names:
            self.stop(name)

    def _call(self, name: str, args: list[str], timeout: float) -> "subprocess.CompletedProcess[str]":
        argv = [self._systemctl, *args]
        try:
            return self._runner(argv, timeout)
        except subprocess.TimeoutExpired:
            raise ServiceRuntimeError(f"{name}: '{' '.join(argv)}' timed out after {timeout:g}s") from None
        except OSError as exc:
            raise ServiceRuntimeError(f"{name}: cannot run {self._systemctl}: {exc.strerror or exc}") from exc

    def _systemctl_ok(self, name: str, args: list[str], timeout: float) -> "subprocess.CompletedProcess[str]":
        result = self._call(name, args, timeout)
        if result.returncode != 0:
            detail = (result.stderr or result.stdout or "").strip() or f"exit status {result.returncode}"
            raise ServiceRuntimeError(f"{name}: '{self._systemctl} {' '.join(args)}' failed: {detail}")
        return result
