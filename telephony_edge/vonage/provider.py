"""Vonage as a provider: NCCO answer webhook, event webhook, audio WebSocket, Voice API control.

:meth:`VonageProvider.mount` adds the answer (GET and POST) and event
webhooks, the audio WebSocket (whose handler builds the
:class:`~telephony_edge.vonage.media.VonageMediaLeg`) and the ``notify`` that
carries a live call on when its worker is lost (:mod:`.resume`), and, when the
application's id and private key are configured, a start-up hook that
creates the Voice API client for outbound calls, hang-up and transfer.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import ClassVar

from aiohttp import web

from telephony_edge.calls.record import CallRecord, CallStatus
from telephony_edge.provider import Provider
from telephony_edge.vonage import resume, webhook, ws
from telephony_edge.vonage.api import VoiceApi, VonageApiError
from telephony_edge.vonage.context import CALL_ID_PARAM, VONAGE, VonageContext
from telephony_edge.vonage.ncco import RESUME_PATH, WS_PATH
from telephony_edge.vonage.settings import VonageSettings

log = logging.getLogger(__name__)

ANSWER_PATH = "/vonage/answer"
EVENT_PATH = webhook.EVENT_PATH


class VonageProvider(Provider):
    """Vonage Voice API with an NCCO ``connect`` to a ``websocket`` endpoint."""

    name = "vonage"
    settings_model = VonageSettings
    final_statuses: ClassVar[dict[str, tuple[CallStatus, str | None]]] = {
        "completed": (CallStatus.USER_ENDED, None),
        "busy": (CallStatus.ERROR, "the called party was busy"),
        "timeout": (CallStatus.ERROR, "the called party did not answer"),
        "unanswered": (CallStatus.ERROR, "the called party did not answer"),
        "rejected": (CallStatus.ERROR, "the call was rejected"),
        "failed": (CallStatus.ERROR, "the network could not place the call"),
        "cancelled": (CallStatus.API_ENDED, None),
    }

    pending_websocket_paths = (WS_PATH,)
    call_paths = (ANSWER_PATH,)
    network_amd = True
    resumable = True  # the notify after the socket: telephony_edge.vonage.resume
    _ctx: VonageContext | None = None

    def mount(self, app: web.Application) -> None:
        self._ctx = app[VONAGE] = VonageContext.from_settings(self.services.settings)
        if self._ctx.vonage.api_enabled:
            app.cleanup_ctx.append(self._api_client)
        app.router.add_get(ANSWER_PATH, webhook.answer)
        app.router.add_post(ANSWER_PATH, webhook.answer)
        app.router.add_post(EVENT_PATH, webhook.event)
        app.router.add_get(RESUME_PATH, resume.resume)
        app.router.add_get(WS_PATH, ws.websocket)

    async def _api_client(self, app: web.Application) -> AsyncIterator[None]:
        vn = self.ctx.vonage
        assert vn.application_id and vn.private_key_path
        key = vn.private_key_path.read_bytes()
        self.ctx.api = VoiceApi(vn.application_id, key, base_url=vn.api_base_url)
        yield
        api, self.ctx.api = self.ctx.api, None
        await api.close()

    @property
    def ctx(self) -> VonageContext:
        assert self._ctx is not None, "mounted"
        return self._ctx

    @property
    def api(self) -> VoiceApi:
        if self.ctx.api is None:
            raise VonageApiError(
                "the Vonage Voice API is not configured (vonage.application_id, private_key_path)"
            )
        return self.ctx.api

    async def dial(self, record: CallRecord) -> str:
        """Create the call; return Vonage's ``uuid``. Raises VonageApiError.

        Its answer and event URLs are the edge's own webhooks with the call id
        in the query, so the answer finds this call and busy / unanswered /
        failed end it.
        """
        base = self.ctx.public_url.rstrip("/")
        query = f"?{CALL_ID_PARAM}={record.call_id}"
        return await self.api.create_call(
            to=record.to,
            from_=record.from_,
            answer_url=f"{base}{ANSWER_PATH}{query}",
            event_url=f"{base}{EVENT_PATH}{query}",
            detect_machine=self.services.call_service.voicemail(record) is not None,
        )

    async def hangup(self, record: CallRecord) -> None:
        if not record.provider_call_id:
            log.info("no Vonage uuid yet; nothing to hang up", extra={"call_id": record.call_id})
            return
        await self.api.hangup(record.provider_call_id)

    async def transfer(self, record: CallRecord, destination: str) -> None:
        if not record.provider_call_id:
            raise VonageApiError("the call has no Vonage uuid yet; cannot transfer")
        own = record.to if record.direction == "inbound" else record.from_
        await self.api.transfer(record.provider_call_id, destination, own)

    @classmethod
    def banner(cls, public_url: str) -> list[str]:
        base = public_url.rstrip("/")
        return [
            "Vonage application (dashboard: Voice > Answer URL / Event URL, signed webhooks on): "
            f"{base}{ANSWER_PATH} / {base}{EVENT_PATH}"
        ]
