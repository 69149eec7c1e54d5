"""Fixtures for Twilio tests: the REST stand-in, an edge with Twilio enabled, a CRM.

Imported by ``tests/twilio/conftest.py`` and ``tests/test_api.py``.
"""

from __future__ import annotations

import asyncio
import audioop
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from telephony_edge.app import create_app, set_local_address
from telephony_edge.audio.g711 import Law
from telephony_edge.audio.transcode import G711Encoder
from telephony_edge.config import Settings
from telephony_edge.config_loading import load_settings
from telephony_edge.services import SERVICES, Services
from telephony_edge.twilio.context import TWILIO, TwilioContext
from telephony_edge.twilio.simulator import SimulatedCall, StreamInstruction, parse_twiml
from tests.conftest import free_port
from tests.twilio.fake_twilio import FakeTwilio

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "twilio-auth-token-for-tests-0001"
API_KEY = "private-api-key-for-tests-0001"
WEBHOOK_SECRET = "whsec_twilio_tests_0001"
LOCAL_NUMBER = "+15555550199"
OUTBOUND_NUMBER = "+15555550177"
EU_NUMBER = "+445555550188"
EU_PUBLIC_URL = "https://eu.edge.example.com"
CALLER = "+15555550100"


@dataclass
class Crm:
    """A customer's webhook receiver: records end-of-call webhooks."""

    url: str
    received: list[dict[str, Any]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait(self, count: int = 1, within: float = 10.0) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while len(self.received) < count:
            remaining = deadline - loop.time()
            assert remaining > 0, f"expected {count} webhook(s), got {len(self.received)}"
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), remaining)
        return self.received


@dataclass
class TwilioEdge:
    server: TestServer
    app: web.Application
    port: int
    fake: FakeTwilio
    crm: Crm

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def services(self) -> Services:
        return self.app[SERVICES]

    @property
    def twilio(self) -> TwilioContext:
        return self.app[TWILIO]

    def call(self, session: aiohttp.ClientSession, **kwargs: Any) -> SimulatedCall:
        kwargs.setdefault("to", LOCAL_NUMBER)
        kwargs.setdefault("from_", CALLER)
        return SimulatedCall(
            session, self.base, auth_token=AUTH_TOKEN, account_sid=ACCOUNT_SID, **kwargs
        )


def pcm16_to_ulaw8k(pcm: bytes) -> bytes:
    """Canonical PCM16 16 kHz as the 8 kHz μ-law a caller's phone sends."""
    return G711Encoder(Law.ULAW).encode(pcm)


def voiced_runs(ulaw: bytes) -> list[tuple[float, float]]:
    """(start, end) seconds of each stretch of 8 kHz μ-law above about -40 dBFS."""
    pcm = audioop.ulaw2lin(ulaw, 2)
    runs: list[tuple[float, float]] = []
    start = None
    for i in range(0, len(pcm) + 320, 320):
        loud = audioop.rms(pcm[i : i + 320], 2) > 300 if i < len(pcm) else False
        if loud and start is None:
            start = i / 16000
        elif not loud and start is not None:
            runs.append((start, i / 16000))
            start = None
    return runs


def voiced_seconds(ulaw: bytes) -> float:
    return sum(end - start for start, end in voiced_runs(ulaw))


