"""run_check against real local endpoints (loopback only, no root)."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
from typing import Iterator

import pytest

from nodeos.services.catalog import HealthCheckSpec
from nodeos.services.health import CheckTarget, check_host, run_check


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        status, body = (200, b"all good on node-3") if self.path == "/ok" else (503, b"down")
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_tcp(http_port: int) -> None:
    assert run_check(HealthCheckSpec(type="tcp", port=http_port), CheckTarget()).ok
    result = run_check(HealthCheckSpec(type="tcp", port=free_port(), timeout=0.5), CheckTarget())
    assert not result.ok and "refused" in result.detail.lower()


def test_http_status_and_body(http_port: int) -> None:
    spec = HealthCheckSpec(type="http", port=http_port, path="/ok", expect_status=200, expect_body="node-3")
    assert run_check(spec, CheckTarget()).ok
    wrong_body = HealthCheckSpec(type="http", port=http_port, path="/ok", expect_status=200, expect_body="node-4")
    assert "does not contain" in run_check(wrong_body, CheckTarget()).detail
    down = HealthCheckSpec(type="http", port=http_port, path="/down", expect_status=200)
    result = run_check(down, CheckTarget())
    assert not result.ok and "status 503" in result.detail
    closed = HealthCheckSpec(type="http", port=free_port(), path="/", expect_status=200, timeout=0.5)
    assert not run_check(closed, CheckTarget()).ok


def test_http_timeout_on_a_silent_server() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        spec = HealthCheckSpec(type="http", port=silent.getsockname()[1], path="/", expect_status=200, timeout=0.3)
        result = run_check(spec, CheckTarget())
    assert not result.ok and 0.25 < result.duration < 5


def test_process() -> None:
    assert run_check(HealthCheckSpec(type="process"), CheckTarget(pid=os.getpid())).ok
    assert not run_check(HealthCheckSpec(type="process"), CheckTarget(pid=None)).ok
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    while True:  # wait for the exit without reaping: a zombie
        try:
            with open(f"/proc/{child.pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
        except FileNotFoundError:
            break
    result = run_check(HealthCheckSpec(type="process"), CheckTarget(pid=child.pid))
    assert not result.ok and "zombie" in result.detail
    child.wait()
    assert not run_check(HealthCheckSpec(type="process"), CheckTarget(pid=child.pid)).ok


def test_command_exit_status_timeout_and_templates(tmp_path) -> None:
    assert run_check(HealthCheckSpec(type="command", command=("true",)), CheckTarget()).ok
    result = run_check(HealthCheckSpec(type="command", command=("sh", "-c", "echo broken; exit 3")), CheckTarget())
    assert not result.ok and "exit status 3" in result.detail and "broken" in result.detail
    slow = HealthCheckSpec(type="command", command=("sleep", "30"), timeout=0.3)
    result = run_check(slow, CheckTarget())
    assert not result.ok and "timed out" in result.detail and result.duration < 5
    (tmp_path / "marker").write_text("x")
    templated = HealthCheckSpec(type="command", command=("test", "-e", "{run_dir}/marker"))
    assert run_check(templated, CheckTarget(values={"run_dir": str(tmp_path)})).ok
    missing = HealthCheckSpec(type="command", command=("/nonexistent/check",))
    assert "cannot run" in run_check(missing, CheckTarget()).detail


def test_check_host() -> None:
    assert check_host("0.0.0.0") == "127.0.0.1"
    assert check_host("10.0.0.5") == "10.0.0.5"
