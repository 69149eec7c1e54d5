"""Twilio's HTTP webhooks: the voice webhook (TwiML answer), the call and stream status callbacks.

All are signed by Twilio; all answer 403 to anything else. The voice
webhook decides where a call goes: an outbound call placed by the API names
its ``call_id`` in the URL; an inbound one is routed by the dialled number
(``To``) to an agent on this edge, to the edge of the region the number is
homed in, or to a polite goodbye. It never waits on the agent core: the
prefetch webhook and the agent link run once the media stream is here.
"""

from __future__ import annotations

import logging
import re
from typing import NoReturn

from aiohttp import web
from multidict import MultiDictProxy

from telephony_edge import badinput, metrics, socket_resume
from telephony_edge.calls.machine import AmdReport
from telephony_edge.calls.record import CallRecord, CallState
from telephony_edge.calls.refusals import CallRejected, KnownCallConflict, WorkerFull
from telephony_edge.config_values import normalize_e164
from telephony_edge.coord.health import CoordinatorUnavailable
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
_STREAM_EVENTS = frozenset({"stream-started", "stream-stopped", "stream-error"})
GONE_MESSAGE = "Sorry, this call can no longer be connected. Goodbye."
STREAM_STATUS_PATH = "/twilio/stream-status"
AMD_PATH = "/twilio/amd"
#: Twilio's ``AnsweredBy`` (DetectMessageEnd) → (result, the greeting is over, beep)
ANSWERED_BY: dict[str, tuple[str, bool, bool]] = {
    "human": ("human", False, False),
    "unknown": ("unknown", False, False),
    "machine_start": ("machine", False, False),
    "machine_end_beep": ("machine", True, True),
    "machine_end_silence": ("machine", True, False),
    "machine_end_other": ("machine", True, False),
    "fax": ("machine", True, False),
}
VOICE_PATH = "/twilio/voice"
#: query parameter counting ``<Redirect>`` hops between full workers, so none loops forever
HOP_PARAM = "edge_hop"
MAX_HOPS = 2
MAX_STREAM_ERROR_CHARS = 500
#: Twilio's call SIDs: ``CA`` and 32 hex digits. Anything else under a valid signature is a
#: re-split of the signed fields (``CallSid`` swallowing its neighbour), so a new id per replay.
CALL_SID = re.compile(r"CA[0-9a-fA-F]{32}")


def provider_call_key(call_sid: str) -> str:
    """The coordinator key ``CallService.create_inbound`` maps an inbound CallSid to its call by.

    Kept in step with ``create_inbound`` (``provider-call:<provider>:<id>``);
    tests/test_lifecycle_serve.py checks an inbound status callback finds its call.
    """
    return f"provider-call:twilio:{call_sid}"


def twiml_response(document: str) -> web.Response:
    return web.Response(text=document, content_type="application/xml")


def count(kind: str, outcome: str) -> None:
    metrics.TWILIO_WEBHOOKS.labels(kind=kind, outcome=outcome).inc()


def caller_number(raw: str) -> str:
    """``From`` as E.164 when it is a number; as sent otherwise (``anonymous``, clients)."""
    try:
        return normalize_e164(raw)
    except ValueError:
        return raw


async def signed_form(ctx: TwilioContext, request: web.Request, kind: str) -> MultiDictProxy[str]:
    """The webhook's form fields, once Twilio's signature checks out.

    Else 403 (no or bad signature) or 400 (a body that cannot be parsed), counted.
    """
    try:
        return await ctx.signatures.form(request)
    except web.HTTPForbidden:
        count(kind, "forbidden")
        raise
    except web.HTTPBadRequest:
        count(kind, "bad_request")
        raise


