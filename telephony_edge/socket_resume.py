"""A network's media socket that comes back to carry its call on (issue 24): the checks
Twilio's stream and Vonage's audio socket pass before their call is taken over here.

The socket names the call, the generation it takes over and a token the edge signed for
both (:func:`resume_subject`); it must be the same network call as the record's. Then
the takeover: one coordinator step, exactly one worker wins per generation. A draining
worker refuses with 1013 (the network comes back, another worker answers) and a call that
is over, or taken by another socket first, with 1000.
"""

from __future__ import annotations

from aiohttp import WSCloseCode

from telephony_edge.calls.bridge import CallOver
from telephony_edge.calls.migration import Resumption
from telephony_edge.calls.record import CallRecord
from telephony_edge.calls.refusals import CallRejected
from telephony_edge.services import Services
from telephony_edge.tokens import StreamTokens, TokenError
from telephony_edge.wsleg import SocketRejected


def resume_subject(call_id: str, generation: int) -> str:
    """What a resumed socket's token is bound to: the call and the generation it takes over."""
    return f"{call_id}|resume|{generation}"


async def take_over(
    services: Services,
    tokens: StreamTokens,
    *,
    call_id: str,
    generation: str,
    token: str,
    network_call_id: str | None,
    rejected: type[SocketRejected],
) -> tuple[CallRecord, Resumption]:
    """Take over the call a resumed socket names; ``rejected`` (the network's kind of
    :class:`SocketRejected`) if it may not run here."""
    if not (generation.isdigit() and len(generation) < 10):
        raise rejected("resume is not a generation")
    try:
        tokens.verify(token, resume_subject(call_id, int(generation)))
    except TokenError as exc:
        raise rejected(str(exc)) from None
    except ValueError:  # non-ASCII digits in the expiry: still just a bad token
        raise rejected("malformed token") from None
    stored = await services.coordinator.get_call(call_id)
    if stored is None or stored.data.get("provider_call_id") != network_call_id:
        raise rejected("the socket belongs to another call of the network")
    try:
        return await services.call_service.take_over(call_id, int(generation))
    except CallRejected as exc:  # draining: the network comes back, another worker takes it
        raise rejected(exc.reason, code=WSCloseCode.TRY_AGAIN_LATER) from None
    except CallOver as exc:  # over, or taken by another socket: the network asks, is told
        raise rejected(str(exc), code=WSCloseCode.OK) from None
