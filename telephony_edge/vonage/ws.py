"""``GET /vonage/ws``: admit Vonage's audio WebSocket, then run its call.

The socket must prove an edge issued it: its first message,
``websocket:connected``, carries the NCCO's headers, among them the token
the answer webhook signed. A token bound to a call id is single-use
(claimed in the coordinator) and claimed only after every other check, so
a replayed or mangled opening cannot lock out the genuine socket. A
hand-off token from another region's edge is bound to the Vonage call and
its numbers, and the call is created here. Whatever is wrong, the socket
closes (1008 policy, 1003 wrong audio format, 1013 try later) before a
single frame of audio is read. A socket that comes back after the call's worker
was lost or drained (a ``resume`` header, :mod:`telephony_edge.vonage.resume`)
takes the call over here.
"""

from __future__ import annotations

import logging
from typing import cast

from aiohttp import WSCloseCode, web

from telephony_edge import http_limits
from telephony_edge.calls.leg import Direction, LegInfo
from telephony_edge.calls.migration import Resumption
from telephony_edge.calls.record import CallRecord, CallState
from telephony_edge.calls.refusals import CallRejected
from telephony_edge.services import SERVICES, Services
from telephony_edge.tokens import TokenError
from telephony_edge.vonage import resume
from telephony_edge.vonage.context import (
    CALL_ID_HEADER,
    FROM_HEADER,
    TO_HEADER,
    TOKEN_HEADER,
    UUID_HEADER,
    VONAGE,
    VonageContext,
    handoff_subject,
    pending_key,
)
from telephony_edge.vonage.media import (
    BAD_CONNECT,
    MAX_MESSAGE_BYTES,
    Connected,
    ConnectRejected,
    VonageMediaLeg,
    read_connected,
)
from telephony_edge.wsleg import open_socket, refuse, run_leg

log = logging.getLogger(__name__)


async def websocket(request: web.Request) -> web.StreamResponse:
    ctx = request.app[VONAGE]
    services = request.app[SERVICES]
    ws = await open_socket(request, max_msg_size=MAX_MESSAGE_BYTES, what="Vonage audio")
    try:
        connected = await read_connected(ws, ctx.connected_timeout_s)
        record, resumed = await _admit(ctx, services, connected)
    except ConnectRejected as exc:
        return await refuse(ws, "Vonage", exc)
    uuid = connected.headers.get(UUID_HEADER, "") or record.provider_call_id
    info = LegInfo(
        provider="vonage",
        direction=cast(Direction, record.direction),
        from_=record.from_,
        to=record.to,
        provider_call_id=uuid,
    )
    own_number = record.to if record.direction == "inbound" else record.from_
    leg = VonageMediaLeg(
        ws,
        request,
        info,
        call_id=record.call_id,
        api=ctx.api,
        from_number=own_number,
        idle_timeout_s=ctx.idle_timeout_s,
        playout_lead_ms=ctx.vonage.playout_lead_ms,
        # answered by this edge with the notify after the socket (not a call another
        # edge or worker connected here): its worker can be lost without losing it
        resumable=CALL_ID_HEADER in connected.headers,
    )
    await run_leg(services.call_service, record, leg, resumed)
    return ws


async def _admit(
    ctx: VonageContext, services: Services, connected: Connected
) -> tuple[CallRecord, Resumption | None]:
    """The call this socket attaches to; once found, it no longer counts as pending.

    A refusal for policy is bad input and counted; one for capacity is not.
    """
    resumed = None
    try:
        if resume.RESUME_HEADER in connected.headers:
            record, resumed = await resume.admit(ctx, services, connected)
        else:
            record = await _admitted_record(ctx, services, connected)
    except ConnectRejected as exc:
        if exc.code == WSCloseCode.POLICY_VIOLATION:
            BAD_CONNECT.inc()
        raise
    http_limits.admitted()
    return record, resumed


async def _admitted_record(
    ctx: VonageContext, services: Services, connected: Connected
) -> CallRecord:
    headers = connected.headers
    token = headers.get(TOKEN_HEADER)
    if not token:
        raise ConnectRejected("no call token in the socket's headers")
    call_id = headers.get(CALL_ID_HEADER)
    if call_id:
        uuid = headers.get(UUID_HEADER, "")
        _verify(ctx, token, call_id)
        await _waiting_record(services, call_id, uuid)
        if await services.coordinator.claim_pending(pending_key(call_id)) is None:
            raise ConnectRejected("call token already used")
        return await _waiting_record(services, call_id, uuid)
    return await _admit_handoff(ctx, services, connected, token)


async def _waiting_record(services: Services, call_id: str, uuid: str) -> CallRecord:
    record = await services.call_service.get(call_id)
    if record is None or record.state is not CallState.CREATED:
        raise ConnectRejected("the call is not waiting for its audio")
    if record.provider != "vonage":
        raise ConnectRejected("the call is not a Vonage call")
    if record.provider_call_id and uuid and record.provider_call_id != uuid:
        raise ConnectRejected("the socket belongs to another Vonage call")
    return record


async def _admit_handoff(
    ctx: VonageContext, services: Services, connected: Connected, token: str
) -> CallRecord:
    """A call another region's edge answered: create it on this edge."""
    headers = connected.headers
    uuid, from_, to = (headers.get(k, "") for k in (UUID_HEADER, FROM_HEADER, TO_HEADER))
    _verify(ctx, token, handoff_subject(uuid, from_, to))
    route = services.router.lookup(to)
    if route is None or route.provider != "vonage" or not route.local:
        raise ConnectRejected(f"number {to[:20]!r} is not served by this region")
    once = f"vonage-handoff:{uuid}"
    if not await services.coordinator.register_pending(once, {}, ctx.tokens.ttl_s * 2):
        raise ConnectRejected("call token already used")
    try:
        return await services.call_service.create_inbound(route, from_=from_, provider_call_id=uuid)
    except CallRejected as exc:
        raise ConnectRejected(exc.reason, code=WSCloseCode.TRY_AGAIN_LATER) from None


def _verify(ctx: VonageContext, token: str, subject: str) -> None:
    try:
        ctx.tokens.verify(token, subject)
    except TokenError as exc:
        raise ConnectRejected(str(exc)) from None
    except ValueError:
        raise ConnectRejected("malformed call token") from None
