"""Where an agent's cloud duties touch the node: configuration files and one-time job steps.

Two hosts behind one interface (`Host`), chosen by the runtime:

* `LocalHost` (the lab, process runtime): the agent runs as root with every
  capability; it writes the files under the node's private root and runs the
  steps itself, behind the `enter` prefix (nsenter into the node's mount
  namespace), as the service's user with `runuser`.
* `TransientUnits` (a real node, systemd runtime): the agent's unit
  (elements/nodeos-agent/static/etc/systemd/system/nodeos-agent.service)
  allows neither. It runs as uid 0 but its CapabilityBoundingSet is
  CAP_NET_ADMIN CAP_NET_RAW CAP_KILL CAP_SYS_NICE, with NoNewPrivileges: no
  CAP_CHOWN (a file cannot be given to the keystone group), no
  CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH (a 0600 keystone key cannot even be
  read back), no CAP_SETUID/CAP_SETGID (no `runuser -u keystone`);
  ProtectSystem=strict makes everything but /var/lib/nodeos, /run/nodeos,
  /dev, /proc and /sys read-only (/etc/keystone, /etc/nova ... are not
  writable, whatever the capabilities). What it can do is talk to systemd
  over its Unix socket (systemctl is how it starts services already). So
  each write and each step is a transient unit, `systemd-run --wait
  --collect --pipe`, outside the agent's sandbox and with the unit's own
  User=/Group=, bounded by RuntimeMaxSec; the agent's sandbox stays as it
  is. Secrets never appear on a command line nor in a unit's properties
  (`systemctl show` lets everyone read Environment=): the files go to the
  writer as JSON on its stdin (`python -m nodeos.cloud.host write`, which
  calls config.write_files: owner and mode set before the content goes in),
  a step's environment as NAME=VALUE lines on its stdin, exported by a
  small shell before it execs the step.

The node pass asks for a service's files before each start attempt, and again at its
pace (10 a second) while the start waits (no grant yet): a write identical to one done
in the last REWRITE_AFTER seconds is skipped, and a failed one is not tried again for
RETRY_AFTER seconds, so the node never spawns a writer per pass.

A job step's unit has a fixed name (`nodeos-job-<job>-<step>.service`): a step
left running by an agent that died is not started a second time beside it
(systemd-run refuses a name in use, the attempt fails and is retried later).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Protocol, Sequence

from .config import ConfigError, ConfigFile, write_files
from .jobs import OUTPUT_TAIL, Command, JobError, run_commands


class Host(Protocol):
    def write(self, files: list[ConfigFile], what: str) -> list[str]:
        """Write what changed; the paths written. ConfigError when it cannot be done now."""
        ...

    def run(self, job: str, steps: Sequence[Command], timeout: float) -> str:
        """Run the steps in order; JobError with the output's tail on the first failure."""
        ...


class LocalHost:
    """The agent does it itself (the lab: root, the node's root and mount namespace)."""

    def __init__(self, root: Path | str = "/", enter: Sequence[str] = ()) -> None:
        self.root = Path(root)
        self.enter = list(enter)

    def write(self, files: list[ConfigFile], what: str) -> list[str]:
        return write_files(files, self.root)

    def run(self, job: str, steps: Sequence[Command], timeout: float) -> str:
        return run_commands(job, steps, self.enter, timeout)


# (argv, stdin text, timeout) -> CompletedProcess; injectable so unit tests need no systemd.
Runner = Callable[[Sequence[str], str, float], "subprocess.CompletedProcess[str]"]


def _run(argv: Sequence[str], stdin: str, timeout: float) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=timeout, check=False)


# Exports the NAME=VALUE lines of stdin, then execs the step ("$@") with stdin at its end.
ENV_FROM_STDIN = 'while IFS= read -r kv; do export "$kv"; done; exec "$@"'
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
WRITE_TIMEOUT = 60.0  # a few small files; python's start-up is most of it
STOP_GRACE = 30.0  # beyond RuntimeMaxSec: systemd stops the unit, then systemd-run returns
REWRITE_AFTER = 30.0  # the same files for the same configuration within this: already written
RETRY_AFTER = 5.0  # after a failed write, the same error until then
# Every transient unit: wait for it, unload it even when it failed, its stdio ours, no chatter.
COMMON = ("--wait", "--collect", "--pipe", "--quiet", "--service-type=exec")


