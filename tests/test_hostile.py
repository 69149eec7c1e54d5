"""Hostile input against a real ``telephony-edge serve``: the protocol's answer, never a 500.

One process is shared by the module (Twilio on, signatures checked, an API
key, a webhook secret). Every test sends what a hostile run sent, asserts the
status or close code, and that the process is still serving with no
traceback and no ERROR line in its log.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict
from yarl import URL

from telephony_edge.api import MAX_BODY_BYTES
from telephony_edge.calls.webhooks import SIGNATURE_HEADER as SIGNATURE
from telephony_edge.calls.webhooks import verify_signature
from telephony_edge.twilio.media import MAX_COUNTED_GAP
from telephony_edge.twilio.signature import SIGNATURE_HEADER, compute_signature
from telephony_edge.twilio.simulator import (
    SimulatedCall,
    StreamInstruction,
    encode_payloads,
)
from tests.conftest import ServeProcess, free_port
from tests.twilio.fake_twilio import FakeTwilio
from tests.twilio.harness import (
    ACCOUNT_SID,
    API_KEY,
    AUTH_TOKEN,
    CALLER,
    LOCAL_NUMBER,
    OUTBOUND_NUMBER,
    WEBHOOK_SECRET,
    answered,
    serve_call,
)

FAKE_TWILIO_PORT = free_port()


def hostile_config(**webhooks: Any) -> dict[str, Any]:
    """Like ``deploy/demo.yaml``, with every protection on."""
    return {
        "server": {"drain_grace_s": 1},
        "api": {"private_key": API_KEY},
        "twilio": {
            "enabled": True,
            "account_sid": ACCOUNT_SID,
            "auth_token": AUTH_TOKEN,
            "api_base_url": f"http://127.0.0.1:{FAKE_TWILIO_PORT}",
            "validate_signatures": True,
        },
        "webhooks": {"signing_secret": WEBHOOK_SECRET, "backoff_base_s": 0.05, **webhooks},
        "agents": {"demo": {"prompt": "You are the demo agent.", "first_message": "Hello."}},
        "regions": {"local": {"public_url": "http://127.0.0.1"}},
        "numbers": {
            LOCAL_NUMBER: {"provider": "twilio", "agent_id": "demo", "region": "local"},
            OUTBOUND_NUMBER: {"provider": "twilio", "agent_id": "demo", "region": "local"},
        },
    }


@pytest.fixture(scope="module")
def edge(serve_process: Any) -> ServeProcess:
    started: ServeProcess = serve_process(hostile_config())
    return started


@pytest.fixture(name="session")
async def fixture_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def bad_input(edge: ServeProcess, source: str) -> float:
    return edge.metric("telephony_edge_bad_input_total", source=source)


# -- 1. the voice webhook parses its body only after the signature header is there --


VOICE_FIELDS = {"CallSid": "CA" + "0" * 32, "From": CALLER, "To": LOCAL_NUMBER}


def _signed(edge: ServeProcess) -> dict[str, str]:
    url = edge.base_url + "/twilio/voice"
    return {SIGNATURE_HEADER: compute_signature(AUTH_TOKEN, url, VOICE_FIELDS)}


@pytest.mark.parametrize(
    ("content_type", "body", "signed", "status"),
    [
        ("application/x-www-form-urlencoded", b"To=%FF%FE&From=\xff\xfe", False, 403),
        ("application/x-www-form-urlencoded; charset=bogus", b"To=1", False, 403),
        ("multipart/form-data", b"--x\r\n", False, 403),
        ("application/x-www-form-urlencoded", b"To=%FF%FE&From=\xff\xfe", True, 400),
        ("application/x-www-form-urlencoded; charset=bogus", b"To=1", True, 400),
        ("multipart/form-data", b"--x\r\n", True, 400),
        ("multipart/form-data; boundary=x", b"garbage", True, 400),
        ("application/x-www-form-urlencoded; charset=utf-16", b"To=1", True, 403),
    ],
)
async def test_voice_webhook_bad_bodies_get_403_or_400(
    edge: ServeProcess,
    session: aiohttp.ClientSession,
    content_type: str,
    body: bytes,
    signed: bool,
    status: int,
) -> None:
    source = "twilio-webhook" if status == 400 else "twilio-signature"
    before = bad_input(edge, source)
    headers = {"Content-Type": content_type, **(_signed(edge) if signed else {})}
    async with session.post(edge.base_url + "/twilio/voice", data=body, headers=headers) as resp:
        assert resp.status == status
    assert bad_input(edge, source) == before + 1
    edge.assert_healthy()


# -- 2, 3. the Media Streams opening -------------------------------------------------


def start_message(call: SimulatedCall, parameters: dict[str, str], **fields: Any) -> dict[str, Any]:
    """Twilio's ``start`` for ``call``, with ``fields`` of ``start`` replaced."""
    start = {
        "accountSid": ACCOUNT_SID,
        "streamSid": call.stream_sid,
        "callSid": call.call_sid,
        "tracks": ["inbound"],
        "customParameters": parameters,
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        **fields,
    }
    return {"event": "start", "sequenceNumber": "1", "streamSid": call.stream_sid, "start": start}