async def voice(request: web.Request) -> web.Response:
    """``POST /twilio/voice``: answer a call with TwiML."""
    ctx = request.app[TWILIO]
    services = request.app[SERVICES]
    form = await signed_form(ctx, request, "voice")
    call_sid = form.get("CallSid", "")
    call_id = request.query.get(CALL_ID_PARAM)
    if call_id:
        return await _answer_outbound(ctx, services, call_id, call_sid)

    if CALL_SID.fullmatch(call_sid) is None:
        _refuse_replay(request, "voice webhook without a well-formed CallSid", "")
    to, from_ = form.get("To", ""), caller_number(form.get("From", ""))
    route = services.router.lookup(to)
    if route is None or route.provider != "twilio":
        count("voice", "unknown_number")
        log.info("call to a number the edge does not serve", extra={"to": to, "call_sid": call_sid})
        return twiml_response(twiml.say_and_hangup(twiml.UNKNOWN_NUMBER_MESSAGE))
    if not route.local:
        count("voice", "other_region")
        subject = handoff_subject(call_sid, from_, route.number)
        params = {STREAM_TOKEN_PARAM: ctx.tokens.issue(subject), "from": from_, "to": route.number}
        log.info(
            "number homed in region %s; streaming there",
            route.region_name,
            extra={"to": route.number, "call_sid": call_sid},
        )
        return twiml_response(
            twiml.connect_stream(twiml.stream_url(route.region.public_url), params)
        )
    try:
        record = await services.call_service.create_inbound(
            route, from_=from_, provider_call_id=call_sid
        )
    except KnownCallConflict as exc:
        _refuse_replay(request, f"CallSid replayed: {exc.reason}", exc.call_id)
    except WorkerFull as exc:
        return await _elsewhere(services, request, call_sid, exc.reason)
    except CallRejected as exc:
        outcome = "coordinator_down" if exc.http_status == 503 else "rejected"
        count("voice", outcome)
        log.warning("inbound call refused: %s", exc.reason, extra={"call_sid": call_sid})
        message = twiml.OUTAGE_MESSAGE if exc.http_status == 503 else twiml.UNAVAILABLE_MESSAGE
        return twiml_response(twiml.say_and_hangup(message))
    except CoordinatorUnavailable as exc:
        count("voice", "coordinator_down")
        log.warning("inbound call refused: %s", exc, extra={"call_sid": call_sid})
        return twiml_response(twiml.say_and_hangup(twiml.OUTAGE_MESSAGE))
    if record.state is not CallState.CREATED:  # a replay of a call set up or over: no new answer
        count("voice", "replayed")
        badinput.report(
            "twilio-replay",
            "voice webhook for a call past set-up",
            request.remote,
            call_id=record.call_id,
        )
        return twiml_response(twiml.say_and_hangup(GONE_MESSAGE))
    count("voice", "inbound")  # the first webhook, or Twilio's retry of it
    return await _stream_answer(ctx, services, record)


def _refuse_replay(request: web.Request, error: str, call_id: str) -> NoReturn:
    """403, as for a bad signature: a signed request Twilio did not send (counted, warned)."""
    count("voice", "forbidden")
    badinput.report("twilio-replay", error, request.remote, call_id=call_id or None)
    raise web.HTTPForbidden(text="invalid Twilio signature\n")


async def _elsewhere(
    services: Services, request: web.Request, call_sid: str, reason: str
) -> web.Response:
    """This worker is full or draining: ``<Redirect>`` to a worker that takes calls, if any."""
    raw = request.query.get(HOP_PARAM, "0")
    hops = int(raw) if raw.isdigit() and len(raw) < 4 else MAX_HOPS
    other = None if hops >= MAX_HOPS else await services.call_service.other_ready_worker()
    if other is None:
        count("voice", "full")
        log.warning("inbound call refused: %s", reason, extra={"call_sid": call_sid})
        return twiml_response(twiml.say_and_hangup(twiml.UNAVAILABLE_MESSAGE))
    count("voice", "redirected")
    log.info("%s; redirecting to %s", reason, other, extra={"call_sid": call_sid})
    return twiml_response(twiml.redirect(f"{other.rstrip('/')}{VOICE_PATH}?{HOP_PARAM}={hops + 1}"))


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
        count("voice", "outbound_gone")
        log.warning("answered outbound call is unknown or over", extra={"call_id": call_id})
        return twiml_response(twiml.say_and_hangup(GONE_MESSAGE))
    count("voice", "outbound")
    return await _stream_answer(ctx, services, record)


async def _stream_answer(
    ctx: TwilioContext, services: Services, record: CallRecord
) -> web.Response:
    ttl = ctx.twilio.stream_token_ttl_s
    try:
        await services.coordinator.register_pending(
            pending_key(record.call_id), {"call_sid": record.provider_call_id}, ttl
        )
    except Exception as exc:
        raise services.call_service.health.failed("register_pending", exc) from exc
    params = {
        STREAM_TOKEN_PARAM: ctx.tokens.issue(record.call_id),
        CALL_ID_PARAM: record.call_id,
    }
    return twiml_response(stream_then_resume(ctx.public_url, record.call_id, params))


