"""Admin credentials for an operator: clouds.yaml or an openrc, rendered on demand.

Nothing is stored: the password is derived from the cluster secret
(nodeos.cloud.secrets), the endpoint is keystone's VIP from the agent's status.
"""

from __future__ import annotations

import shlex
from typing import Any

import yaml

KEYSTONE_SERVICE = "keystone"
KEYSTONE_PUBLIC_PORT = 5000
ADMIN_USER = ADMIN_PROJECT = "admin"
DEFAULT_DOMAIN = "Default"
DEFAULT_REGION = "RegionOne"


def keystone_auth_url(status: dict[str, Any]) -> str | None:
    """http://<keystone VIP>:5000/v3 from `GET /status`, or None while keystone has no VIP."""
    for service in status.get("services") or []:
        if service.get("name") == KEYSTONE_SERVICE and service.get("vip"):
            return f"http://{service['vip']}:{KEYSTONE_PUBLIC_PORT}/v3"
    return None


def clouds_yaml(auth_url: str, password: str, region: str = DEFAULT_REGION, cloud: str = "nodeos") -> str:
    """A clouds.yaml for the admin user (openstack --os-cloud nodeos ...)."""
    document = {"clouds": {cloud: {
        "auth": {
            "auth_url": auth_url,
            "username": ADMIN_USER,
            "password": password,
            "project_name": ADMIN_PROJECT,
            "user_domain_name": DEFAULT_DOMAIN,
            "project_domain_name": DEFAULT_DOMAIN,
        },
        "region_name": region,
        "identity_api_version": 3,
        "interface": "public",
    }}}
    return yaml.safe_dump(document, sort_keys=False)


def admin_environment(auth_url: str, password: str, region: str = DEFAULT_REGION) -> dict[str, str]:
    """The OS_* variables the OpenStack clients read, for the admin user."""
    return {
        "OS_AUTH_URL": auth_url,
        "OS_USERNAME": ADMIN_USER,
        "OS_PASSWORD": password,
        "OS_PROJECT_NAME": ADMIN_PROJECT,
        "OS_USER_DOMAIN_NAME": DEFAULT_DOMAIN,
        "OS_PROJECT_DOMAIN_NAME": DEFAULT_DOMAIN,
        "OS_IDENTITY_API_VERSION": "3",
        "OS_REGION_NAME": region,
    }


def openrc(auth_url: str, password: str, region: str = DEFAULT_REGION) -> str:
    """Shell exports for the admin user (`. admin-openrc`)."""
    values = admin_environment(auth_url, password, region)
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in values.items())
