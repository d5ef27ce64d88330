"""The volume helper: a small privileged daemon that attaches and mounts volumes for the agent.

On a real node the agent runs sandboxed (nodeos-agent.service: no CAP_SYS_ADMIN,
its own read-only view of the file system): it can neither map an RBD image nor
mount one where the service units see it. `nodeos volumed` (nodeos-volumed.service,
root, the host's mount namespace) does those steps on the agent's behalf over a
Unix socket only root can reach. It runs the same code as the lab's in-process
path (volumes.py: attach, mount, unmount, detach, detach_volume), so there is one
code path and the back-end is still probed on the node (krbd on real nodes).

The agent keeps the order of the fence (node_volumes.py): attach here, record the
client address in the replicated state, then mount here. The daemon decides
nothing: it has no view of the cluster, and a request it cannot serve is answered
with the VolumeError's message.

Protocol: one JSON request per connection, `{"call": NAME, "args": {...}}`, one
JSON answer, `{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}`.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import threading
import time
from pathlib import Path
from typing import Any, Callable

from nodeos import log

from . import volumes
from .conf import CephPaths
from .daemons import CephNode
from .volume_spec import Attachment, VolumeError

SOCKET = "/run/nodeos-volumed/volumed.sock"
MAX_REQUEST = 64 * 1024
# The longest a call may take: attach waits for the exclusive lock (LOCK_TIMEOUT) and its
# commands; unmount and detach are bounded by their stuck_after and a lazy unmount.
CALL_TIMEOUT = 180.0
UMOUNT_TIMEOUT = volumes.UMOUNT_TIMEOUT


def node_to_wire(node: CephNode) -> dict[str, Any]:
    return {"node_id": node.node_id, "ip": node.ip, "root": node.paths.root, "prefix": list(node.prefix),
            "command_timeout": node.command_timeout}


def node_from_wire(data: dict[str, Any]) -> CephNode:
    return CephNode(str(data["node_id"]), str(data["ip"]), CephPaths(str(data["root"])),
                    tuple(str(p) for p in data.get("prefix", ())), float(data["command_timeout"]))


# -- the daemon ----------------------------------------------------------------------


def _attach(args: dict[str, Any]) -> Any:
    return volumes.attach(node_from_wire(args["node"]), str(args["pool"]), str(args["image"]),
                          fence_own=bool(args.get("fence_own"))).to_wire()


def _mount(args: dict[str, Any]) -> Any:
    return volumes.mount(Attachment.from_wire(args["attachment"]), str(args["fs"]), str(args["mount_point"]),
                         make_fs_if_blank=bool(args.get("make_fs_if_blank"))).to_wire()


def _unmount(args: dict[str, Any]) -> Any:
    return volumes.unmount(Attachment.from_wire(args["attachment"]), force=bool(args.get("force")),
                           stuck_after=float(args.get("stuck_after", UMOUNT_TIMEOUT))).to_wire()


def _detach(args: dict[str, Any]) -> Any:
    volumes.detach(Attachment.from_wire(args["attachment"]), force=bool(args.get("force")),
                   stuck_after=float(args.get("stuck_after", UMOUNT_TIMEOUT)))
    return None


def _detach_volume(args: dict[str, Any]) -> Any:
    return volumes.detach_volume(node_from_wire(args["node"]), str(args["pool"]), str(args["image"]),
                                 force=bool(args.get("force", True)),
                                 stuck_after=float(args.get("stuck_after", UMOUNT_TIMEOUT)))


CALLS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "attach": _attach, "mount": _mount, "unmount": _unmount, "detach": _detach, "detach_volume": _detach_volume,
}


def answer(request: Any) -> dict[str, Any]:
    """The answer to one decoded request (never raises)."""
    if not isinstance(request, dict) or not isinstance(request.get("args", {}), dict):
        return {"ok": False, "error": "a request is {\"call\": NAME, \"args\": {...}}"}
    call = CALLS.get(str(request.get("call")))
    if call is None:
        return {"ok": False, "error": f"unknown call {request.get('call')!r} (have: {', '.join(sorted(CALLS))})"}
    try:
        return {"ok": True, "result": call(request.get("args", {}))}
    except VolumeError as exc:
        return {"ok": False, "error": str(exc)}
    except (KeyError, TypeError, ValueError) as exc:
        return {"ok": False, "error": f"bad arguments for {request['call']}: {exc!r}"}
    except Exception as exc:  # noqa: BLE001 - the daemon serves the next request
        log.event("volumed.call_failed", level="error", call=request.get("call"), error=repr(exc))
        return {"ok": False, "error": f"{request['call']} failed: {exc!r}"}


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        line = self.rfile.readline(MAX_REQUEST)
        try:
            request = json.loads(line)
        except ValueError:
            reply: dict[str, Any] = {"ok": False, "error": "the request is not one line of JSON"}
        else:
            started = time.monotonic()
            reply = answer(request)
            log.event("volumed.call", call=request.get("call") if isinstance(request, dict) else None,
                      ok=reply["ok"], seconds=round(time.monotonic() - started, 3),
                      error=reply.get("error"))
        self.wfile.write(json.dumps(reply).encode() + b"\n")


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True


def serve(path: str = SOCKET, ready: threading.Event | None = None, stop: threading.Event | None = None) -> None:
    """Serve until `stop` is set (or for ever): the socket is root's only (0600 in a 0700 directory)."""
    where = Path(path)
    where.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    where.unlink(missing_ok=True)
    old = os.umask(0o077)
    try:
        server = _Server(str(where), _Handler)
    finally:
        os.umask(old)
    with server:
        log.event("volumed.started", socket=str(where), backend=volumes.probe_backend())
        if ready is not None:
            ready.set()
        if stop is None:
            server.serve_forever()
            return
        thread = threading.Thread(target=server.serve_forever, name="volumed", daemon=True)
        thread.start()
        stop.wait()
        server.shutdown()
        thread.join()


