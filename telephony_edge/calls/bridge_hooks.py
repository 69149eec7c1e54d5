"""What the bridge and the call service agree on: the bridge's limits, the conversation
it reports, the call service's hooks into each step of a call's life, and the audio tap."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from telephony_edge import metrics
from telephony_edge.calls.live_state import LiveSnapshot
from telephony_edge.calls.record import CallRecord, CallState


@dataclass(frozen=True, slots=True)
class BridgeLimits:
    max_duration_s: float = 3600.0
    inactivity_timeout_s: float = 120.0
    preconnect_buffer_s: float = 10.0
    playout_max_s: float = 120.0
    max_chat_messages: int = 1000
    max_function_calls: int = 200
    max_text_chars: int = 4000


DEFAULT_LIMITS = BridgeLimits()


@dataclass(slots=True)
class Conversation:
    """What the agent core reported during the call, for the end-of-call webhook.

    Bounded: past the limits entries are counted in ``truncated`` (and the
    payload says so) rather than kept.
    """

    chat: list[dict[str, Any]] = field(default_factory=list)
    function_calls: list[dict[str, Any]] = field(default_factory=list)
    chars_used: int = 0
    truncated: dict[str, int] = field(default_factory=dict)

    def add(self, kind: list[dict[str, Any]], name: str, limit: int, entry: dict[str, Any]) -> None:
        if len(kind) < limit:
            kind.append(entry)
        else:
            self.truncated[name] = self.truncated.get(name, 0) + 1
            metrics.CONVERSATION_TRUNCATED.labels(kind=name).inc()


class CallHooks(Protocol):
    """What the bridge needs from the call service; each is one step of the call's life."""

    async def begin(self, record: CallRecord) -> str | None:
        """Take the call on (``created`` → ``connecting``): None, or why it may not run here.

        Raises :class:`CallOver` if the call already ended.
        """

    async def prepare(self, record: CallRecord) -> dict[str, Any]:
        """The ``initiate`` data (agent config merged, prefetch run, variables filled)."""

    async def write_state(
        self,
        record: CallRecord,
        previous: tuple[CallState, ...],
        *,
        conversation: Conversation | None = None,
    ) -> None:
        """Write ``record``'s new state to the coordinator, compare-and-set from ``previous``;
        the final write (``ended``) gets the ``conversation``, for the webhook it owes."""

    async def release(self, record: CallRecord) -> None:
        """Give back the agent slot and the ownership of the call."""

    async def finished(
        self, record: CallRecord, conversation: Conversation, *, written: bool = True
    ) -> None:
        """Count the outcome and queue the end-of-call webhook.

        ``written``: the final record write succeeded. When it did not, the
        call was ended elsewhere first (nothing to report here), or the
        coordinator was away (the service reports it once it is back).
        """

    async def save_live(self, call_id: str, snapshot: LiveSnapshot, cause: str) -> None:
        """Write the call's live state now, marked as moving (it is being handed off)."""


class AudioTap(Protocol):
    """Sees the call's audio as the caller sent and heard it (a recording); per frame, no I/O."""

    def caller(self, frame: bytes) -> None: ...

    def agent(self, frame: bytes) -> None: ...