def stream_then_resume(
    public_url: str, call_id: str, parameters: dict[str, str], hop: int = 0, generation: int = 0
) -> str:
    """The call's stream with its status callback, then the resume ``<Redirect>``: when
    the stream ends and the call does not, any worker takes the call on
    (:mod:`telephony_edge.twilio.resume`)."""
    status_callback = f"{public_url.rstrip('/')}{STREAM_STATUS_PATH}?{CALL_ID_PARAM}={call_id}"
    return twiml.connect_stream(
        twiml.stream_url(public_url),
        parameters,
        status_callback=status_callback,
        then_redirect=twiml.resume_url(public_url, call_id, hop, generation),
    )


async def status(request: web.Request) -> web.Response:
    """``POST /twilio/status``: Twilio reports a call's progress (busy, no-answer, ...).

    Outbound calls name their ``call_id`` in the callback URL. An inbound
    number's status callback (set in the console) carries only the CallSid:
    it is mapped to the call the voice webhook created for it, so a caller
    who hangs up before the stream connects ends the call at once.
    """
    ctx = request.app[TWILIO]
    services = request.app[SERVICES]
    form = await signed_form(ctx, request, "status")
    call_id = request.query.get(CALL_ID_PARAM)
    call_status = form.get("CallStatus", "")
    call_sid = form.get("CallSid", "")
    if not call_id and call_sid and call_status:
        known = await services.coordinator.peek_pending(provider_call_key(call_sid))
        call_id = str(known["call_id"]) if known and known.get("call_id") else None
    if not call_id or not call_status:
        # a call this edge does not know (another region's, or set up too long ago)
        count("status", "ignored")
        return web.Response(status=204)
    count("status", call_status if call_status in _KNOWN_STATUSES else "other")
    await services.call_service.update_provider_status(call_id, call_status)
    await socket_resume.network_ended(services, call_id, call_status)  # its stream may be gone
    return web.Response(status=204)


async def stream_status(request: web.Request) -> web.Response:
    """``POST /twilio/stream-status?call_id=…``: the ``<Stream statusCallback>`` events.

    ``stream-error`` for a call still waiting for its stream (Twilio could not
    connect to the edge's WebSocket) ends the call ``error`` with Twilio's
    ``StreamError``; a call whose stream is here ends through the stream.
    Every event is counted; the others change nothing.
    """
    ctx = request.app[TWILIO]
    form = await signed_form(ctx, request, "stream_status")
    call_id = request.query.get(CALL_ID_PARAM)
    event = form.get("StreamEvent", "")
    count("stream_status", event if event in _STREAM_EVENTS else "other")
    if event == "stream-error" and call_id:
        error = form.get("StreamError", "") or "unknown error"
        message = f"Twilio stream error: {error[:MAX_STREAM_ERROR_CHARS]}"
        log.warning(
            "Twilio reports a stream error",
            extra={"call_id": call_id, "call_sid": form.get("CallSid", ""), "error": message},
        )
        await request.app[SERVICES].call_service.fail_setup(call_id, message)
    return web.Response(status=204)


async def amd(request: web.Request) -> web.Response:
    """``POST /twilio/amd?call_id=…``: Twilio's asynchronous answering-machine detection result.

    ``AnsweredBy`` goes to the call's owner (:meth:`CallService.report_amd`) with
    ``MachineDetectionDuration``; a value Twilio does not document is 400.
    """
    ctx = request.app[TWILIO]
    form = await signed_form(ctx, request, "amd")
    call_id = request.query.get(CALL_ID_PARAM)
    answered_by = form.get("AnsweredBy", "")
    mapped = ANSWERED_BY.get(answered_by)
    if mapped is None:
        count("amd", "bad_request")
        log.warning("AMD result with AnsweredBy %r", answered_by[:40], extra={"call_id": call_id})
        raise web.HTTPBadRequest(text="AnsweredBy is missing or not one of Twilio's values\n")
    if not call_id:
        count("amd", "ignored")
        return web.Response(status=204)
    raw = form.get("MachineDetectionDuration", "")
    after_ms = int(raw) if raw.isdigit() and len(raw) < 8 else -1
    result, message_end, beep = mapped
    report = AmdReport(result, "twilio", after_ms, message_end, beep)
    log.info("Twilio AMD: %s after %s ms", answered_by, raw or "?", extra={"call_id": call_id})
    delivered = await request.app[SERVICES].call_service.report_amd(call_id, report)
    count("amd", answered_by if delivered else "no_call")
    return web.Response(status=204)
