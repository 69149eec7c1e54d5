"""Twilio as a provider: TwiML voice webhook, status callbacks, Media Streams, REST control.

:meth:`TwilioProvider.mount` adds the voice, call status and stream status webhooks and the
Media Streams WebSocket (whose handler builds the
:class:`~telephony_edge.twilio.media.TwilioMediaLeg`), the resume webhook that
carries a live call on when its worker is lost (:mod:`.resume`), and a start-up hook
that creates the REST client inside the running loop. Outbound calls,
hang-up and transfer of calls without a live leg here go through that
client.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import ClassVar

from aiohttp import web

from telephony_edge.calls.record import CallRecord, CallStatus
from telephony_edge.provider import Provider
from telephony_edge.twilio import resume, stream, twiml, webhook
from telephony_edge.twilio.context import CALL_ID_PARAM, TWILIO, TwilioContext
from telephony_edge.twilio.rest import TwilioApiError, TwilioRest
from telephony_edge.twilio.settings import TwilioSettings

log = logging.getLogger(__name__)

VOICE_PATH = "/twilio/voice"
STATUS_PATH = "/twilio/status"
STREAM_PATH = "/twilio/stream"
STREAM_STATUS_PATH = webhook.STREAM_STATUS_PATH
AMD_PATH = webhook.AMD_PATH
RESUME_PATH = twiml.RESUME_PATH


class TwilioProvider(Provider):
    """Twilio Programmable Voice with ``<Connect><Stream>``."""

    name = "twilio"
    settings_model = TwilioSettings
    final_statuses: ClassVar[dict[str, tuple[CallStatus, str | None]]] = {
        "completed": (CallStatus.USER_ENDED, None),
        "busy": (CallStatus.ERROR, "the called party was busy"),
        "no-answer": (CallStatus.ERROR, "the called party did not answer"),
        "failed": (CallStatus.ERROR, "the network could not place the call"),
        "canceled": (CallStatus.API_ENDED, None),
    }

    pending_websocket_paths = (STREAM_PATH,)
    call_paths = (VOICE_PATH,)
    network_amd = True
    resumable = True  # the <Redirect> after the stream: telephony_edge.twilio.resume
    _ctx: TwilioContext | None = None

    def mount(self, app: web.Application) -> None:
        self._ctx = app[TWILIO] = TwilioContext.from_settings(self.services.settings)
        app.cleanup_ctx.append(self._rest_client)
        app.router.add_post(VOICE_PATH, webhook.voice)
        app.router.add_post(STATUS_PATH, webhook.status)
        app.router.add_post(STREAM_STATUS_PATH, webhook.stream_status)
        app.router.add_post(AMD_PATH, webhook.amd)
        app.router.add_get(RESUME_PATH, resume.resume)
        app.router.add_get(STREAM_PATH, stream.stream)

    async def _rest_client(self, app: web.Application) -> AsyncIterator[None]:
        ctx = self.ctx
        tw = ctx.twilio
        assert tw.account_sid and tw.auth_token
        ctx.rest = TwilioRest(tw.account_sid, tw.auth_token, api_base_url=tw.api_base_url)
        yield
        rest, ctx.rest = ctx.rest, None
        await rest.close()

    @property
    def ctx(self) -> TwilioContext:
        assert self._ctx is not None, "mounted"
        return self._ctx

    @property
    def rest(self) -> TwilioRest:
        if self.ctx.rest is None:
            raise TwilioApiError("the Twilio REST client is not running")
        return self.ctx.rest

    async def dial(self, record: CallRecord) -> str:
        """Create the call; return Twilio's call sid. Raises TwilioApiError.

        The call's TwiML URL is the edge's own voice webhook with the call id
        in the query (Twilio signs the query too), and its status callback
        reports busy / no-answer / failed back to the edge.
        """
        base = self.ctx.public_url.rstrip("/")
        query = f"?{CALL_ID_PARAM}={record.call_id}"
        voicemail = self.services.call_service.voicemail(record)
        created = await self.rest.create_call(
            to=record.to,
            from_=record.from_,
            url=f"{base}{VOICE_PATH}{query}",
            status_callback=f"{base}{STATUS_PATH}{query}",
            amd_callback=f"{base}{AMD_PATH}{query}" if voicemail else None,
        )
        return created.sid

    async def hangup(self, record: CallRecord) -> None:
        if not record.provider_call_id:
            log.info(
                "no Twilio call sid yet; nothing to hang up", extra={"call_id": record.call_id}
            )
            return
        await self.rest.hangup(record.provider_call_id)

    async def transfer(self, record: CallRecord, destination: str) -> None:
        if not record.provider_call_id:
            raise TwilioApiError("the call has no Twilio call sid yet; cannot transfer")
        await self.rest.transfer(record.provider_call_id, destination)

    @classmethod
    def banner(cls, public_url: str) -> list[str]:
        return [
            "Twilio voice webhook (console: number > A call comes in > Webhook, HTTP POST): "
            f"{public_url}{VOICE_PATH}"
        ]