# -- the agent's side ----------------------------------------------------------------


class RemoteVolumes:
    """What NodeVolumes needs of volumes.py, done by the volume helper through its socket."""

    UMOUNT_TIMEOUT = UMOUNT_TIMEOUT

    def __init__(self, path: str = SOCKET, timeout: float = CALL_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout

    def attach(self, node: CephNode, pool: str, image: str, fence_own: bool = False) -> Attachment:
        return Attachment.from_wire(self._call("attach", node=node_to_wire(node), pool=pool, image=image,
                                               fence_own=fence_own))

    def mount(self, attachment: Attachment, fs: str, mount_point: str, make_fs_if_blank: bool = False) -> Attachment:
        return Attachment.from_wire(self._call("mount", attachment=attachment.to_wire(), fs=fs, mount_point=mount_point,
                                               make_fs_if_blank=make_fs_if_blank))

    def unmount(self, attachment: Attachment, *, force: bool = False, stuck_after: float = UMOUNT_TIMEOUT) -> Attachment:
        return Attachment.from_wire(self._call("unmount", attachment=attachment.to_wire(), force=force,
                                               stuck_after=stuck_after))

    def detach(self, attachment: Attachment, *, force: bool = False, stuck_after: float = UMOUNT_TIMEOUT) -> None:
        self._call("detach", attachment=attachment.to_wire(), force=force, stuck_after=stuck_after)

    def detach_volume(self, node: CephNode, pool: str, image: str, *, force: bool = True,
                      stuck_after: float = UMOUNT_TIMEOUT) -> bool:
        return bool(self._call("detach_volume", node=node_to_wire(node), pool=pool, image=image, force=force,
                               stuck_after=stuck_after))

    def _call(self, call: str, **args: Any) -> Any:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(self.path)
                sock.sendall(json.dumps({"call": call, "args": args}).encode() + b"\n")
                data = b""
                while not data.endswith(b"\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    data += chunk
        except OSError as exc:
            raise VolumeError(f"the volume helper at {self.path} did not answer {call} ({exc}): "
                              f"is nodeos-volumed.service running?") from None
        try:
            reply = json.loads(data)
        except ValueError:
            raise VolumeError(f"the volume helper at {self.path} gave no answer to {call}") from None
        if not reply.get("ok"):
            raise VolumeError(str(reply.get("error")))
        return reply.get("result")
