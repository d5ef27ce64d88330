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

import copy
import os
import random
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any, Callable

_REAL_INET_NTOP = socket.inet_ntop
from pysyncobj import SyncObj, SyncObjConf, SyncObjConsumer, replicated  # noqa: E402
from pysyncobj import journal as raft_journal  # noqa: E402
from pysyncobj import tcp_connection  # noqa: E402
from pysyncobj.syncobj import _RAFT_STATE  # noqa: E402
from pysyncobj.monotonic import monotonic as raft_clock  # noqa: E402
from pysyncobj.pipe_notifier import PipeNotifier  # noqa: E402
from pysyncobj.transport import TCPTransport  # noqa: E402

# pysyncobj 0.3.17 (win_inet_pton.py) replaces socket.inet_ntop with a
# Windows-only version on every OS; pyroute2 then cannot decode addresses.
socket.inet_ntop = _REAL_INET_NTOP

from nodeos import log  # noqa: E402

from .config import Timing  # noqa: E402
from .prevote import PreVote  # noqa: E402
from .rejoin import FollowerEvidence, HeartbeatVerdict  # noqa: E402
from .state import ClusterState  # noqa: E402

PRE_AUTH_LIMIT = 4096
MAX_FRAME = 16 * 1024 * 1024
MAX_UNAUTHENTICATED_CONNECTIONS = 32
# pysyncobj never msyncs its journal nor fsyncs its term/vote file; we do, this
# often, to bound what a power cut can take (see README, limits).
DISK_SYNC_INTERVAL = 0.2

_drops_lock = threading.Lock()
_drops: dict[str, int] = {"oversized_frame": 0, "pre_auth_overflow": 0, "too_many_connections": 0}
_drop_log = log.RateLimiter(period=10.0, burst=3)
CANDIDATE = _RAFT_STATE.CANDIDATE
LEADER = _RAFT_STATE.LEADER
# The tick thread sleeps until its next Raft deadline, at most this long: transport
# reconnects, the leader's fall-back check and the journal's one-second timer have no
# deadline pysyncobj exposes, and none needs to run sooner.
TICK_CEILING = 0.1


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


# What a heartbeat that keeps the Monitor changes in the state (state._op_heartbeat, ClusterState.apply).
HEARTBEAT_FIELDS = ("time", "heartbeat_seq", "monitor", "monitor_term", "applied")


class ReplicatedCluster(SyncObjConsumer):
    """The one replicated method: apply an operation to the ClusterState."""

    def __init__(self) -> None:
        # Attributes set before SyncObjConsumer.__init__ are not serialized.
        self._lock = threading.RLock()
        self.on_heartbeat_applied: Callable[[], None] | None = None
        # Any other op applied (a decision, a report, a node's status): the services layer's
        # passes act on it at once instead of at their next turn.
        self.on_changed: Callable[[], None] | None = None
        self._changes = 0  # ops applied other than a heartbeat that kept the Monitor
        self._snapshots: dict[str, tuple[int, ClusterState]] = {}  # reader -> (changes, its private copy)
        super().__init__()
        self.state = ClusterState()

    @replicated
    def apply_op(self, op: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            monitor = self.state.monitor
            result = self.state.apply(op)
            if not (isinstance(op, dict) and op.get("op") == "heartbeat" and self.state.monitor == monitor):
                self._changes += 1
        if result.get("ok") and isinstance(op, dict):  # local observations only: never fed back into the state
            if op.get("op") == "heartbeat":
                if self.on_heartbeat_applied is not None:
                    self.on_heartbeat_applied()
            elif self.on_changed is not None:
                self.on_changed()
        return result

    def _deserialize(self, data: Any) -> None:  # pysyncobj loads a Raft snapshot: a new state
        with self._lock:
            super()._deserialize(data)
            self._changes += 1

    def read(self, reader: Callable[[ClusterState], Any]) -> Any:
        """Run `reader` on the live state under the apply lock; copy what you keep."""
        with self._lock:
            return reader(self.state)

    def snapshot(self, reader: str) -> ClusterState:
        """A copy of the state without its events, for one reader's thread, which must not change it.

        The node and Monitor passes each take one 10 times a second, and the leader's
        heartbeats change the state as often: copying it all each time was a quarter
        of an idle agent's services thread. A heartbeat changes only the fields of
        HEARTBEAT_FIELDS, so the reader's deep copy is taken again only after another
        op, and a heartbeat's fields are set on a shallow copy of it.
        """
        with self._lock:
            cached = self._snapshots.get(reader)
            if cached is None or cached[0] != self._changes:
                cached = (self._changes, self.state.snapshot(with_events=False))
                self._snapshots[reader] = cached
            fresh = copy.copy(cached[1])
            for name in HEARTBEAT_FIELDS:
                setattr(fresh, name, getattr(self.state, name))
            return fresh


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
        # A member that restarts is reconnected to within a second, not pysyncobj's 5 s:
        # until then two survivors of a leader crash cannot reach each other to vote.
        connectionRetryTime=min(1.0, timing.raft_min_timeout * 2),
        # Safety comes from our lease; this only makes a cut-off leader step
        # down sooner than pysyncobj's 30 s default.
        leaderFallbackTimeout=max(3 * timing.lease, 2.0),
        autoTickPeriod=0.02,  # only until the tick thread's first poll: then _WatchedSyncObj sleeps to the next deadline
        useFork=False,  # the agent is multi-threaded: no fork() for dumps
        onStateChanged=on_state_changed,
    )


