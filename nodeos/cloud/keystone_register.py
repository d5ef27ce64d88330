"""Register one OpenStack service in keystone, idempotently: run by the job keystone-register-<service>.

A standalone script for Debian's python3 and its python3-keystoneclient (the
node's OpenStack client libraries, not the agent's virtualenv), so it imports
nothing of nodeos. Every step looks before it creates, and converges what it
finds (a password, an endpoint's URL), so a re-run after an interrupted
attempt finishes the work:

* the project `service`, the service's user in it (domain Default) with its
  password, and the admin role on that project;
* the catalog entry (name, type) and its public, internal and admin endpoints
  in the region, all at the service's VIP.

Input through the environment (secrets never on a command line): the admin's
OS_AUTH_URL, OS_USERNAME, OS_PASSWORD, OS_PROJECT_NAME, OS_REGION_NAME, and
NODEOS_SERVICE_{USER,PASSWORD,NAME,TYPE,DESCRIPTION,URL,PROJECT}.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Mapping

INTERFACES = ("public", "internal", "admin")
DEFAULT_DOMAIN = "default"
CONFLICT = 409


def _one(found: list[Any], what: str) -> Any | None:
    if len(found) > 1:
        raise RuntimeError(f"{len(found)} {what} found; expected at most one")
    return found[0] if found else None


def _project(ks: Any, name: str, done: list[str]) -> Any:
    """The project every service's user is in. Two services' registrations run at once (glance's and
    placement's, each on its own node): both may find no project and create it, and keystone refuses
    the second (HTTP 409). That one then takes the project the other made."""
    project = _one(ks.projects.list(name=name, domain=DEFAULT_DOMAIN), f"projects {name}")
    if project is not None:
        return project
    try:
        project = ks.projects.create(name, DEFAULT_DOMAIN, description="OpenStack services")
    except Exception as exc:  # keystoneauth1's Conflict, known by its status (keystoneauth1 is main()'s import)
        if getattr(exc, "http_status", None) != CONFLICT:
            raise
        project = _one(ks.projects.list(name=name, domain=DEFAULT_DOMAIN), f"projects {name}")
        if project is None:
            raise
        done.append(f"project {name} made by another registration at the same moment")
        return project
    done.append(f"project {name} created")
    return project


def register(ks: Any, spec: Mapping[str, str]) -> list[str]:
    """Make keystone match `spec` through the keystoneclient v3 API `ks`; returns what changed."""
    done: list[str] = []
    project = _project(ks, spec["project"], done)
    user = _one(ks.users.list(name=spec["user"], domain=DEFAULT_DOMAIN), f"users {spec['user']}")
    if user is None:
        user = ks.users.create(spec["user"], domain=DEFAULT_DOMAIN, password=spec["password"],
                               default_project=project, enabled=True)
        done.append(f"user {spec['user']} created")
    else:
        ks.users.update(user, password=spec["password"], enabled=True)  # the derived password, always
    role = _one(ks.roles.list(name="admin"), "roles admin")
    if role is None:
        raise RuntimeError("no role 'admin' (keystone-manage bootstrap makes it)")
    ks.roles.grant(role, user=user, project=project)  # a PUT: granting twice changes nothing
    service = _one([s for s in ks.services.list(type=spec["type"]) if s.name == spec["name"]],
                   f"services {spec['name']}")
    if service is None:
        service = ks.services.create(spec["name"], type=spec["type"], description=spec.get("description", ""),
                                     enabled=True)
        done.append(f"service {spec['name']} ({spec['type']}) created")
    for interface in INTERFACES:
        found = ks.endpoints.list(service=service, interface=interface, region=spec["region"])
        endpoint = found[0] if found else None
        for extra in found[1:]:  # a create whose answer was lost, then a retry: keep one
            ks.endpoints.delete(extra)
            done.append(f"duplicate {interface} endpoint removed")
        if endpoint is None:
            ks.endpoints.create(service, spec["url"], interface=interface, region=spec["region"], enabled=True)
            done.append(f"{interface} endpoint {spec['url']}")
        elif endpoint.url != spec["url"]:
            ks.endpoints.update(endpoint, url=spec["url"])
            done.append(f"{interface} endpoint moved to {spec['url']}")
    return done


def spec_from_env(env: Mapping[str, str]) -> dict[str, str]:
    names = {"user": "USER", "password": "PASSWORD", "name": "NAME", "type": "TYPE", "url": "URL",
             "project": "PROJECT", "description": "DESCRIPTION"}
    spec = {key: env.get(f"NODEOS_SERVICE_{var}", "") for key, var in names.items()}
    spec["region"] = env.get("OS_REGION_NAME", "RegionOne")
    missing = [f"NODEOS_SERVICE_{names[k]}" for k in ("user", "password", "name", "type", "url", "project")
               if not spec[k]]
    if missing:
        raise SystemExit(f"missing in the environment: {', '.join(missing)}")
    return spec


def main() -> int:
    from keystoneauth1 import session
    from keystoneauth1.identity import v3
    from keystoneclient.v3 import client

    spec = spec_from_env(os.environ)
    auth = v3.Password(auth_url=os.environ["OS_AUTH_URL"], username=os.environ["OS_USERNAME"],
                       password=os.environ["OS_PASSWORD"], project_name=os.environ["OS_PROJECT_NAME"],
                       user_domain_id=DEFAULT_DOMAIN, project_domain_id=DEFAULT_DOMAIN)
    ks = client.Client(session=session.Session(auth=auth, timeout=30), interface="public",
                       region_name=spec["region"])
    done = register(ks, spec)
    print(f"{spec['name']}: " + ("; ".join(done) if done else "already registered"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
