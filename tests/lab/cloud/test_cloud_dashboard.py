"""horizon (the dashboard) in the lab-cloud catalog, kept healthy.

On the package's cloud (conftest.py): Debian's openstack-dashboard answers under uWSGI on port 80 of
its VIP, configured by the agents (keystone at its VIP, sessions in memcached at its VIP, a
secret key derived from the cluster secret). A browser's session (requests, from the lab's
client namespace) reads the login page and its static files, logs in as the admin and sees a
page of the admin's project. Then horizon is killed: the Monitor restarts it, the session made
before still opens the page (it is in memcached, signed with the same key), and a new login works.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from nodeos.lab.lab import Lab

from ..cluster_helpers import lab_marks
from .helpers import killed_and_restarted, openrc_env, rows

pytestmark = lab_marks("/usr/share/openstack-dashboard/wsgi.py", what="openstack-dashboard")

PROJECT_PAGE = "/project/api_access/"  # a page of the project that asks no API but keystone

# A browser, as far as the login goes: requests' Session keeps the cookies (csrftoken, sessionid).
BROWSER = r"""
import json, re, sys, time
import requests

action, vip = sys.argv[1], sys.argv[2]
base = f"http://{vip}"
session = requests.Session()
session.trust_env = False  # straight to the VIP
out = {}
if action == "login":
    password = sys.argv[3]
    page = session.get(f"{base}/auth/login/", timeout=30)
    out["login_page"] = page.status_code
    form = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page.text))
    out["csrf"] = bool(form.get("csrfmiddlewaretoken")) and "csrftoken" in session.cookies
    css = re.findall(r'href="(/static/[^"]+\.css)"', page.text)
    if css:
        static = session.get(f"{base}{css[0]}", timeout=30)
        out["static"] = [css[0], static.status_code, len(static.content), static.headers.get("Content-Type", "")]
    started = time.monotonic()
    landed = session.post(f"{base}/auth/login/", timeout=60, data={
        **form, "username": "admin", "password": password, "next": sys.argv[4]})
    out["login_seconds"] = round(time.monotonic() - started, 2)
else:  # "page": the project page with the cookies of an earlier login
    session.cookies.update(json.loads(sys.argv[3]))
    landed = session.get(f"{base}{sys.argv[4]}", timeout=30)
out.update(status=landed.status_code, url=landed.url.removeprefix(base), body=landed.text,
           redirects=[r.status_code for r in landed.history], cookies=session.cookies.get_dict())
print(json.dumps(out))
"""


def browser(lab: Lab, *args: str) -> dict[str, Any]:
    vip = rows(lab)["horizon"]["vip"]
    result = subprocess.run(["ip", "netns", "exec", lab.add_client(), sys.executable, "-c", BROWSER, args[0], vip,
                             *args[1:]], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-1500:]
    return json.loads(result.stdout)


def login(lab: Lab) -> dict[str, Any]:
    return browser(lab, "login", openrc_env(lab)["OS_PASSWORD"], PROJECT_PAGE)


def on_project_page(answer: dict[str, Any]) -> bool:
    return answer["status"] == 200 and answer["url"] == PROJECT_PAGE and "/auth/logout/" in answer["body"]


def logged_in(lab: Lab) -> dict[str, Any] | None:
    try:
        answer = login(lab)
    except (AssertionError, subprocess.TimeoutExpired, ValueError):
        return None
    return answer if on_project_page(answer) else None


def test_the_dashboard_answers_on_its_vip_with_its_login_page_and_static_files(lab: Lab) -> None:
    answer = login(lab)
    assert answer["login_page"] == 200 and answer["csrf"], answer
    path, status, size, kind = answer["static"]  # the compressed CSS the page links, served by uWSGI
    assert status == 200 and size > 1000 and kind.startswith("text/css"), answer["static"]


def test_the_admin_logs_in_and_sees_the_projects_page(lab: Lab) -> None:
    answer = login(lab)
    print(f"\nlogin: POST to the project page in {answer['login_seconds']}s")
    assert on_project_page(answer), {k: v for k, v in answer.items() if k != "body"}
    assert answer["redirects"] == [302]  # the login's redirect to the page asked for, nothing else
    assert set(answer["cookies"]) >= {"sessionid", "csrftoken"}
    # The page shows the admin's project and its endpoints: keystone's at its VIP.
    keystone = rows(lab)["keystone"]["vip"]
    assert "admin" in answer["body"] and f"http://{keystone}:5000/v3" in answer["body"]


def test_horizon_killed_is_restarted_and_sessions_and_logins_work_again(lab: Lab) -> None:
    before_login = login(lab)
    assert on_project_page(before_login)
    cookies = json.dumps(before_login["cookies"])
    before, after, answer = killed_and_restarted(lab, "horizon", lambda: logged_in(lab),
                                                 "a login to the project page")
    print(f"(the login {answer['login_seconds']}s)")
    assert (after["node"], after["vip"]) == (before["node"], before["vip"])
    # The session made before the kill: in memcached, its cookie signed with the derived key.
    again = browser(lab, "page", cookies, PROJECT_PAGE)
    assert on_project_page(again), {k: v for k, v in again.items() if k != "body"}
