"""Vonage's HTTP webhooks: the answer webhook (an NCCO) and the event webhook.

Both are signed (a JWT with the application's signature secret; see
``signature``) and answer 401 to anything else. The answer webhook decides
where a call goes: an outbound call placed by the edge names its
``call_id`` in the URL; an inbound one is routed by the dialled number
(``to``) to an agent on this edge, to the edge of the region the number is
homed in, to another worker taking calls while this one is full or
draining (as Twilio's ``<Redirect>``), or to a ``talk`` saying the number
is not served or nobody can take the call. It never waits
on the agent core: the prefetch webhook and the agent link run once the
audio WebSocket is here.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import web

from telephony_edge import badinput, metrics, socket_resume
from telephony_edge.calls.machine import AmdReport
from telephony_edge.calls.record import CallRecord, CallState
from telephony_edge.calls.refusals import CallRejected, KnownCallConflict, WorkerFull
from telephony_edge.config_values import normalize_e164
from telephony_edge.coord.base import Conflict
from telephony_edge.coord.health import CoordinatorUnavailable
from telephony_edge.services import SERVICES, Services
from telephony_edge.vonage import ncco, replay
from telephony_edge.vonage.context import (
    CALL_ID_HEADER,
    CALL_ID_PARAM,
    FROM_HEADER,
    TO_HEADER,
    TOKEN_HEADER,
    UUID_HEADER,
    VONAGE,
    VonageContext,
    handoff_subject,
    pending_key,
    provider_call_key,
)
from telephony_edge.vonage.signature import SignatureRejected, verified_body

log = logging.getLogger(__name__)

WEBHOOKS = metrics.VONAGE_WEBHOOKS
#: Vonage's call statuses (event webhook); the final ones are in the provider's final_statuses
KNOWN_STATUSES = frozenset(
    {"started", "ringing", "answered", "completed", "busy", "timeout", "failed"}
    | {"rejected", "unanswered", "cancelled", "machine", "human", "disconnected"}
)
MAX_FIELD_CHARS = 256
EVENT_PATH = "/vonage/event"
#: the stored call's field for what Vonage reports beyond the status (see merge_details)
DETAILS_KEY = "provider_details"
#: the call leg's network details, as Vonage's event webhook names them
NETWORK_FIELDS = (
    "conversation_uuid",
    "network",
    "rate",
    "price",
    "duration",
    "start_time",
    "end_time",
    "detail",
    "reason",
)
WEBSOCKET_FIELDS = ("uuid", "status", "to", "duration", "detail")
MAX_WS_EVENTS = 16
MAX_MERGE_ATTEMPTS = 5
#: advanced machine detection's ``sub_state`` (``detect_beep``) → (the greeting is over, beep)
AMD_SUB_STATES: dict[str, tuple[bool, bool]] = {
    "": (False, False),
    "beep_start": (True, True),
    "beep_timeout": (True, False),
}


def _outcome(kind: str, outcome: str) -> None:
    WEBHOOKS.labels(kind=kind, outcome=outcome).inc()


def _ncco(actions: list[dict[str, Any]]) -> web.Response:
    return web.Response(body=orjson.dumps(actions), content_type="application/json")


def caller_number(raw: str) -> str:
    """``from`` as E.164 when it is a number (Vonage leaves out the ``+``); as sent otherwise."""
    candidate = raw if raw.startswith("+") or not raw.isdigit() else "+" + raw
    try:
        return normalize_e164(candidate)
    except ValueError:
        return raw


async def signed_fields(
    ctx: VonageContext, services: Services, request: web.Request, kind: str
) -> dict[str, str]:
    """The webhook's fields (query, then a JSON body) once the signature checks out.

    A token must name this request (its payload hash, our application) and
    be used once (``replay``): 401 otherwise, counted and warned as bad
    input. A coordinator that cannot record the token raises
    :class:`CoordinatorUnavailable`.
    """
    try:
        verified = await verified_body(
            request,
            ctx.secret,
            enabled=ctx.vonage.validate_signatures,
            max_age_s=ctx.vonage.max_webhook_age_s,
            application_id=ctx.vonage.application_id,
        )
    except web.HTTPUnauthorized as exc:
        _outcome(kind, "unauthorized")
        badinput.report("vonage-signature", badinput.phrase(exc.text or ""), request.remote)
        raise
    fields = {k: v[:MAX_FIELD_CHARS] for k, v in request.query.items() if k != CALL_ID_PARAM}
    if verified.body:
        try:
            data = orjson.loads(verified.body)
        except orjson.JSONDecodeError:
            _outcome(kind, "bad_request")
            raise web.HTTPBadRequest(text="the body is not JSON\n") from None
        if not isinstance(data, dict):
            _outcome(kind, "bad_request")
            raise web.HTTPBadRequest(text="the body is not a JSON object\n")
        for key, value in data.items():
            if isinstance(value, str | int | float) and not isinstance(value, bool):
                fields[str(key)] = str(value)[:MAX_FIELD_CHARS]
    if verified.claims:
        await _use_token_once(ctx, services, request, kind, verified.claims, fields)
    return fields


async def _use_token_once(
    ctx: VonageContext,
    services: Services,
    request: web.Request,
    kind: str,
    claims: dict[str, Any],
    fields: dict[str, str],
) -> None:
    """401 (counted, warned with the call's uuid) for a token used before."""
    try:
        await replay.use_once(services.coordinator, claims, max_age_s=ctx.vonage.max_webhook_age_s)
    except SignatureRejected as exc:
        _outcome(kind, "unauthorized")
        uuid = fields.get("uuid") or request.query.get(CALL_ID_PARAM)
        badinput.report("vonage-replay", str(exc), request.remote, call_id=uuid)
        raise web.HTTPUnauthorized(text=f"{exc}\n") from None
    except Exception as exc:
        raise services.call_service.health.failed("register_pending", exc) from exc


async def answer(request: web.Request) -> web.Response:
    """``GET``/``POST /vonage/answer``: answer a call with an NCCO."""
    ctx = request.app[VONAGE]
    services = request.app[SERVICES]
    try:
        fields = await signed_fields(ctx, services, request, "answer")
    except CoordinatorUnavailable as exc:
        _outcome("answer", "coordinator_down")
        log.warning("answer webhook refused: %s", exc)
        return _ncco(ncco.talk(ncco.OUTAGE_MESSAGE))
    uuid = fields.get("uuid", "")
    call_id = request.query.get(CALL_ID_PARAM)
    if call_id:
        return await _answer_outbound(ctx, services, call_id, uuid)
    to, from_ = fields.get("to", ""), caller_number(fields.get("from", ""))
    route = services.router.lookup(to)
    if route is None or route.provider != "vonage":
        _outcome("answer", "unknown_number")
        log.info("call to a number the edge does not serve", extra={"to": to, "uuid": uuid})
        return _ncco(ncco.talk(ncco.UNKNOWN_NUMBER_MESSAGE))
    if not route.local:
        _outcome("answer", "other_region")
        log.info("number homed in region %s", route.region_name, extra={"uuid": uuid})
        return _handoff(ctx, route.region.public_url, uuid, from_, route.number)
    try:
        record = await services.call_service.create_inbound(
            route, from_=from_, provider_call_id=uuid, facts=_network_facts(fields)
        )
    except KnownCallConflict as exc:
        _outcome("answer", "forbidden")
        badinput.report("vonage-replay", exc.reason, request.remote, call_id=exc.call_id)
        raise web.HTTPForbidden(text="this request does not match the call it names\n") from None
    except WorkerFull as exc:
        other = await services.call_service.other_ready_worker()
        if other is not None:  # full or draining: the socket goes to a worker taking calls
            _outcome("answer", "redirected")
            log.info("%s; connecting to %s", exc.reason, other, extra={"uuid": uuid})
            return _handoff(ctx, other, uuid, from_, route.number)
        _outcome("answer", "full")
        log.warning("inbound call refused: %s", exc.reason, extra={"uuid": uuid})
        return _ncco(ncco.talk(ncco.UNAVAILABLE_MESSAGE))
    except CallRejected as exc:
        _outcome("answer", "coordinator_down" if exc.http_status == 503 else "rejected")
        log.warning("inbound call refused: %s", exc.reason, extra={"uuid": uuid})
        message = ncco.OUTAGE_MESSAGE if exc.http_status == 503 else ncco.UNAVAILABLE_MESSAGE
        return _ncco(ncco.talk(message))
    except CoordinatorUnavailable as exc:
        _outcome("answer", "coordinator_down")
        log.warning("inbound call refused: %s", exc, extra={"uuid": uuid})
        return _ncco(ncco.talk(ncco.OUTAGE_MESSAGE))
    if record.state is not CallState.CREATED:  # a replay of a call set up or over: no new answer
        _outcome("answer", "replayed")
        badinput.report(
            "vonage-replay",
            "answer webhook for a call past set-up",
            request.remote,
            call_id=record.call_id,
        )
        return _ncco(ncco.talk(ncco.GONE_MESSAGE))
    _outcome("answer", "inbound")  # the first answer webhook, or Vonage's retry of it
    return await _connect_answer(ctx, services, record)


def _network_facts(fields: dict[str, str]) -> dict[str, str]:
    """What a retry of the answer webhook repeats beyond caller and number: the conversation."""
    conversation = fields.get("conversation_uuid", "")
    return {"conversation_uuid": conversation} if conversation else {}


def _handoff(
    ctx: VonageContext, public_url: str, uuid: str, from_: str, number: str
) -> web.Response:
    """``connect`` to another edge's socket (another region, or a worker taking calls).

    That edge creates the call from the signed headers (``ws._admit_handoff``).
    """
    headers = {
        TOKEN_HEADER: ctx.tokens.issue(handoff_subject(uuid, from_, number)),
        UUID_HEADER: uuid,
        FROM_HEADER: from_,
        TO_HEADER: number,
    }
    return _ncco(ncco.connect_websocket(ncco.ws_url(public_url), headers, number))


async def _answer_outbound(
    ctx: VonageContext, services: Services, call_id: str, uuid: str
) -> web.Response:
    record = await services.call_service.get(call_id)
    if (
        record is None
        or record.provider != "vonage"
        or record.state is not CallState.CREATED
        or (record.provider_call_id and uuid and record.provider_call_id != uuid)
    ):
        _outcome("answer", "outbound_gone")
        log.warning("answered outbound call is unknown or over", extra={"call_id": call_id})
        return _ncco(ncco.talk(ncco.GONE_MESSAGE))
    _outcome("answer", "outbound")
    return await _connect_answer(ctx, services, record, uuid=uuid)


async def _connect_answer(
    ctx: VonageContext, services: Services, record: CallRecord, *, uuid: str = ""
) -> web.Response:
    """The ``connect`` to this edge's socket, with a one-use token for this call."""
    try:
        await services.coordinator.register_pending(
            pending_key(record.call_id),
            {"uuid": record.provider_call_id or uuid},
            ctx.vonage.ws_token_ttl_s,
        )
    except Exception as exc:
        raise services.call_service.health.failed("register_pending", exc) from exc
    headers = {
        TOKEN_HEADER: ctx.tokens.issue(record.call_id),
        CALL_ID_HEADER: record.call_id,
        UUID_HEADER: record.provider_call_id or uuid,
    }
    # the Vonage number: the dialled one inbound, the caller id outbound
    own_number = record.to if record.direction == "inbound" else record.from_
    event_url = f"{ctx.public_url.rstrip('/')}{EVENT_PATH}?{CALL_ID_PARAM}={record.call_id}"
    # the notify after the socket carries the call on if its worker is lost (vonage.resume)
    resume_url = ncco.resume_url(ctx.public_url, record.call_id)
    return _ncco(
        ncco.connect_then_resume(
            ncco.ws_url(ctx.public_url), headers, own_number, event_url, resume_url
        )
    )


async def event(request: web.Request) -> web.Response:
    """``POST /vonage/event``: a call's progress (ringing, answered, busy, completed …).

    Outbound calls name their ``call_id`` in the URL; inbound ones are found by
    the call's ``uuid`` (mapped when the answer webhook created the call). A
    final status ends a call still waiting for its audio (the provider's
    ``final_statuses``), and a call whose socket closed first (the caller hung up: a
    socket's end alone is no end of the call, see
    :func:`~telephony_edge.socket_resume.network_ended`); a call whose audio is here ends
    through its socket.
    """
    ctx = request.app[VONAGE]
    services = request.app[SERVICES]
    try:
        fields = await signed_fields(ctx, services, request, "event")
    except CoordinatorUnavailable:
        raise web.HTTPServiceUnavailable(
            text="coordination store unreachable\n", headers={"Retry-After": "5"}
        ) from None
    status = fields.get("status", "")
    uuid = fields.get("uuid", "")
    call_id = request.query.get(CALL_ID_PARAM)
    if not call_id and uuid and status:
        known = await services.coordinator.peek_pending(provider_call_key(uuid))
        call_id = str(known["call_id"]) if known and known.get("call_id") else None
    if not call_id or not status:
        _outcome("event", "ignored")  # another region's call, or not a call status
        return web.Response(status=204)
    _outcome("event", status if status in KNOWN_STATUSES else "other")
    provider_call_id = await _record_details(services, call_id, fields)
    if _is_websocket_leg(fields, provider_call_id):
        return web.Response(status=204)  # the socket's own leg: never the call's status
    if status in ("human", "machine"):
        return await _machine_detection(services, call_id, status, fields.get("sub_state", ""))
    await services.call_service.update_provider_status(call_id, status)
    await socket_resume.network_ended(services, call_id, status)  # its socket may be gone
    return web.Response(status=204)


async def _machine_detection(
    services: Services, call_id: str, status: str, sub_state: str
) -> web.Response:
    """Advanced machine detection's result, to the call's owner (an unknown sub_state: 400)."""
    mapped = AMD_SUB_STATES.get(sub_state)
    if mapped is None:
        log.warning("machine detection sub_state %r", sub_state, extra={"call_id": call_id})
        raise web.HTTPBadRequest(text="sub_state is not one of Vonage's values\n")
    message_end, beep = mapped
    log.info("Vonage machine detection: %s %s", status, sub_state, extra={"call_id": call_id})
    report = AmdReport(status, "vonage", -1, message_end and status == "machine", beep)
    await services.call_service.report_amd(call_id, report)
    return web.Response(status=204)


def _is_websocket_leg(fields: dict[str, str], provider_call_id: str) -> bool:
    """Whether an event is about the ``connect``'s WebSocket leg, not the call's own leg.

    That leg has its own ``uuid`` (on outbound calls its events come to the
    call's event URL too) and its ``to`` is the socket's URI.
    """
    uuid = fields.get("uuid", "")
    if provider_call_id and uuid and uuid != provider_call_id:
        return True
    return fields.get("to", "").startswith(("ws://", "wss://"))


async def _record_details(services: Services, call_id: str, fields: dict[str, str]) -> str:
    """Merge the event's network details and the socket leg's events into the stored call.

    They go to the record's ``provider_details`` (see :func:`merge_details`),
    with a compare-and-set so two events at once lose nothing. Returns the
    call's ``provider_call_id`` as stored ("" when the call is unknown).
    """
    coordinator = services.coordinator
    for _ in range(MAX_MERGE_ATTEMPTS):
        doc = await coordinator.get_call(call_id)
        if doc is None:
            return ""
        provider_call_id = str(doc.data.get("provider_call_id") or "")
        websocket = _is_websocket_leg(fields, provider_call_id)
        old = doc.data.get(DETAILS_KEY)
        details = merge_details(old if isinstance(old, dict) else {}, fields, websocket=websocket)
        if details == old:
            return provider_call_id
        try:
            await coordinator.update_call(call_id, {DETAILS_KEY: details}, if_version=doc.version)
        except Conflict:
            continue
        return provider_call_id
    log.warning("event details not recorded: the call kept changing", extra={"call_id": call_id})
    return provider_call_id


def merge_details(
    details: dict[str, Any], fields: dict[str, str], *, websocket: bool
) -> dict[str, Any]:
    """``details`` with one event's fields merged in (a new dict).

    The call's own leg: its network fields (``network``, ``rate``, ``price``,
    ``duration``, times, ``detail`` …) at the top level, the latest value
    winning. The WebSocket leg: ``websocket`` = its ``uuid``, latest
    ``status`` and its events in order (the last ``MAX_WS_EVENTS`` kept).
    """
    merged = dict(details)
    if websocket:
        leg = dict(merged.get("websocket") or {})
        events = list(leg.get("events") or [])
        event = {k: fields[k] for k in ("status", "timestamp") if k in fields}
        if event not in events:
            events.append(event)
        leg.update(
            {k: fields[k] for k in WEBSOCKET_FIELDS if fields.get(k)},
            events=events[-MAX_WS_EVENTS:],
        )
        merged["websocket"] = leg
    else:
        merged.update({k: fields[k] for k in NETWORK_FIELDS if fields.get(k)})
    return merged
