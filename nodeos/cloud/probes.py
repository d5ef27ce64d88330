"""Service-specific health signals: each one does the work a client does, not a ping.

Every probe returns `(ok, detail)` and never raises; the detail names the layer
that failed (connect, login, write, read, token, ...) so an operator reading
`nodeos status` knows where to look. A MariaDB ping passes on "Access denied"
and a TCP connect passes on a wedged memcached, hence a real write and read.
"""

from __future__ import annotations

import datetime
import http.client
import json
import math
import secrets
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Mapping

import pymysql

Probe = tuple[bool, str]
Judge = Callable[[Any], Probe]  # an API's answer (parsed JSON) -> what it says about the service

HEALTH_DATABASE = "nodeos_health"
HEALTH_USER = "nodeos-health"

# Run once as root (by the MariaDB setup job); idempotent, and ALTER USER makes
# a changed password converge on an existing user.
MARIADB_HEALTH_SQL = """\
CREATE DATABASE IF NOT EXISTS `{database}`;
CREATE TABLE IF NOT EXISTS `{database}`.heartbeat (id INT PRIMARY KEY, beat VARCHAR(64) NOT NULL);
CREATE USER IF NOT EXISTS '{user}'@'%' IDENTIFIED BY '{password}';
ALTER USER '{user}'@'%' IDENTIFIED BY '{password}';
GRANT SELECT, INSERT, UPDATE ON `{database}`.* TO '{user}'@'%';
"""


def mariadb_health_sql(password: str, database: str = HEALTH_DATABASE) -> str:
    """The setup SQL for the heartbeat check user and table."""
    if "'" in password or "\\" in password:
        raise ValueError("the health password must not contain quotes or backslashes")  # derived ones are hex
    return MARIADB_HEALTH_SQL.format(database=database, user=HEALTH_USER, password=password)


def _token() -> str:
    return secrets.token_hex(16)


def _os_error(exc: BaseException) -> str:
    """A short reason for a socket-level failure ("connection refused", "timed out")."""
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


# -- MariaDB -------------------------------------------------------------------

def mariadb_heartbeat(host: str, port: int, user: str, password: str, timeout: float,
                      database: str = HEALTH_DATABASE) -> Probe:
    """Write a fresh token to the heartbeat row, commit, read it back."""
    beat = _token()
    try:
        conn = pymysql.connect(host=host, port=port, user=user, password=password, database=database,
                               connect_timeout=timeout, read_timeout=timeout, write_timeout=timeout)
    except pymysql.err.MySQLError as exc:
        return False, f"connect {host}:{port}: {_mysql_reason(exc)}"
    except Exception as exc:  # noqa: BLE001 (a probe reports, never raises)
        return False, f"connect {host}:{port}: {_os_error(exc)}"
    step = "write"
    try:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO heartbeat (id, beat) VALUES (1, %s) ON DUPLICATE KEY UPDATE beat = VALUES(beat)", (beat,))
            step = "commit"
            conn.commit()
            step = "read"
            cur.execute("SELECT beat FROM heartbeat WHERE id = 1")
            row = cur.fetchone()
    except pymysql.err.MySQLError as exc:
        return False, f"{step} heartbeat: {_mysql_reason(exc)}"
    except Exception as exc:  # noqa: BLE001
        return False, f"{step} heartbeat: {_os_error(exc)}"
    finally:
        try:
            conn.close()
        except Exception:  # noqa: BLE001 (already broken; the result stands)
            pass
    if row is None or row[0] != beat:
        return False, f"read heartbeat: wrote {beat}, read back {row[0] if row else 'no row'}"
    return True, f"heartbeat written and read back on {host}:{port}"


def _mysql_reason(exc: BaseException) -> str:
    """"(1045, "Access denied for user ...")" -> "Access denied for user ... (1045)"."""
    args = getattr(exc, "args", ())
    if len(args) >= 2 and isinstance(args[0], int):
        message = str(args[1])
        if args[0] in (2003, 2013):  # can't connect / lost it: say why in the words of the socket error
            lowered = message.lower()
            for reason in ("connection refused", "timed out", "no route to host", "name or service not known"):
                if reason in lowered:
                    return f"{reason} ({args[0]})"
        return f"{message} ({args[0]})"
    return str(exc) or type(exc).__name__


# -- memcached -----------------------------------------------------------------

