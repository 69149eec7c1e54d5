"""The call record and its lifecycle state machine.

Theory of operation
-------------------
A call moves through five states, only forward::

    created ──► connecting ──► active ──► ending ──► ended
       │            │                        ▲
       └────────────┴────────────────────────┘   (fails or hangs up early)

``created``: the edge knows of the call (webhook answered, SIP registration,
WebRTC offer) but no media yet. ``connecting``: media arrived and the agent
link is being set up. ``active``: the agent is ready and audio flows.
``ending``: one side asked to end; the other is being torn down and the
end-of-call webhook queued. ``ended``: nothing of the call is left running.

Rules: the transition table below is the whole truth; :meth:`CallRecord.advance`
refuses anything else. ``call_status`` is set once, by whoever first ends the
call, and never overwritten (the first cause wins: an agent ``end_call``
followed by the caller's hang-up stays ``agent-ended``). The record is plain
data so that a coordinator backend can store it as JSON.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class CallState(StrEnum):
    CREATED = "created"
    CONNECTING = "connecting"
    ACTIVE = "active"
    ENDING = "ending"
    ENDED = "ended"


class CallStatus(StrEnum):
    """The platform's documented ``call_status`` values."""

    USER_ENDED = "user-ended"
    API_ENDED = "api-ended"
    AGENT_ENDED = "agent-ended"
    VOICEMAIL_MESSAGE = "voicemail-message"
    VOICEMAIL_HANGUP = "voicemail-hangup"
    TIMEOUT = "timeout"
    ERROR = "error"


TRANSITIONS: dict[CallState, frozenset[CallState]] = {
    CallState.CREATED: frozenset({CallState.CONNECTING, CallState.ENDING}),
    CallState.CONNECTING: frozenset({CallState.ACTIVE, CallState.ENDING}),
    CallState.ACTIVE: frozenset({CallState.ENDING}),
    CallState.ENDING: frozenset({CallState.ENDED}),
    CallState.ENDED: frozenset(),
}


class InvalidTransition(RuntimeError):
    pass


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass(slots=True)
class CallRecord:
    """Everything the edge (any worker) knows of one call."""

    agent_id: str
    provider: str
    direction: str
    from_: str = ""
    to: str = ""
    call_id: str = field(default_factory=lambda: new_id("call"))
    session_id: str = field(default_factory=lambda: new_id("sess"))
    provider_call_id: str = ""
    region: str = ""
    agent_config: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    include_metadata_in_prompt: bool = False
    session_continuation: str | None = None
    state: CallState = CallState.CREATED
    call_status: CallStatus | None = None
    error_message: str | None = None
    provider_status: str | None = None
    provider_details: dict[str, Any] = field(default_factory=dict)
    """What the network reported about the call (its status callbacks' details), for ``voip``."""
    media_stats: dict[str, Any] = field(default_factory=dict)
    """The leg's media statistics at the end (:meth:`Leg.media_stats`), for ``voip.media``."""
    amd: dict[str, Any] = field(default_factory=dict)
    """Answering-machine detection: result, beep, source, decided_after_ms (``voip.amd``)."""
    created_at: float = field(default_factory=time.time)
    answered_at: float | None = None
    ended_at: float | None = None
    transferred_to: str | None = None
    owner: str | None = None
    generation: int = 0
    """How many times another worker took the live call over (``Coordinator.take_over``)."""
    migrations: list[dict[str, Any]] = field(default_factory=list)
    """One entry per move: ``{from_worker, to_worker, gap_ms, cause}`` (``calls.migration``)."""
    traceparent: str | None = None
    """The W3C ``traceparent`` of the call's trace (tracing on): the span it was created
    under, else its ``call`` span (``telephony_edge.calls.trace``)."""

    def advance(self, to: CallState) -> None:
        """Move to ``to`` if the table allows it; stamp the times that mark it."""
        if to not in TRANSITIONS[self.state]:
            raise InvalidTransition(f"call {self.call_id}: {self.state} -> {to} not allowed")
        self.state = to
        now = time.time()
        if to is CallState.ACTIVE and self.answered_at is None:  # a resumed call keeps its own
            self.answered_at = now
        elif to is CallState.ENDED:
            self.ended_at = now

    def set_status(self, status: CallStatus, error_message: str | None = None) -> bool:
        """Record why the call ended; the first cause wins. Returns whether it was set."""
        if self.call_status is not None:
            return False
        self.call_status = status
        self.error_message = error_message
        return True

    def merge_foreign(self, stored: dict[str, Any]) -> None:
        """Take the fields other writers own (status callbacks) from a stored document.

        The media owner never writes these; it reads them back so that what it
        shows and reports (``GET /calls/{id}``, the end-of-call ``voip``) has them.
        """
        self.provider_status = stored.get("provider_status") or self.provider_status
        details = stored.get("provider_details")
        if isinstance(details, dict) and details:
            self.provider_details = details

    @property
    def duration(self) -> int:
        """Whole seconds from answer (or creation) to end (or now)."""
        start = self.answered_at or self.created_at
        end = self.ended_at or time.time()
        return max(0, round(end - start))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CallRecord:
        """The record of a stored document; fields it does not know are left out."""
        data = {k: v for k, v in data.items() if k in _FIELDS}
        data["state"] = CallState(data["state"])
        if data.get("call_status") is not None:
            data["call_status"] = CallStatus(data["call_status"])
        return cls(**data)


_FIELDS = frozenset(f.name for f in dataclasses.fields(CallRecord))