# -- the journal on disk ------------------------------------------------------
# pysyncobj reads its journal without checks: a cut-off header or record makes
# its constructor raise (struct.error, or ValueError for an empty file), and a
# cut inside the last record, or in the header's record-end field, loads
# silently as a zero-filled or empty log (it first pads the file to 1 KiB).
# Forgetting acknowledged entries breaks Raft's guarantees, so the agent checks
# the layout itself before pysyncobj opens (and pads) the file, and refuses.

def tick_sleep(due: float, now: float, ceiling: float) -> float:
    """How long pysyncobj's tick thread may sleep after a tick: until `due`, its next Raft deadline, at most `ceiling`.

    A deadline already past when the tick ends is one the tick could not act on (a
    follower whose time-out fired, connected to no member: it stands once connected,
    and a connection wakes the poll): the thread sleeps the ceiling instead of spinning.
    """
    if due <= now:
        return ceiling
    return min(due - now, ceiling)


def candidacy_window(timing: Timing) -> tuple[float, float]:
    """How long a candidate waits for votes before it stands again (_WatchedSyncObj says why)."""
    return timing.raft_min_timeout / 4, timing.raft_min_timeout * 0.9


TICK_FAILURES_FATAL = 50  # consecutive failed pysyncobj ticks (about 1-2 s): it would retry forever


def journal_remedy(journal: Path) -> str:
    return (f"move it aside (and {journal.name}.meta) and restart the agent: the node rejoins "
            f"and the leader sends it the log or a snapshot")


def journal_problem(data: bytes) -> str | None:
    """What makes a pysyncobj journal (format 1) unloadable, or None when its layout is whole.

    Layout: name (24 bytes) | version (8) | format (4) | end of records (4) |
    records, each `size | index, term (16) | command | size` (sizes: uint32 LE).
    Bytes past the end of records are padding (pysyncobj grows the file in steps).
    """
    header = raft_journal.FIRST_RECORD_OFFSET
    if len(data) < header:
        return f"{len(data)} bytes, shorter than its {header}-byte header"
    if data[: raft_journal.NAME_SIZE].rstrip(b"\0") != raft_journal.APP_NAME:
        return "no pysyncobj journal header"
    version, end = struct.unpack_from("<II", data, raft_journal.NAME_SIZE + raft_journal.VERSION_SIZE)
    if version != raft_journal.JOURNAL_FORMAT_VERSION:
        return f"journal format {version}, this pysyncobj reads {raft_journal.JOURNAL_FORMAT_VERSION}"
    if not header <= end <= len(data):
        return f"its records end at byte {end} but the file has {len(data)} bytes"
    offset = header
    while offset < end:
        if offset + 4 > end:
            return f"record at byte {offset} cut short"
        (size,) = struct.unpack_from("<I", data, offset)
        stop = offset + 8 + size
        if size < 16 or stop > end:
            return f"record at byte {offset} claims {size} bytes, past the end of the records at byte {end}"
        (trailer,) = struct.unpack_from("<I", data, stop - 4)
        if trailer != size:
            return f"record at byte {offset} is garbled (its size fields say {size} and {trailer})"
        offset = stop
    return None


def check_journal(journal: Path) -> None:
    """Raise ConsensusError naming the file and the remedy when pysyncobj cannot load it whole."""
    try:
        data = journal.read_bytes()
    except FileNotFoundError:
        return  # a node's first start: pysyncobj creates it
    except OSError as exc:
        raise ConsensusError(f"raft journal {journal} cannot be read ({exc.strerror}): {journal_remedy(journal)}") from exc
    problem = journal_problem(data)
    if problem is not None:
        raise ConsensusError(f"raft journal {journal} is damaged ({problem}): {journal_remedy(journal)}")