def memcached_set_get(host: str, port: int, timeout: float) -> Probe:
    """Set a fresh key (30 s expiry) over the text protocol and get it back."""
    key, value = f"nodeos-health:{_token()}", _token()
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(f"set {key} 0 30 {len(value)}\r\n{value}\r\n".encode())
            stored = _read_until(sock, b"\r\n")
            if stored != b"STORED\r\n":
                return False, f"set: answered {stored.strip().decode(errors='replace')[:80] or 'nothing'}"
            sock.sendall(f"get {key}\r\n".encode())
            answer = _read_until(sock, b"END\r\n")
    except Exception as exc:  # noqa: BLE001
        return False, f"memcached {host}:{port}: {_os_error(exc)}"
    expected = f"VALUE {key} 0 {len(value)}\r\n{value}\r\nEND\r\n".encode()
    if answer != expected:
        return False, f"get: value not read back (answered {answer[:80].decode(errors='replace')!r})"
    return True, f"set and get on {host}:{port}"


def _read_until(sock: socket.socket, end: bytes, limit: int = 4096) -> bytes:
    data = b""
    while not data.endswith(end) and len(data) < limit:
        chunk = sock.recv(limit)
        if not chunk:
            break  # closed: the caller compares what came
        data += chunk
        if data.startswith((b"ERROR", b"SERVER_ERROR", b"CLIENT_ERROR")) and data.endswith(b"\r\n"):
            break
    return data


# -- RabbitMQ ------------------------------------------------------------------

def rabbitmq_publish_consume(host: str, port: int, user: str, password: str, timeout: float, vhost: str = "/",
                             connection: Callable[..., Any] | None = None) -> Probe:
    """Log in, publish one confirmed message to a fresh private queue and get it back.

    What `rabbitmq-diagnostics check_running` + `check_local_alarms` say, at the
    price of one AMQP connection instead of two Erlang VMs (1-2 s of CPU each):
    a broker that accepts a login runs (its listeners start last), and a memory or
    disk alarm blocks publishers, which the broker says with connection.blocked.
    The queue is exclusive: gone with the connection, nothing left behind.
    """
    blocked: list[str] = []
    make = connection or _amqp_connection
    try:
        conn = make(host=f"{host}:{port}", userid=user, password=password, virtual_host=vhost,
                    connect_timeout=timeout, read_timeout=timeout, write_timeout=timeout,
                    on_blocked=lambda reason="": blocked.append(reason or "blocked"))
    except Exception as exc:  # noqa: BLE001
        return False, f"connect {host}:{port}: {_amqp_reason(exc)}"
    step, body, done = "connect", _token(), False
    try:
        conn.connect()
        step = "declare"
        channel = conn.channel()
        queue = channel.queue_declare("", exclusive=True, auto_delete=True)[0]
        step = "publish"
        # With publisher confirms: the broker acknowledges the message once it holds it.
        channel.basic_publish_confirm(_amqp_message(body), exchange="", routing_key=queue, confirm_timeout=timeout)
        step = "consume"
        message = channel.basic_get(queue, no_ack=True)
        done = True
    except Exception as exc:  # noqa: BLE001 (a probe reports, never raises)
        if not blocked:  # a blocked publisher waits: then the timeout is the alarm's, not the broker's death
            return False, f"{_amqp_layer(step, exc)} {host}:{port}: {_amqp_reason(exc)}"
    finally:
        _close_quietly(conn, polite=done and not blocked)  # a blocked broker reads nothing, not even a close
    if blocked:
        return False, f"alarm: publishing blocked by the broker (a memory or disk alarm) on {host}:{port}"
    got = getattr(message, "body", None)
    if isinstance(got, bytes):
        got = got.decode(errors="replace")
    if got != body:
        return False, f"consume: the message published was not read back (got {str(got)[:40] if got else 'nothing'})"
    return True, f"published and consumed on {host}:{port}"


def _amqp_connection(**kwargs: Any) -> Any:
    import amqp  # only where a broker is checked

    return amqp.Connection(**kwargs)


def _amqp_message(body: str) -> Any:
    import amqp

    return amqp.Message(body)


def _amqp_layer(step: str, exc: BaseException) -> str:
    """The connect step fails at the socket (connect) or at the login (ACCESS_REFUSED, 403)."""
    if step == "connect" and getattr(exc, "reply_code", None) in (403, 530):
        return "login"
    return step


def _amqp_reason(exc: BaseException) -> str:
    """amqp's "(0, 0): (403) ACCESS_REFUSED - Login was refused ..." -> "ACCESS_REFUSED - Login was refused ... (403)"."""
    code, text = getattr(exc, "reply_code", None), getattr(exc, "reply_text", None)
    if code and text:
        return f"{str(text)[:120]} ({code})"
    if isinstance(exc, OSError) or isinstance(exc, TimeoutError):
        return _os_error(exc)
    return str(exc)[:120] or type(exc).__name__


def _close_quietly(conn: Any, polite: bool) -> None:
    try:
        if polite:
            conn.close()
        else:
            conn.collect()  # drop the socket, no handshake
    except Exception:  # noqa: BLE001 (already broken; the result stands)
        try:
            conn.collect()
        except Exception:  # noqa: BLE001
            pass


