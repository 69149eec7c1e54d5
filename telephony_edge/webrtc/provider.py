"""WebRTC as a provider: ``POST /webrtc/offer`` (server to server, private key).

The offer is checked and answered before the call is recorded, so a refused
offer leaves nothing behind: 400 with the reason (not JSON, bad SDP, a wrong
``type``, no audio, no Opus), 413 past ``webrtc.max_offer_bytes``, 401 for a
wrong key (the API's own check), 503 past ``webrtc.max_peer_connections``,
with no free UDP port in ``webrtc.media_port_min``-``max``, or when the worker
takes no new calls. The answer (``{sdp, type, call_id}``)
comes once ICE gathering is complete. A new call is bridged to the agent core
only once ICE and DTLS are connected: an offer that never connects ends
``error`` after ``webrtc.connect_timeout_s`` having cost no agent session. A
resumed call reopens its agent session at once, while ICE and DTLS connect.

Browsers use the public key instead (:mod:`telephony_edge.webrtc.browser`):
allowed origins only (CORS preflight answered for them), agents marked
``allow_public_key`` only (403), no ``agent_config`` override (403), a rate
limit per source address (429). ``GET /widget`` serves the web call widget
(:mod:`telephony_edge.webrtc.widget`).

An offer with ``resume: {call_id, token}`` brings a live call whose worker was
lost back as the same call (:mod:`telephony_edge.webrtc.resume`); every answer
carries the ``resume_token`` for that.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

from aiohttp import web

from telephony_edge.api import ApiError, _json_errors, _json_object, _object, _string
from telephony_edge.calls.leg import LegInfo
from telephony_edge.calls.migration import Resumption
from telephony_edge.calls.refusals import CallRejected
from telephony_edge.calls.session_token import session_token, token_matches
from telephony_edge.provider import Provider
from telephony_edge.services import SERVICES
from telephony_edge.webrtc import resume
from telephony_edge.webrtc.browser import BROWSER, Browser, cors_headers, key_matches, origin_of
from telephony_edge.webrtc.leg import OfferRefused, WebRtcLeg
from telephony_edge.webrtc.ports import NoMediaPort
from telephony_edge.webrtc.settings import WebRtcSettings, webrtc_settings
from telephony_edge.webrtc.widget import mount_widget

log = logging.getLogger(__name__)

OFFER_PATH = "/webrtc/offer"


class Peers:
    """This worker's peer connections: the cap, and the call tasks to stop at shutdown."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self.tasks: set[asyncio.Task[None]] = set()

    def reserve(self) -> None:
        if self.count >= self.limit:
            raise ApiError(503, f"this worker is at its limit of {self.limit} peer connections")
        self.count += 1

    def release(self) -> None:
        self.count -= 1

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


WEBRTC_PEERS = web.AppKey("webrtc_peers", Peers)


class WebRtcProvider(Provider):
    """Calls that arrive as WebRTC offers, with an aiortc peer connection per call."""

    name = "webrtc"
    call_paths = (OFFER_PATH,)
    settings_model = WebRtcSettings
    uses_public_url = False  # peers reach the advertised ICE addresses
    resumable = True  # the caller re-offers with its resume token: telephony_edge.webrtc.resume

    def mount(self, app: web.Application) -> None:
        settings = webrtc_settings(self.services.settings)
        app[WEBRTC_PEERS] = Peers(settings.max_peer_connections)
        app.cleanup_ctx.append(self._peers)
        app[BROWSER] = Browser(self.services.settings, settings)
        app.router.add_post(OFFER_PATH, _with_cors(_json_errors(webrtc_offer)))
        app.router.add_route("OPTIONS", OFFER_PATH, preflight)
        mount_widget(app)

    @staticmethod
    async def _peers(app: web.Application) -> AsyncIterator[None]:
        yield
        await app[WEBRTC_PEERS].stop()

    @classmethod
    def banner(cls, public_url: str) -> list[str]:
        return [f"WebRTC offers: POST {public_url.rstrip('/')}{OFFER_PATH}"]


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _with_cors(handler: Handler) -> Handler:
    """Every answer to an allowed origin (errors too, so a page can show the reason) gets CORS."""

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        response = await handler(request)
        origin = origin_of(request)
        if origin is not None and request.app[BROWSER].allowed(origin):
            response.headers.update(cors_headers(origin))
        return response

    return wrapper


async def preflight(request: web.Request) -> web.Response:
    """``OPTIONS /webrtc/offer``: 204 with CORS headers for an allowed origin, else 403."""
    origin = origin_of(request)
    if origin is None or not request.app[BROWSER].allowed(origin):
        return web.json_response({"error": "this origin is not allowed"}, status=403)
    return web.Response(status=204, headers=cors_headers(origin))


def _authorize_offer(request: web.Request) -> bool:
    """True for the private key, False for the public key (browser checks done); 401 else."""
    api = request.app[SERVICES].settings.api
    if key_matches(request, api.private_key):
        return False
    if key_matches(request, api.public_key):
        request.app[BROWSER].check_origin(request)
        return True
    raise ApiError(
        401, "missing or invalid API key (Authorization: Bearer <private or public key>)"
    )


