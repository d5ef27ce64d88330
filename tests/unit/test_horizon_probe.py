"""horizon's check (nodeos/cloud/horizon_probe.py) against a tiny dashboard on a local HTTP server.

The server (http.server in a thread) does what horizon's login does on the wire: a login form
with Django's CSRF token and cookie, a POST that checks both and the password and answers with
a redirect and a session cookie, and a project page that only a kept session opens. Its knobs
break one layer at a time; the probe's own logic is the real one.
"""

from __future__ import annotations

import http.server
import secrets
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from nodeos.cloud.horizon_probe import LOGIN_PATH, PROJECT_PAGE, HorizonSessions
from nodeos.services.health import TIMED_OUT, CheckTarget, run_check, timed_out
from nodeos.services.catalog import HealthCheckSpec

from .test_health_checks import free_port

PASSWORD = "right-password"


@dataclass
class Dashboard:
    """The fake's state and its knobs."""

    port: int = 0
    login_page_status: int = 200
    csrf_in_form: bool = True
    keep_sessions: bool = True  # False: a memcached that stores nothing
    login_delay: float = 0.0
    keystone_down: bool = False
    csrf: str = field(default_factory=lambda: secrets.token_hex(16))
    sessions: set[str] = field(default_factory=set)
    posts: int = 0
    requests: list[str] = field(default_factory=list)

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _form(board: Dashboard, error: str = "") -> bytes:
    token = f'<input type="hidden" name="csrfmiddlewaretoken" value="{board.csrf}">' if board.csrf_in_form else ""
    alert = f'<div class="alert alert-danger"><p>{error}</p></div>' if error else ""
    return f"""<html><head><title>Login - OpenStack Dashboard</title></head><body>
<noscript><div class="alert alert-danger">This application requires JavaScript.</div></noscript>
<form id="" method="POST" action="{LOGIN_PATH}">{token}
<input type="text" name="fake_email" value="" />
{alert}<input type="hidden" name="region" value="default" id="id_region">
<input type="text" name="username"><input type="password" name="password">
</form></body></html>""".encode()


def _handler(board: Dashboard) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _cookies(self) -> dict[str, str]:
            pairs = (part.strip().partition("=") for part in self.headers.get("Cookie", "").split(";") if part.strip())
            return {name: value for name, _, value in pairs}

        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            board.requests.append(f"GET {self.path}")
            path = urllib.parse.urlsplit(self.path).path
            if path == LOGIN_PATH:
                if board.login_page_status != 200:
                    self._send(board.login_page_status, b"<html><title>Server Error (500)</title></html>")
                    return
                self._send(200, _form(board), {"Set-Cookie": f"csrftoken={board.csrf}; Path=/"})
            elif path == PROJECT_PAGE:
                if self._cookies().get("sessionid") in board.sessions:
                    self._send(200, b'<html><title>API Access - OpenStack Dashboard</title>'
                                    b'<a href="/auth/logout/">Sign Out</a> project admin</html>')
                else:
                    self._send(302, headers={"Location": f"{LOGIN_PATH}?next={PROJECT_PAGE}"})
            else:
                self._send(404)

        def do_POST(self) -> None:  # noqa: N802
            board.posts += 1
            board.requests.append(f"POST {self.path}")
            length = int(self.headers.get("Content-Length", "0"))
            form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
            time.sleep(board.login_delay)
            if self._cookies().get("csrftoken") != board.csrf or form.get("csrfmiddlewaretoken") != board.csrf:
                self._send(403, b"<html><title>403 Forbidden</title>CSRF verification failed.</html>")
            elif board.keystone_down:
                self._send(200, _form(board, "Unable to establish connection to keystone endpoint."))
            elif form.get("username") != "admin" or form.get("password") != PASSWORD or form.get("region") != "default":
                self._send(200, _form(board, "Invalid credentials."))
            else:
                session = secrets.token_hex(8)
                if board.keep_sessions:
                    board.sessions.add(session)
                self._send(302, headers={"Location": form.get("next", "/"),
                                         "Set-Cookie": f"sessionid={session}; HttpOnly; Path=/"})

    return Handler


@pytest.fixture
def board() -> Iterator[Dashboard]:
    state = Dashboard()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def test_a_working_dashboard_logs_the_admin_in_and_opens_the_project_page(board: Dashboard) -> None:
    ok, detail = HorizonSessions().check(board.url(), "admin", PASSWORD, timeout=2.0)
    assert ok, detail
    assert "logged in as admin" in detail and PROJECT_PAGE in detail
    assert board.requests == [f"GET {LOGIN_PATH}", f"POST {LOGIN_PATH}", f"GET {PROJECT_PAGE}"]


