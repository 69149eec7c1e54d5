"""Vonage calls that outlive their worker: the ``notify`` after the socket, and the socket
that comes back.

Theory of operation
-------------------
Every call the edge streams is answered ``connect`` (websocket) then
``notify`` to ``/vonage/resume`` (:func:`~telephony_edge.vonage.ncco.connect_then_resume`).
Vonage runs an NCCO's actions in order, each once the one before finished:
the ``connect`` finishes when its socket closes, and the call goes on to the
``notify`` unless the call itself ended (the caller hung up; the edge ended
it, or replaced its NCCO, through the Voice API; without the API, the edge
closes the socket only once the call's end is written). So the ``notify``, which
the load balancer sends to any live worker, is Vonage's word that the call's
socket left its worker: the worker died (its connections dropped), or closed
the socket to move the call on a drain. It comes within milliseconds of that.

:func:`resume` answers the ``notify``. It is signed as every Vonage webhook
(a JWT used once: a replay is 401). A call that is over, ending on the worker
that answers, or not live gets no NCCO (204): the current one has nothing
left, and Vonage ends the call. Else the break is recorded
(:func:`~telephony_edge.calls.migration.announce_break`) and the answer is a
``connect`` to a new socket, with a token bound to the call and the generation
the takeover must find, then the ``notify`` again (``hop`` + 1, at most
:data:`MAX_HOPS` without a socket that held).

The socket that comes back (a ``resume`` header) is admitted by :func:`admit`
on whichever worker it reaches: the token, the same Vonage call, then the
takeover (one coordinator step; exactly one worker wins per generation). A
draining worker refuses it with 1013 and a call that is over with 1000: the
``connect`` ends, Vonage goes on to the ``notify`` again, and another worker
answers.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import web

from telephony_edge import metrics, socket_resume
from telephony_edge.calls import migration
from telephony_edge.calls.record import CallRecord
from telephony_edge.coord.health import CoordinatorUnavailable
from telephony_edge.services import SERVICES, Services
from telephony_edge.socket_resume import resume_subject
from telephony_edge.vonage import ncco
from telephony_edge.vonage.context import (
    CALL_ID_HEADER,
    CALL_ID_PARAM,
    TOKEN_HEADER,
    UUID_HEADER,
    VONAGE,
    VonageContext,
)
from telephony_edge.vonage.media import Connected, ConnectRejected
from telephony_edge.vonage.webhook import EVENT_PATH, signed_fields

log = logging.getLogger(__name__)

RESUME_HEADER = "resume"  # the socket's header: the generation it takes the call over at
#: notifies in a row without a socket that held: past them the call is let go
MAX_HOPS = 10


def _outcome(outcome: str) -> None:
    metrics.VONAGE_WEBHOOKS.labels(kind="resume", outcome=outcome).inc()


def _no_ncco() -> web.Response:
    """No NCCO: the current one goes on, and nothing follows the ``notify``: the call ends."""
    return web.Response(status=204)


async def resume(request: web.Request) -> web.Response:
    """``GET /vonage/resume?call_id=…&hop=…&g=…&uuid=…``: the call's socket ended; what next."""
    ctx = request.app[VONAGE]
    services = request.app[SERVICES]
    call_id = request.query.get(CALL_ID_PARAM, "")
    raw_hop, raw_generation = request.query.get("hop", ""), request.query.get("g", "")
    away: tuple[type[BaseException], ...] = (
        CoordinatorUnavailable,
        *services.coordinator.unavailable,
    )
    try:
        fields = await signed_fields(ctx, services, request, "resume")
        if not call_id or not all(n.isdigit() and len(n) < 10 for n in (raw_hop, raw_generation)):
            _outcome("bad_request")
            raise web.HTTPBadRequest(text="call_id, hop and g are required\n")
        record = await services.call_service.get(call_id)
        brk = await services.call_service.announce_break(call_id)
    except away as exc:
        _outcome("coordinator_down")
        services.call_service.health.failed("resume", exc)
        log.warning("a socket ended with the coordinator away: %r", exc, extra={"call_id": call_id})
        return _ncco(ncco.talk(ncco.OUTAGE_MESSAGE))
    if (
        record is None
        or record.provider != "vonage"
        or record.provider_call_id != fields.get("uuid")
    ):
        _outcome("unknown")
        log.warning("notify for a call the edge does not know", extra={"call_id": call_id})
        return _no_ncco()
    if brk is None:  # over: a normal end is never resumed
        _outcome("over")
        log.info("the call is over: its NCCO ends", extra={"call_id": call_id})
        return _no_ncco()
    hop = 0 if brk.generation > int(raw_generation) else int(raw_hop)
    if hop >= MAX_HOPS:
        _outcome("gave_up")
        log.warning("no worker took the call after %d notifies", hop, extra={"call_id": call_id})
        return _ncco(ncco.talk(ncco.OUTAGE_MESSAGE))
    _outcome("resumed")
    log.info(
        "the call's socket left %s (%s): connecting it again",
        brk.from_worker,
        brk.cause,
        extra={"call_id": call_id},
    )
    return _ncco(_connect_again(ctx, record, brk, hop))


def _connect_again(
    ctx: VonageContext, record: CallRecord, brk: migration.Break, hop: int
) -> list[dict[str, Any]]:
    call_id = record.call_id
    headers = {
        TOKEN_HEADER: ctx.tokens.issue(resume_subject(call_id, brk.generation)),
        CALL_ID_HEADER: call_id,
        UUID_HEADER: record.provider_call_id,
        RESUME_HEADER: str(brk.generation),
    }
    own_number = record.to if record.direction == "inbound" else record.from_
    base = ctx.public_url.rstrip("/")
    return ncco.connect_then_resume(
        ncco.ws_url(ctx.public_url),
        headers,
        own_number,
        f"{base}{EVENT_PATH}?{CALL_ID_PARAM}={call_id}",
        ncco.resume_url(ctx.public_url, call_id, hop + 1, brk.generation),
    )


def _ncco(actions: list[dict[str, Any]]) -> web.Response:
    return web.Response(body=orjson.dumps(actions), content_type="application/json")


async def admit(
    ctx: VonageContext, services: Services, connected: Connected
) -> tuple[CallRecord, migration.Resumption]:
    """Take over the call a resumed socket is for; ConnectRejected if it may not run here."""
    headers = connected.headers
    return await socket_resume.take_over(
        services,
        ctx.tokens,
        call_id=headers.get(CALL_ID_HEADER, ""),
        generation=headers.get(RESUME_HEADER, ""),
        token=headers.get(TOKEN_HEADER, ""),
        network_call_id=headers.get(UUID_HEADER),
        rejected=ConnectRejected,
    )