class _WatchedSyncObj(PreVote, SyncObj):
    """pysyncobj's SyncObj with nodeos's fixes to its Raft: pre-vote (prevote.py), a split
    vote retried at once, a conflicting tail dropped, and tick failures reported.

    pysyncobj logs a failed tick and retries every 20 ms: a journal entry that
    cannot be applied leaves a member that counts toward quorum but does
    nothing. After TICK_FAILURES_FATAL failures in a row, `on_failed` is called
    once (in the tick thread) with the last error.
    """

    def __init__(self, *args: Any, on_failed: Callable[[str], None], candidacy_window: tuple[float, float],
                 min_timeout: float, before_append: Callable[[], None] | None = None, **kwargs: Any) -> None:
        # Set before SyncObj.__init__ (which starts the tick thread, and never
        # serializes the attributes it finds): ours stay out of Raft dumps.
        self._nodeos_failures = 0
        self._nodeos_on_failed = on_failed
        self._nodeos_before_append = before_append
        self._nodeos_candidacy_window = candidacy_window
        self.prevote_init(min_timeout, candidacy_window)
        self._nodeos_waker: PipeNotifier | None = None
        # Set here, though known only after: pysyncobj's Raft dumps pickle every attribute
        # made after its __init__, and a bound poll method cannot be pickled (no compaction).
        self._nodeos_poll: Callable[[float], Any] | None = None
        super().__init__(*args, **kwargs)
        self._nodeos_poll = self._poller.poll
        self._poller.poll = self._poll_until_due  # pysyncobj's tick ends in poll(autoTickPeriod)

    # -- an event-driven tick ---------------------------------------------------------
    # pysyncobj's tick thread wakes every autoTickPeriod (20 ms here): 50 ticks a second
    # on an idle node, the largest part of an idle agent's CPU. It now sleeps until the
    # next Raft deadline, and wakes at once for a message (its sockets) or a proposal
    # (a pipe written by _applyCommand, from any thread).
    def _poll_until_due(self, timeout: float) -> None:
        if self._nodeos_waker is None:  # made here: the poller belongs to the tick thread
            self._nodeos_waker = PipeNotifier(self._poller)
        assert self._nodeos_poll is not None
        self._nodeos_poll(tick_sleep(self._next_deadline(), raft_clock(), TICK_CEILING))

    def _next_deadline(self) -> float:
        if self._SyncObj__raftState != LEADER:  # type: ignore[attr-defined]
            return float(self._SyncObj__raftElectionDeadline)  # type: ignore[attr-defined]
        if not self._SyncObj__otherNodes and self._SyncObj__getCurrentLogIndex() > self._SyncObj__raftCommitIndex:  # type: ignore[attr-defined]
            return raft_clock() + 0.001  # a lone member commits what it appended in its next tick: no one to wait for
        return float(self._SyncObj__newAppendEntriesTime)  # type: ignore[attr-defined]

    def _applyCommand(self, command: Any, callback: Any, commandType: Any = None) -> None:  # noqa: N802, N803
        super()._applyCommand(command, callback, commandType)
        if not self._sends_at_next_append():
            self._wake()

    def destroy(self) -> None:
        super().destroy()
        self._wake()  # a stopped member must stop answering at once, not after its sleep

    def _wake(self) -> None:
        waker = self._nodeos_waker
        if waker is not None:
            try:
                waker.notify()
            except BlockingIOError:
                pass  # the pipe is full of wake-ups already

    def _sends_at_next_append(self) -> bool:
        """A leader with followers sends what it appends only at its next append period
        (pysyncobj batches): waking it for a proposal gains nothing, as _onTick takes the
        proposals in before that send. A follower forwards a proposal at once."""
        return self._SyncObj__raftState == LEADER and bool(self._SyncObj__otherNodes)  # type: ignore[attr-defined]

    def _onTick(self, timeToWait: float = 0.0) -> None:  # noqa: N802, N803 (pysyncobj's names)
        term_before = self._SyncObj__raftCurrentTerm  # type: ignore[attr-defined]
        try:
            self.prevote_before_tick()
            if self._SyncObj__raftState == LEADER and raft_clock() > self._SyncObj__newAppendEntriesTime:  # type: ignore[attr-defined]
                self._before_append()
                # pysyncobj sends before it takes the queued proposals in: they would wait a period more.
                self._checkCommandsToApply()
            super()._onTick(timeToWait)
        except Exception as exc:
            self._nodeos_failures += 1
            if self._nodeos_failures == TICK_FAILURES_FATAL:
                self._nodeos_on_failed(repr(exc))
            raise
        self._nodeos_failures = 0
        if self._SyncObj__raftState == CANDIDATE and self._SyncObj__raftCurrentTerm != term_before:  # type: ignore[attr-defined]
            self._retry_candidacy_sooner()

    def _before_append(self) -> None:
        """A leader's append is about to go out: what rides in it is proposed now (the Monitor's
        heartbeat, consensus.Consensus on_append_due), so it waits for no later one."""
        if self._nodeos_before_append is None:
            return
        try:
            self._nodeos_before_append()
        except Exception as exc:  # not a tick failure: the agent's loop proposes it late instead
            log.event("raft.before_append_failed", level="error", error=repr(exc))

    def _retry_candidacy_sooner(self) -> None:
        """A candidacy that gets no majority (a split vote) is retried after a short random wait.

        pysyncobj waits a whole election time-out (0.4-1.0 s) before it stands
        again, and two survivors of a leader crash that stood together each
        wait that long: measured in the cloud lab, candidacies of 0.45-0.85 s,
        so every node's 1 s grant ran out and the survivors stopped their
        singletons (MariaDB's volume detached) for nothing. Votes come back in
        milliseconds; the first to retry gets the other's vote. Only the
        deadline of a candidacy changes: a follower still stands only after a
        full time-out of silence, which the lease's predecessor bound uses.
        """
        low, high = self._nodeos_candidacy_window
        self._SyncObj__raftElectionDeadline = raft_clock() + random.uniform(low, high)  # type: ignore[attr-defined]

    # pysyncobj's private name: SyncObj registers self.__onMessageReceived with its
    # transport, which Python resolves to this override.
    def _SyncObj__onMessageReceived(self, node: Any, message: Any) -> None:  # noqa: N802
        if isinstance(message, dict):
            if self.prevote_message(node, message):
                return
            self._drop_conflicting_tail(message)
        super()._SyncObj__onMessageReceived(node, message)  # type: ignore[misc]

    def _drop_conflicting_tail(self, message: dict[str, Any]) -> None:
        """Truncate our log where it conflicts with the current leader's, as Raft says.

        pysyncobj only answers a conflict at prevLogIdx with "send from
        prevLogIdx", keeping the conflicting entry. When the leader pipelines
        several batches to a follower far behind, the later batches' answers
        ("I lack prevLogIdx: send from my log's end") undo that step back
        every round: a follower holding an uncommitted tail (a leader that
        crashed with entries no majority stored) never catches up, and counts
        as a dead voter until a log compaction sends it a snapshot, minutes
        later. Measured: a Monitor without a lease for 193 s and 286 s.

        Safe: the message comes from the leader of our term or a newer one,
        whose log holds every committed entry, so an entry of ours at the same
        index with another term is uncommitted, and so is every one after it.
        With the tail gone, every answer of a round names the same index.
        """
        if message.get("type") != "append_entries" or "prevLogIdx" not in message:
            return
        if message.get("transmission") not in (None, "finish"):
            return  # a large entry in pieces: pysyncobj answers before looking at prevLogIdx
        if message.get("term", -1) < self._SyncObj__raftCurrentTerm:  # type: ignore[attr-defined]
            return  # a stale leader's: pysyncobj ignores it
        index = message["prevLogIdx"]
        ours = self._SyncObj__getEntries(index)  # type: ignore[attr-defined]
        if not ours or ours[0][2] == message["prevLogTerm"]:
            return
        if index <= self._SyncObj__raftCommitIndex:  # type: ignore[attr-defined]
            log.event("raft.committed_conflict", level="error", index=index)  # impossible in Raft: leave it be
            return
        if self._SyncObj__conf.dynamicMembershipChange:  # type: ignore[attr-defined]
            for entry in reversed(ours):  # undo membership changes the dropped entries made
                change = self._SyncObj__parseChangeClusterRequest(entry[0])  # type: ignore[attr-defined]
                if change is not None:
                    self._SyncObj__doChangeCluster(change, reverse=True)  # type: ignore[attr-defined]
        self._SyncObj__deleteEntriesFrom(index)  # type: ignore[attr-defined]
        log.event("raft.tail_dropped", level="warning", from_index=index, entries=len(ours))


