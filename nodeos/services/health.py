"""Health checks of one service, and the rise/fall logic that debounces them.

`run_check` does the I/O and never raises: any failure is an unhealthy
result with a detail an operator can read. `HealthTracker` and
`ServiceHealth` are pure: time is an argument (`now`), so they are
deterministic and unit-testable without a network.

A check that timed out while the process lives and its port accepts
connections is `slow`, not failed: the service is busy (a database under a
schema sync on a loaded node), and restarting it would kill the work it is
doing. Slow answers make the check `slow` (reported, never repaired) until
they have lasted the check's `slow_grace`; then, or after `fall` refused or
wrong answers, it is unhealthy as before.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Sequence

import psutil

from .catalog import NEUTRON_READ, HealthCheckSpec, render_template

State = Literal["starting", "healthy", "slow", "unhealthy"]
_MAX_BODY = 64 * 1024
KEYSTONE_PORT = 5000  # where the API checks get their token, at keystone's VIP
# placement answers without the header too (as 1.0), but a client always names the microversion it speaks.
PLACEMENT_VERSION: Mapping[str, str] = {"OpenStack-API-Version": "placement 1.0"}
COMPUTE_VERSION: Mapping[str, str] = {"OpenStack-API-Version": "compute 2.1"}  # the base: every field read is in it
VOLUME_VERSION: Mapping[str, str] = {"OpenStack-API-Version": "volume 3.0"}  # likewise
wall_clock: Callable[[], float] = time.time  # the service lists' updated_at is wall-clock time (UTC)


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    detail: str
    duration: float
    slow: bool = False  # failed by a timeout while the process lived and its port accepted (see slow_result)


@dataclass(frozen=True)
class CheckTarget:
    """What a check looks at: the address to connect to and the main pid."""

    host: str = "127.0.0.1"
    pid: int | None = None
    # Template values for command checks ({run_dir}, {port}, ...), and the
    # cloud checks' passwords (admin_password, health_password).
    values: Mapping[str, str] = field(default_factory=dict)
    vip: str | None = None  # the service's VIP when this node holds it (API checks go through it)
    vips: Mapping[str, str] = field(default_factory=dict)  # every service's VIP (where keystone answers)


def check_host(bind: str) -> str:
    """Where to connect to reach a service bound to `bind` (wildcard: loopback)."""
    return "127.0.0.1" if bind in ("", "0.0.0.0", "::") else bind


def run_check(spec: HealthCheckSpec, target: CheckTarget) -> CheckResult:
    started = time.monotonic()
    try:
        ok, detail = _CHECKS[spec.type](spec, target)
    except Exception as exc:  # a check must never take the agent down
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    result = CheckResult(ok=ok, detail=detail, duration=time.monotonic() - started)
    if not ok and spec.slow_grace > 0 and timed_out(detail):
        try:
            return slow_result(result, _process_state(target.pid), _reach(spec, target), spec.timeout)
        except Exception:  # noqa: BLE001 (the check's own result stands)
            return result
    return result


# The probes' word for a timeout (socket.timeout, pymysql 2013, a command's deadline).
TIMED_OUT = "timed out"
# A process in these states is frozen or gone, not busy: its timeouts are failures.
NOT_BUSY = (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP, psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)


def timed_out(detail: str) -> bool:
    return TIMED_OUT in detail


def slow_result(result: CheckResult, process: str | None, reach: tuple[str, int] | None, timeout: float,
                connect: Callable[[tuple[str, int], float], bool] | None = None) -> CheckResult:
    """A timed-out result as `slow` when the process is alive and runnable (`process`: its psutil
    status) and the check's port (`reach`, if it has one) accepts a connection; else unchanged."""
    if process is None or process in NOT_BUSY:
        return result
    if reach is not None and not (connect or _accepts)(reach, timeout):
        return result
    where = f", port {reach[1]} accepting" if reach else ""
    return CheckResult(ok=False, detail=f"slow: {result.detail} (process {process}{where})", duration=result.duration,
                       slow=True)


