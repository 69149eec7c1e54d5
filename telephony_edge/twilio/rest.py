"""Twilio's REST API, through the twilio library's asyncio client.

Four operations matter to the edge: create an outbound call (its TwiML URL
points back at the edge's voice webhook), hang a live call up (update its
status to ``completed``), transfer it (replace its TwiML with ``<Dial>``) and
press the agent's keys (replace it with ``<Play digits>`` and the stream again,
:mod:`telephony_edge.twilio.handover`).
The library's :class:`AsyncTwilioHttpClient` runs on aiohttp, so none of them
blocks the event loop. ``api_base_url`` replaces ``https://api.twilio.com``,
which is how tests and the demo (the simulator's stand-in,
:mod:`telephony_edge.twilio.rest_standin`) point the edge at a local stand-in
of the API.

The library logs every request as a dozen INFO lines (URL, headers); they go
to a logger of ours kept at WARNING, so one hang-up is not a dump in the log.
The outcome of each request is the ``twilio_rest_requests`` metric, and a
failure is one line where the caller handles it.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import ClientSession, ClientTimeout
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from telephony_edge import metrics
from telephony_edge.calls.refusals import ProviderError
from telephony_edge.errors import os_reason
from telephony_edge.twilio import twiml

log = logging.getLogger(__name__)
_LIBRARY_LOG = logging.getLogger(f"{__name__}.library")
_LIBRARY_LOG.setLevel(logging.WARNING)  # its per-request INFO dump, kept out of the log

STATUS_EVENTS = ("initiated", "ringing", "answered", "completed")
# Twilio's answers when a call is already over: not found, or "not in-progress".
_ALREADY_ENDED_CODES = frozenset({20404, 21220})


class TwilioApiError(ProviderError):
    """Twilio refused a request (or could not be reached); carries Twilio's code."""


@dataclass(frozen=True, slots=True)
class CreatedCall:
    sid: str
    status: str


class _TimedHttpClient(AsyncTwilioHttpClient):  # type: ignore[misc]
    """The library's aiohttp client, with its ``timeout`` actually applied.

    The generated resources pass ``timeout=None`` per request, which aiohttp
    takes as "no timeout"; a hung Twilio must not hang a call's teardown.
    """

    def __init__(self, timeout_s: float) -> None:
        super().__init__(pool_connections=False, timeout=timeout_s, logger=_LIBRARY_LOG)
        self.session = ClientSession(timeout=ClientTimeout(total=timeout_s))

    async def request(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        auth = kwargs.pop("auth", None)
        if auth is not None:  # as a header: aiohttp deprecates its BasicAuth helper
            credentials = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            kwargs["headers"] = {
                **(kwargs.get("headers") or {}),
                "Authorization": f"Basic {credentials}",
            }
        return await super().request(*args, **kwargs)


class TwilioRest:
    """The account's REST client. Create it inside the running loop; ``close()`` it."""

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        api_base_url: str | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.account_sid = account_sid
        self._http = _TimedHttpClient(timeout_s)
        self._client = Client(account_sid, auth_token, http_client=self._http)
        if api_base_url:
            self._client.api.base_url = api_base_url.rstrip("/")
        self.base_url: str = self._client.api.base_url

    async def close(self) -> None:
        await self._http.close()

    async def create_call(
        self,
        *,
        to: str,
        from_: str,
        url: str,
        status_callback: str,
        time_limit: int | None = None,
        amd_callback: str | None = None,
    ) -> CreatedCall:
        """Place an outbound call whose TwiML comes from ``url`` (the edge's voice webhook).

        ``amd_callback``: ask for Twilio's answering-machine detection, asynchronous
        (the stream connects at once) and to the end of a machine's greeting, its
        result POSTed there.
        """
        kwargs: dict[str, Any] = {}
        if time_limit is not None:
            kwargs["time_limit"] = time_limit
        if amd_callback is not None:
            kwargs.update(
                machine_detection="DetectMessageEnd",
                async_amd="true",
                async_amd_status_callback=amd_callback,
                async_amd_status_callback_method="POST",
            )
        call = await self._request(
            "create",
            self._client.api.v2010.accounts(self.account_sid).calls.create_async(
                to=to,
                from_=from_,
                url=url,
                method="POST",
                status_callback=status_callback,
                status_callback_method="POST",
                status_callback_event=list(STATUS_EVENTS),
                **kwargs,
            ),
        )
        return CreatedCall(sid=str(call.sid), status=str(call.status))

    async def hangup(self, call_sid: str) -> bool:
        """End a live call. Returns False if Twilio says it had already ended."""
        try:
            await self._update("hangup", call_sid, status="completed")
        except TwilioApiError as exc:
            if exc.code in _ALREADY_ENDED_CODES:
                return False
            raise
        return True

    async def transfer(self, call_sid: str, destination: str) -> None:
        """Replace the live call's TwiML with ``<Dial>`` to a number or SIP URI."""
        await self._update("transfer", call_sid, twiml=twiml.dial(destination))

    async def play_digits(self, call_sid: str, document: str) -> None:
        """Replace the live call's TwiML with ``document`` (``<Play digits>``, then the
        stream again): Twilio ends the call's stream, plays the keys, connects the new one."""
        await self._update("dtmf", call_sid, twiml=document)

    async def _update(self, op: str, call_sid: str, **fields: str) -> None:
        context = self._client.api.v2010.accounts(self.account_sid).calls(call_sid)
        await self._request(op, context.update_async(**fields))

    async def _request(self, op: str, awaitable: Any) -> Any:
        try:
            result = await awaitable
        except TwilioRestException as exc:
            metrics.TWILIO_REST_REQUESTS.labels(op=op, outcome=f"http_{exc.status}").inc()
            raise TwilioApiError(
                f"Twilio refused {op}: {exc.msg} (code {exc.code})",
                status=int(exc.status),
                code=exc.code,
            ) from None
        except (OSError, TimeoutError, aiohttp.ClientError) as exc:
            metrics.TWILIO_REST_REQUESTS.labels(op=op, outcome="unreachable").inc()
            raise TwilioApiError(
                f"Twilio unreachable for {op} at {self.base_url}: {_reason(exc)}"
            ) from exc
        metrics.TWILIO_REST_REQUESTS.labels(op=op, outcome="ok").inc()
        return result


def _reason(exc: BaseException) -> str:
    """Why a request did not get through, in a few words (not a connection key's repr)."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return os_reason(exc.os_error)
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
