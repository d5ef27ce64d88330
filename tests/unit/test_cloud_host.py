"""The cloud layer's hosts (nodeos/cloud/host.py): what a sandboxed agent asks systemd to run.

No systemd here (PID 1 is not systemd on the test machines): the tests check the
`systemd-run` command lines built, and run for real what each transient unit would
run (everything after systemd-run's `--`), with the same stdin, in this process's
place: the writer module and the environment-from-stdin shell.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import stat
import subprocess
import sys
from typing import Sequence

import pytest

from nodeos.cloud.config import ConfigError, ConfigFile, render
from nodeos.cloud.host import COMMON, ENV_FROM_STDIN, LocalHost, TransientUnits, host_for
from nodeos.cloud.jobs import Command, JobError, commands
from nodeos.cloud.registry import JOBS
from nodeos.cloud.secrets import admin_password, db_password, service_password

from .test_cloud_config import IDENTITY, VIPS, context

ME, MY_GROUP = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name


class Recorder:
    """A runner that records each call and answers as told (systemd-run is not run)."""

    def __init__(self, *answers: tuple[int, str, str]) -> None:
        self.calls: list[tuple[list[str], str, float]] = []
        self.answers = list(answers)

    def __call__(self, argv: Sequence[str], stdin: str, timeout: float) -> subprocess.CompletedProcess[str]:
        self.calls.append((list(argv), stdin, timeout))
        code, out, err = self.answers.pop(0) if self.answers else (0, "[]", "")
        return subprocess.CompletedProcess(list(argv), code, out, err)


def unit_payload(argv: Sequence[str], stdin: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run what the transient unit would run (after systemd-run's `--`), here, with the same stdin."""
    assert argv[0] == "systemd-run"
    command = list(argv[argv.index("--") + 1:])
    return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)


def options(argv: Sequence[str]) -> list[str]:
    return list(argv[1:argv.index("--")])


def all_secrets() -> list[str]:
    users = {"keystone", "glance", "placement", "nova", "cinder", "neutron"}
    return [admin_password(IDENTITY), *(db_password(IDENTITY, u) for u in users),
            *(service_password(IDENTITY, u) for u in users)]


# ---------------------------------------------------------------- configuration writes


def test_a_write_is_one_transient_unit_running_this_nodeos_writer_with_the_files_on_stdin():
    runner = Recorder((0, '["/etc/keystone/keystone.conf"]', ""))
    host = TransientUnits(python="/opt/nodeos/venv/bin/python3", runner=runner)
    files = render("keystone", context())
    assert host.write(files, "keystone") == ["/etc/keystone/keystone.conf"]
    [(argv, stdin, timeout)] = runner.calls
    assert argv[:1 + len(COMMON)] == ["systemd-run", "--wait", "--collect", "--pipe", "--quiet", "--service-type=exec"]
    assert argv[argv.index("--"):] == ["--", "/opt/nodeos/venv/bin/python3", "-I", "-m", "nodeos.cloud.host", "write"]
    assert "--property=RuntimeMaxSec=60" in options(argv)
    assert not any(o.startswith(("--uid", "--setenv", "-E", "--property=Environment")) for o in options(argv))
    assert [item["path"] for item in json.loads(stdin)] == [f.path for f in files]
    assert timeout > 60  # systemd stops the unit first; systemd-run then returns
    text = " ".join(argv)
    assert not any(secret in text for secret in all_secrets())
    assert all(key not in text for key in context().keys["fernet"])


def test_two_writes_get_two_unit_names():
    runner = Recorder()
    host = TransientUnits(runner=runner)
    host.write([], "nova")
    host.write([ConfigFile("/etc/nova/nova.conf", "changed")], "nova")
    names = [next(o for o in options(argv) if o.startswith("--unit=")) for argv, _, _ in runner.calls]
    assert names == ["--unit=nodeos-config-nova-1", "--unit=nodeos-config-nova-2"]


