"""The agent's control API: HTTP+JSON on a Unix socket (full) and TCP (read-only).

The Unix socket lives in the state directory (root only, 0700), so only the
node's administrator can change anything. The TCP listener answers GET
/status and GET /events only, for monitoring from outside the node.

Each listener is bounded (`Limits`): connections beyond its caps are closed
at once, a request must arrive whole within a deadline and a byte budget,
and on TCP only a few requests are answered at a time. Why: every
connection costs a thread and every runnable thread competes for the GIL
with the agent loop, which renews the node's 1 s lease; an unbounded port let
3,000 idle clients stall that loop long enough to fence every node.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import socket
import socketserver
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlparse

from nodeos import log
from nodeos.realtime import drop_realtime

MAX_BODY = 1024 * 1024
Route = Callable[[dict[str, Any]], tuple[int, Any]]
_BUSY_REPLY = b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class ControlError(RuntimeError):
    pass


@dataclass(frozen=True)
class Limits:
    """What one listener may cost the agent, whatever its clients send."""

    max_connections: int  # handler threads alive at once
    max_per_peer: int  # of those, from one source address
    max_active: int  # requests being answered (routes running) at once
    request_timeout: float  # the whole request (line, headers, body) must arrive in this
    max_head: int  # bytes of request line + headers
    max_body: int


# TCP is open to the network: a few slots, a short deadline, GET only. One
# source cannot take all slots, so a flood from one host leaves monitoring
# from the others working.
TCP_LIMITS = Limits(max_connections=64, max_per_peer=16, max_active=4, request_timeout=2.0,
                    max_head=8 * 1024, max_body=0)
# The Unix socket is root only: generous, and no cap on running routes
# (POSTs wait up to 5 s for a commit and must not block /lease polling).
UNIX_LIMITS = Limits(max_connections=256, max_per_peer=256, max_active=256, request_timeout=10.0,
                     max_head=64 * 1024, max_body=MAX_BODY)


class _RequestTooLarge(Exception):
    pass


class _Gate:
    """One listener's connection and work slots, and its counters."""

    def __init__(self, name: str, limits: Limits) -> None:
        self.name = name
        self.limits = limits
        self._lock = threading.Lock()
        self._per_peer: dict[str, int] = {}
        self._active = 0
        self._work = threading.BoundedSemaphore(limits.max_active)
        self._counts = {"accepted": 0, "refused_over_cap": 0, "refused_peer_cap": 0,
                        "timed_out": 0, "too_large": 0, "busy": 0}
        self._log_limit = log.RateLimiter(period=10.0, burst=3)

    def admit(self, peer: str) -> bool:
        with self._lock:
            if self._active >= self.limits.max_connections:
                refusal = "refused_over_cap"
            elif self._per_peer.get(peer, 0) >= self.limits.max_per_peer:
                refusal = "refused_peer_cap"
            else:
                self._active += 1
                self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
                self._counts["accepted"] += 1
                return True
            self._counts[refusal] += 1
            total = self._counts[refusal]
        allowed, suppressed = self._log_limit.allow(refusal)
        if allowed:
            log.event("control.connection_refused", level="warning", listener=self.name, reason=refusal,
                      peer=peer, total=total, suppressed=suppressed)
        return False

    def release(self, peer: str) -> None:
        with self._lock:
            self._active -= 1
            left = self._per_peer.pop(peer, 1) - 1
            if left > 0:
                self._per_peer[peer] = left

    def count(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1

    def begin_work(self) -> bool:
        # Waiting threads sleep on the semaphore and cost no GIL time.
        if self._work.acquire(timeout=self.limits.request_timeout):
            return True
        self.count("busy")
        return False

    def end_work(self) -> None:
        self._work.release()

    def log_error(self, error: BaseException | None) -> None:
        allowed, suppressed = self._log_limit.allow("handler_error")
        if allowed:
            log.event("control.error", level="error", listener=self.name, error=repr(error), suppressed=suppressed)

    def counters(self) -> dict[str, int]:
        with self._lock:
            return {**self._counts, "active": self._active}


class _DeadlineReader(io.RawIOBase):
    """The request's socket, read under one deadline and one byte budget.

    A per-recv timeout alone (BaseHTTPRequestHandler.timeout) lets a client
    that sends one byte a second hold its thread forever.
    """

    def __init__(self, sock: socket.socket, deadline: float, budget: int, gate: _Gate) -> None:
        super().__init__()
        self._sock, self._deadline, self._budget, self._gate = sock, deadline, budget, gate

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._budget <= 0:
            raise _RequestTooLarge()
        remaining = self._deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError("request not received in time")
            self._sock.settimeout(remaining)
            received = self._sock.recv_into(memoryview(buffer)[: self._budget])
        except TimeoutError:
            self._gate.count("timed_out")
            raise  # handle_one_request drops the connection
        self._budget -= received
        return received


class _Handler(BaseHTTPRequestHandler):
    server_version = "nodeos"
    routes_get: dict[str, Route] = {}
    routes_post: dict[str, Route] = {}
    gate: _Gate

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        return  # requests are not events worth a log line

    def setup(self) -> None:
        super().setup()  # applies `timeout` (set per listener) to every send and recv
        self.rfile.close()  # replaced: reads go through the deadline reader
        limits = self.gate.limits
        raw = _DeadlineReader(self.connection, time.monotonic() + limits.request_timeout,
                              limits.max_head + limits.max_body, self.gate)
        self.rfile = io.BufferedReader(raw)

    def handle(self) -> None:
        try:
            super().handle()
        except _RequestTooLarge:
            self.gate.count("too_large")
        except ConnectionError:
            pass  # the client went away; nothing to answer

    def _reply(self, code: int, payload: Any) -> None:
        body = json.dumps(payload, default=str).encode()
        self.connection.settimeout(self.gate.limits.request_timeout)  # not what the read deadline left
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
        if not self.gate.begin_work():
            self._reply(503, {"error": "busy, try again"})
            return
        try:
            code, payload = route(params)
        except Exception as exc:  # a failing request must not take the server down
            log.event("control.error", level="error", path=self.path, error=repr(exc))
            code, payload = 500, {"error": str(exc)}
        finally:
            self.gate.end_work()
        self._reply(code, payload)

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        query = {k: v[-1] for k, v in parse_qs(urlparse(self.path).query).items()}
        self._dispatch(self.routes_get, query)

    def do_POST(self) -> None:  # noqa: N802
        if urlparse(self.path).path not in self.routes_post:
            self._reply(404, {"error": f"no such endpoint {self.path}"})  # before reading any body
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self._reply(400, {"error": "bad Content-Length"})
            return
        if length > self.gate.limits.max_body:
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


class _BoundedServer(socketserver.ThreadingMixIn):
    """A thread per connection, but never more than the gate allows."""

    daemon_threads = True
    request_queue_size = 128  # a short backlog drops a monitor's SYN during a flood; accept drains it fast
    gate: _Gate

    def process_request(self, request: Any, client_address: Any) -> None:
        peer = _peer(client_address)
        # The cap keeps the agent loop (and so its lease) running whatever this port receives.
        if not self.gate.admit(peer):
            _refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.gate.release(peer)  # no thread started to release it
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.gate.release(_peer(client_address))

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The default prints a traceback to stderr, the agent's log stream.
        self.gate.log_error(sys.exc_info()[1])


class _TCPHTTPServer(_BoundedServer, HTTPServer):
    pass


class _UnixHTTPServer(_BoundedServer, socketserver.UnixStreamServer):
    def get_request(self) -> tuple[Any, Any]:
        request, _ = super().get_request()
        return request, ("local", 0)


def _at_normal_priority(serve: Callable[[], None]) -> Callable[[], None]:
    """The network's listener and its handler threads must not share the agent's
    real-time priority: a flood of connections would then take CPU from the
    Raft threads of this node and, on a shared host, of its peers."""

    def run() -> None:
        drop_realtime()
        serve()

    return run


def _peer(client_address: Any) -> str:
    return str(client_address[0]) if isinstance(client_address, tuple) and client_address else "local"


def _refuse(sock: socket.socket) -> None:
    """Close an over-cap connection at once; a 503 first if it fits without waiting."""
    try:
        sock.send(_BUSY_REPLY, socket.MSG_DONTWAIT)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def _handler_class(get: dict[str, Route], post: dict[str, Route], gate: _Gate) -> type[_Handler]:
    return type("Handler", (_Handler,), {"routes_get": get, "routes_post": post, "gate": gate,
                                         "timeout": gate.limits.request_timeout})


class ControlServer:
    def __init__(self, socket_path: Path, tcp_address: tuple[str, int] | None,
                 get_routes: dict[str, Route], post_routes: dict[str, Route], public_routes: set[str]) -> None:
        if socket_path.exists():
            socket_path.unlink()
        self._servers: list[_UnixHTTPServer | _TCPHTTPServer] = []
        unix_gate = _Gate("unix", UNIX_LIMITS)
        unix = _UnixHTTPServer(str(socket_path), _handler_class(get_routes, post_routes, unix_gate))
        unix.gate = unix_gate
        self._servers.append(unix)
        os.chmod(socket_path, 0o600)
        if tcp_address is not None:
            public = {k: v for k, v in get_routes.items() if k in public_routes}
            tcp_gate = _Gate("tcp", TCP_LIMITS)
            tcp = _TCPHTTPServer(tcp_address, _handler_class(public, {}, tcp_gate))
            tcp.gate = tcp_gate
            self._servers.append(tcp)

    @property
    def tcp_port(self) -> int | None:
        """The TCP listener's bound port (useful when asked for port 0)."""
        for server in self._servers:
            if isinstance(server, _TCPHTTPServer):
                return int(server.server_address[1])
        return None

    def counters(self) -> dict[str, dict[str, int]]:
        """Per listener ("unix", "tcp"): accepted, refused_*, timed_out, too_large, busy, active."""
        return {server.gate.name: server.gate.counters() for server in self._servers}

    def start(self) -> None:
        for server in self._servers:
            target = server.serve_forever
            if isinstance(server, _TCPHTTPServer):
                target = _at_normal_priority(server.serve_forever)
            threading.Thread(target=target, name="control", daemon=True).start()

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
