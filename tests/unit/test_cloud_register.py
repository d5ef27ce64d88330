"""keystone_register.register: a service's user, catalog entry and endpoints, idempotent (a fake keystone)."""

from __future__ import annotations

import itertools
from types import SimpleNamespace
from typing import Any

import pytest

from nodeos.cloud.keystone_register import register, spec_from_env

SPEC = {"user": "glance", "password": "pw1", "name": "glance", "type": "image", "url": "http://10.0.0.203:9292",
        "project": "service", "description": "OpenStack Image", "region": "RegionOne"}


class Conflict(Exception):
    """As keystoneauth1.exceptions.http.Conflict: HTTP 409, said by `http_status`."""

    http_status = 409


class Manager:
    def __init__(self, ks: "FakeKeystone", kind: str) -> None:
        self.ks, self.kind = ks, kind

    def _items(self) -> list[Any]:
        return self.ks.items[self.kind]

    def list(self, **filters: Any) -> list[Any]:
        found = self._items()
        for key, value in filters.items():
            if value is None or key == "domain":
                continue
            attr = {"service": "service_id", "region": "region"}.get(key, key)
            wanted = getattr(value, "id", value)
            found = [item for item in found if getattr(item, attr) == wanted]
        return list(found)

    def create(self, name_or_service: Any, *args: Any, **fields: Any) -> Any:
        if self.ks.fail_next == self.kind:
            self.ks.fail_next = None
            raise ConnectionError("interrupted")
        if self.ks.raced == self.kind:  # another registration creates the same name first
            self.ks.raced = None
            self._items().append(SimpleNamespace(id=f"{self.kind}-other", name=name_or_service, **fields))
            raise Conflict("Conflict occurred attempting to store project (HTTP 409)")
        item = SimpleNamespace(id=f"{self.kind}-{next(self.ks.ids)}", **fields)
        if self.kind == "endpoints":
            item.service_id, item.url = name_or_service.id, args[0]
        else:
            item.name = name_or_service
        self._items().append(item)
        self.ks.calls.append(("create", self.kind))
        return item

    def update(self, item: Any, **fields: Any) -> Any:
        for key, value in fields.items():
            setattr(item, key, value)
        self.ks.calls.append(("update", self.kind))
        return item

    def delete(self, item: Any) -> None:
        self._items().remove(item)

    def grant(self, role: Any, user: Any, project: Any) -> None:
        self.ks.grants.add((role.id, user.id, project.id))


class FakeKeystone:
    def __init__(self) -> None:
        self.ids = itertools.count()
        self.items: dict[str, list[Any]] = {"projects": [], "users": [], "roles": [SimpleNamespace(id="r", name="admin")],
                                            "services": [], "endpoints": []}
        self.grants: set[tuple[str, str, str]] = set()
        self.calls: list[tuple[str, str]] = []
        self.fail_next: str | None = None
        self.raced: str | None = None
        for kind in self.items:
            setattr(self, kind, Manager(self, kind))


def test_a_first_run_makes_everything_a_second_changes_nothing_but_the_password():
    ks = FakeKeystone()
    done = register(ks, SPEC)
    assert "project service created" in done and "user glance created" in done
    endpoints = ks.items["endpoints"]
    assert sorted(e.interface for e in endpoints) == ["admin", "internal", "public"]
    assert {e.url for e in endpoints} == {SPEC["url"]} and {e.region for e in endpoints} == {"RegionOne"}
    assert len(ks.grants) == 1
    ks.calls.clear()
    assert register(ks, SPEC) == []
    assert ks.calls == [("update", "users")]  # the derived password is set again, nothing is created
    assert len(ks.items["endpoints"]) == 3 and len(ks.grants) == 1


def test_a_run_interrupted_half_way_is_finished_by_the_next():
    ks = FakeKeystone()
    ks.fail_next = "endpoints"
    with pytest.raises(ConnectionError):
        register(ks, SPEC)
    assert ks.items["services"] and not ks.items["endpoints"]
    register(ks, SPEC)
    assert len(ks.items["services"]) == 1 and len(ks.items["endpoints"]) == 3


def test_two_registrations_at_once_share_the_service_project():
    """glance's and placement's jobs run at the same moment: the one whose create keystone refused takes the other's."""
    ks = FakeKeystone()
    ks.raced = "projects"
    done = register(ks, {**SPEC, "user": "placement", "name": "placement", "type": "placement"})
    assert "project service made by another registration at the same moment" in done
    [project] = ks.items["projects"]
    assert project.id == "projects-other" and ("r", ks.items["users"][0].id, "projects-other") in ks.grants
    other = FakeKeystone()
    other.fail_next = "projects"  # any other failure is the job's failure (retried by the Monitor)
    with pytest.raises(ConnectionError):
        register(other, SPEC)


def test_endpoints_follow_a_new_vip_and_duplicates_are_removed():
    ks = FakeKeystone()
    register(ks, SPEC)
    service = ks.items["services"][0]
    ks.items["endpoints"].append(SimpleNamespace(id="dup", service_id=service.id, interface="public",
                                                 region="RegionOne", url=SPEC["url"]))
    done = register(ks, {**SPEC, "url": "http://10.0.0.210:9292"})
    assert "duplicate public endpoint removed" in done
    assert len(ks.items["endpoints"]) == 3 and {e.url for e in ks.items["endpoints"]} == {"http://10.0.0.210:9292"}


def test_the_environment_must_name_everything():
    with pytest.raises(SystemExit, match="NODEOS_SERVICE_PASSWORD"):
        spec_from_env({"NODEOS_SERVICE_USER": "glance"})