def test_the_same_files_are_not_written_again_at_the_pass_rate_and_a_failure_waits_before_a_retry():
    """A start that waits (no grant yet) asks for its files every pass: no writer unit per pass."""
    now = [100.0]
    runner = Recorder((0, '["/etc/x.conf"]', ""), (0, "[]", ""), (1, "", "no space left"), (0, '["/etc/x.conf"]', ""))
    host = TransientUnits(runner=runner, clock=lambda: now[0])
    files = [ConfigFile("/etc/x.conf", "x")]
    assert host.write(files, "x") == ["/etc/x.conf"]
    now[0] += 1
    assert host.write(files, "x") == [] and len(runner.calls) == 1  # just written: skipped
    assert host.write(files, "y") == [] and len(runner.calls) == 2  # another configuration: its own unit
    now[0] += 60
    changed = [ConfigFile("/etc/x.conf", "x2")]
    with pytest.raises(ConfigError, match="no space left"):
        host.write(changed, "x")
    now[0] += 1
    with pytest.raises(ConfigError, match="no space left"):
        host.write(changed, "x")  # the same error, no new unit
    assert len(runner.calls) == 3
    now[0] += 5
    assert host.write(changed, "x") == ["/etc/x.conf"] and len(runner.calls) == 4


def test_a_failed_write_is_a_config_error_naming_the_output():
    host = TransientUnits(runner=Recorder((1, "", "nodeos: user or group missing on this node: 'keystone'")))
    with pytest.raises(ConfigError, match="keystone's configuration failed .exit 1.: nodeos: user or group missing"):
        host.write(render("keystone", context()), "keystone")


def test_the_writer_writes_the_files_with_their_owner_and_mode(tmp_path):
    """The unit's command, run here: the files in, the paths written out, a second run writes nothing."""
    host = TransientUnits(runner=unit_payload)
    secret = ConfigFile(str(tmp_path / "etc/svc/keys/0"), "key zero\n", mode=0o600, owner=ME, group=MY_GROUP)
    conf = ConfigFile(str(tmp_path / "etc/svc/svc.conf"), "[DEFAULT]\n", mode=0o640, owner=ME, group=MY_GROUP)
    assert host.write([secret, conf], "svc") == [secret.path, conf.path]
    assert stat.S_IMODE(os.stat(secret.path).st_mode) == 0o600 and open(secret.path).read() == "key zero\n"
    assert stat.S_IMODE(os.stat(conf.path).st_mode) == 0o640
    assert host.write([secret, conf], "svc") == []


def test_the_writer_reports_what_it_cannot_do():
    host = TransientUnits(runner=unit_payload)
    missing = ConfigFile("/nonexistent/x.conf", "x", owner="no-such-user-nodeos")
    with pytest.raises(ConfigError, match="user or group missing"):
        host.write([missing], "x")


# ---------------------------------------------------------------- job steps


@pytest.mark.parametrize("job", sorted(JOBS))
def test_every_job_step_is_a_unit_as_the_services_user_with_no_secret_on_its_command_line(job):
    vips = {**VIPS, "cinder-api": "10.0.0.208"}
    ctx = context(vips=vips, configs=("cinder", "glance", "keystone", "mariadb", "neutron", "nova", "placement"))
    host = TransientUnits(runner=Recorder())
    steps = commands(job, ctx)
    for index, step in enumerate(steps, start=1):
        argv, stdin = host.step_argv(job, index, step, JOBS[job].timeout)
        opts = options(argv)
        assert argv[0] == "systemd-run" and opts[:len(COMMON)] == list(COMMON)
        assert f"--unit=nodeos-job-{job}-{index}" in opts
        assert f"--property=RuntimeMaxSec={JOBS[job].timeout:g}" in opts
        command = argv[argv.index("--") + 1:]
        if step.argv[0] == "runuser":
            # runuser needs CAP_SETUID, which the agent has not: the unit's User= instead (its primary group).
            assert f"--uid={step.argv[2]}" in opts and "runuser" not in command
            assert command[-len(step.argv[4:]):] == list(step.argv[4:])
        else:
            assert not any(o.startswith("--uid=") for o in opts)
        if step.env:
            assert command[:4] == ["/bin/sh", "-c", ENV_FROM_STDIN, "nodeos-job"]
            assert stdin.splitlines() == [f"{k}={v}" for k, v in sorted(step.env.items())]
        else:
            assert stdin == ""
        text = " ".join(argv)
        assert not any(secret in text for secret in all_secrets()), f"{job}: a secret on the command line"