class TransientUnits:
    """Each write and each job step as a transient systemd unit (a real node)."""

    def __init__(self, python: str = sys.executable, systemd_run: str = "systemd-run",
                 runner: Runner = _run, clock: Callable[[], float] = time.monotonic) -> None:
        self.python = python  # the agent's interpreter: the writer is this installation's nodeos
        self.systemd_run = systemd_run
        self.runner = runner
        self.clock = clock
        self._serial = itertools.count(1)
        self._lock = threading.Lock()
        self._written: dict[str, tuple[str, float]] = {}  # what -> (payload digest, when written)
        self._failed: dict[str, tuple[str, float, str]] = {}  # what -> (payload digest, when, error)

    # -- configuration ------------------------------------------------------------
    def write_argv(self, what: str) -> list[str]:
        with self._lock:
            serial = next(self._serial)
        return [self.systemd_run, *COMMON, f"--unit=nodeos-config-{_unit_word(what)}-{serial}",
                f"--description=nodeos: {what}'s configuration", f"--property=RuntimeMaxSec={WRITE_TIMEOUT:g}",
                "--", self.python, "-I", "-m", "nodeos.cloud.host", "write"]

    def write(self, files: list[ConfigFile], what: str) -> list[str]:
        payload = json.dumps([asdict(item) for item in files])
        digest = hashlib.sha256(payload.encode()).hexdigest()
        now = self.clock()
        with self._lock:
            done_before, failed_before = self._written.get(what), self._failed.get(what)
        if done_before is not None and done_before[0] == digest and now - done_before[1] < REWRITE_AFTER:
            return []
        if failed_before is not None and failed_before[0] == digest and now - failed_before[1] < RETRY_AFTER:
            raise ConfigError(failed_before[2])
        try:
            written = self._write(self.write_argv(what), payload, what)
        except ConfigError as exc:
            with self._lock:
                self._failed[what] = (digest, now, str(exc))
            raise
        with self._lock:
            self._written[what] = (digest, now)
            self._failed.pop(what, None)
        return written

    def _write(self, argv: list[str], payload: str, what: str) -> list[str]:
        try:
            done = self.runner(argv, payload, WRITE_TIMEOUT + STOP_GRACE)
        except subprocess.TimeoutExpired:
            raise ConfigError(f"writing {what}'s configuration did not finish in {WRITE_TIMEOUT:.0f}s") from None
        except OSError as exc:
            raise ConfigError(f"cannot run {self.systemd_run}: {exc.strerror or exc}") from exc
        if done.returncode != 0:
            raise ConfigError(f"writing {what}'s configuration failed (exit {done.returncode}): {_tail(done)}")
        try:
            written = json.loads(done.stdout)
        except ValueError:
            raise ConfigError(f"writing {what}'s configuration: unexpected answer {done.stdout[-OUTPUT_TAIL:]!r}") \
                from None
        return [str(path) for path in written]

    # -- jobs -----------------------------------------------------------------------
    def step_argv(self, job: str, index: int, step: Command, timeout: float) -> tuple[list[str], str]:
        """systemd-run's argv for one step and what goes to its stdin (the step's environment)."""
        argv, user = list(step.argv), None
        if argv[:2] == ["runuser", "-u"] and len(argv) > 4 and argv[3] == "--":
            user, argv = argv[2], argv[4:]  # User=/Group= of the unit instead (the agent cannot setuid)
        options = [f"--unit=nodeos-job-{_unit_word(job)}-{index}", f"--description=nodeos job {job}, step {index}",
                   f"--property=RuntimeMaxSec={timeout:g}"]
        if user is not None:
            options.append(f"--uid={user}")  # and its primary group, as runuser
        stdin = ""
        if step.env:
            stdin = "".join(f"{name}={_env_value(job, name, value)}\n" for name, value in sorted(step.env.items()))
            argv = ["/bin/sh", "-c", ENV_FROM_STDIN, "nodeos-job", *argv]
        return [self.systemd_run, *COMMON, *options, "--", *argv], stdin

    def run(self, job: str, steps: Sequence[Command], timeout: float) -> str:
        for index, step in enumerate(steps, start=1):
            argv, stdin = self.step_argv(job, index, step, timeout)
            what = _step_name(step)
            try:
                done = self.runner(argv, stdin, timeout + STOP_GRACE)
            except subprocess.TimeoutExpired:
                raise JobError(f"{job}: {what} did not finish in {timeout:.0f}s") from None
            except OSError as exc:
                raise JobError(f"{job}: cannot run {self.systemd_run}: {exc.strerror or exc}") from exc
            if done.returncode != 0:
                raise JobError(f"{job}: exit {done.returncode}: {_tail(done)}")
        return f"{len(steps)} step(s) done"


def host_for(runtime: str, root: Path | str = "/", enter: Sequence[str] = ()) -> Host:
    """The lab's process runtime: the agent itself; the systemd runtime (a sandboxed agent): transient units."""
    return LocalHost(root, enter) if runtime == "process" else TransientUnits()


def _unit_word(text: str) -> str:
    """A unit-name-safe word (job and configuration names are already `[a-z0-9-]`)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def _env_value(job: str, name: str, value: str) -> str:
    if not _ENV_NAME.match(name) or "\n" in value or "\0" in value:
        raise JobError(f"{job}: environment {name!r} cannot be passed as a line")
    return value


def _step_name(step: Command) -> str:
    return step.argv[4] if step.argv[0] == "runuser" and len(step.argv) > 4 else step.argv[0]


def _tail(done: "subprocess.CompletedProcess[str]") -> str:
    return ((done.stderr or "") + (done.stdout or "")).strip()[-OUTPUT_TAIL:] or "no output"


def _write_main() -> int:
    """`python -m nodeos.cloud.host write` (in a transient unit, as root): the files, as JSON on stdin."""
    try:
        files = [ConfigFile(**item) for item in json.load(sys.stdin)]
        written = write_files(files, "/")
    except (ConfigError, OSError, ValueError, TypeError) as exc:
        print(f"nodeos: {exc}", file=sys.stderr)
        return 1
    json.dump(written, sys.stdout)
    return 0


if __name__ == "__main__":
    if sys.argv[1:] != ["write"]:
        print("usage: python -m nodeos.cloud.host write < files.json", file=sys.stderr)
        sys.exit(2)
    sys.exit(_write_main())
