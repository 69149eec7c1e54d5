"""A strict local stand-in of Vonage's Voice API, checking requests the way Vonage does.

Every request must carry ``Authorization: Bearer <application JWT>``: RS256,
signed by the application's private key (checked with its public key), with
the right ``application_id``, ``iat``, ``jti`` and an ``exp`` in the future;
anything else is 401 with Vonage's error shape. Bodies are checked field by
field: ``POST /v1/calls`` (``to``/``from`` phone objects, ``answer_url`` and
``event_url`` lists), ``PUT /v1/calls/{uuid}`` (``hangup``, or ``transfer``
to an NCCO whose actions the SDK's models accept), ``PUT /v1/calls/{uuid}/dtmf``
(``{"digits"}`` alone, of ``0-9 * # p`` as Vonage documents them: answered 200
``{"message": "DTMF sent", "uuid"}``). Unknown calls are 404.
"""

from __future__ import annotations

import re
import time
import uuid as uuid_mod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer
from vonage_voice.models.connect_endpoints import PhoneEndpoint, SipEndpoint
from vonage_voice.models.ncco import Connect


@dataclass
class FakeCall:
    uuid: str
    to: str
    from_: str
    answer_url: str = ""
    event_url: str = ""
    status: str = "started"
    updates: list[dict[str, Any]] = field(default_factory=list)
    dtmf: list[str] = field(default_factory=list)  # the digits of each PUT .../dtmf
    machine_detection: dict[str, Any] | None = None
    #: told of each accepted update (the simulated call: its NCCO ends or is replaced)
    on_update: Callable[[dict[str, Any]], Awaitable[None]] | None = None


DIGITS = re.compile(r"^[0-9#*p]+$")  # Vonage's DTMF endpoint: keys, and p for a pause


def _error(status: int, title: str, detail: str) -> web.Response:
    body = {"type": "https://developer.nexmo.com/api-errors", "title": title, "detail": detail}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


class FakeVoiceApi:
    def __init__(self, application_id: str, public_key: bytes) -> None:
        self.application_id = application_id
        self.public_key = public_key
        self.calls: dict[str, FakeCall] = {}
        self.refused: list[str] = []
        self._server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return str(self._server.make_url("")).rstrip("/")

    async def start(self) -> FakeVoiceApi:
        app = web.Application(middlewares=[self._auth])
        app.router.add_post("/v1/calls", self._create)
        app.router.add_put("/v1/calls/{uuid}", self._update)
        app.router.add_put("/v1/calls/{uuid}/dtmf", self._dtmf)
        self._server = TestServer(app, host="127.0.0.1", port=0)
        await self._server.start_server()
        return self

    async def close(self) -> None:
        if self._server is not None:
            await self._server.close()

    def add_call(
        self,
        uuid: str,
        *,
        to: str,
        from_: str,
        on_update: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
    ) -> FakeCall:
        self.calls[uuid] = FakeCall(uuid, to, from_, status="answered", on_update=on_update)
        return self.calls[uuid]

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            self.refused.append("no bearer token")
            return _error(401, "Unauthorized", "missing Authorization")
        try:
            claims = jwt.decode(
                header[7:],
                self.public_key,
                algorithms=["RS256"],
                options={"require": ["exp", "iat", "jti", "application_id"]},
            )
        except jwt.PyJWTError as exc:
            self.refused.append(str(exc))
            return _error(401, "Invalid credentials", str(exc))
        if claims["application_id"] != self.application_id:
            self.refused.append("application_id")
            return _error(401, "Invalid credentials", "wrong application_id")
        if claims["exp"] - time.time() > 24 * 3600:
            self.refused.append("exp too far")
            return _error(401, "Invalid credentials", "exp more than 24 h ahead")
        return await handler(request)

    async def _create(self, request: web.Request) -> web.Response:
        body = await request.json()
        try:
            [to] = body["to"]
            assert to["type"] == "phone" and to["number"].isdigit()
            assert body["from"]["type"] == "phone" and body["from"]["number"].isdigit()
            [answer_url] = body["answer_url"]
            [event_url] = body["event_url"]
            assert answer_url.startswith("http") and event_url.startswith("http")
            assert "ncco" not in body
            amd = body.get("advanced_machine_detection")
            if amd is not None:
                assert amd.get("behavior") in ("continue", "hangup")
                assert amd.get("mode", "default") in ("default", "detect", "detect_beep")
                assert 45 <= amd.get("beep_timeout", 45) <= 120
        except (KeyError, ValueError, AssertionError, TypeError, AttributeError):
            return _error(400, "Bad Request", f"invalid body: {body!r}"[:300])
        if to["number"].startswith("1555555099"):  # the stand-in's unreachable numbers
            return _error(400, "Bad Request", "The destination number is not reachable")
        uuid = str(uuid_mod.uuid4())
        self.calls[uuid] = FakeCall(
            uuid, "+" + to["number"], "+" + body["from"]["number"], answer_url, event_url
        )
        self.calls[uuid].machine_detection = amd
        payload = {
            "uuid": uuid,
            "status": "started",
            "direction": "outbound",
            "conversation_uuid": "CON-" + uuid,
        }
        return web.Response(status=201, body=orjson.dumps(payload), content_type="application/json")

    async def _update(self, request: web.Request) -> web.Response:
        call = self.calls.get(request.match_info["uuid"])
        if call is None:
            return _error(404, "Not Found", "call not found")
        body = await request.json()
        action = body.get("action")
        if action == "hangup" and set(body) == {"action"}:
            call.status = "completed"
        elif action == "transfer":
            destination = body.get("destination", {})
            if destination.get("type") != "ncco" or not isinstance(destination.get("ncco"), list):
                return _error(400, "Bad Request", "transfer needs an ncco destination")
            for item in destination["ncco"]:
                endpoints = [
                    PhoneEndpoint(number=e["number"])
                    if e.get("type") == "phone"
                    else SipEndpoint(uri=e["uri"])
                    for e in item["endpoint"]
                ]
                Connect(endpoint=endpoints, from_=item["from"])  # the SDK's model accepts it
        else:
            return _error(400, "Bad Request", f"unknown action {action!r}")
        call.updates.append(body)
        if call.on_update is not None:
            await call.on_update(body)
        return web.Response(status=204)

    async def _dtmf(self, request: web.Request) -> web.Response:
        uuid = request.match_info["uuid"]
        call = self.calls.get(uuid)
        if call is None or call.status == "completed":
            return _error(404, "Not Found", "call not found")
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "Bad Request", "the body is not JSON")
        digits = body.get("digits") if isinstance(body, dict) else None
        if set(body) != {"digits"} or not isinstance(digits, str) or not DIGITS.match(digits):
            return _error(400, "Bad Request", f"invalid body: {body!r}"[:300])
        call.dtmf.append(digits)
        return web.json_response({"message": "DTMF sent", "uuid": uuid})
