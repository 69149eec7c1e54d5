"""Twilio calls that outlive their worker: the ``<Redirect>`` after the stream, and the stream
that comes back.

Theory of operation
-------------------
Every call the edge streams is answered ``<Connect><Stream>`` then
``<Redirect>`` to ``/twilio/resume`` (:func:`~telephony_edge.twilio.webhook.stream_then_resume`).
Twilio runs the TwiML after ``<Connect>`` only when the stream ends and the
call does not: a call that ends (the caller hangs up; the edge completes it
or replaces its TwiML through the REST API) never gets there. So the request
to ``/twilio/resume``, which the load balancer sends to any live worker, is
Twilio's word that the call's stream left its worker: the worker died (its
connections dropped), lost its connection, or closed the stream to move the
call on a drain. It comes within milliseconds of that, far inside a second.

:func:`resume` answers it. The request must be signed, and its URL's ``n``
(a nonce in the TwiML) is used once, so a replayed request is refused (403,
counted). A call that is over, or not live, is told ``<Hangup/>``: a
normal end is never resumed. Else the break is recorded
(:func:`~telephony_edge.calls.migration.announce_break`) and the answer is
the stream again, with a token bound to the call and the generation the
takeover must find, then the ``<Redirect>`` again (``hop`` + 1, at most
:data:`MAX_HOPS` without a stream that held).

The stream that comes back (a ``resume`` parameter) is admitted by
:func:`admit`, on whichever worker it reaches: the token, the same Twilio
call, then the takeover (one coordinator step; exactly one worker wins per
generation). A draining worker refuses it with 1013 and a call that is over
with 1000: Twilio then goes on to the ``<Redirect>`` again, and another
worker answers. Nothing is read from the stream before it is admitted.
"""

from __future__ import annotations

import logging

from aiohttp import web

from telephony_edge import badinput, socket_resume
from telephony_edge.calls.migration import Resumption
from telephony_edge.calls.record import CallRecord
from telephony_edge.services import SERVICES, Services
from telephony_edge.socket_resume import resume_subject
from telephony_edge.twilio import twiml
from telephony_edge.twilio.context import CALL_ID_PARAM, STREAM_TOKEN_PARAM, TWILIO, TwilioContext
from telephony_edge.twilio.media import StreamRejected, StreamStart
from telephony_edge.twilio.webhook import count, signed_form, stream_then_resume, twiml_response

log = logging.getLogger(__name__)

RESUME_PARAM = "resume"  # the stream's <Parameter>: the generation it takes the call over at
#: redirects in a row without a stream that held: past them the call is let go
MAX_HOPS = 10
#: how long a used nonce is remembered beyond the longest call (after that, the call is over)
NONCE_MARGIN_S = 600.0


async def resume(request: web.Request) -> web.Response:
    """``GET /twilio/resume?call_id=…&hop=…&g=…&n=…&CallSid=…``: the call's stream ended; what
    next (Twilio's parameters come in the query: the ``<Redirect>`` is a GET)."""
    ctx = request.app[TWILIO]
    services = request.app[SERVICES]
    form = await signed_form(ctx, request, "resume")
    call_id = request.query.get(CALL_ID_PARAM, "")
    nonce = request.query.get("n", "")
    raw_hop, raw_generation = request.query.get("hop", ""), request.query.get("g", "")
    numbers = (raw_hop, raw_generation)
    if not call_id or not nonce or not all(n.isdigit() and len(n) < 10 for n in numbers):
        count("resume", "bad_request")
        raise web.HTTPBadRequest(text="call_id, hop, g and n are required\n")
    ttl = services.settings.calls.max_duration_s + NONCE_MARGIN_S
    try:
        if not await services.coordinator.register_pending(f"twilio-resume:{nonce}", {}, ttl):
            count("resume", "forbidden")
            badinput.report(
                "twilio-replay", "resume request replayed", request.remote, call_id=call_id
            )
            raise web.HTTPForbidden(text="invalid Twilio signature\n")
        record = await services.call_service.get(call_id)
        brk = await services.call_service.announce_break(call_id)
    except services.coordinator.unavailable as exc:
        count("resume", "coordinator_down")
        services.call_service.health.failed("resume", exc)
        log.warning("a stream ended with the coordinator away", extra={"call_id": call_id})
        return twiml_response(twiml.say_and_hangup(twiml.OUTAGE_MESSAGE))
    call_sid = form.get("CallSid", "")
    if record is None or record.provider != "twilio" or record.provider_call_id != call_sid:
        count("resume", "unknown")
        log.warning("resume request for a call the edge does not know", extra={"call_id": call_id})
        return twiml_response(twiml.hangup())
    if brk is None:  # over (or never streamed): a normal end is never resumed
        count("resume", "over")
        log.info("the call is over: Twilio is told to hang up", extra={"call_id": call_id})
        return twiml_response(twiml.hangup())
    # a generation past the one this redirect's stream was for: that stream held
    hop = 0 if brk.generation > int(raw_generation) else int(raw_hop)
    if hop >= MAX_HOPS:
        count("resume", "gave_up")
        log.warning("no worker took the call after %d redirects", hop, extra={"call_id": call_id})
        return twiml_response(twiml.say_and_hangup(twiml.OUTAGE_MESSAGE))
    count("resume", "resumed")
    log.info(
        "the call's stream left %s (%s): streaming it again",
        brk.from_worker,
        brk.cause,
        extra={"call_id": call_id},
    )
    params = {
        STREAM_TOKEN_PARAM: ctx.tokens.issue(resume_subject(call_id, brk.generation)),
        CALL_ID_PARAM: call_id,
        RESUME_PARAM: str(brk.generation),
    }
    document = stream_then_resume(ctx.public_url, call_id, params, hop + 1, brk.generation)
    return twiml_response(document)


async def admit(
    ctx: TwilioContext, services: Services, start: StreamStart
) -> tuple[CallRecord, Resumption]:
    """Take over the call a resumed stream is for; StreamRejected if it may not run here."""
    params = start.parameters
    return await socket_resume.take_over(
        services,
        ctx.tokens,
        call_id=params.get(CALL_ID_PARAM, ""),
        generation=params.get(RESUME_PARAM, ""),
        token=params.get(STREAM_TOKEN_PARAM, ""),
        network_call_id=start.call_sid,
        rejected=StreamRejected,
    )