def twilio_settings(port: int, api_base_url: str, crm_url: str, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "server": {
            "host": "127.0.0.1",
            "port": port,
            "public_url": f"http://127.0.0.1:{port}",
            "region": "us",
        },
        "api": {"private_key": API_KEY},
        "twilio": {
            "enabled": True,
            "account_sid": ACCOUNT_SID,
            "auth_token": AUTH_TOKEN,
            "api_base_url": api_base_url,
            "stream_token_ttl_s": 30,
        },
        "webhooks": {
            "signing_secret": WEBHOOK_SECRET,
            "backoff_base_s": 0.05,
            "max_attempts": 3,
            "allow_private_targets": True,  # the CRM is local
        },
        "agents": {
            "echo": {
                "prompt": "You echo. Caller {FromPhone}.",
                "first_message": "Hi",
                "session_data_webhook": crm_url,
            },
        },
        "regions": {
            "us": {"public_url": f"http://127.0.0.1:{port}"},
            "eu": {"public_url": EU_PUBLIC_URL},
        },
        "numbers": {
            LOCAL_NUMBER: {"provider": "twilio", "agent_id": "echo", "region": "us"},
            OUTBOUND_NUMBER: {"provider": "twilio", "agent_id": "echo", "region": "us"},
            EU_NUMBER: {"provider": "twilio", "agent_id": "echo", "region": "eu"},
        },
        "calls": {"inactivity_timeout_s": 30},
    }
    base.update(overrides)
    return load_settings(None, **base)


@pytest.fixture(name="fake_twilio")
async def fixture_fake_twilio() -> AsyncIterator[FakeTwilio]:
    fake = await FakeTwilio(ACCOUNT_SID, AUTH_TOKEN, {LOCAL_NUMBER, OUTBOUND_NUMBER}).start()
    yield fake
    await fake.close()


@pytest.fixture(name="crm")
async def fixture_crm() -> AsyncIterator[Crm]:
    box: dict[str, Crm] = {}

    async def ended(request: web.Request) -> web.Response:
        box["crm"].received.append(json.loads(await request.read()))
        box["crm"].arrived.set()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/ended", ended)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    box["crm"] = Crm(url=str(server.make_url("/ended")))
    yield box["crm"]
    await server.close()


@pytest.fixture(name="make_twilio_edge")
async def fixture_make_twilio_edge(
    fake_twilio: FakeTwilio, crm: Crm
) -> AsyncIterator[Callable[..., Any]]:
    """Start edges with Twilio enabled on real sockets; stopped after the test."""
    servers: list[TestServer] = []

    async def start(**overrides: Any) -> TwilioEdge:
        port = free_port()
        settings = twilio_settings(port, fake_twilio.url, crm.url, **overrides)
        app = create_app(settings)
        server = TestServer(app, host="127.0.0.1", port=port)
        await server.start_server()
        set_local_address(app, "127.0.0.1", port)
        servers.append(server)
        return TwilioEdge(server, app, port, fake_twilio, crm)

    yield start
    for server in servers:
        await server.close()


@pytest.fixture(name="twilio_edge")
async def fixture_twilio_edge(make_twilio_edge: Callable[..., Any]) -> TwilioEdge:
    edge: TwilioEdge = await make_twilio_edge()
    return edge


@pytest.fixture(name="session")
async def fixture_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        yield s


def serve_call(base_url: str, session: aiohttp.ClientSession, **kw: Any) -> SimulatedCall:
    """A call as Twilio places it toward the edge at ``base_url``: the tests' account and number."""
    kw.setdefault("to", LOCAL_NUMBER)
    return SimulatedCall(session, base_url, auth_token=AUTH_TOKEN, account_sid=ACCOUNT_SID, **kw)


def callee_answers(
    base_url: str, session: aiohttp.ClientSession, call_sid: str, call_id: str, callee: str
) -> SimulatedCall:
    """Twilio's side of an outbound call the edge placed (``call_sid``) once ``callee`` answers:
    the voice webhook for ``call_id`` comes next."""
    return serve_call(
        base_url,
        session,
        to=callee,
        from_=OUTBOUND_NUMBER,
        call_sid=call_sid,
        voice_path=f"/twilio/voice?call_id={call_id}",
        direction="outbound-api",
    )


async def answered(call: SimulatedCall) -> StreamInstruction:
    """POST the signed voice webhook; the stream its TwiML asks for."""
    stream = parse_twiml(await call.post_webhook()).stream
    assert stream is not None
    return stream