def test_keystone_bootstrap_runs_as_keystone_with_its_password_on_stdin():
    step = commands("keystone-bootstrap", context())[0]
    argv, stdin = TransientUnits().step_argv("keystone-bootstrap", 1, step, 600)
    assert "--uid=keystone" in options(argv)
    assert argv[argv.index("--") + 5:argv.index("--") + 8] == ["keystone-manage", "bootstrap", "--bootstrap-username"]
    assert stdin == f"OS_BOOTSTRAP_PASSWORD={admin_password(IDENTITY)}\n"


def test_the_environment_shell_exports_each_line_verbatim_then_execs_the_step():
    """What a step with an environment runs in its unit, run here: values with spaces, quotes, $ and = survive."""
    value = """a b'c"d$HOME=`x` \\n;"""
    step = Command(("/bin/sh", "-c", 'printf "%s|%s" "$NODEOS_A" "$NODEOS_B"; cat'),
                   env={"NODEOS_A": value, "NODEOS_B": "plain"})
    host = TransientUnits(runner=unit_payload)
    argv, stdin = host.step_argv("t", 1, step, 10)
    done = unit_payload(argv, stdin, 10)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{value}|plain"  # and the step's own stdin is at its end (cat printed nothing)


def test_a_value_that_is_not_one_line_is_refused_before_anything_runs():
    runner = Recorder()
    host = TransientUnits(runner=runner)
    with pytest.raises(JobError, match="cannot be passed as a line"):
        host.run("t", [Command(("true",), env={"X": "two\nlines"})], 10)
    assert runner.calls == []


def test_steps_run_in_order_and_the_first_failure_names_its_output():
    runner = Recorder((0, "", ""), (1, "", "Failed to start transient service unit: Unit nodeos-job-t-2.service "
                                           "was already loaded or has a fragment file."))
    host = TransientUnits(runner=runner)
    with pytest.raises(JobError, match="t: exit 1: .*nodeos-job-t-2.service was already loaded"):
        host.run("t", [Command(("true",)), Command(("true",)), Command(("true",))], 10)
    assert len(runner.calls) == 2  # the third never started


def test_a_step_that_outlives_its_timeout_is_a_job_error():
    def slow(argv, stdin, timeout):
        raise subprocess.TimeoutExpired(argv, timeout)

    host = TransientUnits(runner=slow)
    with pytest.raises(JobError, match="t: keystone-manage did not finish in 5s"):
        host.run("t", [Command(("runuser", "-u", "keystone", "--", "keystone-manage", "db_sync"))], 5)


def test_the_lab_host_runs_steps_itself_behind_its_prefix(tmp_path):
    host = LocalHost(tmp_path, enter=["env"])
    assert host.run("t", [Command((sys.executable, "-c", "import os; assert os.environ['Y'] == 'z'"), env={"Y": "z"})],
                    10) == "1 step(s) done"
    path = ConfigFile("/etc/x.conf", "x\n", owner=ME, group=MY_GROUP)
    assert host.write([path], "x") == ["/etc/x.conf"] and (tmp_path / "etc/x.conf").read_text() == "x\n"


def test_the_runtime_chooses_the_host():
    lab = host_for("process", "/run/nodeos-lab/x/nodes/n1/root", ["nsenter", "--mount=/run/x"])
    assert isinstance(lab, LocalHost) and lab.enter == ["nsenter", "--mount=/run/x"]
    node = host_for("systemd")
    assert isinstance(node, TransientUnits) and node.python == sys.executable
