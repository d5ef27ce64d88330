"""horizon's health: the dashboard's own login, as a browser does it, through its VIP.

Layered like the other checks, each failure naming its layer:

* `port`: a TCP connect to the dashboard's port;
* `login page`: GET /auth/login/ answers 200 with the login form, a CSRF token in it and
  Django's `csrftoken` cookie (Django and horizon load, the settings are sane);
* `login`: the admin's credentials POSTed with that token: horizon asks keystone for a
  token and keeps the session in memcached, and answers with a redirect and the session's cookie
  (a wrong password or an unreachable keystone come back as the form again, with horizon's message);
* `project page`: that cookie alone opens a page of the admin's project (API Access: it reads
  only the session, so no other API's fault fails horizon's check). A redirect to the login page
  here means the session was not kept (memcached).

A login costs keystone a bcrypt hash (about 0.3 s of CPU) and horizon a few more requests: the
session is reused for `reuse` seconds, as TokenCache reuses tokens; the login page is fetched on
every check. A reused session that was lost (memcached restarted) is replaced by a fresh login.
"""

from __future__ import annotations

import html.parser
import http.cookiejar
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from .probes import Probe, _os_error, _url_reason

LOGIN_PATH = "/auth/login/"
LOGOUT_PATH = "/auth/logout/"
# A page of the project that reads nothing but the session (the token's service catalog):
# the Overview (/project/) asks nova, cinder and neutron, whose faults are not horizon's.
PROJECT_PAGE = "/project/api_access/"
CSRF_FIELD, CSRF_COOKIE, SESSION_COOKIE = "csrfmiddlewaretoken", "csrftoken", "sessionid"
_MAX_BODY = 512 * 1024


class _Stop(Exception):
    """A layer failed: its detail, already in words."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are answers to look at (where a login leads), not to follow."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@dataclass
class _Answer:
    status: int
    location: str
    body: str


class _LoginForm(html.parser.HTMLParser):
    """The inputs of the form that posts to the login URL (hidden ones with their values: the
    CSRF token, the region), and the text of horizon's error message if the page shows one."""

    def __init__(self) -> None:
        super().__init__()
        self.found = False
        self.fields: dict[str, str] = {}
        self._in_form = False
        self._error_depth = 0
        self._noscript = 0  # horizon's "requires JavaScript" alert is no login error
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = {key: value or "" for key, value in attrs}
        if tag == "form" and LOGIN_PATH in attr.get("action", LOGIN_PATH):
            self.found, self._in_form = True, True
        elif tag == "input" and self._in_form and attr.get("name"):
            self.fields[attr["name"]] = attr.get("value", "")
        elif tag == "noscript":
            self._noscript += 1
        if self._error_depth:
            self._error_depth += 1
        elif not self._noscript and {"alert-danger", "errorlist"} & set(attr.get("class", "").split()):
            self._error_depth = 1
            self.errors.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False
        elif tag == "noscript" and self._noscript:
            self._noscript -= 1
        if self._error_depth:
            self._error_depth -= 1

    def handle_data(self, data: str) -> None:
        if self._error_depth and self.errors:
            self.errors[-1] += data

    def error_text(self) -> str:
        return "; ".join(" ".join(text.split()) for text in self.errors if text.strip())[:160]


def _parse_form(body: str) -> _LoginForm:
    form = _LoginForm()
    try:
        form.feed(body)
        form.close()
    except Exception:  # noqa: BLE001 (a page html.parser cannot read has no form for us)
        pass
    return form


class HorizonSessions:
    """The dashboard's check, with its logged-in sessions reused for `reuse` seconds (per base URL
    and user)."""

    def __init__(self, reuse: float = 60.0) -> None:
        self.reuse = reuse
        self._sessions: dict[tuple[str, str], tuple[http.cookiejar.CookieJar, float]] = {}
        self._lock = threading.Lock()

    def check(self, base_url: str, username: str, password: str, timeout: float, now: float | None = None) -> Probe:
        """Port, login page, then the project page with a recent session or after a fresh login."""
        now = time.monotonic() if now is None else now
        base = base_url.rstrip("/")
        key = (base, username)
        try:
            _connect(base, timeout)
            form = _login_page(base, timeout)
            with self._lock:
                cached = self._sessions.get(key)
            note = ""
            if cached is not None and now - cached[1] < self.reuse:
                answer = _get(base, PROJECT_PAGE, cached[0], timeout, "project page")
                if _is_project_page(answer):
                    return True, (f"login page with a CSRF token; {PROJECT_PAGE} with a session logged in "
                                  f"{now - cached[1]:.0f}s ago")
                if not _to_login(answer):
                    raise _Stop(f"project page: {_unexpected(answer)}")
                note = " (the previous session was lost)"
            with self._lock:
                self._sessions.pop(key, None)
            jar, login_seconds = _login(base, form, username, password, timeout)
            answer = _get(base, PROJECT_PAGE, jar, timeout, "project page")
            if _to_login(answer):
                raise _Stop(f"project page: sent back to the login page right after logging in: the session "
                            f"was not kept (horizon's cache: memcached){note}")
            if not _is_project_page(answer):
                raise _Stop(f"project page: {_unexpected(answer)}")
        except _Stop as stop:
            return False, str(stop)
        with self._lock:
            self._sessions[key] = (jar, now)
        return True, f"login page with a CSRF token; logged in as {username} in {login_seconds:.1f}s, {PROJECT_PAGE} " \
                     f"answered{note}"

    def forget(self) -> None:
        with self._lock:
            self._sessions.clear()


