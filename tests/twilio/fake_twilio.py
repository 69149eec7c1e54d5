"""A local stand-in of Twilio's REST API (the Calls resource), strict like the real one.

It is a real aiohttp server on 127.0.0.1. It checks HTTP Basic auth
(AccountSid:AuthToken), that the account in the path is the authenticated
one, the form-encoded fields of a call create (To and From in E.164, From one
of the account's numbers, one of Url / Twiml / ApplicationSid, absolute
callback URLs, answering-machine detection's MachineDetection / AsyncAmd /
AsyncAmdStatusCallback) and of a call update (Status completed|canceled, or Url /
Twiml), and answers with Twilio-shaped JSON: a call resource (sid ``CA`` + 32
hex, status ``queued`` ...) or Twilio's error shape
``{code, message, more_info, status}``. It records every request and the state
of every call it created, for tests to check.
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.test_utils import TestServer

E164 = re.compile(r"^\+[1-9]\d{1,14}$")
CALL_SID = re.compile(r"^CA[0-9a-f]{32}$")
API = "/2010-04-01/Accounts/{account_sid}"


@dataclass
class RecordedRequest:
    method: str
    path: str
    form: dict[str, list[str]]
    status: int


@dataclass
class FakeCall:
    sid: str
    account_sid: str
    to: str
    from_: str
    status: str
    fields: dict[str, list[str]]
    updates: list[dict[str, list[str]]] = field(default_factory=list)


class FakeTwilio:
    """``await FakeTwilio(account_sid, auth_token, numbers).start()``; ``.url`` is the base."""

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        numbers: set[str] | None = None,
        call_sids: list[str] | None = None,
    ) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.numbers = numbers or set()
        self.requests: list[RecordedRequest] = []
        self.calls: dict[str, FakeCall] = {}
        self.on_update: list[Callable[[FakeCall, dict[str, list[str]]], None]] = []
        self._next_sids = list(call_sids or [])
        self._server: TestServer | None = None

    async def start(self, port: int = 0) -> FakeTwilio:
        """Listen on 127.0.0.1:``port`` (a fixed one for an edge started before it)."""
        app = web.Application()
        app.router.add_post(API + "/Calls.json", self._create)
        app.router.add_post(API + "/Calls/{call_sid}.json", self._update)
        app.router.add_get(API + "/Calls/{call_sid}.json", self._fetch)
        self._server = TestServer(app, host="127.0.0.1", port=port)
        await self._server.start_server()
        return self

    async def close(self) -> None:
        if self._server is not None:
            await self._server.close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return str(self._server.make_url("")).rstrip("/")

    def add_call(self, sid: str, to: str, from_: str, status: str = "in-progress") -> FakeCall:
        """A live call Twilio knows of (e.g. an inbound call the simulator placed)."""
        call = FakeCall(sid, self.account_sid, to, from_, status, {})
        self.calls[sid] = call
        return call

    # -- helpers -------------------------------------------------------------

    def _error(
        self, request: web.Request, form: dict[str, list[str]], status: int, code: int, msg: str
    ) -> web.Response:
        self.requests.append(RecordedRequest(request.method, request.path, form, status))
        body = {
            "code": code,
            "message": msg,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        }
        return web.json_response(body, status=status)

    def _authenticated(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        return (
            user == self.account_sid
            and password == self.auth_token
            and request.match_info["account_sid"] == self.account_sid
        )

    async def _form(self, request: web.Request) -> dict[str, list[str]]:
        if request.method == "GET":
            return {}
        if request.content_type != "application/x-www-form-urlencoded":
            return {"__content_type__": [request.content_type]}
        post = await request.post()
        form: dict[str, list[str]] = {}
        for key, value in post.items():
            form.setdefault(key, []).append(str(value))
        return form

    def _resource(self, call: FakeCall) -> dict[str, Any]:
        now = formatdate(usegmt=True)
        uri = f"/2010-04-01/Accounts/{call.account_sid}/Calls/{call.sid}.json"
        return {
            "sid": call.sid,
            "account_sid": call.account_sid,
            "parent_call_sid": None,
            "to": call.to,
            "to_formatted": call.to,
            "from": call.from_,
            "from_formatted": call.from_,
            "status": call.status,
            "direction": "outbound-api",
            "api_version": "2010-04-01",
            "date_created": now,
            "date_updated": now,
            "start_time": None,
            "end_time": None,
            "duration": None,
            "price": None,
            "price_unit": "USD",
            "answered_by": None,
            "caller_name": None,
            "forwarded_from": None,
            "group_sid": None,
            "phone_number_sid": None,
            "queue_time": "0",
            "trunk_sid": None,
            "uri": uri,
            "subresource_uris": {
                "notifications": uri.replace(".json", "/Notifications.json"),
                "recordings": uri.replace(".json", "/Recordings.json"),
            },
        }

    # -- endpoints -----------------------------------------------------------

    async def _create(self, request: web.Request) -> web.Response:
        form = await self._form(request)
        if not self._authenticated(request):
            return self._error(request, form, 401, 20003, "Authenticate")

        def one(name: str) -> str | None:
            values = form.get(name)
            return values[0] if values else None

        to, from_ = one("To"), one("From")
        if "__content_type__" in form:
            return self._error(request, form, 400, 20001, "Invalid content type")
        if not to:
            return self._error(request, form, 400, 21201, "No 'To' number is specified")
        if not from_:
            return self._error(request, form, 400, 21213, "No 'From' number is specified")
        if not E164.match(to):
            return self._error(request, form, 400, 21211, f"Invalid 'To' Phone Number: {to}")
        if not E164.match(from_):
            return self._error(request, form, 400, 21212, f"Invalid 'From' Phone Number: {from_}")
        if self.numbers and from_ not in self.numbers:
            return self._error(
                request,
                form,
                400,
                21210,
                f"The source phone number provided, {from_}, is not yet verified for your account.",
            )
        if not (one("Url") or one("Twiml") or one("ApplicationSid")):
            return self._error(
                request, form, 400, 21205, "Either Url, Twiml or ApplicationSid is required"
            )
        for name in ("Url", "StatusCallback", "FallbackUrl", "AsyncAmdStatusCallback"):
            value = one(name)
            if value is not None and not _absolute_url(value):
                return self._error(request, form, 400, 21205, f"{name} is not a valid URL")
        for name in ("Method", "StatusCallbackMethod", "AsyncAmdStatusCallbackMethod"):
            value = one(name)
            if value is not None and value.upper() not in ("GET", "POST"):
                return self._error(request, form, 400, 21205, f"{name} must be GET or POST")
        if one("MachineDetection") not in (None, "Enable", "DetectMessageEnd"):
            return self._error(request, form, 400, 21205, "MachineDetection is not valid")
        if one("AsyncAmd") not in (None, "true", "false"):
            return self._error(request, form, 400, 21205, "AsyncAmd must be true or false")
        events = form.get("StatusCallbackEvent", [])
        allowed = {"initiated", "ringing", "answered", "completed"}
        if any(e not in allowed for e in events):
            return self._error(request, form, 400, 21626, "Invalid StatusCallbackEvent")
        sid = self._next_sids.pop(0) if self._next_sids else "CA" + secrets.token_hex(16)
        call = FakeCall(sid, self.account_sid, to, from_, "queued", form)
        self.calls[sid] = call
        self.requests.append(RecordedRequest(request.method, request.path, form, 201))
        return web.json_response(self._resource(call), status=201)

    async def _update(self, request: web.Request) -> web.Response:
        form = await self._form(request)
        if not self._authenticated(request):
            return self._error(request, form, 401, 20003, "Authenticate")
        sid = request.match_info["call_sid"]
        call = self.calls.get(sid)
        if call is None or not CALL_SID.match(sid):
            return self._error(
                request, form, 404, 20404, f"The requested resource {request.path} was not found"
            )
        status = (form.get("Status") or [None])[0]
        url = (form.get("Url") or [None])[0]
        twiml = (form.get("Twiml") or [None])[0]
        if status is None and url is None and twiml is None:
            return self._error(request, form, 400, 21205, "Either Status, Url or Twiml is required")
        if status is not None and status not in ("completed", "canceled"):
            return self._error(request, form, 400, 21218, f"Invalid Status: {status}")
        if call.status in ("completed", "canceled", "failed", "busy", "no-answer"):
            return self._error(
                request, form, 400, 21220, "Call is not in-progress. Cannot redirect."
            )
        if url is not None and not _absolute_url(url):
            return self._error(request, form, 400, 21205, "Url is not a valid URL")
        if twiml is not None and "<Response" not in twiml:
            return self._error(request, form, 400, 12100, "Document parse failure")
        call.updates.append(form)
        if status is not None:
            call.status = status
        self.requests.append(RecordedRequest(request.method, request.path, form, 200))
        for callback in self.on_update:
            callback(call, form)
        return web.json_response(self._resource(call))

    async def _fetch(self, request: web.Request) -> web.Response:
        if not self._authenticated(request):
            return self._error(request, {}, 401, 20003, "Authenticate")
        call = self.calls.get(request.match_info["call_sid"])
        if call is None:
            return self._error(request, {}, 404, 20404, "The requested resource was not found")
        return web.json_response(self._resource(call))


def _absolute_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)
