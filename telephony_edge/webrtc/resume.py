"""WebRTC calls that outlive their worker: the re-offer with the call's resume token.

Theory of operation
-------------------
Every answered offer carries a ``resume_token`` (when ``api.private_key`` is
set: it signs the tokens, the same on every worker), bound to the call and
its generation, expiring with the longest call (``calls.max_duration_s``).
The caller keeps it. When its connection fails (the worker died: no media,
ICE disconnected or failed for about a second; or the data channel closed
without the edge's ``hangup``), the caller sends a new offer to any worker
(``POST /webrtc/offer`` with ``resume: {call_id, token}``). That worker:

1. checks the token (:func:`~telephony_edge.calls.session_token.resume_generation`):
   signed for this call, not expired: else 403, counted
   (``telephony_edge_bad_input_total{source="webrtc-resume"}``) and warned with the call id;
2. records the break (:func:`~telephony_edge.calls.migration.announce_break`): a call
   that is over (the page or the agent hung up) is not resumed (409);
3. checks the break's generation is the token's: a token already used (the
   call moved on to the next generation) is a replay, 403 and counted;
4. answers the offer, then takes the call over (``CallService.take_over``: one
   coordinator step, exactly one winner per generation; a loser is a replay too)
   and runs it resumed at once, while ICE and DTLS connect: the agent core gets the
   chat so far with ``resumed``, and its first words wait in the playout for the track.

The answer carries the next generation's token, so the call can move again.
A drain hands a call off by telling the page ``{"type": "move"}`` on the data
channel (:meth:`~telephony_edge.webrtc.leg.WebRtcLeg.hand_off`): it re-offers the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from telephony_edge import badinput
from telephony_edge.api import ApiError, _object
from telephony_edge.calls.bridge import CallOver
from telephony_edge.calls.migration import Resumption
from telephony_edge.calls.record import CallRecord
from telephony_edge.calls.refusals import CallRejected
from telephony_edge.calls.session_token import ResumeTokenError, resume_generation, resume_token
from telephony_edge.services import Services

BAD_RESUME = "webrtc-resume"  # the bad-input source of refused resume tokens


@dataclass(frozen=True, slots=True)
class ResumeRequest:
    """An offer's ``resume``: which call, at which generation (the token checked)."""

    call_id: str
    generation: int


def token_for(services: Services, record: CallRecord) -> str | None:
    """The token that resumes ``record`` at its current generation (None: no private key)."""
    settings = services.settings
    expiry = int(time.time() + settings.calls.max_duration_s + 1)
    return resume_token(settings.api.private_key, record.call_id, record.generation, expiry)


def _refuse(reason: str, peer: str | None, call_id: str | None) -> ApiError:
    badinput.report(BAD_RESUME, reason, peer, call_id=call_id)
    return ApiError(403, reason)


def requested(services: Services, body: dict[str, Any], peer: str | None) -> ResumeRequest | None:
    """The offer's ``resume``, its token checked; None for a new call; 403 for a bad token."""
    resume = _object(body, "resume")
    if resume is None:
        return None
    call_id, token = resume.get("call_id"), resume.get("token")
    if not isinstance(call_id, str) or not isinstance(token, str) or not 0 < len(call_id) <= 64:
        raise _refuse("resume needs call_id and token strings", peer, None)
    try:
        generation = resume_generation(
            services.settings.api.private_key, call_id, token, time.time()
        )
    except ResumeTokenError as exc:
        raise _refuse(str(exc), peer, call_id) from None
    return ResumeRequest(call_id, generation)


async def check(
    services: Services, request: ResumeRequest, agent_id: str, peer: str | None
) -> None:
    """Before the offer is answered: the call is a live WebRTC call of ``agent_id`` whose
    break is at the token's generation (else 409 over, 403 replayed or foreign)."""
    record = await services.call_service.get(request.call_id)
    if record is None or record.provider != "webrtc" or record.agent_id != agent_id:
        raise _refuse("the resume token is for another call", peer, request.call_id)
    brk = await services.call_service.announce_break(request.call_id)
    if brk is None:  # a normal end (the page or the agent hung up) is never resumed
        raise ApiError(409, "the call is over")
    if brk.generation != request.generation:
        raise _refuse("the resume token was used already", peer, request.call_id)


async def take_over(
    services: Services, request: ResumeRequest, peer: str | None
) -> tuple[CallRecord, Resumption]:
    """Take the call over here: exactly one re-offer per generation wins (the others: 403)."""
    try:
        return await services.call_service.take_over(request.call_id, request.generation)
    except CallRejected as exc:  # draining: the caller tries another worker
        raise ApiError(exc.http_status, str(exc)) from None
    except CallOver:
        raise _refuse("the resume token was used already", peer, request.call_id) from None
