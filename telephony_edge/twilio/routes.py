"""Mounting Twilio on the worker's application.

``add_twilio_routes(app)`` adds the voice and status webhooks and the
Media Streams WebSocket, and a start-up hook that creates the REST client
inside the running loop, registers it with the call service (hang-up and
transfer of calls without a live leg here) and with the public API
(outbound calls from Twilio numbers).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from telephony_edge.api import register_dialer
from telephony_edge.services import SERVICES
from telephony_edge.twilio import stream, webhook
from telephony_edge.twilio.context import TWILIO, TwilioContext
from telephony_edge.twilio.rest import TwilioCallController, TwilioDialer, TwilioRest

VOICE_PATH = "/twilio/voice"
STATUS_PATH = "/twilio/status"
STREAM_PATH = "/twilio/stream"


async def _rest_client(app: web.Application) -> AsyncIterator[None]:
    ctx = app[TWILIO]
    tw = ctx.settings.twilio
    assert tw.account_sid and tw.auth_token
    rest = TwilioRest(tw.account_sid, tw.auth_token, api_base_url=tw.api_base_url)
    ctx.rest = rest
    app[SERVICES].call_service.register_controller("twilio", TwilioCallController(rest))
    register_dialer(app, "twilio", TwilioDialer(rest, ctx.public_url))
    yield
    ctx.rest = None
    await rest.close()


def add_twilio_routes(app: web.Application) -> None:
    """Mount Twilio's webhooks and stream on ``app`` (needs ``twilio.enabled``)."""
    settings = app[SERVICES].settings
    app[TWILIO] = TwilioContext.from_settings(settings)
    app.cleanup_ctx.append(_rest_client)
    app.router.add_post(VOICE_PATH, webhook.voice)
    app.router.add_post(STATUS_PATH, webhook.status)
    app.router.add_get(STREAM_PATH, stream.stream)
