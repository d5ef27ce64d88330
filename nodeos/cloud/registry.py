"""The names the catalog may use for OpenStack services' configuration and one-time jobs.

A leaf module (no imports from the rest of nodeos) so the catalog can
validate `config:` and `jobs:` without pulling the cloud code in.
"""

from __future__ import annotations

from dataclasses import dataclass

# Renderers in nodeos/cloud/config.py: the files a service needs, from the replicated state.
CONFIGS = ("mariadb", "keystone", "glance", "rabbitmq", "placement", "nova", "cinder", "neutron", "horizon")


@dataclass(frozen=True)
class KeystoneService:
    """A service's user (admin role in the service project), its catalog entry and endpoints at its VIP."""

    user: str  # also the password's purpose (secrets.service_password)
    name: str  # the catalog's service name ("glance")
    type: str  # the catalog's service type ("image")
    vip_of: str  # the catalog service whose VIP the endpoints name
    port: int
    path: str = ""  # after the port: "/v2.1" for nova, "" for glance
    description: str = ""


# Registered in keystone by the job keystone-register-<user> (jobs.py, keystone_register.py).
KEYSTONE_SERVICES: dict[str, KeystoneService] = {
    svc.user: svc
    for svc in (
        KeystoneService("glance", "glance", "image", vip_of="glance-api", port=9292, description="OpenStack Image"),
        KeystoneService("placement", "placement", "placement", vip_of="placement-api", port=8778,
                        description="OpenStack Placement"),
        KeystoneService("nova", "nova", "compute", vip_of="nova-api", port=8774, path="/v2.1",
                        description="OpenStack Compute"),
        # Debian's names (cinder-api's own registration): cinderv3, type volumev3, which cinderclient
        # (and so `openstack volume ...`) looks up; keystone fills in the token's project.
        KeystoneService("cinder", "cinderv3", "volumev3", vip_of="cinder-api", port=8776, path="/v3/%(project_id)s",
                        description="OpenStack Block Storage"),
        KeystoneService("neutron", "neutron", "network", vip_of="neutron-server", port=9696,
                        description="OpenStack Networking"),
    )
}

# Cephx users of the services that keep data in Ceph: name -> (caps, pools). Plain data
# here; nodeos/cloud/layer.py turns them into nodeos.storage.clients.ServiceClient.
CEPH_CLIENTS: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
    "glance": ({"mon": "profile rbd", "osd": "profile rbd pool=images"}, ("images",)),
    # cinder's volumes in its own pool (`volumes` is nodeos's, for the services' own volumes);
    # glance's images read-only, so a volume made from an image can be a copy-on-write clone.
    "cinder": ({"mon": "profile rbd", "osd": "profile rbd pool=cinder, profile rbd-read-only pool=images"},
               ("cinder",)),
}

# cinder-volume reports as (and its volumes belong to) `backend_host@backend`, one fixed name
# whatever node runs it: a cinder-volume moved to another node manages the volumes its
# predecessor made (active/passive; nodeos runs at most one, so no cinder cluster is needed).
CINDER_BACKEND, CINDER_BACKEND_HOST = "rbd", "cinder"
CINDER_VOLUME_HOST = f"{CINDER_BACKEND_HOST}@{CINDER_BACKEND}"

# nova-conductor, nova-scheduler and cinder-scheduler report as this one name (`host` in nova.conf
# and cinder.conf), whatever node runs them: each is a singleton, so a moved one carries on its
# predecessor's record instead of leaving it `down` in `compute service list` for ever. The
# compute plane's nova-compute sets its node's own `host` in its own configuration file.
CONTROL_HOST = "control"


@dataclass(frozen=True)
class ServiceList:
    """An OpenStack API's list of its workers and their last reports (`os-services`), read by the
    `service-list` check through the API's VIP."""

    vip_of: str  # the catalog service whose VIP answers
    read: str  # the path read
    version: str  # the OpenStack-API-Version header: a base microversion, every field read is in it
    daemons: dict[str, str]  # binary -> the host it reports as (`host` or `backend_host` in its config)


SERVICE_LISTS: dict[str, ServiceList] = {
    "nova": ServiceList("nova-api", "/v2.1/os-services", "compute 2.1",
                        {"nova-conductor": CONTROL_HOST, "nova-scheduler": CONTROL_HOST}),
    "cinder": ServiceList("cinder-api", "/v3/os-services", "volume 3.0",
                          {"cinder-scheduler": CONTROL_HOST, "cinder-volume": CINDER_VOLUME_HOST}),
}


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
        # The database and user, run on MariaDB's node (its init file does the same at every start).
        JobDef("glance-db", config="mariadb", after_services=("mariadb",)),
        JobDef("glance-db-sync", config="glance", after_jobs=("glance-db",)),
        JobDef("placement-db", config="mariadb", after_services=("mariadb",)),
        JobDef("placement-db-sync", config="placement", after_jobs=("placement-db",)),
        # nova's three databases (one user), then cells v2 in nova's order: the API schema,
        # cell0 (instances that were never scheduled) and cell1 mapped in it, then the cells' schema.
        JobDef("nova-db", config="mariadb", after_services=("mariadb",)),
        JobDef("nova-api-db-sync", config="nova", after_jobs=("nova-db",)),
        JobDef("nova-cell0-map", config="nova", after_jobs=("nova-api-db-sync",)),
        JobDef("nova-cell1-create", config="nova", after_jobs=("nova-cell0-map",)),
        JobDef("nova-db-sync", config="nova", after_jobs=("nova-cell1-create",)),
        JobDef("cinder-db", config="mariadb", after_services=("mariadb",)),
        JobDef("cinder-db-sync", config="cinder", after_jobs=("cinder-db",)),
        # neutron's database, then its schema: every branch's head (expand and contract).
        JobDef("neutron-db", config="mariadb", after_services=("mariadb",)),
        JobDef("neutron-db-sync", config="neutron", after_jobs=("neutron-db",)),
        *(JobDef(f"keystone-register-{user}", config=user, after_services=("keystone",),
                 after_jobs=("keystone-bootstrap",)) for user in KEYSTONE_SERVICES),
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
