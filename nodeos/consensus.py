"""Consensus: pysyncobj Raft carrying the ClusterState, hardened at its port.

pysyncobj unpickles what arrives on its TCP port. With a password it first
verifies a Fernet token (HMAC-SHA256), so unauthenticated bytes are never
unpickled; we refuse to start without one. pysyncobj 0.3.17 does, however,
buffer whatever length a frame claims, so an unauthenticated peer could grow
memory at will. The guard below (installed once, at import) caps what a
connection may buffer: 4 KiB before the peer has proven the key (its first
frame is a ~150-byte token), 16 MiB per frame afterwards, and at most 32
connections that have not authenticated yet. It hooks pysyncobj's private
reader, so it is pinned to the tested release line (see pyproject.toml) and
covered by tests/lab/test_raft_port.py.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from pathlib import Path
from typing import Any, Callable

_REAL_INET_NTOP = socket.inet_ntop
from pysyncobj import SyncObj, SyncObjConf, SyncObjConsumer, replicated  # noqa: E402
from pysyncobj import tcp_connection  # noqa: E402
from pysyncobj.monotonic import monotonic as raft_clock  # noqa: E402
from pysyncobj.transport import TCPTransport  # noqa: E402

# pysyncobj 0.3.17 (win_inet_pton.py) replaces socket.inet_ntop with a
# Windows-only version on every OS; pyroute2 then cannot decode addresses.
socket.inet_ntop = _REAL_INET_NTOP

from . import log
from . import placement  # noqa: F401  (registers the service operations: every node must know all ops)
from .config import Timing
from .state import ClusterState

PRE_AUTH_LIMIT = 4096
MAX_FRAME = 16 * 1024 * 1024
MAX_UNAUTHENTICATED_CONNECTIONS = 32
# pysyncobj never msyncs its journal nor fsyncs its term/vote file; we do, this
# often, to bound what a power cut can take (see README, limits).
DISK_SYNC_INTERVAL = 0.2

_drops_lock = threading.Lock()
_drops: dict[str, int] = {"oversized_frame": 0, "pre_auth_overflow": 0, "too_many_connections": 0}
_drop_log = log.RateLimiter(period=10.0, burst=3)


class ConsensusError(RuntimeError):
    pass


def _count_drop(reason: str) -> None:
    with _drops_lock:
        _drops[reason] += 1
        total = _drops[reason]
    allowed, suppressed = _drop_log.allow(reason)
    if allowed:
        log.event("raft.connection_dropped", level="warning", reason=reason, total=total, suppressed=suppressed)


def dropped_connections() -> dict[str, int]:
    with _drops_lock:
        return dict(_drops)


def _install_frame_guard() -> None:
    cls = tcp_connection.TcpConnection
    if getattr(cls, "_nodeos_guarded", False):
        return
    original_read = cls._TcpConnection__processRead  # type: ignore[attr-defined]

    def guarded_read(self: Any) -> bool:
        more = original_read(self)
        buffer = self._TcpConnection__readBuffer
        if self.recvRandKey is None:
            if len(buffer) > PRE_AUTH_LIMIT:
                _count_drop("pre_auth_overflow")
                self.disconnect()
                return False
        elif len(buffer) >= 4:
            (length,) = struct.unpack("i", buffer[:4])
            if length < 0 or length > MAX_FRAME or len(buffer) > 2 * MAX_FRAME + 4:
                _count_drop("oversized_frame")
                self.disconnect()
                return False
        return bool(more)

    cls._TcpConnection__processRead = guarded_read  # type: ignore[attr-defined]
    cls._nodeos_guarded = True  # type: ignore[attr-defined]


_install_frame_guard()


class GuardedTransport(TCPTransport):
    """Refuses new connections while too many have not authenticated yet."""

    def _onNewIncomingConnection(self, conn: Any) -> None:  # noqa: N802 (pysyncobj's name)
        if len(self._unknownConnections) >= MAX_UNAUTHENTICATED_CONNECTIONS:
            _count_drop("too_many_connections")
            conn.disconnect()
            return
        super()._onNewIncomingConnection(conn)


class ReplicatedCluster(SyncObjConsumer):
    """The one replicated method: apply an operation to the ClusterState."""

    def __init__(self) -> None:
        # Attributes set before SyncObjConsumer.__init__ are not serialized.
        self._lock = threading.RLock()
        super().__init__()
        self.state = ClusterState()

    @replicated
    def apply_op(self, op: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            return self.state.apply(op)

    def read(self, reader: Callable[[ClusterState], Any]) -> Any:
        """Run `reader` on the live state under the apply lock; copy what you keep."""
        with self._lock:
            return reader(self.state)


def make_conf(timing: Timing, state_dir: Path, password: str, on_state_changed: Callable[[int, int], None] | None) -> SyncObjConf:
    return SyncObjConf(
        password=password,
        dynamicMembershipChange=True,
        journalFile=str(state_dir / "raft.journal"),
        fullDumpFile=str(state_dir / "raft.dump"),
        raftMinTimeout=timing.raft_min_timeout,
        raftMaxTimeout=timing.raft_max_timeout,
        appendEntriesPeriod=timing.append_entries_period,
        connectionTimeout=max(3.5, timing.raft_max_timeout),
        # Safety comes from our lease; this only makes a cut-off leader step
        # down sooner than pysyncobj's 30 s default.
        leaderFallbackTimeout=max(3 * timing.lease, 2.0),
        autoTickPeriod=0.02,
        useFork=False,  # the agent is multi-threaded: no fork() for dumps
        onStateChanged=on_state_changed,
    )


class Consensus:
    """One node's Raft participation, with the ClusterState as its state machine."""

    def __init__(self, self_addr: str, members: list[str], password: str, state_dir: Path, timing: Timing,
                 on_state_changed: Callable[[int, int], None] | None = None) -> None:
        if not password:
            raise ConsensusError("refusing to start consensus without the cluster password (pysyncobj unpickles unauthenticated input)")
        self.self_addr = self_addr
        self.cluster = ReplicatedCluster()
        conf = make_conf(timing, state_dir, password, on_state_changed)
        others = [m for m in members if m != self_addr]
        self._state_dir = state_dir
        self._syncobj = SyncObj(self_addr, others, conf, consumers=[self.cluster], transportClass=GuardedTransport)
        self._stopping = threading.Event()
        self._syncer = threading.Thread(target=self._sync_loop, name="journal-sync", daemon=True)
        self._syncer.start()

    # -- proposals ---------------------------------------------------------
    def submit(self, op: dict[str, Any], callback: Callable[[Any, Any], None] | None = None) -> None:
        """Propose an op; `callback(result, error)` runs in pysyncobj's thread after commit."""
        if callback is None:
            callback = _ignore
        self.cluster.apply_op(op, callback=callback)

    def submit_sync(self, op: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        done = threading.Event()
        box: dict[str, Any] = {}

        def finished(result: Any, error: Any) -> None:
            box["result"], box["error"] = result, error
            done.set()

        self.submit(op, finished)
        if not done.wait(timeout):
            raise ConsensusError(f"no commit within {timeout:.1f}s (no quorum?)")
        if box["error"]:
            raise ConsensusError(f"proposal failed: pysyncobj error {box['error']}")
        return box["result"]

    def add_member(self, addr: str, callback: Callable[[Any, Any], None]) -> None:
        self._syncobj.addNodeToCluster(addr, callback=callback)

    # -- observations ------------------------------------------------------
    def is_leader(self) -> bool:
        return bool(self._syncobj._isLeader())

    def leader_addr(self) -> str | None:
        leader = self._syncobj._getLeader()
        return None if leader is None else str(leader.address if hasattr(leader, "address") else leader)

    def member_addrs(self) -> list[str]:
        return sorted([self.self_addr] + [n.address for n in self._syncobj.otherNodes])

    def term(self) -> int:
        return int(self._syncobj.raftCurrentTerm)

    def response_ages(self) -> dict[str, float]:
        """Leader only: seconds since each follower last answered (pysyncobj internal).

        Measured on pysyncobj's own clock (CLOCK_MONOTONIC_RAW), which can be
        far from time.monotonic(): never mix timestamps of the two.
        """
        for _ in range(3):
            try:
                raw = dict(self._syncobj._SyncObj__lastResponseTime)
                now = raft_clock()
                return {node.address: now - when for node, when in raw.items()}
            except RuntimeError:
                continue  # changed under us by the tick thread; try again
        return {}

    def raft_status(self) -> dict[str, Any]:
        for _ in range(3):
            try:
                return self._syncobj.getStatus()
            except RuntimeError:
                continue
        return {}

    def sync_to_disk(self) -> None:
        """Make the Raft journal and the term/vote record durable up to now."""
        journal = self._syncobj._SyncObj__raftLog
        try:
            journal.flush()  # msync of pysyncobj's mmapped journal
        except (ValueError, OSError):
            return  # remapped while growing; the next round flushes it
        for path in (self._state_dir / "raft.journal.meta", self._state_dir):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _sync_loop(self) -> None:
        while not self._stopping.wait(DISK_SYNC_INTERVAL):
            try:
                self.sync_to_disk()
            except OSError as exc:
                log.event("raft.sync_failed", level="error", error=str(exc))

    def stop(self) -> None:
        self._stopping.set()
        self._syncobj.destroy()
        self._syncer.join(timeout=2)
        self.sync_to_disk()


def _ignore(result: Any, error: Any) -> None:
    return None