async def close_code(session: aiohttp.ClientSession, url: str, message: Any) -> int | None:
    """Open a stream, send ``message``; the close code the edge answers with (None: not closed)."""
    async with session.ws_connect(url) as ws:
        await ws.send_str(message if isinstance(message, str) else json.dumps(message))
        msg = await ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.CLOSE, msg
        return int(msg.data)


async def admitted(call: SimulatedCall, stream: StreamInstruction) -> None:
    """The genuine stream attaches: the demo agent's greeting comes back."""
    await call.open_stream(stream)
    await call.stream_until_quiet(until=lambda r: r.frames_received > 0, max_s=5)
    assert call.result.frames_received > 0, call.result.summary()
    await call.stop()


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"mediaFormat": "audio/x-mulaw"}, 1003),
        ({"mediaFormat": ["audio/x-mulaw", 8000, 1]}, 1003),
        ({"mediaFormat": 8000}, 1003),
        ({"mediaFormat": {"encoding": ["x"], "sampleRate": "8000", "channels": 1}}, 1003),
        ({"mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": "9" * 5000}}, 1003),
        ({"customParameters": {"token": {"nested": 1}}}, 1008),
        ({"customParameters": ["token"]}, 1008),
        ({"tracks": "inbound"}, 1008),
        ({"tracks": [{"a": 1}]}, 1008),
        ({"accountSid": 42}, 1008),
        ({"callSid": ["CA"]}, 1008),
    ],
)
async def test_an_ill_typed_start_is_closed_and_changes_nothing(
    edge: ServeProcess, session: aiohttp.ClientSession, fields: dict[str, Any], code: int
) -> None:
    call = serve_call(edge.base_url, session)
    stream = await answered(call)
    before = bad_input(edge, "twilio-stream")
    message = start_message(call, stream.parameters, **fields)
    assert await close_code(session, stream.url, message) == code
    assert bad_input(edge, "twilio-stream") == before + 1
    await admitted(call, stream)  # the token was not consumed, the call not touched
    edge.assert_healthy()


@pytest.mark.parametrize("seq", ["9" * 5000, "-1", "²", 10**30, [1], {"n": 1}, True])
async def test_an_ill_typed_start_sequence_number_is_1008(
    edge: ServeProcess, session: aiohttp.ClientSession, seq: Any
) -> None:
    call = serve_call(edge.base_url, session)
    stream = await answered(call)
    message = start_message(call, stream.parameters) | {"sequenceNumber": seq}
    before = bad_input(edge, "twilio-stream")
    assert await close_code(session, stream.url, message) == 1008
    assert bad_input(edge, "twilio-stream") == before + 1
    await admitted(call, stream)
    edge.assert_healthy()


async def test_a_token_with_another_calls_sid_does_not_consume_it(
    edge: ServeProcess, session: aiohttp.ClientSession
) -> None:
    call = serve_call(edge.base_url, session)
    stream = await answered(call)
    before = bad_input(edge, "twilio-stream")
    impostor = serve_call(edge.base_url, session)  # another CallSid
    message = start_message(impostor, stream.parameters)
    assert await close_code(session, stream.url, message) == 1008
    for token in ("²³.AAAA", "1" * 13 + ".AAAA", "ÿÿ.ÿ"):
        bad = start_message(call, {**stream.parameters, "token": token})
        assert await close_code(session, stream.url, bad) == 1008
    assert bad_input(edge, "twilio-stream") == before + 4
    await admitted(call, stream)
    edge.assert_healthy()


