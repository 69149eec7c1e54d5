"""``GET /twilio/stream``: admit a Media Streams WebSocket, then run its call.

The stream must prove it was issued by an edge: its ``start`` message
carries the token from our TwiML ``<Parameter>``s. A token bound to a call
id is also single-use (claimed in the coordinator), so a replayed ``start``
cannot attach a second stream to a call. A hand-off token from another
region's edge is bound to the Twilio call and its numbers instead, and the
call is created here. A stream that comes back after the agent's keys (a
``handover`` parameter) goes to the live call's leg that waits for it
(:mod:`telephony_edge.twilio.handover`); one that comes back after the call's
worker was lost or drained (a ``resume`` parameter) takes the call over here
(:mod:`telephony_edge.twilio.resume`). Whatever is wrong, the socket closes
with 1008 before a single frame of audio is read.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable
from typing import TypeVar, cast

from aiohttp import WSCloseCode, web

from telephony_edge import http_limits, metrics
from telephony_edge.calls.admission import shares_url
from telephony_edge.calls.leg import Direction, LegInfo
from telephony_edge.calls.migration import Resumption
from telephony_edge.calls.record import CallRecord, CallState
from telephony_edge.calls.refusals import CallRejected
from telephony_edge.calls.service import CallService
from telephony_edge.services import SERVICES, Services
from telephony_edge.tokens import TokenError
from telephony_edge.twilio import resume
from telephony_edge.twilio.context import (
    CALL_ID_PARAM,
    STREAM_TOKEN_PARAM,
    TWILIO,
    TwilioContext,
    handoff_subject,
    pending_key,
)
from telephony_edge.twilio.handover import HANDOVER_PARAM, NewStream
from telephony_edge.twilio.media import (
    BAD_START,
    MAX_MESSAGE_BYTES,
    StreamRejected,
    StreamStart,
    TwilioMediaLeg,
    read_start,
)
from telephony_edge.wsleg import open_socket, refuse, run_leg

log = logging.getLogger(__name__)
T = TypeVar("T")


async def stream(request: web.Request) -> web.StreamResponse:
    ctx = request.app[TWILIO]
    services = request.app[SERVICES]
    ws = await open_socket(request, max_msg_size=MAX_MESSAGE_BYTES, what="Twilio Media Streams")
    start: StreamStart | None = None
    resumed: Resumption | None = None
    try:
        start = await read_start(ws, ctx.start_timeout_s)
        if HANDOVER_PARAM in start.parameters:
            return await _hand_over(ctx, ws, request, start)
        if resume.RESUME_PARAM in start.parameters:
            record, resumed = await _admitted(resume.admit(ctx, services, start))
        else:
            record = await _admitted(_admitted_record(ctx, services, start))
    except StreamRejected as exc:
        metrics.TWILIO_STREAMS.labels(outcome="refused").inc()
        return await refuse(ws, "Twilio", exc, call_sid=start.call_sid if start else "")
    metrics.TWILIO_STREAMS.labels(outcome="accepted" if resumed is None else "resumed").inc()
    info = LegInfo(
        provider="twilio",
        direction=cast(Direction, record.direction),
        from_=record.from_,
        to=record.to,
        provider_call_id=start.call_sid,
    )
    leg = TwilioMediaLeg(
        ws,
        request,
        start,
        info,
        call_id=record.call_id,
        rest=ctx.rest,
        idle_timeout_s=ctx.idle_timeout_s,
        playout_lead_ms=ctx.twilio.playout_lead_ms,
        handover=ctx.handover,
        handover_timeout_s=ctx.handover_timeout_s,
        comes_back=functools.partial(_comes_back, services),
        # answered by this edge with the resume <Redirect> after the stream (not a call
        # another region's edge streamed here)
        resumable=CALL_ID_PARAM in start.parameters,
    )
    await _run(ctx, services.call_service, record, leg, resumed)
    return ws


async def _comes_back(services: Services) -> bool:
    """Whether a stream to this worker's public URL reaches this worker: no other live worker
    answers there (a load balancer in front of several sends it to any); False when unknown."""
    try:
        workers = await services.coordinator.live_workers()
    except Exception:  # the coordinator away: better no keys than a lost call
        return False
    return not shares_url(workers, services.worker_id, services.settings.public_url)


async def _run(
    ctx: TwilioContext,
    calls: CallService,
    record: CallRecord,
    leg: TwilioMediaLeg,
    resumed: Resumption | None,
) -> None:
    """Run the call on its leg, here. A lost connection that cancels this handler
    (aiohttp's ``handler_cancellation``) ends the call, unless the stream went for the
    agent's keys: the call then goes on over the next one, in a task the handover keeps."""
    run = asyncio.ensure_future(run_leg(calls, record, leg, resumed))
    try:
        await asyncio.shield(run)
    except asyncio.CancelledError:
        if leg.handing_over and not run.done():
            ctx.handover.keep(run)
        else:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
        raise


async def _hand_over(
    ctx: TwilioContext, ws: web.WebSocketResponse, request: web.Request, start: StreamStart
) -> web.WebSocketResponse:
    """The stream after the agent's keys: to the leg that waits for it, which reads it from
    now; the socket is held here until the leg lets it go (the call ends, or another one)."""
    try:
        expected = ctx.handover.arrived(start)
    except StreamRejected:
        BAD_START.inc()
        raise
    http_limits.admitted()
    metrics.TWILIO_STREAMS.labels(outcome="handed_over").inc()
    released: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    expected.arrival.set_result(NewStream(ws, request, start, released))
    await released
    return ws


async def _admitted(admission: Awaitable[T]) -> T:
    """What the stream attaches to; once found, the stream no longer counts as pending.

    A refusal for policy (token, call, callSid) is bad input and counted; one
    for capacity (``CallRejected``: try again later) or for a call that is over
    (a resumed stream that came too late) is not.
    """
    try:
        admitted = await admission
    except StreamRejected as exc:
        if exc.code == WSCloseCode.POLICY_VIOLATION:
            BAD_START.inc()
        raise
    http_limits.admitted()
    return admitted


async def _admitted_record(
    ctx: TwilioContext, services: Services, start: StreamStart
) -> CallRecord:
    params = start.parameters
    token = params.get(STREAM_TOKEN_PARAM)
    if not token:
        raise StreamRejected("no stream token")
    call_id = params.get(CALL_ID_PARAM)
    if call_id:
        # Everything is checked before the one-use claim is consumed: a genuine
        # token replayed with another call's callSid must not lock out the
        # genuine stream. The record is read again after the claim, in case
        # the call ended in between.
        _verify(ctx, token, call_id)
        await _waiting_record(services, call_id, start)
        if await services.coordinator.claim_pending(pending_key(call_id)) is None:
            raise StreamRejected("stream token already used")
        return await _waiting_record(services, call_id, start)
    return await _admit_handoff(ctx, services, start, token)


async def _waiting_record(services: Services, call_id: str, start: StreamStart) -> CallRecord:
    """The call ``start`` may attach to: still waiting for its stream, and the same Twilio call."""
    record = await services.call_service.get(call_id)
    if record is None or record.state is not CallState.CREATED:
        raise StreamRejected("the call is not waiting for a stream")
    if record.provider_call_id and record.provider_call_id != start.call_sid:
        raise StreamRejected("the stream belongs to another Twilio call")
    return record


async def _admit_handoff(
    ctx: TwilioContext, services: Services, start: StreamStart, token: str
) -> CallRecord:
    """A call another region's edge sent here: create it on this edge."""
    from_, to = start.parameters.get("from", ""), start.parameters.get("to", "")
    _verify(ctx, token, handoff_subject(start.call_sid, from_, to))
    route = services.router.lookup(to)
    if route is None or route.provider != "twilio" or not route.local:
        raise StreamRejected(f"number {to!r} is not served by this region")
    once = f"twilio-handoff:{start.call_sid}"
    if not await services.coordinator.register_pending(once, {}, ctx.tokens.ttl_s * 2):
        raise StreamRejected("stream token already used")
    try:
        return await services.call_service.create_inbound(
            route, from_=from_, provider_call_id=start.call_sid
        )
    except CallRejected as exc:
        raise StreamRejected(exc.reason, code=WSCloseCode.TRY_AGAIN_LATER) from None


def _verify(ctx: TwilioContext, token: str, subject: str) -> None:
    try:
        ctx.tokens.verify(token, subject)
    except TokenError as exc:
        raise StreamRejected(str(exc)) from None
    except ValueError:  # e.g. non-ASCII digits in the expiry: still just a bad token
        raise StreamRejected("malformed stream token") from None