# -- keystone and the APIs behind it ---------------------------------------------

# Straight to the VIP: an http_proxy in the environment would probe the proxy instead.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def keystone_token(auth_url: str, username: str, password: str, project: str, timeout: float) -> tuple[str | None, str]:
    """A project-scoped token (password method, domain Default), or None and why not."""
    body = {"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": username, "domain": {"name": "Default"}, "password": password}}},
        "scope": {"project": {"name": project, "domain": {"name": "Default"}}},
    }}
    url = f"{_v3_base(auth_url)}/v3/auth/tokens"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "Accept": "application/json"})
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            status, token = response.status, response.headers.get("X-Subject-Token")
            response.read()
    except urllib.error.HTTPError as exc:
        return None, f"token: HTTP {exc.code} {_error_text(exc)}".rstrip()
    except Exception as exc:  # noqa: BLE001
        return None, f"token: {_url_reason(exc)}"
    if status != 201:
        return None, f"token: HTTP {status}, expected 201"
    if not token:
        return None, "token: HTTP 201 without an X-Subject-Token header"
    return token, "token issued"


def authenticated_get(url: str, token: str, timeout: float, headers: Mapping[str, str] | None = None) -> Probe:
    """GET with the token (and the API's own `headers`: placement's microversion); ok on 200 and a JSON body."""
    ok, detail, _ = authenticated_read(url, token, timeout, headers)
    return ok, detail


def authenticated_read(url: str, token: str, timeout: float,
                       headers: Mapping[str, str] | None = None) -> tuple[bool, str, Any]:
    """authenticated_get, and the JSON body it read (None on a failure)."""
    request = urllib.request.Request(url, headers={**(headers or {}), "X-Auth-Token": token,
                                                   "Accept": "application/json"})
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code} {_error_text(exc)}".rstrip(), None
    except Exception as exc:  # noqa: BLE001
        return False, _url_reason(exc), None
    if status != 200:
        return False, f"HTTP {status}, expected 200", None
    try:
        data = json.loads(body)
    except ValueError:
        return False, "HTTP 200 but the body is not JSON", None
    return True, "HTTP 200", data


def keystone_token_and_read(auth_url: str, username: str, password: str, project: str, timeout: float,
                            read_path: str = "/v3/projects") -> Probe:
    """Get a token, then read with it: proves keystone, its database and its fernet keys."""
    token, detail = keystone_token(auth_url, username, password, project, timeout)
    if token is None:
        return False, detail
    ok, read_detail = authenticated_get(f"{_v3_base(auth_url)}{read_path}", token, timeout)
    return ok, f"token issued, read {read_path}: {read_detail}" if ok else f"read {read_path}: {read_detail}"


class TokenCache:
    """Tokens reused for `reuse` seconds: a password check costs keystone a bcrypt hash
    (about 0.3 s of CPU each, measured), far too much every couple of seconds."""

    def __init__(self, reuse: float = 60.0) -> None:
        self.reuse = reuse
        self._tokens: dict[tuple[str, str, str], tuple[str, float]] = {}
        self._lock = threading.Lock()

    def check(self, auth_url: str, username: str, password: str, project: str, timeout: float,
              read_path: str = "/v3/projects", now: float | None = None) -> Probe:
        """An authenticated read from keystone itself with a recent token (a new one when there is none or it was refused)."""
        return self.check_api(auth_url, username, password, project, f"{_v3_base(auth_url)}{read_path}", timeout,
                              now=now, label=read_path)

    def check_api(self, auth_url: str, username: str, password: str, project: str, read_url: str, timeout: float,
                  now: float | None = None, label: str | None = None,
                  headers: Mapping[str, str] | None = None, judge: Judge | None = None) -> Probe:
        """A token from keystone, then GET `read_url` (another API: glance's /v2/images) with it,
        and, with a `judge`, what the answer says (nova's service list: is this node's conductor up?).

        The detail names the layer: "token: ..." when keystone failed, "read ...: ..." when the API
        did, the judge's own words when the answer is bad news.
        """
        now = time.monotonic() if now is None else now
        label = label or read_url
        key = (_v3_base(auth_url), username, project)
        with self._lock:
            cached = self._tokens.get(key)
        if cached is not None and now - cached[1] < self.reuse:
            ok, detail, body = authenticated_read(read_url, cached[0], timeout, headers)
            if ok:
                return _judged(judge, body, f"read {label} with a token issued {now - cached[1]:.0f}s ago: {detail}")
            if not detail.startswith("HTTP 401"):
                return False, f"read {label}: {detail}"  # the API failed, not the token: no new one (a bcrypt each)
        token, detail = keystone_token(auth_url, username, password, project, timeout)
        if token is None:
            with self._lock:
                self._tokens.pop(key, None)
            return False, detail
        with self._lock:
            self._tokens[key] = (token, now)
        ok, read_detail, body = authenticated_read(read_url, token, timeout, headers)
        if not ok:
            return False, f"read {label}: {read_detail}"
        return _judged(judge, body, f"token issued, read {label}: {read_detail}")