# -- 5. one message cannot push a counter to 2e30 ------------------------------------


async def test_absurd_sequence_numbers_are_malformed_and_gaps_are_bounded(
    edge: ServeProcess, session: aiohttp.ClientSession
) -> None:
    call = serve_call(edge.base_url, session)
    await call.open_stream(await answered(call))
    gaps, malformed = (
        edge.metric("telephony_edge_twilio_sequence_gaps_total"),
        bad_input(edge, "twilio-media"),
    )
    payload = encode_payloads(b"\xff" * 160)[0].decode()
    for seq in (10**30, "1" + "0" * 30, "9" * 5000, -5, "²"):
        media = {"event": "media", "sequenceNumber": seq, "media": {"payload": payload}}
        await call.send_raw(json.dumps(media))
    jump = {"event": "media", "sequenceNumber": str(10**9), "media": {"payload": payload}}
    await call.send_raw(json.dumps(jump))
    await call.stream_until_quiet(until=lambda r: r.frames_received > 0, max_s=5)
    assert not call.ws.closed  # type: ignore[union-attr]
    await call.stop()
    assert bad_input(edge, "twilio-media") - malformed == 5
    assert edge.metric("telephony_edge_twilio_sequence_gaps_total") - gaps == MAX_COUNTED_GAP
    edge.assert_healthy()


# -- 4, 8. the public API ---------------------------------------------------------------

AUTH = {"Authorization": f"Bearer {API_KEY}"}
API_ROUTES = [
    ("POST", "/start_outbound_call"),
    ("POST", "/calls/call_x/hangup"),
    ("POST", "/calls/call_x/transfer"),
    ("GET", "/calls/call_x"),
]


