"""Twilio's HTTP webhooks: the voice webhook (TwiML answer) and the status callback.

Both are signed by Twilio; both answer 403 to anything else. The voice
webhook decides where a call goes: an outbound call placed by the API names
its ``call_id`` in the URL; an inbound one is routed by the dialled number
(``To``) to an agent on this edge, to the edge of the region the number is
homed in, or to a polite goodbye. It never waits on the agent core: the
prefetch webhook and the agent link run once the media stream is here.
"""

from __future__ import annotations

import logging

from aiohttp import web
from multidict import MultiDictProxy

from telephony_edge import metrics
from telephony_edge.calls.record import CallRecord, CallState
from telephony_edge.calls.service import CallRejected
from telephony_edge.config import normalize_e164
from telephony_edge.services import SERVICES, Services
from telephony_edge.twilio import twiml
from telephony_edge.twilio.context import (
    CALL_ID_PARAM,
    STREAM_TOKEN_PARAM,
    TWILIO,
    TwilioContext,
    handoff_subject,
    pending_key,
)

log = logging.getLogger(__name__)

_KNOWN_STATUSES = frozenset(
    {"queued", "initiated", "ringing", "in-progress", "answered", "completed"}
    | {"busy", "no-answer", "failed", "canceled"}
)
GONE_MESSAGE = "Sorry, this call can no longer be connected. Goodbye."


def _twiml(document: str) -> web.Response:
    return web.Response(text=document, content_type="application/xml")


def _outcome(kind: str, outcome: str) -> None:
    metrics.TWILIO_WEBHOOKS.labels(kind=kind, outcome=outcome).inc()


def caller_number(raw: str) -> str:
    """``From`` as E.164 when it is a number; as sent otherwise (``anonymous``, clients)."""
    try:
        return normalize_e164(raw)
    except ValueError:
        return raw


async def _signed_form(ctx: TwilioContext, request: web.Request, kind: str) -> MultiDictProxy[str]:
    """The webhook's form fields, once Twilio's signature checks out.

    Else 403 (no or bad signature) or 400 (a body that cannot be parsed), counted.
    """
    try:
        return await ctx.signatures.form(request)
    except web.HTTPForbidden:
        _outcome(kind, "forbidden")
        raise
    except web.HTTPBadRequest:
        _outcome(kind, "bad_request")
        raise


async def voice(request: web.Request) -> web.Response:
    """``POST /twilio/voice``: answer a call with TwiML."""
    ctx = request.app[TWILIO]
    services = request.app[SERVICES]
    form = await _signed_form(ctx, request, "voice")
    call_sid = form.get("CallSid", "")
    call_id = request.query.get(CALL_ID_PARAM)
    if call_id:
        return await _answer_outbound(ctx, services, call_id, call_sid)

    to, from_ = form.get("To", ""), caller_number(form.get("From", ""))
    route = services.router.lookup(to)
    if route is None or route.provider != "twilio":
        _outcome("voice", "unknown_number")
        log.info("call to a number the edge does not serve", extra={"to": to, "call_sid": call_sid})
        return _twiml(twiml.say_and_hangup(twiml.UNKNOWN_NUMBER_MESSAGE))
    if not route.local:
        _outcome("voice", "other_region")
        subject = handoff_subject(call_sid, from_, route.number)
        params = {STREAM_TOKEN_PARAM: ctx.tokens.issue(subject), "from": from_, "to": route.number}
        log.info(
            "number homed in region %s; streaming there",
            route.region_name,
            extra={"to": route.number, "call_sid": call_sid},
        )
        return _twiml(twiml.connect_stream(twiml.stream_url(route.region.public_url), params))
    try:
        record = await services.call_service.create_inbound(
            route, from_=from_, provider_call_id=call_sid
        )
    except CallRejected as exc:
        _outcome("voice", "rejected")
        log.warning("inbound call refused: %s", exc.reason, extra={"call_sid": call_sid})
        return _twiml(twiml.say_and_hangup(twiml.UNAVAILABLE_MESSAGE))
    _outcome("voice", "inbound")
    return await _stream_answer(ctx, services, record)


async def _answer_outbound(
    ctx: TwilioContext, services: Services, call_id: str, call_sid: str
) -> web.Response:
    record = await services.call_service.get(call_id)
    if (
        record is None
        or record.provider != "twilio"
        or record.state is not CallState.CREATED
        or (record.provider_call_id and call_sid and record.provider_call_id != call_sid)
    ):
        _outcome("voice", "outbound_gone")
        log.warning("answered outbound call is unknown or over", extra={"call_id": call_id})
        return _twiml(twiml.say_and_hangup(GONE_MESSAGE))
    _outcome("voice", "outbound")
    return await _stream_answer(ctx, services, record)


async def _stream_answer(
    ctx: TwilioContext, services: Services, record: CallRecord
) -> web.Response:
    ttl = ctx.twilio.stream_token_ttl_s
    await services.coordinator.register_pending(
        pending_key(record.call_id), {"call_sid": record.provider_call_id}, ttl
    )
    params = {
        STREAM_TOKEN_PARAM: ctx.tokens.issue(record.call_id),
        CALL_ID_PARAM: record.call_id,
    }
    return _twiml(twiml.connect_stream(twiml.stream_url(ctx.public_url), params))


async def status(request: web.Request) -> web.Response:
    """``POST /twilio/status``: Twilio reports a call's progress (busy, no-answer, ...)."""
    ctx = request.app[TWILIO]
    form = await _signed_form(ctx, request, "status")
    call_id = request.query.get(CALL_ID_PARAM)
    call_status = form.get("CallStatus", "")
    if not call_id or not call_status:
        # Inbound numbers' status callbacks carry no call id; the stream's stop ends those.
        _outcome("status", "ignored")
        return web.Response(status=204)
    _outcome("status", call_status if call_status in _KNOWN_STATUSES else "other")
    await request.app[SERVICES].call_service.update_provider_status(call_id, call_status)
    return web.Response(status=204)
