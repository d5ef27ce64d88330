"""The names the catalog may use for OpenStack services' configuration and one-time jobs.

A leaf module (no imports from the rest of nodeos) so the catalog can
validate `config:` and `jobs:` without pulling the cloud code in.
"""

from __future__ import annotations

from dataclasses import dataclass

# Renderers in nodeos/cloud/config.py: the files a service needs, from the replicated state.
CONFIGS = ("mariadb", "keystone", "rabbitmq")


@dataclass(frozen=True)
class JobDef:
    """A one-time step: run once on one node, recorded in the replicated log (nodeos/cloud/jobs.py)."""

    name: str
    config: str  # whose configuration the job reads (written before it runs)
    after_services: tuple[str, ...] = ()  # healthy somewhere before the job may run
    after_jobs: tuple[str, ...] = ()  # done before the job may run
    timeout: float = 600.0


JOBS: dict[str, JobDef] = {
    job.name: job
    for job in (
        # Schema migrations: idempotent, but slow and never to be run by two nodes at once.
        JobDef("keystone-db-sync", config="keystone", after_services=("mariadb",)),
        # The admin user, project, role, region and the identity endpoints at keystone's VIP.
        JobDef("keystone-bootstrap", config="keystone", after_jobs=("keystone-db-sync",)),
    )
}


def jobs_closure(names: tuple[str, ...] | list[str]) -> list[str]:
    """The jobs `names` need, prerequisites first (registry order breaks ties)."""
    needed: list[str] = []

    def visit(name: str) -> None:
        if name in needed:
            return
        for before in JOBS[name].after_jobs:
            visit(before)
        needed.append(name)

    for name in names:
        visit(name)
    return needed
