"""Service-specific probes against real memcached and MariaDB daemons on loopback, and a stand-in keystone."""

from __future__ import annotations

import datetime
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest

from nodeos.cloud.probes import (keystone_token, keystone_token_and_read, mariadb_health_sql, mariadb_heartbeat,
                                 memcached_set_get, rabbitmq_publish_consume)

MEMCACHED = "/usr/bin/memcached"
MARIADBD = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
INSTALL_DB = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"
HEALTH_PASSWORD = "0123456789abcdef0123456789abcdef"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{proc.args[0]} not listening on {port} after {timeout}s")


def stop(proc: subprocess.Popen) -> None:
    """By PID only: never by name (other daemons of the same kind may be running)."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


# -- memcached -------------------------------------------------------------------

@pytest.mark.skipif(not os.access(MEMCACHED, os.X_OK), reason=f"{MEMCACHED} not installed")
def test_memcached_set_get_and_stopped() -> None:
    port = free_port()
    proc = subprocess.Popen([MEMCACHED, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-u", "root", "-m", "16"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc, 10)
        ok, detail = memcached_set_get("127.0.0.1", port, timeout=2)
        assert ok, detail
    finally:
        stop(proc)
    ok, detail = memcached_set_get("127.0.0.1", port, timeout=2)
    assert not ok and "connection refused" in detail


def test_memcached_wrong_answer() -> None:
    """A listener that is not memcached (or a wedged one answering errors) fails the set."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(b"SERVER_ERROR out of memory storing object\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        ok, detail = memcached_set_get("127.0.0.1", server.getsockname()[1], timeout=2)
    finally:
        server.close()
    assert not ok and detail.startswith("set: answered SERVER_ERROR out of memory")


# -- MariaDB ---------------------------------------------------------------------

class MariaDB:
    def __init__(self, datadir: Path, port: int, proc: subprocess.Popen) -> None:
        self.datadir, self.port, self.proc = datadir, port, proc


@pytest.fixture(scope="module")
def mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDB]:
    if not (os.access(MARIADBD, os.X_OK) and os.access(INSTALL_DB, os.X_OK)):
        pytest.skip(f"MariaDB not installed ({MARIADBD}, {INSTALL_DB})")
    base = tmp_path_factory.mktemp("mariadb")
    data = base / "data"
    install = subprocess.run([INSTALL_DB, "--no-defaults", f"--datadir={data}", "--user=root",
                              "--auth-root-authentication-method=normal", "--skip-test-db"],
                             capture_output=True, text=True, timeout=120)
    assert install.returncode == 0, install.stdout + install.stderr
    port = free_port()
    log = open(base / "mysqld.err", "w")
    proc = subprocess.Popen([MARIADBD, "--no-defaults", f"--datadir={data}", "--user=root", "--bind-address=127.0.0.1",
                             f"--port={port}", f"--socket={base}/sock", f"--pid-file={base}/pid", "--skip-log-bin",
                             "--innodb-buffer-pool-size=16M", "--skip-name-resolve"], stdout=log, stderr=log)
    try:
        wait_for_port(port, proc, 60)
        # As the setup job will: root over the socket. Plus a database the user may use that has no heartbeat table.
        setup = mariadb_health_sql(HEALTH_PASSWORD) + "CREATE DATABASE nodeos_empty; GRANT ALL ON nodeos_empty.* TO 'nodeos-health'@'%';"
        with pymysql.connect(unix_socket=str(base / "sock"), user="root", password="") as conn, conn.cursor() as cur:
            for statement in filter(str.strip, setup.split(";")):
                cur.execute(statement)
            conn.commit()
        yield MariaDB(data, port, proc)
    finally:
        stop(proc)
        log.close()


def test_mariadb_heartbeat(mariadb: MariaDB) -> None:
    for _ in range(2):  # the second beat updates the row the first one inserted
        ok, detail = mariadb_heartbeat("127.0.0.1", mariadb.port, "nodeos-health", HEALTH_PASSWORD, timeout=5)
        assert ok, detail


def test_mariadb_wrong_password(mariadb: MariaDB) -> None:
    ok, detail = mariadb_heartbeat("127.0.0.1", mariadb.port, "nodeos-health", "wrong", timeout=5)
    assert not ok and "Access denied" in detail and detail.startswith("connect ")


