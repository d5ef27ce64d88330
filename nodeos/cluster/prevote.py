"""Pre-vote for pysyncobj: a member whose time-out fires asks before it stands (Raft thesis, 9.6).

pysyncobj has no pre-vote: a follower that missed the leader's appends for
raft_min_timeout (a stalled process, a saturated disk, an agent restart)
stands at once with a higher term, and the healthy leader steps down on the
first vote request it sees. The lab measured it under CI's `load all`: one
lease change per run in 2 of 3 runs, no node lost. With pre-vote a follower
whose time-out fires first asks the others whether they would vote for it at
term + 1, without changing any term; a member grants only if it has heard no
leader for raft_min_timeout itself (the leader never grants) and the asker's
log is as up to date as its own. Only a majority of grants (the asker
included) lets pysyncobj stand. So a member the others still hear a leader
through cannot depose it; after a real leader crash the survivors grant each
other at once (each has been silent for a time-out), at the cost of one round
trip.

The first candidacy still comes after a whole time-out of silence, which the
lease's predecessor bound needs (lease.PredecessorSilence). Members that do
not know these messages ignore them: every member must run this code for any
of them to stand (the lab and an image run one version).
"""

from __future__ import annotations

import random
from typing import Any

from pysyncobj.monotonic import monotonic as raft_clock
from pysyncobj.syncobj import _RAFT_STATE

PRE_VOTE = "nodeos_pre_vote"
PRE_VOTE_RESPONSE = "nodeos_pre_vote_response"


class PreVote:
    """Mixin for a SyncObj subclass: call prevote_before_tick() before each pysyncobj tick,
    and prevote_message() first for each message (True: consumed)."""

    _prevote_min_timeout: float
    _prevote_retry: tuple[float, float]
    _prevote: dict[str, Any] | None
    _prevote_leader_heard: float

    def prevote_init(self, min_timeout: float, retry_window: tuple[float, float]) -> None:
        self._prevote_min_timeout = min_timeout
        self._prevote_retry = retry_window
        self._prevote = None
        self._prevote_leader_heard = float("-inf")

    # -- the asker -------------------------------------------------------------------
    def prevote_before_tick(self) -> None:
        """A follower whose time-out fired asks first; it stands only after a majority granted."""
        if self._SyncObj__selfNode is None or self._SyncObj__raftState != _RAFT_STATE.FOLLOWER:  # type: ignore[attr-defined]
            return
        now = raft_clock()
        if self._SyncObj__raftElectionDeadline >= now or not self._SyncObj__connectedToAnyone():  # type: ignore[attr-defined]
            return
        term = self._SyncObj__raftCurrentTerm + 1  # type: ignore[attr-defined]
        if self._prevote is not None and self._prevote["won"] and self._prevote["term"] == term:
            self._prevote = None
            return  # granted: pysyncobj stands in this tick
        self._prevote = {"term": term, "granted": set(), "won": False}
        # Answers come in milliseconds; without a majority, ask again soon, not after a whole
        # time-out: right after a leader crash a member that heard it a little later than we
        # did refuses once (measured: +0.17 s on a Monitor crash's VIP with a full time-out).
        self._SyncObj__raftElectionDeadline = now + random.uniform(*self._prevote_retry)  # type: ignore[attr-defined]
        request = {"type": PRE_VOTE, "term": term, "last_log_index": self._SyncObj__getCurrentLogIndex(),  # type: ignore[attr-defined]
                   "last_log_term": self._SyncObj__getCurrentLogTerm()}  # type: ignore[attr-defined]
        for node in self._SyncObj__otherNodes:  # type: ignore[attr-defined]
            self._SyncObj__transport.send(node, request)  # type: ignore[attr-defined]
        self._count_grant(None)

    def _count_grant(self, node: Any) -> None:
        prevote = self._prevote
        if prevote is None:
            return
        if node is not None:
            prevote["granted"].add(node)
        voters = len(self._SyncObj__otherNodes) + 1  # type: ignore[attr-defined]
        if not prevote["won"] and len(prevote["granted"]) + 1 > voters / 2:
            prevote["won"] = True
            self._SyncObj__raftElectionDeadline = 0  # type: ignore[attr-defined]  # stand at the next tick

    # -- messages --------------------------------------------------------------------
    def prevote_message(self, node: Any, message: dict[str, Any]) -> bool:
        kind = message.get("type")
        if kind == PRE_VOTE:
            self._answer(node, message)
            return True
        if kind == PRE_VOTE_RESPONSE:
            prevote = self._prevote
            if message.get("granted") and prevote is not None and message.get("term") == prevote["term"]:
                self._count_grant(node)
            return True
        if kind == "append_entries" and message.get("term", -1) >= self._SyncObj__raftCurrentTerm:  # type: ignore[attr-defined]
            self._prevote_leader_heard = raft_clock()
            self._prevote = None
        return False

    def _answer(self, node: Any, message: dict[str, Any]) -> None:
        self._SyncObj__transport.send(node, {"type": PRE_VOTE_RESPONSE, "term": message.get("term"),  # type: ignore[attr-defined]
                                             "granted": self._would_vote(message)})

    def _would_vote(self, message: dict[str, Any]) -> bool:
        if self._SyncObj__raftState == _RAFT_STATE.LEADER:  # type: ignore[attr-defined]
            return False  # a leader that can answer is alive
        if raft_clock() - self._prevote_leader_heard < self._prevote_min_timeout:
            return False  # we still hear a leader
        term, last_term, last_index = message.get("term"), message.get("last_log_term"), message.get("last_log_index")
        if not all(isinstance(v, int) for v in (term, last_term, last_index)):
            return False
        if term <= self._SyncObj__raftCurrentTerm:  # type: ignore[attr-defined]
            return False
        our_term, our_index = self._SyncObj__getCurrentLogTerm(), self._SyncObj__getCurrentLogIndex()  # type: ignore[attr-defined]
        return last_term > our_term or (last_term == our_term and last_index >= our_index)
