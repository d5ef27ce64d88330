"""The agent's control API: HTTP+JSON on a Unix socket (full) and TCP (read-only).

The Unix socket lives in the state directory (root only, 0700), so only the
node's administrator can change anything. The TCP listener answers GET
/status and GET /events only, for monitoring from outside the node.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlparse

from . import log

MAX_BODY = 1024 * 1024
Route = Callable[[dict[str, Any]], tuple[int, Any]]


class ControlError(RuntimeError):
    pass


class _Handler(BaseHTTPRequestHandler):
    server_version = "nodeos"
    routes_get: dict[str, Route] = {}
    routes_post: dict[str, Route] = {}

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        return  # requests are not events worth a log line

    def _reply(self, code: int, payload: Any) -> None:
        body = json.dumps(payload, default=str).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _dispatch(self, routes: dict[str, Route], params: dict[str, Any]) -> None:
        route = routes.get(urlparse(self.path).path)
        if route is None:
            self._reply(404, {"error": f"no such endpoint {self.path}"})
            return
        try:
            code, payload = route(params)
        except Exception as exc:  # a failing request must not take the server down
            log.event("control.error", level="error", path=self.path, error=repr(exc))
            code, payload = 500, {"error": str(exc)}
        self._reply(code, payload)

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        query = {k: v[-1] for k, v in parse_qs(urlparse(self.path).query).items()}
        self._dispatch(self.routes_get, query)

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._reply(413, {"error": "request body too large"})
            return
        try:
            params = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(params, dict):
                raise ValueError("body must be a JSON object")
        except ValueError as exc:
            self._reply(400, {"error": f"bad JSON body: {exc}"})
            return
        self._dispatch(self.routes_post, params)


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self) -> tuple[Any, Any]:
        request, _ = super().get_request()
        return request, ("local", 0)


def _handler_class(get: dict[str, Route], post: dict[str, Route]) -> type[_Handler]:
    return type("Handler", (_Handler,), {"routes_get": get, "routes_post": post})


class ControlServer:
    def __init__(self, socket_path: Path, tcp_address: tuple[str, int] | None,
                 get_routes: dict[str, Route], post_routes: dict[str, Route], public_routes: set[str]) -> None:
        if socket_path.exists():
            socket_path.unlink()
        self._servers: list[socketserver.BaseServer] = []
        self._servers.append(_UnixHTTPServer(str(socket_path), _handler_class(get_routes, post_routes)))
        os.chmod(socket_path, 0o600)
        if tcp_address is not None:
            public = {k: v for k, v in get_routes.items() if k in public_routes}
            tcp = ThreadingHTTPServer(tcp_address, _handler_class(public, {}))
            tcp.daemon_threads = True
            self._servers.append(tcp)

    def start(self) -> None:
        for server in self._servers:
            threading.Thread(target=server.serve_forever, name="control", daemon=True).start()

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def request(socket_path: Path, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 5.0) -> tuple[int, Any]:
    """Call an agent's control API; raises ControlError when no agent answers."""
    conn = _UnixConnection(str(socket_path), timeout)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise ControlError(f"no agent answering on {socket_path}: {exc}") from exc
    finally:
        conn.close()