def _judged(judge: Judge | None, body: Any, read_detail: str) -> Probe:
    """The read's outcome, then the judge's verdict on its answer (alone when it fails: that is the layer)."""
    if judge is None:
        return True, read_detail
    ok, verdict = judge(body)
    return (True, f"{read_detail}; {verdict}") if ok else (False, verdict)


def service_state(answer: Any, binary: str, host: str, now: float, started: float | None = None,
                  api: str = "nova") -> Probe:
    """Whether `api`'s service list (nova's GET /v2.1/os-services, cinder's GET /v3/os-services)
    has `binary` on `host` up.

    nova and cinder call a service up while its last report (a write every report_interval;
    nova's through the conductor for all but the conductor itself) is younger than
    service_down_time: so "up" proves the service's RPC and database path, which a live
    process or an open connection does not. `started`: when the process began; a report from
    before it (the killed predecessor's, still "up" for a while) does not count. Times are
    wall-clock (updated_at is UTC, stored to the second).
    """
    try:
        services = [s for s in answer["services"] if s.get("binary") == binary and s.get("host") == host]
    except (KeyError, TypeError, AttributeError):
        return False, f"service list: not {api}'s answer (no 'services' list)"
    if not services:
        return False, f"service {binary} on {host} is not in {api}'s service list (it never reported)"
    service = max(services, key=lambda s: s.get("updated_at") or "")
    reported = _report_time(service.get("updated_at"))
    age = None if reported is None else max(0.0, now - reported)  # a clock ahead of ours: 0
    last = "never reported" if age is None else f"last report {age:.0f} s ago"
    if service.get("forced_down"):
        return False, f"service {binary} on {host} is forced down ({last})"
    if service.get("state") != "up":
        return False, f"service {binary} on {host} is {service.get('state') or 'in no state'} ({last})"
    if started is not None and reported is not None and not _reported_since(reported, started):
        return False, f"service {binary} on {host} has not reported since it started {now - started:.0f} s ago ({last})"
    return True, f"{binary} on {host} up ({last})"


def _reported_since(reported: float, started: float) -> bool:
    """Whether a report stamped `reported` was written by a process started at `started`.

    updated_at is stored to the whole second (cut, not rounded: MariaDB's DATETIME), so a
    report in the second the process started cannot be told from its predecessor's last one:
    only a later second counts. A predecessor's worker outlives it by a moment (cinder-volume's
    forked child reports until its group is stopped, just before the new start), and the new
    process's first report comes seconds after its start (imports, connections), never in it.
    """
    return reported >= math.floor(started) + 1


def _report_time(updated_at: Any) -> float | None:
    """The service list's updated_at ("2026-12-01T01:02:03.000000", UTC) as a timestamp, None if absent or unreadable."""
    if not isinstance(updated_at, str):
        return None
    try:
        stamp = datetime.datetime.fromisoformat(updated_at.removesuffix("Z"))
    except ValueError:
        return None
    return stamp.replace(tzinfo=datetime.timezone.utc).timestamp()


def _v3_base(auth_url: str) -> str:
    """http://vip:5000/v3 and http://vip:5000 both name the same keystone."""
    base = auth_url.rstrip("/")
    return base[: -len("/v3")] if base.endswith("/v3") else base


def _error_text(exc: urllib.error.HTTPError) -> str:
    """The API's own error message (keystone's {"error": {"message": ...}}, placement's
    {"errors": [{"detail": ...}]}, nova's {"forbidden": {"message": ...}}), else the reason phrase."""
    try:
        data: Any = json.loads(exc.read(4096) or b"null")
    except Exception:  # noqa: BLE001 (not JSON)
        data = None
    try:
        if "errors" in data:
            message = data["errors"][0]["detail"]
        else:
            [fault] = data.values()  # keystone's "error", nova's fault name
            message = fault["message"]
    except Exception:  # noqa: BLE001 (none of these shapes)
        message = exc.reason
    return " ".join(str(message or "").split())[:160]  # placement's details span lines


def _url_reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        return _os_error(exc.reason)
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    if isinstance(exc, http.client.HTTPException):
        return f"bad HTTP answer ({type(exc).__name__})"
    return _os_error(exc)


keystone_tokens = TokenCache()  # the agent's keystone checks share it
