"""A stand-in of Twilio's REST API for the simulator's own calls, so a demo never reaches Twilio.

``telephony-edge simulate twilio`` serves it (``--rest-port``, 127.0.0.1)
while its call runs, and ``deploy/demo.yaml`` points the edge's
``twilio.api_base_url`` at it. It answers what the edge asks of a live
call, checked as Twilio checks it: HTTP Basic auth with the account's SID
and auth token, the account in the path, the call's SID, a form-encoded
body whose ``Status`` is ``completed`` / ``canceled`` or whose ``Url`` /
``Twiml`` replaces the call's instructions; errors are Twilio's JSON shape
(``code``, ``message``, ``more_info``, ``status``); a ``Twiml`` over 4000
characters is refused (32018), as Twilio refuses it. A hang-up or a new
TwiML ends the simulated call's stream, as Twilio ends it; a new TwiML with a
``<Connect><Stream>`` (after ``<Play digits>``: the agent's keys) then opens
a new one.

It places no calls: ``POST .../Calls.json`` is refused, since a simulator
can only be called, not call out.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit
from xml.etree import ElementTree

from aiohttp import web

log = logging.getLogger(__name__)

#: where the simulator serves it unless told otherwise: ``deploy/demo.yaml`` points here
DEFAULT_PORT = 8089
#: the AccountSid of a simulated call (and of the stand-in) unless told otherwise
DEFAULT_ACCOUNT_SID = "AC" + "0" * 32
API_VERSION = "2010-04-01"
CALL_SID = re.compile(r"^CA[0-9a-f]{32}$")
_ENDED = frozenset({"completed", "canceled", "failed", "busy", "no-answer"})
MAX_TWIML_CHARS = 4000  # Twilio's error 32018 beyond


@dataclass(frozen=True, slots=True)
class CallUpdate:
    """What the edge asked of a call: hang it up, or replace its TwiML (a transfer)."""

    status: str | None = None  # completed | canceled
    url: str | None = None
    twiml: str | None = None

    def describe(self) -> str:
        """A few words for the simulator's summary."""
        if self.status is not None:
            return f"hung up through the REST API (Status={self.status})"
        if self.twiml is not None:
            target = _dial_target(self.twiml)
            digits = play_digits(self.twiml)
            if digits:
                return f"played the digits {' '.join(digits)} into the call"
            return f"transferred the call to {target}" if target else "replaced the call's TwiML"
        return f"redirected the call to {self.url}"


@dataclass(slots=True)
class StandInCall:
    """A live call the stand-in knows: the simulator placed it."""

    sid: str
    to: str
    from_: str
    on_update: Callable[[CallUpdate], None]
    status: str = "in-progress"


class TwilioRestStandIn:
    """Twilio's Calls resource for the calls a simulator placed; ``await start(port)``."""

    def __init__(self, account_sid: str, auth_token: str) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.calls: dict[str, StandInCall] = {}
        self.requests = 0
        self._runner: web.AppRunner | None = None

    def add_call(
        self, sid: str, *, to: str, from_: str, on_update: Callable[[CallUpdate], None]
    ) -> None:
        self.calls[sid] = StandInCall(sid, to, from_, on_update)

    async def start(self, port: int, host: str = "127.0.0.1") -> None:
        """Listen on ``host:port``; raises OSError when it cannot (the port is taken)."""
        app = web.Application()
        base = f"/{API_VERSION}/Accounts/{{account_sid}}/Calls"
        app.router.add_post(base + ".json", self._create)
        app.router.add_post(base + "/{call_sid}.json", self._update)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _authenticated(self, request: web.Request) -> bool:
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return (
            scheme == "Basic"
            and hmac.compare_digest(user.encode(), self.account_sid.encode())
            and hmac.compare_digest(password.encode(), self.auth_token.encode())
            and request.match_info["account_sid"] == self.account_sid
        )

    async def _form(self, request: web.Request) -> dict[str, str] | None:
        if request.content_type != "application/x-www-form-urlencoded":
            return None
        return {key: str(value) for key, value in (await request.post()).items()}

    async def _create(self, request: web.Request) -> web.Response:
        self.requests += 1
        if not self._authenticated(request):
            return twilio_error(401, 20003, "Authenticate")
        return twilio_error(
            403,
            20403,
            "the simulator's REST stand-in places no outbound calls (a real Twilio account does)",
        )

    async def _update(self, request: web.Request) -> web.Response:
        self.requests += 1
        if not self._authenticated(request):
            return twilio_error(401, 20003, "Authenticate")
        sid = request.match_info["call_sid"]
        call = self.calls.get(sid) if CALL_SID.match(sid) else None
        if call is None:
            return twilio_error(404, 20404, f"The requested resource {request.path} was not found")
        form = await self._form(request)
        if form is None:
            return twilio_error(400, 20001, "Invalid content type")
        update, problem = _read_update(form)
        if problem is not None:
            return twilio_error(400, *problem)
        if call.status in _ENDED:
            return twilio_error(400, 21220, "Call is not in-progress. Cannot redirect.")
        assert update is not None
        if update.status is not None:
            call.status = update.status
        log.info("Twilio REST stand-in: call %s %s", sid, update.describe())
        call.on_update(update)
        return web.json_response(_resource(call, self.account_sid))


def _read_update(form: dict[str, str]) -> tuple[CallUpdate | None, tuple[int, str] | None]:
    """The update a form asks for, or Twilio's (code, message) for what is wrong with it."""
    update = CallUpdate(form.get("Status"), form.get("Url"), form.get("Twiml"))
    if update.status is None and update.url is None and update.twiml is None:
        return None, (21205, "Either Status, Url or Twiml is required")
    if update.status is not None and update.status not in ("completed", "canceled"):
        return None, (21218, f"Invalid Status: {update.status}")
    if update.url is not None and not _absolute_url(update.url):
        return None, (21205, "Url is not a valid URL")
    if update.twiml is not None and len(update.twiml) > MAX_TWIML_CHARS:
        return None, (32018, "Twiml size exceeded maximum allowed value of 4000 characters")
    if update.twiml is not None and _twiml_root(update.twiml) != "Response":
        return None, (12100, "Document parse failure")
    return update, None


def twilio_error(status: int, code: int, message: str) -> web.Response:
    """An error as Twilio's REST API shapes it."""
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return web.json_response(body, status=status)


def _resource(call: StandInCall, account_sid: str) -> dict[str, Any]:
    """The call as Twilio's JSON call resource (the fields the twilio library reads)."""
    return {
        "sid": call.sid,
        "account_sid": account_sid,
        "to": call.to,
        "from": call.from_,
        "status": call.status,
        "direction": "inbound",
        "api_version": API_VERSION,
        "uri": f"/{API_VERSION}/Accounts/{account_sid}/Calls/{call.sid}.json",
    }


def _absolute_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _twiml_root(document: str) -> str | None:
    try:
        return ElementTree.fromstring(document).tag
    except ElementTree.ParseError:
        return None


def play_digits(document: str) -> list[str]:
    """The ``digits`` of each ``<Play>`` of a document (none for a bad one)."""
    try:
        root = ElementTree.fromstring(document)
    except ElementTree.ParseError:
        return []
    return [play.get("digits", "") for play in root.iter("Play") if play.get("digits")]


def _dial_target(document: str) -> str:
    """The number or SIP URI a ``<Dial>`` document calls ('' if none)."""
    try:
        dial = ElementTree.fromstring(document).find("Dial")
    except ElementTree.ParseError:
        return ""
    if dial is None:
        return ""
    target = "".join(dial.itertext()).strip()
    return target