def test_mariadb_no_table(mariadb: MariaDB) -> None:
    """The user logs in but the table is missing: the write is what fails, and the detail says so."""
    ok, detail = mariadb_heartbeat("127.0.0.1", mariadb.port, "nodeos-health", HEALTH_PASSWORD, timeout=5,
                                   database="nodeos_empty")
    assert not ok and detail.startswith("write heartbeat:") and "doesn't exist" in detail


def test_mariadb_database_denied(mariadb: MariaDB) -> None:
    ok, detail = mariadb_heartbeat("127.0.0.1", mariadb.port, "nodeos-health", HEALTH_PASSWORD, timeout=5, database="mysql")
    assert not ok and detail.startswith("connect ") and "Access denied" in detail


def test_mariadb_stopped() -> None:
    ok, detail = mariadb_heartbeat("127.0.0.1", free_port(), "nodeos-health", HEALTH_PASSWORD, timeout=2)
    assert not ok and "connection refused" in detail.lower()


def test_health_sql_is_idempotent_and_converges() -> None:
    sql = mariadb_health_sql("abc")
    assert "IF NOT EXISTS `nodeos_health`" in sql and "ALTER USER 'nodeos-health'@'%' IDENTIFIED BY 'abc'" in sql
    assert "ON `nodeos_health`.*" in sql
    with pytest.raises(ValueError):
        mariadb_health_sql("a'b")


# -- keystone (a stand-in for status and header handling only) -----------------------