async def raw_status(edge: ServeProcess, request: bytes) -> int:
    """Send ``request`` as is on a new connection; the status of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", URL(edge.base_url).port)
    try:
        writer.write(request)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()
    return int(status_line.split()[1])


@pytest.mark.parametrize(("method", "path"), API_ROUTES)
async def test_non_ascii_bearer_tokens_are_401(edge: ServeProcess, method: str, path: str) -> None:
    before = bad_input(edge, "api")
    for token in (b"\xff", b"\xff\xfe" + API_KEY.encode(), "é".encode() * 20, b"\xed\xa0\x80"):
        request = (
            (
                f"{method} {path} HTTP/1.1\r\nHost: edge\r\nContent-Length: 2\r\n"
                "Connection: close\r\nAuthorization: Bearer "
            ).encode()
            + token
            + b"\r\n\r\n{}"
        )
        assert await raw_status(edge, request) == 401
    assert bad_input(edge, "api") == before + 4
    edge.assert_healthy()


@pytest.mark.parametrize(
    ("content_type", "body", "status"),
    [
        ("application/json; charset=bogus", b"{}", 400),
        ("application/json; charset=rot13", b"{}", 400),
        ("application/json", b'{"to_phone": "\xff"}', 400),
        ("application/json", b'{"metadata": {"name": "\\ud800"}}', 400),  # a lone surrogate
        ("application/json", b"[" * 30000 + b"]" * 30000, 400),  # RecursionError in the parser
        ("application/json", b'{"a":' * 5000 + b"1" + b"}" * 5000, 400),
        ("application/json", b'{"metadata": ' + b"[" * 40 + b"]" * 40 + b"}", 400),
        ("application/json", b'{"a": "' + b"x" * (MAX_BODY_BYTES + 1) + b'"}', 413),
    ],
)
async def test_unreadable_api_bodies_are_400_or_413(
    edge: ServeProcess,
    session: aiohttp.ClientSession,
    content_type: str,
    body: bytes,
    status: int,
) -> None:
    before = bad_input(edge, "api")
    for path in ("/start_outbound_call", "/calls/call_x/transfer"):
        headers = {**AUTH, "Content-Type": content_type}
        async with session.post(edge.base_url + path, data=body, headers=headers) as resp:
            assert resp.status == status
            assert "error" in await resp.json()
    assert bad_input(edge, "api") == before + 2
    edge.assert_healthy()


async def test_a_chunked_api_body_is_bounded_too(
    edge: ServeProcess, session: aiohttp.ClientSession
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b" " * 4096

    path = edge.base_url + "/start_outbound_call"
    async with session.post(path, data=chunks(), headers=AUTH) as resp:
        assert resp.status == 413
    edge.assert_healthy()


@pytest.fixture(name="fake_twilio")
async def fixture_fake_twilio() -> AsyncIterator[FakeTwilio]:
    """Twilio's REST API on the port the module's edge was configured with."""
    numbers = {LOCAL_NUMBER, OUTBOUND_NUMBER}
    fake = await FakeTwilio(ACCOUNT_SID, AUTH_TOKEN, numbers).start(FAKE_TWILIO_PORT)
    yield fake
    await fake.close()


CRM_HEADERS = {"Authorization": "Bearer crm-credential-never-shown"}


async def start_outbound(
    edge: ServeProcess, session: aiohttp.ClientSession, agent_config: dict[str, Any]
) -> str:
    body = {
        "from_phone": OUTBOUND_NUMBER,
        "to_phone": "+15555550142",
        "agent_id": "demo",
        "agent_config": agent_config,
    }
    async with session.post(edge.base_url + "/start_outbound_call", json=body, headers=AUTH) as r:
        assert r.status == 200, await r.text()
        call_id: str = (await r.json())["call_id"]
    return call_id


async def test_get_call_never_returns_webhook_credentials(
    edge: ServeProcess, session: aiohttp.ClientSession, fake_twilio: FakeTwilio
) -> None:
    hooks = {
        "extra_prompt_webhook": {"url": "https://crm.example.com/pre", "headers": CRM_HEADERS},
        "session_data_webhook": {"url": "https://crm.example.com/end", "headers": CRM_HEADERS},
    }
    call_id = await start_outbound(edge, session, hooks)
    async with session.get(edge.base_url + f"/calls/{call_id}", headers=AUTH) as resp:
        assert resp.status == 200
        text = await resp.text()
    assert "crm-credential-never-shown" not in text
    view = json.loads(text)["agent_config"]
    assert view["session_data_webhook"] == {"url": "https://crm.example.com/end"}
    assert view["extra_prompt_webhook"] == {"url": "https://crm.example.com/pre"}
    async with session.post(edge.base_url + f"/calls/{call_id}/hangup", headers=AUTH) as resp:
        assert resp.status == 200
    edge.assert_healthy()


# -- 6. slow, silent and pending connections ------------------------------------------

IDLE_TIMEOUT_S = 1.0
MAX_PENDING = 3


@pytest.fixture(scope="module")
def limited_edge(serve_process: Any) -> ServeProcess:
    """A second edge with tight connection limits (the shared one keeps the defaults)."""
    config = hostile_config()
    config["server"].update(idle_timeout_s=IDLE_TIMEOUT_S, max_pending_websockets=MAX_PENDING)
    started: ServeProcess = serve_process(config)
    return started


async def closed_within(edge: ServeProcess, send: bytes, within: float) -> float:
    """Connect, send ``send``, and return how long until the server closed the connection."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", URL(edge.base_url).port)
    started = loop.time()
    try:
        writer.write(send)
        while await asyncio.wait_for(reader.read(65536), within):
            pass  # a response (keep-alive case); then the idle close
    finally:
        writer.close()
    return loop.time() - started


async def test_silent_partial_and_idle_connections_are_closed(limited_edge: ServeProcess) -> None:
    sends = [
        b"",
        b"GET /heal",
        b"GET /healthz HTTP/1.1\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: edge\r\nX-Slow: ",
        b"GET /healthz HTTP/1.1\r\nHost: edge\r\n\r\n",  # answered, then idle keep-alive
    ] * 20
    bound = IDLE_TIMEOUT_S + 1.5
    times = await asyncio.gather(*(closed_within(limited_edge, s, bound) for s in sends))
    assert max(times) < bound
    assert min(times) > IDLE_TIMEOUT_S * 0.8  # closed by the idle bound, not at once
    limited_edge.assert_healthy()