def _offer_sdp(body: dict[str, Any], max_bytes: int) -> str:
    offer = _object(body, "offer")
    if offer is None:
        raise ApiError(400, "offer is required: {sdp, type: 'offer'}")
    if offer.get("type") != "offer":
        raise ApiError(400, f"offer.type must be 'offer', not {offer.get('type')!r}")
    sdp = offer.get("sdp")
    if not isinstance(sdp, str) or not sdp.strip():
        raise ApiError(400, "offer.sdp is required and must be a string")
    if len(sdp.encode()) > max_bytes:
        raise ApiError(413, f"offer.sdp must be at most {max_bytes} bytes")
    lines = [line.strip() for line in sdp.strip().splitlines()]
    if lines[0] != "v=0":
        raise ApiError(400, "offer.sdp is not SDP (it must start with v=0)")
    media = [line.split()[0][2:] for line in lines if line.startswith("m=") and line[2:]]
    if "audio" not in media:
        raise ApiError(400, "the offer has no audio (m=audio)")
    # aiortc leaves a BUNDLE whose tags are no mids with no transport at all (a 500, then
    # its connect task fails): RFC 8843 has every tag name a media section of the offer
    mids = {line.removeprefix("a=mid:") for line in lines if line.startswith("a=mid:")}
    for line in lines:
        if line.startswith("a=group:BUNDLE") and not set(line.split()[1:]) <= mids:
            raise ApiError(400, "the offer's BUNDLE group names a mid it has no media for")
    return sdp


async def webrtc_offer(request: web.Request) -> web.Response:
    """``POST /webrtc/offer`` → ``{"sdp", "type": "answer", "call_id"}``."""
    public = _authorize_offer(request)
    body = await _json_object(request)
    services = request.app[SERVICES]
    settings = webrtc_settings(services.settings)
    resuming = resume.requested(services, body, request.remote)
    if public:  # before anything else; a re-offer with a good token counts per call
        request.app[BROWSER].check_rate(request, None if resuming is None else resuming.call_id)
    sdp = _offer_sdp(body, settings.max_offer_bytes)
    agent_id = _string(body, "agent_id")
    assert agent_id is not None
    if agent_id not in services.settings.agents:
        raise ApiError(404, f"unknown agent_id {agent_id!r}")
    if public and not services.settings.agents[agent_id].allow_public_key:
        raise ApiError(403, f"agent {agent_id!r} does not take calls with the public key")
    agent_config = _object(body, "agent_config")
    if public and agent_config:
        raise ApiError(403, "agent_config needs the private key")
    metadata = _object(body, "metadata")
    include = body.get("include_metadata_in_prompt", False)
    if not isinstance(include, bool):
        raise ApiError(400, "include_metadata_in_prompt must be true or false")
    if public and include:
        raise ApiError(403, "include_metadata_in_prompt needs the private key")
    session_id = _string(body, "session_id", required=False)
    private_key = services.settings.api.private_key
    if public and session_id is not None:
        token = _string(body, "session_token", required=False)
        if not token_matches(private_key, agent_id, session_id, token):
            raise ApiError(403, "continuing a session with the public key needs its session_token")
    if not services.calls.accepting:
        raise ApiError(503, "this worker is draining and takes no new calls")
    if resuming is not None:
        await resume.check(services, resuming, agent_id, request.remote)

    peers = request.app[WEBRTC_PEERS]
    peers.reserve()
    source = "webrtc-browser" if public else "webrtc"
    info = LegInfo(provider="webrtc", direction="inbound", from_=source, to=agent_id)
    leg = WebRtcLeg(info, settings)
    leg.peer = request.remote
    try:
        try:
            answer = await leg.answer(sdp)
        except OfferRefused as exc:
            raise ApiError(400, str(exc)) from None
        except NoMediaPort as exc:
            raise ApiError(503, str(exc)) from None
        resumed: Resumption | None = None
        if resuming is not None:
            record, resumed = await resume.take_over(services, resuming, request.remote)
        else:
            try:
                record = await services.call_service.create(
                    agent_id=agent_id,
                    provider="webrtc",
                    direction="inbound",
                    from_=info.from_,
                    to=info.to,
                    agent_config=agent_config,
                    metadata=metadata,
                    include_metadata_in_prompt=include,
                    session_id=session_id,
                    region=services.settings.server.region or "",
                )
            except CallRejected as exc:
                raise ApiError(exc.http_status, str(exc)) from None
    except BaseException:
        await leg.close()
        peers.release()
        raise

    leg.call_id = record.call_id
    token = resume.token_for(services, record)
    leg.resumable = token is not None

    async def run() -> None:
        try:
            # a new call costs an agent session only once it connects; a resumed one has
            # its session already, and reopening it while ICE and DTLS connect takes the
            # agent's link off the caller's gap (its audio waits in the playout meanwhile)
            if resumed is None:
                failure = await leg.wait_connected()
                if failure is not None:  # never connected: no agent session, no agent slot
                    await services.call_service.fail_setup(record.call_id, failure)
                    return
            await services.call_service.run(record, leg, resumed)
        except asyncio.CancelledError:
            if resumed is None and not leg.connected:  # shutdown before it connected
                with contextlib.suppress(Exception):
                    await asyncio.shield(
                        services.call_service.fail_setup(record.call_id, "the edge shut down")
                    )
            raise
        except Exception:
            log.exception("WebRTC call failed", extra={"call_id": record.call_id})
        finally:
            await leg.close()
            peers.release()

    peers.spawn(run())
    log.info(
        "WebRTC offer answered%s",
        " (the call resumed)" if resumed is not None else "",
        extra={"call_id": record.call_id},
    )
    reply = {"sdp": answer.sdp, "type": answer.type, "call_id": record.call_id}
    if token is not None:  # what brings this call back if its worker is lost
        reply["resume_token"] = token
    continued = session_token(private_key, agent_id, record.session_id)
    if continued is not None:  # what lets this caller, and only it, continue the session later
        reply.update(session_id=record.session_id, session_token=continued)
    return web.json_response(reply)