class JsonHandler(http.server.BaseHTTPRequestHandler):
    """A stand-in API's replies: JSON with a status and optional headers, and no access log."""

    def send_json(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def serve(handler: type[http.server.BaseHTTPRequestHandler]) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _keystone(token_status: int, read_status: int, with_header: bool = True) -> http.server.ThreadingHTTPServer:
    class Handler(JsonHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            assert body["auth"]["scope"]["project"] == {"name": "admin", "domain": {"name": "Default"}}
            self.send_json(token_status, {"error": {"message": "The request you have made requires authentication."}}
                           if token_status >= 400 else {"token": {}},
                           {"X-Subject-Token": "tok-1"} if with_header and token_status == 201 else None)

        def do_GET(self) -> None:  # noqa: N802
            authorized = self.headers.get("X-Auth-Token") == "tok-1" and self.path in ("/v3/projects", "/v2/images")
            self.send_json(read_status if authorized else 401, {"projects": []})

    return serve(Handler)


@pytest.fixture
def keystone() -> Iterator[Callable[..., str]]:
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(token_status: int = 201, read_status: int = 200, with_header: bool = True) -> str:
        servers.append(_keystone(token_status, read_status, with_header))
        return f"http://127.0.0.1:{servers[-1].server_address[1]}/v3"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_keystone_ok(keystone: Callable[..., str]) -> None:
    ok, detail = keystone_token_and_read(keystone(), "admin", "pw", "admin", timeout=2)
    assert ok, detail
    assert keystone_token(keystone(), "admin", "pw", "admin", timeout=2) == ("tok-1", "token issued")


def test_keystone_token_refused(keystone: Callable[..., str]) -> None:
    ok, detail = keystone_token_and_read(keystone(token_status=401), "admin", "pw", "admin", timeout=2)
    assert not ok and detail.startswith("token: HTTP 401") and "requires authentication" in detail


def test_keystone_no_token_header(keystone: Callable[..., str]) -> None:
    ok, detail = keystone_token_and_read(keystone(with_header=False), "admin", "pw", "admin", timeout=2)
    assert not ok and detail == "token: HTTP 201 without an X-Subject-Token header"


def test_keystone_read_fails(keystone: Callable[..., str]) -> None:
    ok, detail = keystone_token_and_read(keystone(read_status=503), "admin", "pw", "admin", timeout=2)
    assert not ok and detail.startswith("read /v3/projects: HTTP 503")


def test_keystone_down() -> None:
    ok, detail = keystone_token_and_read(f"http://127.0.0.1:{free_port()}/v3", "admin", "pw", "admin", timeout=2)
    assert not ok and detail == "token: connection refused"


def test_token_cache_reuses_a_token_until_it_ages_or_is_refused(keystone: Callable[..., str]) -> None:
    from nodeos.cloud.probes import TokenCache

    url = keystone()
    cache = TokenCache(reuse=60.0)
    ok, detail = cache.check(url, "admin", "pw", "admin", timeout=2, now=100.0)
    assert ok and detail.startswith("token issued")
    ok, detail = cache.check(url, "admin", "pw", "admin", timeout=2, now=130.0)
    assert ok and "with a token issued 30s ago" in detail  # no password check: keystone spends no bcrypt
    ok, detail = cache.check(url, "admin", "pw", "admin", timeout=2, now=161.0)
    assert ok and detail.startswith("token issued")  # aged out: a new token proves the token path again
    refused = keystone(token_status=401)
    cache._tokens[("http://127.0.0.1:" + refused.split(":")[2].split("/")[0], "admin", "admin")] = ("stale", 160.0)
    ok, detail = cache.check(refused, "admin", "pw", "admin", timeout=2, now=161.0)
    assert not ok and detail.startswith("token: HTTP 401")  # the reused token was refused: asked anew, and that fails


def test_an_api_behind_keystone_names_the_failing_layer(keystone: Callable[..., str]) -> None:
    """glance's check: a token from keystone, then GET /v2/images at glance's VIP (here the same stand-in)."""
    from nodeos.cloud.probes import TokenCache

    url = keystone()
    images = url.replace("/v3", "/v2/images")
    cache = TokenCache(reuse=60.0)
    ok, detail = cache.check_api(url, "admin", "pw", "admin", images, timeout=2, now=100.0)
    assert ok and detail == f"token issued, read {images}: HTTP 200"
    down = f"http://127.0.0.1:{free_port()}/v2/images"
    ok, detail = cache.check_api(url, "admin", "pw", "admin", down, timeout=2, now=110.0)
    assert not ok and detail == f"read {down}: connection refused"  # the API, not keystone
    ok, detail = cache.check_api(f"http://127.0.0.1:{free_port()}/v3", "admin", "pw", "admin", images, timeout=2)
    assert not ok and detail == "token: connection refused"  # keystone itself
    failing = keystone(read_status=500)
    ok, detail = TokenCache().check_api(failing, "admin", "pw", "admin", failing.replace("/v3", "/v2/images"), 2)
    assert not ok and "HTTP 500" in detail and detail.startswith("read ")


def test_the_glance_check_needs_keystones_vip_and_says_so() -> None:
    from nodeos.services.catalog import HealthCheckSpec
    from nodeos.services.health import CheckTarget, run_check

    result = run_check(HealthCheckSpec(type="glance", port=9292, path="/v2/images"), CheckTarget(vip="10.0.0.203"))
    assert not result.ok and result.detail == "token: keystone has no VIP"
# -- RabbitMQ (a stand-in for py-amqp's Connection: the broker's behaviour is the lab test's) ----------

class FakeChannel:
    def __init__(self, broker: "FakeBroker") -> None:
        self.broker = broker

    def queue_declare(self, queue: str, exclusive: bool, auto_delete: bool) -> tuple[str, int, int]:
        assert queue == "" and exclusive and auto_delete  # private and gone with the connection
        return "amq.gen-1", 0, 0

    def basic_publish_confirm(self, message: Any, exchange: str, routing_key: str, confirm_timeout: float) -> None:
        if self.broker.alarm:
            self.broker.on_blocked("connection blocked, see broker logs")
            raise TimeoutError()  # the broker stops reading: no confirm comes
        self.broker.queue.append(message.body if self.broker.echo else "something else")

    def basic_get(self, queue: str, no_ack: bool) -> Any:
        body = self.broker.queue.pop() if self.broker.queue else None
        return None if body is None else type("Message", (), {"body": body.encode()})()


class FakeBroker:
    def __init__(self, refuse: BaseException | None = None, alarm: bool = False, echo: bool = True) -> None:
        self.refuse, self.alarm, self.echo = refuse, alarm, echo
        self.queue: list[str] = []
        self.closed: str | None = None
        self.kwargs: dict[str, Any] = {}

    def __call__(self, **kwargs: Any) -> "FakeBroker":
        self.kwargs = kwargs
        self.on_blocked = kwargs["on_blocked"]
        return self

    def connect(self) -> None:
        if self.refuse is not None:
            raise self.refuse

    def channel(self) -> FakeChannel:
        return FakeChannel(self)

    def close(self) -> None:
        self.closed = "politely"

    def collect(self) -> None:
        self.closed = self.closed or "dropped"


def probe_rabbitmq(broker: FakeBroker) -> tuple[bool, str]:
    return rabbitmq_publish_consume("10.0.0.203", 5672, "openstack", "pw", 2.0, connection=broker)


def test_rabbitmq_publish_consume() -> None:
    broker = FakeBroker()
    assert probe_rabbitmq(broker) == (True, "published and consumed on 10.0.0.203:5672")
    assert broker.kwargs["userid"] == "openstack" and broker.kwargs["host"] == "10.0.0.203:5672"
    assert broker.closed == "politely"


def test_rabbitmq_failures_name_their_layer() -> None:
    import amqp

    ok, detail = probe_rabbitmq(FakeBroker(refuse=ConnectionRefusedError(111, "Connection refused")))
    assert not ok and detail == "connect 10.0.0.203:5672: connection refused"
    refused = amqp.exceptions.AccessRefused("Login was refused using authentication mechanism AMQPLAIN", reply_code=403)
    ok, detail = probe_rabbitmq(FakeBroker(refuse=refused))
    assert not ok and detail.startswith("login 10.0.0.203:5672: ") and "(403)" in detail
    ok, detail = probe_rabbitmq(FakeBroker(echo=False))
    assert not ok and detail.startswith("consume: the message published was not read back")


def test_rabbitmq_blocked_publisher_is_the_alarm_layer_and_the_socket_is_dropped() -> None:
    broker = FakeBroker(alarm=True)
    ok, detail = probe_rabbitmq(broker)
    assert not ok and detail.startswith("alarm: publishing blocked by the broker")
    assert broker.closed == "dropped"  # a blocked broker reads nothing: no close handshake to wait for


# -- placement (a stand-in HTTP server answering as placement does; keystone is the stand-in above) ----

def _placement(read_status: int) -> http.server.ThreadingHTTPServer:
    """GET /resource_providers with a valid token and a microversion it speaks; placement's error shape."""
    class Handler(JsonHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            version = self.headers.get("OpenStack-API-Version", "")
            if self.headers.get("X-Auth-Token") != "tok-1":
                self._error(401, "Unauthorized", "The request you have made requires authentication.")
            elif self.path != "/resource_providers":
                self._error(404, "Not Found", "The resource could not be found.")
            elif version != "placement 1.0":
                self._error(406, "Not Acceptable", f"Unacceptable version header: {version}")
            elif read_status != 200:
                self._error(read_status, "Service Unavailable", "The server is currently\n unavailable.")
            else:
                self.send_json(200, {"resource_providers": []})

        def _error(self, status: int, title: str, detail: str) -> None:
            self.send_json(status, {"errors": [{"status": status, "title": title, "detail": detail}]})

    return serve(Handler)


@pytest.fixture
def placement() -> Iterator[Callable[..., int]]:
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(read_status: int = 200) -> int:
        servers.append(_placement(read_status))
        return servers[-1].server_address[1]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def placement_check(keystone_url: str | None, port: int, monkeypatch: pytest.MonkeyPatch) -> tuple[bool, str]:
    """The catalog's placement check as the agent runs it: keystone at its VIP, placement at its own."""
    from nodeos.services import health
    from nodeos.services.catalog import HealthCheckSpec

    vips = {}
    if keystone_url is not None:
        monkeypatch.setattr(health, "KEYSTONE_PORT", int(keystone_url.split(":")[2].split("/")[0]))
        vips["keystone"] = "127.0.0.1"
    spec = HealthCheckSpec(type="placement", port=port, path="/resource_providers", timeout=2.0)
    result = health.run_check(spec, health.CheckTarget(vip="127.0.0.1", vips=vips, values={"admin_password": "pw"}))
    return result.ok, result.detail


def test_the_placement_check_reads_resource_providers_with_a_microversion(
        keystone: Callable[..., str], placement: Callable[..., int], monkeypatch: pytest.MonkeyPatch) -> None:
    port = placement()
    ok, detail = placement_check(keystone(), port, monkeypatch)
    assert ok and detail == f"token issued, read http://127.0.0.1:{port}/resource_providers: HTTP 200", detail


def test_the_placement_check_names_the_failing_layer(
        keystone: Callable[..., str], placement: Callable[..., int], monkeypatch: pytest.MonkeyPatch) -> None:
    ok, detail = placement_check(keystone(token_status=401), placement(), monkeypatch)
    assert not ok and detail.startswith("token: HTTP 401")  # keystone refused: placement was never asked
    ok, detail = placement_check(f"http://127.0.0.1:{free_port()}/v3", placement(), monkeypatch)
    assert not ok and detail == "token: connection refused"
    ok, detail = placement_check(None, placement(), monkeypatch)
    assert not ok and detail == "token: keystone has no VIP"
    down = free_port()
    ok, detail = placement_check(keystone(), down, monkeypatch)
    assert not ok and detail == f"read http://127.0.0.1:{down}/resource_providers: connection refused"
    failing = placement(read_status=503)
    ok, detail = placement_check(keystone(), failing, monkeypatch)
    # placement's own words ({"errors": [{"detail": ...}]}), on one line
    assert not ok and detail == \
        f"read http://127.0.0.1:{failing}/resource_providers: HTTP 503 The server is currently unavailable.", detail


# -- nova (a stand-in answering as nova-api does; keystone is the stand-in above) ----------------------

NOW = 1_800_000_000.0  # the checks' wall clock (nova's updated_at is UTC)


def nova_time(seconds_ago: float) -> str:
    """updated_at as nova writes it: naive UTC, microseconds."""
    stamp = datetime.datetime.fromtimestamp(NOW - seconds_ago, datetime.timezone.utc)
    return stamp.replace(tzinfo=None).isoformat(timespec="microseconds")


def nova_service(binary: str, host: str, state: str = "up", seconds_ago: float | None = 3.0, **extra: object) -> dict:
    return {"id": 1, "binary": binary, "host": host, "zone": "internal", "status": "enabled", "state": state,
            "updated_at": None if seconds_ago is None else nova_time(seconds_ago), "disabled_reason": None, **extra}


def _api(version: str, reads: dict[str, Any], read_status: int, denied: str) -> http.server.ThreadingHTTPServer:
    """An API behind keystone (nova-api, cinder-api): GET `reads` with a valid token and the base
    microversion `version`; nova's and cinder's fault shape ({name: {code, message}})."""
    class Handler(JsonHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            asked = self.headers.get("OpenStack-API-Version", "")
            if self.headers.get("X-Auth-Token") != "tok-1":
                self.send_json(401, {"error": {"message": "The request you have made requires authentication."}})
            elif asked != version:
                self._fault(406, "notAcceptable", f"Version {asked} is not supported by the API.")
            elif read_status != 200:
                self._fault(read_status, "forbidden", denied)
            elif self.path in reads:
                self.send_json(200, reads[self.path])
            else:
                self._fault(404, "itemNotFound", "The resource could not be found.")

        def _fault(self, status: int, name: str, message: str) -> None:
            self.send_json(status, {name: {"code": status, "message": message}})

    return serve(Handler)


def _api_fixture(version: str, reads: Callable[[list[dict]], dict[str, Any]], denied: str) -> Iterator[Callable[..., int]]:
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(services: list[dict] | None = None, read_status: int = 200) -> int:
        servers.append(_api(version, reads(services or []), read_status, denied))
        return servers[-1].server_address[1]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def nova() -> Iterator[Callable[..., int]]:
    """nova-api: GET /v2.1/servers and /v2.1/os-services (microversion compute 2.1)."""
    yield from _api_fixture("compute 2.1", lambda services: {"/v2.1/servers": {"servers": []},
                                                             "/v2.1/os-services": {"services": services}},
                            "Policy doesn't allow os_compute_api:os-services:list to be performed.")


def api_check(kind: str, keystone_url: str | None, port: int, monkeypatch: pytest.MonkeyPatch, api_service: str,
              daemon: str | None = None, api_vip: str | None = "127.0.0.1", pid: int | None = None,
              api: str | None = None) -> tuple[bool, str]:
    """A catalog check as the agent on node n2 runs it: keystone and the API (`api_service`) at their VIPs."""
    from nodeos.cloud.registry import SERVICE_LISTS
    from nodeos.services import health
    from nodeos.services.catalog import API_READS, HealthCheckSpec

    vips = {} if api_vip is None else {api_service: api_vip}
    if keystone_url is not None:
        monkeypatch.setattr(health, "KEYSTONE_PORT", int(keystone_url.split(":")[2].split("/")[0]))
        vips["keystone"] = "127.0.0.1"
    monkeypatch.setattr(health, "wall_clock", lambda: NOW)
    path = SERVICE_LISTS[api].read if api else API_READS[kind]
    spec = HealthCheckSpec(type=kind, port=port, path=path, timeout=2.0, daemon=daemon, api=api)
    # The API's own check goes through its VIP (this node holds it); the workers' through the API's.
    target = health.CheckTarget(vip="127.0.0.1" if api is None else None, vips=vips, pid=pid,
                                values={"admin_password": "pw", "node_id": "n2"})
    result = health.run_check(spec, target)
    return result.ok, result.detail


def nova_check(kind: str, keystone_url: str | None, port: int, monkeypatch: pytest.MonkeyPatch,
               daemon: str | None = None, api_vip: str | None = "127.0.0.1", pid: int | None = None) -> tuple[bool, str]:
    """nova-api's check (`nova`) or a nova worker's (`service-list` of nova)."""
    return api_check(kind, keystone_url, port, monkeypatch, "nova-api", daemon, api_vip, pid,
                     api="nova" if kind == "service-list" else None)


def test_the_nova_api_check_lists_servers_with_the_base_microversion(
        keystone: Callable[..., str], nova: Callable[..., int], monkeypatch: pytest.MonkeyPatch) -> None:
    port = nova()
    ok, detail = nova_check("nova", keystone(), port, monkeypatch)
    assert ok and detail == f"token issued, read http://127.0.0.1:{port}/v2.1/servers: HTTP 200", detail
    ok, detail = nova_check("nova", keystone(token_status=401), port, monkeypatch)
    assert not ok and detail.startswith("token: HTTP 401")
    down = free_port()
    ok, detail = nova_check("nova", keystone(), down, monkeypatch)
    assert not ok and detail == f"read http://127.0.0.1:{down}/v2.1/servers: connection refused"


def test_the_service_list_check_finds_the_nova_daemon_up_under_the_control_host(
        keystone: Callable[..., str], nova: Callable[..., int], monkeypatch: pytest.MonkeyPatch) -> None:
    port = nova([nova_service("nova-conductor", "n1", "down", 300.0),  # another host's record
                 nova_service("nova-conductor", "control", "up", 4.2), nova_service("nova-scheduler", "control", "down", 75.0)])
    ok, detail = nova_check("service-list", keystone(), port, monkeypatch, daemon="nova-conductor")
    assert ok and detail == (f"token issued, read http://127.0.0.1:{port}/v2.1/os-services: HTTP 200; "
                             "nova-conductor on control up (last report 4 s ago)"), detail
    ok, detail = nova_check("service-list", keystone(), port, monkeypatch, daemon="nova-scheduler")
    assert not ok and detail == "service nova-scheduler on control is down (last report 75 s ago)"
    # This process started after that report (the check reads its start from the main pid).
    from nodeos.services import health

    monkeypatch.setattr(health, "_started", lambda pid: NOW - 1.0 if pid == 4242 else None)
    ok, detail = nova_check("service-list", keystone(), port, monkeypatch, daemon="nova-conductor", pid=4242)
    assert not ok and detail == "service nova-conductor on control has not reported since it started 1 s ago " \
                                "(last report 4 s ago)"


def test_the_service_list_check_names_the_failing_layer(
        keystone: Callable[..., str], nova: Callable[..., int], monkeypatch: pytest.MonkeyPatch) -> None:
    up = [nova_service("nova-scheduler", "control")]
    ok, detail = nova_check("service-list", keystone(token_status=401), nova(up), monkeypatch, daemon="nova-scheduler")
    assert not ok and detail.startswith("token: HTTP 401")
    ok, detail = nova_check("service-list", keystone(), nova(up), monkeypatch, daemon="nova-scheduler", api_vip=None)
    assert not ok and detail == "read: nova-api has no VIP"
    forbidden = nova(up, read_status=403)
    ok, detail = nova_check("service-list", keystone(), forbidden, monkeypatch, daemon="nova-scheduler")
    assert not ok and detail == (f"read http://127.0.0.1:{forbidden}/v2.1/os-services: HTTP 403 "
                                 "Policy doesn't allow os_compute_api:os-services:list to be performed.")  # nova's words
    ok, detail = nova_check("service-list", keystone(), nova([nova_service("nova-scheduler", "n1")]), monkeypatch,
                            daemon="nova-scheduler")
    assert not ok and detail == "service nova-scheduler on control is not in nova's service list (it never reported)"


def test_service_state_reads_nova_s_answer() -> None:
    from nodeos.cloud.probes import service_state

    def state(*services: dict) -> tuple[bool, str]:
        return service_state({"services": list(services)}, "nova-conductor", "n2", NOW)

    assert state(nova_service("nova-conductor", "n2", seconds_ago=0.4)) == \
        (True, "nova-conductor on n2 up (last report 0 s ago)")
    assert state(nova_service("nova-conductor", "n2", seconds_ago=-2.0))[1].endswith("(last report 0 s ago)")  # skew
    assert state(nova_service("nova-conductor", "n2", "down", None)) == \
        (False, "service nova-conductor on n2 is down (never reported)")
    assert state(nova_service("nova-conductor", "n2", forced_down=True)) == \
        (False, "service nova-conductor on n2 is forced down (last report 3 s ago)")
    # Two records (a re-created service): the latest report counts.
    assert state(nova_service("nova-conductor", "n2", "down", 90.0), nova_service("nova-conductor", "n2", "up", 2.0))[0]
    # A restarted daemon: the record is still "up" from its killed predecessor's reports.
    fresh = {"services": [nova_service("nova-conductor", "n2", seconds_ago=4.0)]}
    assert service_state(fresh, "nova-conductor", "n2", NOW, started=NOW - 2.5) == \
        (False, "service nova-conductor on n2 has not reported since it started 2 s ago (last report 4 s ago)")
    assert service_state(fresh, "nova-conductor", "n2", NOW, started=NOW - 4.6)[0]  # updated_at: whole seconds
    # A report in the very second the process started may be its predecessor's (or a worker it left): not counted.
    assert service_state(fresh, "nova-conductor", "n2", NOW, started=NOW - 4.0)[1] == \
        "service nova-conductor on n2 has not reported since it started 4 s ago (last report 4 s ago)"
    assert not service_state(fresh, "nova-conductor", "n2", NOW, started=NOW - 3.1)[0]
    assert service_state(fresh, "nova-conductor", "n2", NOW, started=NOW - 30.0)[0]
    assert service_state({"servers": []}, "nova-conductor", "n2", NOW) == \
        (False, "service list: not nova's answer (no 'services' list)")
    assert service_state([], "nova-conductor", "n2", NOW)[0] is False


# -- cinder (a stand-in answering as cinder-api does) ------------------------------------------------------

@pytest.fixture
def cinder() -> Iterator[Callable[..., int]]:
    """cinder-api: GET /v3/volumes and /v3/os-services (microversion volume 3.0, no project in the path)."""
    yield from _api_fixture("volume 3.0", lambda services: {"/v3/volumes": {"volumes": []},
                                                            "/v3/os-services": {"services": services}},
                            "Policy doesn't allow volume_extension:services:index to be performed.")


def cinder_service(binary: str, host: str, state: str = "up", seconds_ago: float = 3.0) -> dict:
    """As cinder lists it: no id, a zone, updated_at as nova writes it."""
    return {"binary": binary, "host": host, "zone": "nova", "status": "enabled", "state": state,
            "updated_at": nova_time(seconds_ago)}


def test_the_cinder_api_check_lists_volumes_with_the_base_microversion(
        keystone: Callable[..., str], cinder: Callable[..., int], monkeypatch: pytest.MonkeyPatch) -> None:
    port = cinder()
    ok, detail = api_check("cinder", keystone(), port, monkeypatch, "cinder-api")
    assert ok and detail == f"token issued, read http://127.0.0.1:{port}/v3/volumes: HTTP 200", detail
    ok, detail = api_check("cinder", keystone(), cinder(read_status=403), monkeypatch, "cinder-api")
    assert not ok and "HTTP 403 Policy doesn't allow" in detail


def test_the_service_list_check_finds_cinder_volume_under_its_fixed_host_and_the_scheduler_under_the_control_host(
        keystone: Callable[..., str], cinder: Callable[..., int], monkeypatch: pytest.MonkeyPatch) -> None:
    from nodeos.cloud.registry import CINDER_VOLUME_HOST

    port = cinder([cinder_service("cinder-scheduler", "control", seconds_ago=2.0),
                   cinder_service("cinder-volume", CINDER_VOLUME_HOST, seconds_ago=3.0),
                   cinder_service("cinder-volume", "n2", "down", 900.0)])  # a record of another naming: not ours
    ok, detail = api_check("service-list", keystone(), port, monkeypatch, "cinder-api", "cinder-scheduler", api="cinder")
    assert ok and detail.endswith("; cinder-scheduler on control up (last report 2 s ago)"), detail
    ok, detail = api_check("service-list", keystone(), port, monkeypatch, "cinder-api", "cinder-volume", api="cinder")
    assert ok and detail.endswith(f"; cinder-volume on {CINDER_VOLUME_HOST} up (last report 3 s ago)"), detail
    # cinder-volume moved here 0.5 s ago: the report is its predecessor's (on another node, the same host name).
    from nodeos.services import health

    monkeypatch.setattr(health, "_started", lambda pid: NOW - 0.5 if pid == 4242 else None)
    ok, detail = api_check("service-list", keystone(), port, monkeypatch, "cinder-api", "cinder-volume", pid=4242,
                           api="cinder")
    assert not ok and detail == f"service cinder-volume on {CINDER_VOLUME_HOST} has not reported since it started " \
                                "0 s ago (last report 3 s ago)"
    ok, detail = api_check("service-list", keystone(), cinder([]), monkeypatch, "cinder-api", "cinder-volume",
                           api="cinder")
    assert not ok and detail == f"service cinder-volume on {CINDER_VOLUME_HOST} is not in cinder's service list " \
                                "(it never reported)"
    ok, detail = api_check("service-list", keystone(), port, monkeypatch, "cinder-api", "cinder-volume", api_vip=None,
                           api="cinder")
    assert not ok and detail == "read: cinder-api has no VIP"



# -- neutron (a stand-in answering as neutron-server does; keystone is the stand-in above) -------------

def _neutron(read_status: int) -> http.server.ThreadingHTTPServer:
    """GET /v2.0/networks (one id) with a valid token; neutron's fault shape {"NeutronError": {...}}."""
    class Handler(JsonHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.headers.get("X-Auth-Token") != "tok-1":
                self.send_json(401, {"error": {"message": "The request you have made requires authentication."}})
            elif self.path != "/v2.0/networks?limit=1&fields=id":
                self.send_json(404, {"NeutronError": {"type": "HTTPNotFound", "message": "Not found", "detail": ""}})
            elif read_status != 200:
                self.send_json(read_status, {"NeutronError": {
                    "type": "HTTPInternalServerError",
                    "message": "Request Failed: internal server error while processing your request.", "detail": ""}})
            else:
                self.send_json(200, {"networks": [{"id": "5c1f"}]})

    return serve(Handler)


@pytest.fixture
def neutron() -> Iterator[Callable[..., int]]:
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(read_status: int = 200) -> int:
        servers.append(_neutron(read_status))
        return servers[-1].server_address[1]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def neutron_check(keystone_url: str, port: int, monkeypatch: pytest.MonkeyPatch) -> tuple[bool, str]:
    """The catalog's neutron check as the agent runs it, its read as the catalog fills it in."""
    from nodeos.services import health
    from nodeos.services.catalog import API_READS, HealthCheckSpec

    monkeypatch.setattr(health, "KEYSTONE_PORT", int(keystone_url.split(":")[2].split("/")[0]))
    spec = HealthCheckSpec(type="neutron", port=port, path=API_READS["neutron"], timeout=2.0)
    result = health.run_check(spec, health.CheckTarget(vip="127.0.0.1", vips={"keystone": "127.0.0.1"},
                                                       values={"admin_password": "pw"}))
    return result.ok, result.detail


def test_the_neutron_check_reads_one_network_and_names_the_failing_layer(
        keystone: Callable[..., str], neutron: Callable[..., int], monkeypatch: pytest.MonkeyPatch) -> None:
    port = neutron()
    ok, detail = neutron_check(keystone(), port, monkeypatch)
    assert ok and detail == f"token issued, read http://127.0.0.1:{port}/v2.0/networks?limit=1&fields=id: HTTP 200"
    ok, detail = neutron_check(keystone(token_status=401), port, monkeypatch)
    assert not ok and detail.startswith("token: HTTP 401")  # keystone refused: neutron was never asked
    down = free_port()
    ok, detail = neutron_check(keystone(), down, monkeypatch)
    assert not ok and detail == f"read http://127.0.0.1:{down}/v2.0/networks?limit=1&fields=id: connection refused"
    failing = neutron(read_status=500)
    ok, detail = neutron_check(keystone(), failing, monkeypatch)
    assert not ok and detail.endswith(  # neutron's own words
        "HTTP 500 Request Failed: internal server error while processing your request."), detail