async def test_pending_websockets_are_capped_before_upgrading(
    limited_edge: ServeProcess, session: aiohttp.ClientSession
) -> None:
    url = limited_edge.ws_url + "/twilio/stream"
    before = bad_input(limited_edge, "pending-websockets")
    pending = [await session.ws_connect(url) for _ in range(MAX_PENDING)]  # then silent
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await session.ws_connect(url)
    assert refused.value.status == 503
    assert bad_input(limited_edge, "pending-websockets") == before + 1
    # an admitted stream frees its slot: a genuine call still gets in once one leaves
    await pending.pop().close()
    call = serve_call(limited_edge.base_url, session)
    stream = await answered(call)
    await call.open_stream(stream)
    await call.stream_until_quiet(until=lambda r: r.frames_received > 0, max_s=5)
    assert call.result.frames_received > 0
    pending.append(await session.ws_connect(url))  # the admitted one is not pending
    for ws in pending:
        await ws.close()
    await call.stop()
    limited_edge.assert_healthy()


# -- 9. outgoing webhooks: signed, and never to private addresses unless allowed ------------


@dataclass
class Receiver:
    """A customer's webhook endpoint on 127.0.0.1 (a private address)."""

    url: str
    requests: list[tuple[str, CIMultiDict[str], str, bytes]] = field(default_factory=list)

    def of(self, method: str) -> list[tuple[str, CIMultiDict[str], str, bytes]]:
        return [r for r in self.requests if r[0] == method]


@pytest.fixture(name="receiver")
async def fixture_receiver() -> AsyncIterator[Receiver]:
    box: list[Receiver] = []

    async def record(request: web.Request) -> web.Response:
        raw_query = request.rel_url.raw_query_string  # what the prefetch signature covers
        entry = (request.method, request.headers.copy(), raw_query, await request.read())
        box[0].requests.append(entry)
        return web.json_response({"extra_prompt": "From the CRM."})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    box.append(Receiver(str(server.make_url("/hook"))))
    yield box[0]
    await server.close()


async def outbound_call(
    edge: ServeProcess,
    session: aiohttp.ClientSession,
    fake_twilio: FakeTwilio,
    agent_config: dict[str, Any],
) -> None:
    """A whole outbound call with ``agent_config`` as its per-call override, Twilio played by us."""
    call_id = await start_outbound(edge, session, agent_config)
    placed = list(fake_twilio.calls.values())[-1]
    call = serve_call(
        edge.base_url,
        session,
        call_sid=placed.sid,
        voice_path=f"/twilio/voice?call_id={call_id}",
        direction="outbound-api",
    )
    await admitted(call, await answered(call))


def per_call_hooks(receiver: Receiver) -> dict[str, Any]:
    forged = {"X-Telephony-Edge-Signature": "t=1,v1=forged", **CRM_HEADERS}
    return {
        "extra_prompt_webhook": {"url": receiver.url + "/pre", "headers": forged},
        "session_data_webhook": {"url": receiver.url + "/end", "headers": forged},
    }


async def eventually(predicate: Callable[[], bool], within: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_webhooks_to_private_addresses_are_refused_and_the_call_goes_on(
    edge: ServeProcess,
    session: aiohttp.ClientSession,
    fake_twilio: FakeTwilio,
    receiver: Receiver,
) -> None:
    refused = bad_input(edge, "webhook-target")
    await outbound_call(edge, session, fake_twilio, per_call_hooks(receiver))
    await eventually(lambda: bad_input(edge, "webhook-target") == refused + 2)
    for kind in ("prefetch", "session_webhook"):
        assert edge.metric("telephony_edge_webhook_results_total", kind=kind, outcome="refused")
    assert receiver.requests == []
    edge.assert_healthy()


@pytest.fixture(scope="module")
def private_targets_edge(serve_process: Any) -> ServeProcess:
    started: ServeProcess = serve_process(hostile_config(allow_private_targets=True))
    return started


async def test_allowed_private_webhooks_are_delivered_signed(
    private_targets_edge: ServeProcess,
    session: aiohttp.ClientSession,
    fake_twilio: FakeTwilio,
    receiver: Receiver,
) -> None:
    edge = private_targets_edge
    await outbound_call(edge, session, fake_twilio, per_call_hooks(receiver))
    await eventually(lambda: len(receiver.requests) == 2)
    [(_, pre_headers, query, _)] = receiver.of("GET")
    [(_, end_headers, _, body)] = receiver.of("POST")
    for headers, signed in ((pre_headers, query.encode()), (end_headers, body)):
        [signature] = headers.getall(SIGNATURE)  # the per-call headers' forgery is gone
        assert verify_signature(WEBHOOK_SECRET, signature, signed)
    assert pre_headers["Authorization"] == end_headers["Authorization"]  # theirs still sent
    edge.assert_healthy()