def test_the_session_is_reused_for_a_minute_then_a_fresh_login(board: Dashboard) -> None:
    sessions = HorizonSessions(reuse=60.0)
    assert sessions.check(board.url(), "admin", PASSWORD, 2.0, now=100.0)[0]
    ok, detail = sessions.check(board.url(), "admin", PASSWORD, 2.0, now=130.0)
    assert ok and "session logged in 30s ago" in detail, detail
    assert board.posts == 1  # the login page is read every time, the password posted once
    assert board.requests.count(f"GET {LOGIN_PATH}") == 2
    assert sessions.check(board.url(), "admin", PASSWORD, 2.0, now=161.0)[0]
    assert board.posts == 2


def test_a_lost_session_means_a_fresh_login_not_a_failure(board: Dashboard) -> None:
    """memcached restarted (empty): the next check logs in again and says so."""
    sessions = HorizonSessions()
    assert sessions.check(board.url(), "admin", PASSWORD, 2.0, now=0.0)[0]
    board.sessions.clear()
    ok, detail = sessions.check(board.url(), "admin", PASSWORD, 2.0, now=10.0)
    assert ok and "the previous session was lost" in detail, detail
    assert board.posts == 2


def test_nothing_listening_is_the_port_layer() -> None:
    port = free_port()
    ok, detail = HorizonSessions().check(f"http://127.0.0.1:{port}", "admin", PASSWORD, 1.0)
    assert not ok and detail == f"port: connect 127.0.0.1:{port}: connection refused"


def test_a_broken_login_page_is_the_login_page_layer(board: Dashboard) -> None:
    board.login_page_status = 500
    ok, detail = HorizonSessions().check(board.url(), "admin", PASSWORD, 2.0)
    assert not ok and detail == "login page: HTTP 500 (Server Error (500))"


def test_a_login_form_without_a_csrf_token_is_the_login_page_layer(board: Dashboard) -> None:
    board.csrf_in_form = False
    ok, detail = HorizonSessions().check(board.url(), "admin", PASSWORD, 2.0)
    assert not ok and detail == "login page: no CSRF token in the login form"
    assert board.posts == 0


def test_a_wrong_password_is_the_login_layer_with_horizons_message(board: Dashboard) -> None:
    ok, detail = HorizonSessions().check(board.url(), "admin", "wrong", 2.0)
    assert not ok and detail == "login: refused, the login form again (Invalid credentials.)"


def test_keystone_unreachable_says_so_in_horizons_words(board: Dashboard) -> None:
    board.keystone_down = True
    ok, detail = HorizonSessions().check(board.url(), "admin", PASSWORD, 2.0)
    assert not ok and detail.startswith("login: refused") and "Unable to establish connection to keystone" in detail


def test_a_session_that_is_not_kept_is_the_project_page_layer(board: Dashboard) -> None:
    board.keep_sessions = False
    ok, detail = HorizonSessions().check(board.url(), "admin", PASSWORD, 2.0)
    assert not ok and detail.startswith("project page: sent back to the login page right after logging in")
    assert "memcached" in detail


def test_a_login_that_hangs_is_a_timeout_the_slow_rule_knows(board: Dashboard) -> None:
    board.login_delay = 1.5
    ok, detail = HorizonSessions().check(board.url(), "admin", PASSWORD, 0.5)
    assert not ok and detail == f"login: {TIMED_OUT}" and timed_out(detail)


def test_the_agents_horizon_check_goes_through_the_vip_as_the_admin(board: Dashboard) -> None:
    """The check type the catalog names, run as the agent runs it: the VIP when this node holds it."""
    from nodeos.cloud.horizon_probe import horizon_sessions

    horizon_sessions.forget()
    spec = HealthCheckSpec(type="horizon", port=board.port, timeout=2.0)
    try:
        good = run_check(spec, CheckTarget(host="192.0.2.1", vip="127.0.0.1", values={"admin_password": PASSWORD}))
        assert good.ok, good.detail
        horizon_sessions.forget()
        bad = run_check(spec, CheckTarget(host="127.0.0.1", values={"admin_password": "other"}))
        assert not bad.ok and bad.detail.startswith("login: refused")
    finally:
        horizon_sessions.forget()
