"""What each one-time job runs on its node (the state's side is ops.py, the decisions decide.py).

Every job is idempotent (a retry after a crash mid-way is safe), runs with the
configuration its service uses (written just before), inside the node's mount
namespace in the lab, and as the service's own user. Secrets go in through
the environment, never on a command line (`ps` shows those to everyone).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from pathlib import Path

from .config import DATABASES, KEYSTONE_PORT, SERVICE_PROJECT, CloudContext
from .credentials import ADMIN_PROJECT, ADMIN_USER, DEFAULT_REGION, admin_environment
from .registry import KEYSTONE_SERVICES
from .secrets import admin_password, service_password

OUTPUT_TAIL = 400
# Debian's interpreter: the node's OpenStack client libraries (python3-keystoneclient) are there.
SYSTEM_PYTHON = "/usr/bin/python3"
REGISTER_SCRIPT = str(Path(__file__).with_name("keystone_register.py"))
REGISTER_PREFIX = "keystone-register-"
# A service's schema migration, as the service's own user (the first word).
SCHEMA_SYNCS: dict[str, tuple[str, ...]] = {
    "glance-db-sync": ("glance", "glance-manage", "db_sync"),
    "placement-db-sync": ("placement", "placement-manage", "db", "sync"),
    "nova-api-db-sync": ("nova", "nova-manage", "api_db", "sync"),
    "nova-db-sync": ("nova", "nova-manage", "db", "sync"),  # cell1's database and cell0's
    "cinder-db-sync": ("cinder", "cinder-manage", "db", "sync"),  # also makes the default volume type
    # Every branch (expand and contract) to its head; the ML2 plugin's file names its tables' drivers.
    "neutron-db-sync": ("neutron", "neutron-db-manage", "--config-file", "/etc/neutron/neutron.conf",
                        "--config-file", "/etc/neutron/plugins/ml2/ml2_conf.ini", "upgrade", "heads"),
}
# nova's cell mappings as templates nova fills from nova.conf ([database] connection,
# transport_url) when it loads them: no password or VIP is copied into nova_api, and the
# cells follow the configuration rendered from the state.
CELL0_DATABASE = "{scheme}://{username}:{password}@{hostname}/{path}_cell0"
CELL1_DATABASE = "{scheme}://{username}:{password}@{hostname}/{path}"
CELL1_TRANSPORT = "{scheme}://{username}:{password}@{hostname}:{port}/{path}"
# create_cell refuses a second cell with the same URLs (exit 2), and a crash may come after
# the mapping was written: look first.
CELL1_CREATE = ("nova-manage cell_v2 list_cells | grep -qE '^[|] +cell1 +[|]' || "
                "exec nova-manage cell_v2 create_cell --name=cell1 "
                f"--database_connection='{CELL1_DATABASE}' --transport-url='{CELL1_TRANSPORT}'")


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)


class JobError(RuntimeError):
    pass


def _as(user: str, *argv: str) -> tuple[str, ...]:
    return ("runuser", "-u", user, "--", *argv)


def keystone_url(ctx: CloudContext) -> str:
    return f"http://{ctx.vip('keystone')}:{KEYSTONE_PORT}/v3/"


def commands(job: str, ctx: CloudContext) -> list[Command]:
    if job == "keystone-db-sync":
        return [Command(_as("keystone", "keystone-manage", "db_sync"))]
    if job == "keystone-bootstrap":
        url = keystone_url(ctx)
        return [Command(_as("keystone", "keystone-manage", "bootstrap",
                            "--bootstrap-username", ADMIN_USER, "--bootstrap-project-name", ADMIN_PROJECT,
                            "--bootstrap-role-name", "admin", "--bootstrap-service-name", "keystone",
                            "--bootstrap-region-id", DEFAULT_REGION, "--bootstrap-admin-url", url,
                            "--bootstrap-internal-url", url, "--bootstrap-public-url", url),
                        env={"OS_BOOTSTRAP_PASSWORD": admin_password(ctx.identity)})]
    if job.endswith("-db") and job[:-3] in DATABASES:
        # On MariaDB's node, as root over its socket: the init file MariaDB runs at every start.
        return [Command(("sh", "-c", "exec mariadb --protocol=socket -u root < /etc/mysql/nodeos-init.sql"))]
    if job in SCHEMA_SYNCS:
        return [Command(_as(*SCHEMA_SYNCS[job]))]
    if job == "nova-cell0-map":  # "Cell0 is already setup" and exit 0 when run again
        return [Command(_as("nova", "nova-manage", "cell_v2", "map_cell0", f"--database_connection={CELL0_DATABASE}"))]
    if job == "nova-cell1-create":
        return [Command(_as("nova", "sh", "-c", CELL1_CREATE))]
    if job.startswith(REGISTER_PREFIX):
        return [register_command(job[len(REGISTER_PREFIX):], ctx)]
    raise JobError(f"no commands for job {job!r}")


def register_command(user: str, ctx: CloudContext) -> Command:
    """keystone_register.py for one service: its user, catalog entry and endpoints at its VIP."""
    try:
        svc = KEYSTONE_SERVICES[user]
    except KeyError:
        raise JobError(f"no keystone registration for {user!r}") from None
    url = f"http://{ctx.vip(svc.vip_of)}:{svc.port}{svc.path}"
    env = {**admin_environment(keystone_url(ctx).rstrip("/"), admin_password(ctx.identity)),
           "NODEOS_SERVICE_USER": svc.user, "NODEOS_SERVICE_PASSWORD": service_password(ctx.identity, svc.user),
           "NODEOS_SERVICE_NAME": svc.name, "NODEOS_SERVICE_TYPE": svc.type, "NODEOS_SERVICE_URL": url,
           "NODEOS_SERVICE_PROJECT": SERVICE_PROJECT, "NODEOS_SERVICE_DESCRIPTION": svc.description,
           "no_proxy": "*", "NO_PROXY": "*"}  # straight to the VIPs, as the health checks
    return Command((SYSTEM_PYTHON, REGISTER_SCRIPT), env=env)


def run_commands(job: str, steps: Sequence[Command], enter: Sequence[str], timeout: float) -> str:
    """Run the steps in order; JobError with the output's tail on the first failure."""
    for step in steps:
        argv = [*enter, *step.argv]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                                  env={**os.environ, **step.env})
        except subprocess.TimeoutExpired:
            raise JobError(f"{job}: {step.argv[4] if step.argv[0] == 'runuser' else step.argv[0]} "
                           f"did not finish in {timeout:.0f}s") from None
        except OSError as exc:
            raise JobError(f"{job}: cannot run {argv[0]}: {exc.strerror or exc}") from exc
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip()[-OUTPUT_TAIL:]
            raise JobError(f"{job}: exit {done.returncode}: {tail}")
    return f"{len(steps)} step(s) done"