def _process_state(pid: int | None) -> str | None:
    if pid is None:
        return None
    try:
        return str(psutil.Process(pid).status())
    except psutil.Error:
        return None


def _reach(spec: HealthCheckSpec, target: CheckTarget) -> tuple[str, int] | None:
    """Where the check's port listens: the API a service list is read from, else this service."""
    if spec.port is None:
        return None
    if spec.type == "service-list":
        from nodeos.cloud.registry import SERVICE_LISTS

        listing = SERVICE_LISTS.get(spec.api or "")
        host = target.vips.get(listing.vip_of) if listing else None
        return (host, spec.port) if host else None
    return (target.vip or target.host, spec.port)


def _accepts(address: tuple[str, int], timeout: float) -> bool:
    try:
        with socket.create_connection(address, timeout=timeout):
            return True
    except OSError:
        return False


def _check_process(spec: HealthCheckSpec, target: CheckTarget) -> tuple[bool, str]:
    if target.pid is None:
        return False, "no main pid"
    try:
        status = psutil.Process(target.pid).status()
    except psutil.NoSuchProcess:
        return False, f"pid {target.pid} does not exist"
    if status == psutil.STATUS_ZOMBIE:
        return False, f"pid {target.pid} is a zombie"
    return True, f"pid {target.pid} {status}"


def _check_tcp(spec: HealthCheckSpec, target: CheckTarget) -> tuple[bool, str]:
    address = (target.host, _port(spec))
    try:
        with socket.create_connection(address, timeout=spec.timeout):
            return True, f"connected to {address[0]}:{address[1]}"
    except OSError as exc:
        return False, f"tcp {address[0]}:{address[1]}: {exc.strerror or exc}"