class Consensus:
    """One node's Raft participation, with the ClusterState as its state machine."""

    def __init__(self, self_addr: str, members: list[str], password: str, state_dir: Path, timing: Timing,
                 on_state_changed: Callable[[int, int], None] | None = None,
                 on_follower_heartbeat: Callable[[float], None] | None = None,
                 on_failed: Callable[[str], None] | None = None, node_id: str | None = None,
                 on_append_due: Callable[[], None] | None = None) -> None:
        if not password:
            raise ConsensusError("refusing to start consensus without the cluster password (pysyncobj unpickles unauthenticated input)")
        self.self_addr = self_addr
        self.node_id = node_id or self_addr  # what this member's own entries name it by
        self.cluster = ReplicatedCluster()
        self._on_follower_heartbeat = on_follower_heartbeat
        self._evidence = FollowerEvidence(timing.fence_after)  # touched only in pysyncobj's thread
        self.cluster.on_heartbeat_applied = self._heartbeat_applied
        conf = make_conf(timing, state_dir, password, on_state_changed)
        others = [m for m in members if m != self_addr]
        self._state_dir = state_dir
        journal = state_dir / "raft.journal"
        check_journal(journal)  # before pysyncobj opens (and pads) it
        self.failure: str | None = None  # set once pysyncobj's tick thread gave up (see running())
        self._on_failed = on_failed
        try:
            self._syncobj = _WatchedSyncObj(self_addr, others, conf, consumers=[self.cluster], transportClass=GuardedTransport,
                                            on_failed=self._tick_failed, candidacy_window=candidacy_window(timing),
                                            min_timeout=timing.raft_min_timeout, before_append=on_append_due)
        except Exception as exc:  # whatever pysyncobj's reader hit (struct.error, ValueError, ...): retrying will not help
            raise ConsensusError(f"pysyncobj could not start from {journal} ({exc!r}): if the journal is damaged, "
                                 f"{journal_remedy(journal)}") from exc
        self._stopping = threading.Event()
        self._syncer = threading.Thread(target=self._sync_loop, name="journal-sync", daemon=True)
        self._syncer.start()

    def _tick_failed(self, error: str) -> None:
        journal = self._state_dir / "raft.journal"
        self.failure = (f"raft stopped: pysyncobj's tick failed {TICK_FAILURES_FATAL} times in a row (last: {error}); "
                        f"if the journal {journal} is damaged, {journal_remedy(journal)}")
        log.event("raft.failed", level="error", error=self.failure)
        if self._on_failed is not None:
            self._on_failed(self.failure)

    def running(self) -> bool:
        """Raft is turning: not stopped, the tick thread alive and not failing, its port bound."""
        syncobj = self._syncobj
        thread = syncobj._SyncObj__thread  # type: ignore[attr-defined]
        return (self.failure is None and not self._stopping.is_set() and thread is not None and thread.is_alive()
                and bool(syncobj._SyncObj__transport.ready))  # type: ignore[attr-defined]

    def _heartbeat_applied(self) -> None:
        """Evidence of a quorum-backed leader, for a follower that knows its leader.

        Not on the leader (its evidence is the heartbeat's submission time,
        lease.py) and not while replaying our own journal after a restart
        (no leader known yet): old entries prove nothing about now. After a
        lapse, only once a rejoin barrier came back (rejoin.py).
        """
        syncobj = getattr(self, "_syncobj", None)
        if syncobj is None or self._on_follower_heartbeat is None:
            return
        if syncobj._isLeader() or syncobj._getLeader() is None:
            return
        now = time.monotonic()
        verdict = self._evidence.heartbeat_applied(now)
        if verdict is HeartbeatVerdict.EVIDENCE:
            self._on_follower_heartbeat(now)
        elif verdict is HeartbeatVerdict.ASK:
            self._submit_rejoin_barrier(self._evidence.generation)

    def _submit_rejoin_barrier(self, generation: int) -> None:
        def applied(result: Any, error: Any) -> None:  # pysyncobj's thread, right after the entry was applied here
            if error or not (result or {}).get("ok"):
                self._evidence.barrier_failed(generation)
                return
            now = time.monotonic()
            if self._evidence.barrier_applied(generation, now):
                assert self._on_follower_heartbeat is not None
                self._on_follower_heartbeat(now)

        self.submit({"op": "event", "now": time.time(), "kind": "node.rejoined", "node": self.node_id,
                     "detail": "holds every decision taken without it"}, applied)

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

    def remove_member(self, addr: str, callback: Callable[[Any, Any], None]) -> None:
        """Take `addr` out of the configuration (pysyncobj forwards it to the leader; one change at a time)."""
        self._syncobj.removeNodeFromCluster(addr, callback=callback)

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

    def stop(self, wait: bool = False) -> None:
        """Stop Raft; with `wait`, until pysyncobj's thread is gone and its port is free (a new member starts next)."""
        self._stopping.set()
        self._syncobj.destroy()
        thread = self._syncobj._SyncObj__thread  # type: ignore[attr-defined]
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        self._syncer.join(timeout=2)
        self.sync_to_disk()


def _ignore(result: Any, error: Any) -> None:
    return None
