"""A network's media socket that comes back to carry its call on (issue 24): the checks
Twilio's stream and Vonage's audio socket pass before their call is taken over here.

The socket names the call, the generation it takes over and a token the edge signed for
both (:func:`resume_subject`); it must be the same network call as the record's. Then
the takeover: one coordinator step, exactly one worker wins per generation. A draining
worker refuses with 1013 (the network comes back, another worker answers) and a call that
is over, or taken by another socket first, with 1000.

A socket's end alone never ends its call: it may be the caller hanging up, or a
reset on a live call the network carries on (:meth:`~telephony_edge.wsleg.SocketLeg.
_socket_gone`: the leg ends ``moved`` and the call is handed off). So when the
network's own word of the end comes (Vonage's event ``completed``, Twilio's status
callback) and the call's worker has let it go, :func:`network_ended` ends it.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import WSCloseCode

from telephony_edge.calls import migration
from telephony_edge.calls.bridge import CallBridge, CallOver
from telephony_edge.calls.migration import Resumption
from telephony_edge.calls.record import CallRecord, CallState
from telephony_edge.calls.refusals import CallRejected
from telephony_edge.coord.base import LIVE_STATES, Conflict
from telephony_edge.services import Services
from telephony_edge.tokens import StreamTokens, TokenError
from telephony_edge.wsleg import SocketRejected

log = logging.getLogger(__name__)

#: how long the network's final status waits for the call's worker to let go of its socket
#: (the socket closes at about the same time as the status is sent, in either order)
LET_GO_WAIT_S = 2.0
_POLL_S = 0.05
LIVE = (CallState.CONNECTING, CallState.ACTIVE)


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


async def network_ended(
    services: Services, call_id: str, provider_status: str, *, wait_s: float = LET_GO_WAIT_S
) -> bool:
    """The network reports ``provider_status``; if that is final (the call is over), end
    the call here if its socket left its worker (a reset, a drain) and nobody took it on;
    whether this ended it.

    Such a call has no bridge that would end it, and the network will not come back for
    it. It is taken over (one coordinator step: a socket that comes back meanwhile, or
    another worker told the same, wins or loses cleanly) and ended ``status`` with the
    conversation its live state kept, its one end-of-call webhook queued. A call whose
    bridge still runs is its bridge's (its socket ends too); waited for up to ``wait_s``, and
    one ending here (an API hang-up awaiting the network) at once: it ends the call itself.
    """
    coordinator = services.coordinator
    service = services.call_service
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        doc = await coordinator.get_call(call_id)
        if doc is None or doc.data.get("state") not in LIVE_STATES:
            return False
        network = service.networks.get(str(doc.data.get("provider")))
        final = None if network is None else network.final_status(provider_status)
        if final is None:
            return False
        bridge = service.manager.get(call_id)
        if isinstance(bridge, CallBridge) and bridge.ending_here:
            return False  # its bridge ends it, with the cause it had first
        live = await coordinator.get_live(call_id)
        moving = live.doc.get("moving") if live is not None else None
        if isinstance(moving, dict) and moving.get("from_worker") == doc.data.get("owner"):
            break  # its worker let it go, and nobody took it over since
        if loop.time() >= deadline:
            # a bridge still letting go on this worker (a loaded loop) is waited for, bounded
            letting_go = isinstance(bridge, CallBridge) and bridge.handed_off
            if not letting_go or loop.time() >= deadline + migration.HAND_OFF_WAIT_S:
                return False
        await asyncio.sleep(_POLL_S)
    try:
        taken = await coordinator.take_over(
            call_id,
            service.worker_id,
            generation=int(doc.data.get("generation") or 0),
            ttl=services.settings.calls.lease_s,
        )
    except Conflict:
        return False  # taken over or ended meanwhile
    if taken is None:
        return False
    record = CallRecord.from_dict(taken.data)
    said = migration.conversation_of(live)
    status, error = final
    record.set_status(status, error)
    record.advance(CallState.ENDING)
    record.advance(CallState.ENDED)
    try:
        await service.write_state(record, LIVE, conversation=said)
    except (Conflict, LookupError):
        return False
    log.info(
        "the network ended the call while its socket was away",
        extra={"call_id": call_id, "call_status": str(status)},
    )
    try:
        await service.release(record)
    finally:
        await service.finished(record, said)
    return True
