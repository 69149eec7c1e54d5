"""The network's own id of a call (Twilio ``CallSid``, Vonage ``uuid``, SIP ``Call-ID``) → one call.

Why
---
A webhook can come again: the network retries it, or someone who captured
it replays it (a Twilio signature survives a re-split of its form fields; a
captured Vonage token is valid for minutes). Whatever comes again must find
the call the first one created, never create a second, for as long as that
call's record lives: a replay an hour later must not ring the agent again.

So the coordinator maps ``provider-call:<provider>:<id>`` to the call id,
claimed once (``register_pending``: the first request wins on every worker,
Redis or memory), and kept for :func:`mapping_ttl`, longer than any record of
the call can live (set-up window, longest call, then the ended record's
retention). The mapping also keeps what the network said about the call
(caller, dialled number, conversation): a request naming a known call with
other values is not a retry but a forgery under a reused signature, and is
refused (:attr:`Claim.differing`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from telephony_edge.calls.record import CallRecord
from telephony_edge.config import CallSettings
from telephony_edge.coord.base import DEFAULT_ENDED_CALL_TTL, Coordinator

#: the payload field naming the call the network's id maps to
CALL_ID_FIELD = "call_id"
#: margin over the computed lifetime: clocks, a reaper pass, a deferred end
_SLACK_S = 600.0


def mapping_key(provider: str, provider_call_id: str) -> str:
    """The coordinator key of a network's call id (status callbacks read it too)."""
    return f"provider-call:{provider}:{provider_call_id}"


def mapping_ttl(calls: CallSettings, ended_ttl: float = DEFAULT_ENDED_CALL_TTL) -> float:
    """Longer than any record of the call lives: set-up, the longest call, the ended retention.

    A record waits at most ``4 * setup_ttl_s`` for its media, a live call
    lasts at most ``max_duration_s``, and an ended record is kept for the
    coordinator's ended-call TTL (the factory always uses the default).
    """
    return calls.setup_ttl_s * 4 + calls.max_duration_s + ended_ttl + _SLACK_S


@dataclass(frozen=True, slots=True)
class CarrierCall:
    """What the network said about one call: its id and the facts a retry repeats."""

    provider: str
    provider_call_id: str
    #: caller, dialled number and any network detail (e.g. Vonage's conversation_uuid)
    facts: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return mapping_key(self.provider, self.provider_call_id)

    def payload(self, call_id: str) -> dict[str, Any]:
        return {**self.facts, CALL_ID_FIELD: call_id}

    def differing(self, stored: Mapping[str, Any]) -> str | None:
        """The first fact ``stored`` (the first request's) has with another value; None if none.

        A fact the mapping does not hold is not compared (mappings written
        before facts were kept have none); an empty one is a fact (a caller
        who vanished from a re-split form differs).
        """
        for name, value in self.facts.items():
            known = stored.get(name)
            if isinstance(known, str) and known != value:
                return name
        return None


def of_record(record: CallRecord) -> CarrierCall | None:
    """The network's id of an inbound call as its record has it (None: not mapped)."""
    if record.direction != "inbound" or not record.provider_call_id:
        return None
    return CarrierCall(
        record.provider, record.provider_call_id, {"from": record.from_, "to": record.to}
    )


@dataclass(frozen=True, slots=True)
class Claim:
    """What the coordinator knows of the network's id after :func:`claim`."""

    #: the call the id maps to; "" when a concurrent first request has not written it yet
    call_id: str
    #: whether this request made the mapping (then it must create the call)
    first: bool
    #: the first fact the stored mapping has with another value (a forgery), or None
    differing: str | None = None


async def claim(coordinator: Coordinator, carrier: CarrierCall, call_id: str, ttl: float) -> Claim:
    """Map the network's id to ``call_id`` unless it is mapped already; what it maps to."""
    if await coordinator.register_pending(carrier.key, carrier.payload(call_id), ttl):
        return Claim(call_id, first=True)
    stored = await coordinator.peek_pending(carrier.key) or {}
    known = str(stored.get(CALL_ID_FIELD) or "")
    return Claim(known, first=False, differing=carrier.differing(stored))
