"""Calls that outlive their worker: the break, the takeover, the agent carrying on, the move.

Theory of operation
-------------------
A live call's media runs on one worker, which keeps the call's live state in
the coordinator (:mod:`.live_state`). When that worker is lost, or lets the
call go on purpose, the *network* brings the call back to the edge, to any
worker (Twilio: the stream ends, and the call's TwiML goes on to the
``<Redirect>`` that follows its ``<Connect><Stream>``). Two steps, on
whichever workers the network reaches:

1. **The break** (:func:`announce_break`): the network's word that the
   call's media left its worker (Twilio's ``<Redirect>`` request). A call
   that is not live any more (it ended: the agent, the caller or the API
   hung up) is never resumed; its network is told to end it. A live one's
   break is recorded once per generation: from which worker, why (the old
   owner's ``moving`` marker in the live state: ``drain``, ``network``;
   else ``crash``) and when, for the move's gap.
2. **The takeover** (``CallService.take_over``): the network's media
   arrives at some worker, naming the generation of the break. One
   coordinator step (:meth:`~telephony_edge.coord.base.Coordinator.take_over`)
   gives that worker the record, the next generation and the lease, whoever
   held it: of all attempts for one break exactly one wins, and the old
   owner's writes are fenced off (``if_owner``). The winner reads the live
   state and runs the call again (:class:`ResumedHooks` around the call
   service): the agent core gets ``initiate`` with ``session_continuation``
   holding the chat so far and ``resumed: true``; once it answers
   ``onready`` the record gets one ``migrations`` entry ``{from_worker,
   to_worker, gap_ms, cause}``.

A drain moves calls the same way (:func:`hand_off_all`): each call whose
network can move it saves its live state with a ``moving`` marker
(cause ``drain``), then lets the network bring it elsewhere; the worker
writes nothing as over and sends no webhook. The call's one end-of-call
webhook comes from the worker that ends it, with the whole conversation.

Rules: nothing here names a network. A call moves only when another worker
is ready to take it (its heartbeat says it accepts calls) behind the same
public URL (one load balancer in front of both: the network comes back to
that URL); a taking-over worker that is draining refuses. A call nobody takes over (its network
could not reach the edge again) keeps its lapsing lease and is ended by the
lease reaper, its webhook carrying the transcript from the live state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from telephony_edge import metrics
from telephony_edge.agent.pool import AGENT_CORE_PREFIX
from telephony_edge.calls.bridge import CallBridge
from telephony_edge.calls.bridge_hooks import CallHooks, Conversation
from telephony_edge.calls.live_state import LiveSnapshot
from telephony_edge.calls.manager import CallManager
from telephony_edge.calls.record import CallRecord, CallState
from telephony_edge.coord.base import LIVE_STATES, Coordinator, LiveState

log = logging.getLogger(__name__)

#: How long a break's record is kept (a takeover comes within seconds of it).
BREAK_TTL_S = 300.0
#: How long a drain waits for its handed-off calls to let go of the network.
HAND_OFF_WAIT_S = 10.0

CRASH = "crash"  # the break came with no word from the old owner: it was lost
DRAIN = "drain"  # the old owner moved the call on SIGTERM


@dataclass(frozen=True, slots=True)
class Break:
    """A live call's media left its worker: from which, why, when (Unix time), at which
    generation (what a takeover must find)."""

    call_id: str
    from_worker: str | None
    cause: str
    at: float
    generation: int


def break_key(call_id: str, generation: int) -> str:
    return f"call-break:{call_id}:{generation}"


async def announce_break(
    coordinator: Coordinator, call_id: str, *, lost_at: float | None = None
) -> Break | None:
    """The network says the call's media left its worker; None if the call is not live.

    The first announcement of a generation's break is kept (a retry after a
    new stream failed keeps the first one's time, so the gap counts from it).
    ``lost_at``: when the old owner was last known alive, for a crash the edge
    saw by itself (SIP: its workers' beats), so the gap counts from there.
    """
    doc = await coordinator.get_call(call_id)
    if doc is None or doc.data.get("state") not in LIVE_STATES:
        return None
    owner = doc.data.get("owner")
    generation = int(doc.data.get("generation") or 0)
    live = await coordinator.get_live(call_id)
    moving = live.doc.get("moving") if live is not None else None
    if isinstance(moving, dict) and moving.get("from_worker") == owner:
        found = Break(call_id, owner, str(moving.get("cause")), float(moving["at"]), generation)
    else:
        found = Break(call_id, owner, CRASH, lost_at or time.time(), generation)
    key = break_key(call_id, generation)
    if not await coordinator.register_pending(key, asdict(found), BREAK_TTL_S):
        first = await coordinator.peek_pending(key)
        if first is not None:
            return Break(**first)
    return found


@dataclass(frozen=True, slots=True)
class Resumption:
    """What a worker that took a call over resumes it from."""

    brk: Break
    live: LiveState | None
    elapsed_s: float
    active: bool  # the agent had answered before the break (the record's config is final)
    conversation: Conversation = field(default_factory=Conversation)


def resumption(record: CallRecord, brk: Break, live: LiveState | None) -> Resumption:
    """The resumption of ``record`` (as the takeover left it) from its live state."""
    started = record.answered_at or record.created_at
    return Resumption(
        brk=brk,
        live=live,
        elapsed_s=max(0.0, time.time() - started),
        active=record.state is CallState.ACTIVE,
        conversation=conversation_of(live),
    )


def conversation_of(live: LiveState | None) -> Conversation:
    """A call's conversation as its live state kept it (a resumption's, a lost call's)."""
    if live is None:
        return Conversation()
    truncated = live.doc.get("truncated")
    return Conversation(
        chat=list(live.chat),
        function_calls=list(live.function_calls),
        chars_used=int(live.doc.get("chars_used") or 0),
        truncated=dict(truncated) if isinstance(truncated, dict) else {},
    )


def continuation(
    record: CallRecord, resumed: Resumption, earlier_chat: list[dict[str, Any]]
) -> dict[str, Any]:
    """``initiate``'s ``session_continuation`` for a resumed call: the chat so far (the
    session's earlier calls' first), ``resumed``, and where the caller was."""
    doc = resumed.live.doc if resumed.live is not None else {}
    return {
        "session_id": record.session_id,
        "found": True,
        "resumed": True,
        "metadata": record.metadata,
        "chat": [*earlier_chat, *resumed.conversation.chat],
        "agent_config": record.agent_config,
        "resume": {
            "from_worker": resumed.brk.from_worker,
            "cause": resumed.brk.cause,
            "playback": doc.get("playback") or {},
        },
    }


class Service(CallHooks, Protocol):
    """What :class:`ResumedHooks` needs of the call service, beyond its hooks."""

    worker_id: str

    async def admit_resumed(self, record: CallRecord) -> str | None: ...

    async def prepare(self, record: CallRecord, *, final: bool = False) -> dict[str, Any]: ...

    async def session_chat(self, record: CallRecord) -> list[dict[str, Any]]: ...


class ResumedHooks:
    """The call service's hooks for a bridge that resumes a call taken over.

    ``begin`` admits it (the takeover is done); ``prepare`` builds the resumed
    ``initiate``; the write that brings it live again adds its ``migrations``
    entry. Everything else is the service's own.
    """

    def __init__(self, service: Service, resumed: Resumption, provider: str) -> None:
        self._service = service
        self._resumed = resumed
        self._provider = provider
        self._counted = False

    async def begin(self, record: CallRecord) -> str | None:
        return await self._service.admit_resumed(record)

    async def prepare(self, record: CallRecord) -> dict[str, Any]:
        resumed = self._resumed
        initiate = await self._service.prepare(record, final=resumed.active)
        earlier = await self._service.session_chat(record)
        initiate["session_continuation"] = continuation(record, resumed, earlier)
        return initiate

    async def write_state(
        self,
        record: CallRecord,
        previous: tuple[CallState, ...],
        *,
        conversation: Conversation | None = None,
    ) -> None:
        if record.state is CallState.ACTIVE and not self._counted:
            self._counted = True
            brk = self._resumed.brk
            gap_s = max(0.0, time.time() - brk.at)
            record.migrations = [
                *record.migrations,
                {
                    "from_worker": brk.from_worker,
                    "to_worker": self._service.worker_id,
                    "gap_ms": round(gap_s * 1000),
                    "cause": brk.cause,
                },
            ]
            metrics.CALL_MIGRATIONS.labels(provider=self._provider, cause=brk.cause).inc()
            metrics.CALL_MIGRATION_GAP_SECONDS.labels(provider=self._provider).observe(gap_s)
            log.info(
                "call resumed here (%s from %s), %d ms after the break",
                brk.cause,
                brk.from_worker,
                round(gap_s * 1000),
                extra={"call_id": record.call_id},
            )
        await self._service.write_state(record, previous, conversation=conversation)

    async def release(self, record: CallRecord) -> None:
        await self._service.release(record)

    async def finished(
        self, record: CallRecord, conversation: Conversation, *, written: bool = True
    ) -> None:
        await self._service.finished(record, conversation, written=written)

    async def save_live(self, call_id: str, snapshot: LiveSnapshot, cause: str) -> None:
        await self._service.save_live(call_id, snapshot, cause)


def ready_elsewhere(workers: Mapping[str, Mapping[str, Any]], self_id: str, own_url: str) -> bool:
    """Whether another worker takes calls now (its latest heartbeat) behind this worker's
    public URL (one load balancer in front of both): where the network can bring a call."""
    own = own_url.rstrip("/")
    for worker_id, info in workers.items():
        if worker_id == self_id or worker_id.startswith(AGENT_CORE_PREFIX):
            continue
        if str(info.get("public_url") or "").rstrip("/") != own:
            continue
        active = float(info.get("active_calls", 0) or 0)
        maximum = float(info.get("max_calls", 0) or 0)
        if info.get("accepting", False) and active < maximum:
            return True
    return False


async def hand_off_all(manager: CallManager, cause: str, *, within_s: float) -> int:
    """Hand off every live call whose network can move it; wait (bounded) until they have
    let go; return how many were handed off."""
    bridges = [b for b in manager.live_calls() if isinstance(b, CallBridge) and b.can_hand_off]
    for bridge in bridges:
        bridge.hand_off(cause)
    await manager.wait_gone((b.call_id for b in bridges), within_s)
    return len(bridges)


async def let_go(manager: CallManager, call_id: str, *, within_s: float) -> None:
    """A call taken over here whose old bridge still runs on this worker (its stream was
    lost and came back here): wait for that bridge to let go first."""
    old = manager.get(call_id)
    if isinstance(old, CallBridge):
        if old.state in (CallState.CONNECTING, CallState.ACTIVE):
            old.hand_off("superseded")
        await manager.wait_gone((call_id,), within_s)
