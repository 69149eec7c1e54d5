"""Vonage's Voice API: outbound calls, hang-up, transfer and DTMF, over aiohttp.

The SDK gives the parts that must match Vonage exactly: the application JWT
(:class:`vonage_jwt.JwtClient`, RS256 with the application's private key,
``application_id`` and a short expiry) and the request bodies (the
``vonage_voice`` request and NCCO models). Its own HTTP client is
synchronous (``requests``), which would block the event loop for a whole
round trip, so the requests themselves go through one aiohttp session.
``api_base_url`` replaces ``https://api.nexmo.com``: tests point it at a
local stand-in that checks the JWT and the bodies as Vonage does.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import aiohttp
from pydantic import TypeAdapter, ValidationError
from vonage_jwt import JwtClient
from vonage_utils.types import Dtmf
from vonage_voice.models.common import AdvancedMachineDetection, Phone
from vonage_voice.models.requests import CreateCallRequest, ToPhone

from telephony_edge.calls.dtmf import PAUSE, DtmfRequest
from telephony_edge.calls.leg import NotSupported
from telephony_edge.calls.refusals import ProviderError
from telephony_edge.vonage import ncco

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.nexmo.com"
TIMEOUT_S = 10.0
JWT_TTL_S = 300  # each request gets a fresh token; Vonage's default is 15 minutes
_DTMF = TypeAdapter(Dtmf)  # the SDK's rule for the keys the API plays: 0-9 * # and p


class VonageApiError(ProviderError):
    """The Voice API refused a request (or could not be reached); carries Vonage's message."""


class VoiceApi:
    """The three Voice API operations the edge needs."""

    def __init__(
        self, application_id: str, private_key: bytes, *, base_url: str | None = None
    ) -> None:
        self._jwt = JwtClient(application_id, private_key.decode())
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    def _token(self) -> str:
        token: bytes = self._jwt.generate_application_jwt({"exp": int(time.time()) + JWT_TTL_S})
        return token.decode()

    async def _request(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S))
        headers = {"Authorization": f"Bearer {self._token()}"}
        try:
            async with self._session.request(
                method, self.base_url + path, json=body, headers=headers
            ) as resp:
                text = await resp.text()
                if resp.status >= 400:
                    raise VonageApiError(_message(resp.status, text), status=resp.status)
                if not text.strip():
                    return {}
                try:
                    data = await resp.json(content_type=None)
                except ValueError:
                    return {}
                return data if isinstance(data, dict) else {}
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise VonageApiError(f"the Vonage Voice API is unreachable: {exc!r}") from exc

    async def create_call(
        self,
        *,
        to: str,
        from_: str,
        answer_url: str,
        event_url: str,
        detect_machine: bool = False,
    ) -> str:
        """Place a call whose NCCO comes from ``answer_url``; return its ``uuid``.

        ``detect_machine``: ask for Vonage's advanced machine detection with the
        beep (the call goes on; the event webhook says ``human`` / ``machine``,
        then ``sub_state`` ``beep_start`` or ``beep_timeout``).
        """
        amd = AdvancedMachineDetection(behavior="continue", mode="detect_beep")
        request = CreateCallRequest(
            to=[ToPhone(number=to.removeprefix("+"))],
            from_=Phone(number=from_.removeprefix("+")),
            answer_url=[answer_url],
            answer_method="POST",
            event_url=[event_url],
            event_method="POST",
            advanced_machine_detection=amd if detect_machine else None,
        )
        body = request.model_dump(by_alias=True, exclude_none=True, mode="json")
        data = await self._request("POST", "/v1/calls", body)
        uuid = data.get("uuid")
        if not isinstance(uuid, str) or not uuid:
            raise VonageApiError("the Voice API created a call without a uuid")
        return uuid

    async def hangup(self, uuid: str) -> None:
        """End the call ``uuid``; one that is already over is not an error."""
        try:
            await self._request("PUT", f"/v1/calls/{uuid}", {"action": "hangup"})
        except VonageApiError as exc:
            if exc.status in (404, 410):
                log.info("Vonage call %s already ended", uuid)
                return
            raise

    async def transfer(self, uuid: str, destination: str, from_number: str) -> None:
        """Replace the call's NCCO with a ``connect`` to a number or SIP URI."""
        body = {
            "action": "transfer",
            "destination": {
                "type": "ncco",
                "ncco": ncco.connect_destination(destination, from_number),
            },
        }
        await self._request("PUT", f"/v1/calls/{uuid}", body)

    async def send_dtmf(self, uuid: str, request: DtmfRequest) -> None:
        """Play the agent's keys into the call ``uuid`` (``PUT /v1/calls/{uuid}/dtmf``).

        Vonage times the tones itself (``duration_ms`` has no say); a ``w`` becomes
        its ``p``, the same half second. Keys it does not play (A-D) are NotSupported.
        """
        digits = dtmf_digits(request)
        await self._request("PUT", f"/v1/calls/{uuid}/dtmf", {"digits": digits})

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def dtmf_digits(request: DtmfRequest) -> str:
    """The request as the Voice API's ``digits``; NotSupported for keys it does not play."""
    digits = request.digits.replace(PAUSE, "p")
    try:
        _DTMF.validate_python(digits)
    except ValidationError:
        raise NotSupported("Vonage plays the keys 0-9, * and # only (not A-D)") from None
    return digits


def _message(status: int, text: str) -> str:
    """Vonage's error message (``title``/``detail`` JSON), else the start of the body."""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        parts = [str(data[k]) for k in ("title", "detail", "error_title") if data.get(k)]
        if parts:
            return f"Vonage {status}: {' - '.join(parts)}"[:300]
    return f"Vonage {status}: {text[:200].strip()}"