def _connect(base: str, timeout: float) -> None:
    parts = urllib.parse.urlsplit(base)
    host, port = parts.hostname or "", parts.port or 80
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise _Stop(f"port: connect {host}:{port}: {_os_error(exc)}") from None


def _login_page(base: str, timeout: float) -> tuple[http.cookiejar.CookieJar, dict[str, str]]:
    jar = http.cookiejar.CookieJar()
    answer = _get(base, LOGIN_PATH, jar, timeout, "login page")
    if answer.status != 200:
        raise _Stop(f"login page: {_unexpected(answer)}")
    form = _parse_form(answer.body)
    if not form.found:
        raise _Stop(f"login page: HTTP 200 without a login form ({_excerpt(answer.body)})")
    if not form.fields.get(CSRF_FIELD):
        raise _Stop("login page: no CSRF token in the login form")
    if _cookie(jar, CSRF_COOKIE) is None:
        raise _Stop(f"login page: no {CSRF_COOKIE} cookie with the form")
    return jar, form.fields


def _login(base: str, page: tuple[http.cookiejar.CookieJar, dict[str, str]], username: str, password: str,
           timeout: float) -> tuple[http.cookiejar.CookieJar, float]:
    """POST the form as a browser does (its hidden fields kept); a redirect and a session cookie is a login."""
    jar, fields = page
    data = {**fields, "username": username, "password": password, "next": PROJECT_PAGE}
    started = time.monotonic()
    answer = _request(base, LOGIN_PATH, jar, timeout, "login", data=data)
    seconds = time.monotonic() - started
    if answer.status == 200:
        message = _parse_form(answer.body).error_text()
        raise _Stop(f"login: refused, the login form again ({message or 'no message'})")
    if answer.status not in (301, 302, 303):
        raise _Stop(f"login: {_unexpected(answer)}")
    if _path(answer.location) == LOGIN_PATH:
        raise _Stop("login: redirected to the login page again")
    if _cookie(jar, SESSION_COOKIE) is None:
        raise _Stop(f"login: HTTP {answer.status} without a {SESSION_COOKIE} cookie")
    return jar, seconds


def _get(base: str, path: str, jar: http.cookiejar.CookieJar, timeout: float, layer: str) -> _Answer:
    return _request(base, path, jar, timeout, layer)


def _request(base: str, path: str, jar: http.cookiejar.CookieJar, timeout: float, layer: str,
             data: dict[str, str] | None = None) -> _Answer:
    # Straight to the VIP (no http_proxy from the environment), cookies kept, redirects not followed.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPCookieProcessor(jar),
                                         _NoRedirect())
    headers = {"User-Agent": "nodeos-health", "Accept": "text/html"}
    body = None
    if data is not None:
        body = urllib.parse.urlencode(data).encode()
        headers.update({"Content-Type": "application/x-www-form-urlencoded", "Referer": f"{base}{LOGIN_PATH}"})
    request = urllib.request.Request(f"{base}{path}", data=body, headers=headers, method="POST" if body else "GET")
    try:
        with opener.open(request, timeout=timeout) as response:
            return _Answer(response.status, response.headers.get("Location", ""), _read(response))
    except urllib.error.HTTPError as exc:  # 3xx (not followed), 4xx, 5xx: an answer all the same
        try:
            text = _read(exc)
        except Exception:  # noqa: BLE001
            text = ""
        return _Answer(exc.code, exc.headers.get("Location", "") if exc.headers else "", text)
    except Exception as exc:  # noqa: BLE001 (a probe reports, never raises)
        raise _Stop(f"{layer}: {_url_reason(exc)}") from None


def _read(response: Any) -> str:
    return response.read(_MAX_BODY).decode("utf-8", "replace")


def _cookie(jar: http.cookiejar.CookieJar, name: str) -> str | None:
    return next((cookie.value for cookie in jar if cookie.name == name), None)


def _path(location: str) -> str:
    return urllib.parse.urlsplit(location).path


def _to_login(answer: _Answer) -> bool:
    return answer.status in (301, 302, 303) and _path(answer.location) == LOGIN_PATH


def _is_project_page(answer: _Answer) -> bool:
    """200, a logged-in page (its logout link), not the login form."""
    return answer.status == 200 and LOGOUT_PATH in answer.body and not _parse_form(answer.body).found


def _unexpected(answer: _Answer) -> str:
    if answer.status in (301, 302, 303):
        return f"HTTP {answer.status} to {answer.location or 'nowhere'}"
    if answer.status == 200:
        return f"HTTP 200 but not the page expected ({_excerpt(answer.body)})"
    return f"HTTP {answer.status} ({_excerpt(answer.body)})"


def _excerpt(body: str) -> str:
    """The page's title, else its first words."""
    lowered = body.lower()
    start, end = lowered.find("<title>"), lowered.find("</title>")
    text = body[start + len("<title>"):end] if 0 <= start < end else body
    return " ".join(text.split())[:80] or "empty body"


horizon_sessions = HorizonSessions()  # the agent's horizon checks share it