def _check_http(spec: HealthCheckSpec, target: CheckTarget) -> tuple[bool, str]:
    port, path = _port(spec), spec.path or "/"
    where = f"http://{target.host}:{port}{path}"
    conn = http.client.HTTPConnection(target.host, port, timeout=spec.timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close", "User-Agent": "nodeos-health"})
        response = conn.getresponse()
        body = response.read(_MAX_BODY).decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as exc:
        return False, f"{where}: {getattr(exc, 'strerror', None) or exc or type(exc).__name__}"
    finally:
        conn.close()
    expected = spec.expect_status or 200
    if response.status != expected:
        return False, f"{where}: status {response.status}, expected {expected}"
    if spec.expect_body is not None and spec.expect_body not in body:
        return False, f"{where}: body does not contain {spec.expect_body!r}"
    return True, f"{where}: status {response.status}"


def _check_command(spec: HealthCheckSpec, target: CheckTarget) -> tuple[bool, str]:
    argv = [render_template(arg, target.values) for arg in spec.command or ()]
    if not argv:
        return False, "no command"
    try:
        # Own session, so a timeout kills the command and anything it started.
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        return False, f"cannot run {argv[0]!r}: {exc.strerror or exc}"
    try:
        output, _ = proc.communicate(timeout=spec.timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        proc.communicate()
        return False, f"{argv[0]}: timed out after {spec.timeout:g}s"
    tail = output.decode("utf-8", "replace").strip()[-200:]
    if proc.returncode != 0:
        return False, f"{argv[0]}: exit status {proc.returncode}: {tail}"
    return True, f"{argv[0]}: exit status 0"


def _check_ceph(spec: HealthCheckSpec, target: CheckTarget) -> tuple[bool, str]:
    from nodeos.storage.asok import daemon_check

    ceph_dir = target.values.get("ceph_dir")
    if not ceph_dir:
        return False, "no Ceph directory for this node"
    return daemon_check(spec.daemon or "", os.path.join(ceph_dir, "run"), target.values.get("node_id", ""))


def _check_mariadb(spec: HealthCheckSpec, target: CheckTarget) -> tuple[bool, str]:
    """A write and a read on the heartbeat table (a ping passes on "Access denied")."""
    from nodeos.cloud.probes import HEALTH_USER, mariadb_heartbeat

    return mariadb_heartbeat(target.host, _port(spec), HEALTH_USER, target.values.get("health_password", ""), spec.timeout)


def _check_memcached(spec: HealthCheckSpec, target: CheckTarget) -> tuple[bool, str]:
    from nodeos.cloud.probes import memcached_set_get

    return memcached_set_get(target.host, _port(spec), spec.timeout)


def _check_keystone(spec: HealthCheckSpec, target: CheckTarget) -> tuple[bool, str]:
    """A token for the admin (reused for a minute), then an authenticated read, through the VIP clients use."""
    from nodeos.cloud.probes import keystone_tokens

    host = target.vip or target.host
    return keystone_tokens.check(f"http://{host}:{_port(spec)}/v3", "admin", target.values.get("admin_password", ""),
                                 "admin", spec.timeout, read_path=spec.path or "/v3/projects")


def _check_glance(spec: HealthCheckSpec, target: CheckTarget) -> tuple[bool, str]:
    """A keystone token (at keystone's VIP, reused for a minute), then GET /v2/images through glance's VIP."""
    return _check_api(spec, target, "/v2/images")


def _check_placement(spec: HealthCheckSpec, target: CheckTarget) -> tuple[bool, str]:
    """A keystone token (shared with glance's check), then GET /resource_providers through placement's VIP."""
    return _check_api(spec, target, "/resource_providers", PLACEMENT_VERSION)


def _check_nova(spec: HealthCheckSpec, target: CheckTarget) -> tuple[bool, str]:
    """A keystone token (shared), then GET /v2.1/servers through nova-api's VIP (its API and cell databases)."""
    return _check_api(spec, target, "/v2.1/servers", COMPUTE_VERSION)


def _check_cinder(spec: HealthCheckSpec, target: CheckTarget) -> tuple[bool, str]:
    """A keystone token (shared), then GET /v3/volumes through cinder-api's VIP (its database)."""
    return _check_api(spec, target, "/v3/volumes", VOLUME_VERSION)


def _check_neutron(spec: HealthCheckSpec, target: CheckTarget) -> tuple[bool, str]:
    """A keystone token (shared), then GET /v2.0/networks through neutron-server's VIP (its database)."""
    return _check_api(spec, target, NEUTRON_READ)


def _check_horizon(spec: HealthCheckSpec, target: CheckTarget) -> tuple[bool, str]:
    """The dashboard through its VIP: the port, the login page and its CSRF token, the admin's login
    (keystone, a session in memcached; reused for a minute), then a page of the admin's project."""
    from nodeos.cloud.horizon_probe import horizon_sessions

    host = target.vip or target.host
    return horizon_sessions.check(f"http://{host}:{_port(spec)}", "admin", target.values.get("admin_password", ""),
                                  spec.timeout)


def _check_service_list(spec: HealthCheckSpec, target: CheckTarget) -> tuple[bool, str]:
    """A worker (spec.daemon: nova-conductor, cinder-volume ...) of this node "up" in its API's
    (spec.api) own service list, read with a keystone token through that API's VIP: its reports
    are fresh, so its RPC and database path works (a process check cannot see a conductor that
    lost its broker). The singleton workers report as one fixed name wherever they run (the
    registry's: CONTROL_HOST, cinder-volume's backend host); any other as this node's id."""
    from nodeos.cloud.probes import service_state
    from nodeos.cloud.registry import SERVICE_LISTS

    listing = SERVICE_LISTS[spec.api or ""]
    api = target.vips.get(listing.vip_of)
    if not api:
        return False, f"read: {listing.vip_of} has no VIP"
    binary = spec.daemon or ""
    host = listing.daemons.get(binary) or target.values.get("node_id", "")
    started = _started(target.pid)

    def judge(answer: Any) -> tuple[bool, str]:
        return service_state(answer, binary, host, wall_clock(), started, api=spec.api or "")

    return _check_api(spec, target, listing.read, {"OpenStack-API-Version": listing.version}, host=api, judge=judge)


def _started(pid: int | None) -> float | None:
    """When the main process began (wall clock), None if unknown."""
    if pid is None:
        return None
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def _check_api(spec: HealthCheckSpec, target: CheckTarget, default_read: str,
               headers: Mapping[str, str] | None = None, host: str | None = None,
               judge: Callable[[Any], tuple[bool, str]] | None = None) -> tuple[bool, str]:
    """An API behind keystone: `token: ...` when keystone failed, `read URL: ...` when the API did.
    `host`: where the API answers (default: this service's VIP)."""
    from nodeos.cloud.probes import keystone_tokens

    keystone = target.vips.get("keystone")
    if not keystone:
        return False, "token: keystone has no VIP"
    host = host or target.vip or target.host
    return keystone_tokens.check_api(f"http://{keystone}:{KEYSTONE_PORT}/v3", "admin",
                                     target.values.get("admin_password", ""), "admin",
                                     f"http://{host}:{_port(spec)}{spec.path or default_read}", spec.timeout,
                                     headers=headers, judge=judge)


def _check_rabbitmq(spec: HealthCheckSpec, target: CheckTarget) -> tuple[bool, str]:
    """Log in as the openstack user through the VIP, publish and consume one message; a blocked
    publisher is the alarm layer (memory or disk)."""
    from nodeos.cloud.probes import rabbitmq_publish_consume

    return rabbitmq_publish_consume(target.vip or target.host, _port(spec), "openstack",
                                    target.values.get("mq_password", ""), spec.timeout)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _port(spec: HealthCheckSpec) -> int:
    if spec.port is None:
        raise ValueError(f"{spec.type} check without a port")
    return spec.port


_CHECKS = {
    "process": _check_process,
    "tcp": _check_tcp,
    "http": _check_http,
    "command": _check_command,
    "ceph": _check_ceph,
    "mariadb": _check_mariadb,
    "memcached": _check_memcached,
    "keystone": _check_keystone,
    "glance": _check_glance,
    "placement": _check_placement,
    "nova": _check_nova,
    "cinder": _check_cinder,
    "service-list": _check_service_list,
    "neutron": _check_neutron,
    "horizon": _check_horizon,
    "rabbitmq": _check_rabbitmq,
}


class HealthTracker:
    """Debounces check results: `rise` successes in a row make a check
    healthy, `fall` failures in a row make it unhealthy. Slow results (a
    timeout on a live, listening process) neither pass nor fail: the check
    is `slow` until a pass, or unhealthy once its answers have been missing
    for `slow_grace` seconds (counted from the first slow or failed result
    of the streak). Pure: time is an argument."""

    def __init__(self, rise: int = 2, fall: int = 2, slow_grace: float = 0.0) -> None:
        if rise < 1 or fall < 1:
            raise ValueError("rise and fall must be >= 1")
        self.rise = rise
        self.fall = fall
        self.slow_grace = slow_grace
        self.state: State = "starting"
        self._base: State = "starting"  # the state without slowness: starting, healthy or unhealthy
        self._successes = 0
        self._failures = 0
        self._missing_since: float | None = None  # first result of the current streak without a pass

    def observe(self, ok: bool, slow: bool = False, now: float = 0.0) -> State | None:
        """Count one result; return the new state if it changed, else None."""
        if ok:
            self._successes, self._failures, self._missing_since = self._successes + 1, 0, None
            if self._successes >= self.rise:
                self._base = "healthy"
            new: State = self._base
        else:
            self._successes = 0
            if self._missing_since is None:
                self._missing_since = now
            if not slow:
                self._failures += 1  # a slow answer between two failures neither resets nor counts
            overdue = slow and now - self._missing_since >= self.slow_grace
            if self._failures >= self.fall or overdue:
                self._base = "unhealthy"
            slowing = self._base != "unhealthy" and (slow or self.state == "slow")
            new = "slow" if slowing else self._base
        if new == self.state:
            return None
        self.state = new
        return new

    def reset(self) -> None:
        """Back to "starting" (e.g. after a restart of the service)."""
        self.state = self._base = "starting"
        self._successes = self._failures = 0
        self._missing_since = None


@dataclass
class _CheckSlot:
    spec: HealthCheckSpec
    tracker: HealthTracker
    next_due: float
    last: CheckResult | None = None


class ServiceHealth:
    """All checks of one service. A check is due `interval` after its last
    result; the service is healthy when every check is, unhealthy when any
    is, slow when none is unhealthy and any is slow, starting otherwise. `now` is always an argument (monotonic seconds)."""

    def __init__(self, checks: Sequence[HealthCheckSpec], now: float = 0.0) -> None:
        self._slots = [_CheckSlot(spec, HealthTracker(spec.rise, spec.fall, spec.slow_grace), now) for spec in checks]
        self._started = now
        self.state: State = self._aggregate()

    @property
    def checks(self) -> tuple[HealthCheckSpec, ...]:
        return tuple(slot.spec for slot in self._slots)

    def due(self, now: float) -> list[int]:
        """Indices of the checks to run now."""
        return [index for index, slot in enumerate(self._slots) if slot.next_due <= now]

    def record(self, index: int, result: CheckResult | bool, now: float) -> State | None:
        """Record one check's result; return the service's new state if it changed."""
        slot = self._slots[index]
        if isinstance(result, bool):
            result = CheckResult(ok=result, detail="", duration=0.0)
        slot.last = result
        # Within its start_period a check that has not passed yet does not count its
        # failures (a database initialising its files); one pass ends the grace.
        in_grace = slot.tracker.state == "starting" and now - self._started < slot.spec.start_period
        if result.ok or not in_grace:
            slot.tracker.observe(result.ok, result.slow, now)
        slot.next_due = now + slot.spec.interval
        new = self._aggregate()
        if new == self.state:
            return None
        self.state = new
        return new

    def run_due(self, target: CheckTarget, now: float) -> State | None:
        """Convenience: run every due check against `target` and record it."""
        before = self.state
        for index in self.due(now):
            self.record(index, run_check(self._slots[index].spec, target), now)
        return self.state if self.state != before else None

    def check_spec(self, index: int) -> HealthCheckSpec:
        """The spec of check `index` (to run it elsewhere, e.g. in a thread pool)."""
        return self._slots[index].spec

    def next_due(self) -> float | None:
        return min((slot.next_due for slot in self._slots), default=None)

    def reset(self, now: float) -> None:
        """After a (re)start: all checks starting again and due at once."""
        for slot in self._slots:
            slot.tracker.reset()
            slot.next_due = now
            slot.last = None
        self._started = now
        self.state = self._aggregate()

    def details(self) -> list[dict[str, object]]:
        """Per check: type, state and the last result's detail (for reporting)."""
        return [
            {
                "type": slot.spec.type,
                "state": slot.tracker.state,
                "ok": None if slot.last is None else slot.last.ok,
                "detail": "" if slot.last is None else slot.last.detail,
            }
            for slot in self._slots
        ]

    def _aggregate(self) -> State:
        states = [slot.tracker.state for slot in self._slots]
        if any(state == "unhealthy" for state in states):
            return "unhealthy"
        if any(state == "slow" for state in states):
            return "slow"  # reported, not repaired: the Monitor restarts only unhealthy or failed instances
        if states and all(state == "healthy" for state in states):
            return "healthy"
        return "starting"
