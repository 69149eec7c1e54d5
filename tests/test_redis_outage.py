"""Redis outage and failover against a real ``telephony-edge serve``: live calls keep their audio.

The edge runs as a subprocess on a private ``redis-server`` (or a Sentinel
topology: one primary, one replica, three sentinels). The agent core is a
"talker" served by the test: after ``onready`` it sends agent audio at real
time without pause, so the caller (played by the test over the Media
Streams WebSocket) can count the frames it receives while Redis is gone.
What is asserted is what the issue asks: the live call keeps its audio, a
new call is refused clearly (TwiML ``<Say>`` + ``<Hangup>``, and ``/readyz``
stays 200 so the balancer keeps sending the networks to a worker that refuses them
clearly; the outage shows in the coordinator metrics and ``/readyz``'s body), and the
worker recovers by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import struct
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from telephony_edge.agent import messages
from telephony_edge.twilio.simulator import SimulatedCall, parse_twiml
from telephony_edge.vonage.ncco import OUTAGE_MESSAGE
from telephony_edge.vonage.simulator import SimulatedVonageCall
from tests.conftest import ServeProcess, free_port, stop_serve_process, wait_for
from tests.coord.redis_servers import RedisProcess, redis_server, sentinel_topology
from tests.sip.test_udp_edge import Caller, open_socket, sdp
from tests.twilio.harness import ACCOUNT_SID, API_KEY, AUTH_TOKEN, LOCAL_NUMBER, serve_call

#: 20 ms of a 440 Hz tone, PCM16 16 kHz: loud enough to count as agent audio
TONE = b"".join(
    struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / 16000))) for i in range(320)
)


@contextlib.asynccontextmanager
async def talker() -> AsyncIterator[str]:
    """An agent core that talks without pause; yields its ws:// URL."""

    async def talk(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive()  # initiate
        await ws.send_str(messages.encode(messages.ONREADY))

        async def drain() -> None:
            async for _ in ws:
                pass

        reader = asyncio.create_task(drain())
        loop = asyncio.get_running_loop()
        start, sent = loop.time(), 0
        with contextlib.suppress(ConnectionError, RuntimeError):
            while not ws.closed:
                await ws.send_bytes(TONE)
                sent += 1
                await asyncio.sleep(max(0.0, start + sent * 0.02 - 0.1 - loop.time()))
        reader.cancel()
        return ws

    app = web.Application()
    app.router.add_get("/talk", talk)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield f"ws://127.0.0.1:{server.port}/talk"
    finally:
        await server.close()


def edge_config(redis_url: str, core_url: str) -> dict[str, Any]:
    return {
        "api": {"private_key": API_KEY},
        "twilio": {
            "enabled": True,
            "account_sid": ACCOUNT_SID,
            "auth_token": AUTH_TOKEN,
            "api_base_url": f"http://127.0.0.1:{free_port()}",  # never called here
            "validate_signatures": True,
        },
        "agent_core": {"url": core_url},
        "coordination": {"redis_url": redis_url, "key_prefix": f"outage{free_port()}:"},
        "agents": {"demo": {"prompt": "You talk.", "first_message": "Hello."}},
        "regions": {"local": {"public_url": "http://127.0.0.1"}},
        "numbers": {LOCAL_NUMBER: {"provider": "twilio", "agent_id": "demo", "region": "local"}},
        "calls": {"inactivity_timeout_s": 60},
    }


@pytest.fixture(name="session")
async def fixture_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def readiness(edge: ServeProcess) -> tuple[int, dict[str, Any]]:
    """``/readyz``: its status and body."""
    try:
        with urllib.request.urlopen(edge.base_url + "/readyz", timeout=5) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def readyz(edge: ServeProcess) -> int:
    return readiness(edge)[0]


def coordinator_up(edge: ServeProcess) -> bool:
    """The worker reaches its coordinator again (its heartbeat loop saw it answer)."""
    return edge.metric("telephony_edge_coordinator_up") == 1


async def live_call(
    edge: ServeProcess, session: aiohttp.ClientSession
) -> tuple[SimulatedCall, asyncio.Task[None]]:
    """A call streaming (silence) at real time, once agent audio arrives."""
    call = serve_call(edge.base_url, session)
    answer = parse_twiml(await call.post_webhook())
    assert answer.stream is not None, answer
    await call.open_stream(answer.stream)
    caller = asyncio.create_task(call.stream_until_quiet(until=lambda r: False, max_s=60))
    await wait_for(lambda: call.result.frames_received > 0, 5)
    return call, caller


async def frames_over(call: SimulatedCall, seconds: float) -> int:
    before = call.result.frames_received
    await asyncio.sleep(seconds)
    return call.result.frames_received - before


async def hang_up(call: SimulatedCall, caller: asyncio.Task[None]) -> None:
    caller.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await caller
    await call.stop()


async def refused_while_down(edge: ServeProcess, session: aiohttp.ClientSession) -> None:
    answer = parse_twiml(await serve_call(edge.base_url, session).post_webhook())
    assert answer.stream is None and answer.hangup and answer.say, answer
    # still in the Service: the networks reach a worker that refuses them clearly
    assert readiness(edge) == (
        200,
        {"ready": True, "active_calls": 1, "max_calls": 500, "coordinator": "unreachable"},
    )


def assert_no_tracebacks(edge: ServeProcess) -> None:
    """No failure logged with a traceback, but for the webhook queue's (not this test's subject).

    A call whose record the restarted (empty) Redis lost may log its final
    write as failed: that is a warning-free LookupError line, allowed here.
    """
    lines = [
        line
        for line in edge.log.splitlines()
        if "Traceback" in line
        and "telephony_edge.calls.webhooks" not in line
        and "is not stored (expired?)" not in line
    ]
    assert not lines, "\n".join(lines)[:3000]


@pytest.fixture(name="private_redis")
def fixture_private_redis() -> Iterator[RedisProcess]:
    with redis_server() as server:
        yield server


async def test_redis_stopped_mid_call_keeps_audio_refuses_new_calls_and_recovers(
    private_redis: RedisProcess, serve_process: Any, session: aiohttp.ClientSession
) -> None:
    async with talker() as core:
        edge: ServeProcess = serve_process(edge_config(private_redis.url, core))
        assert readyz(edge) == 200
        call, caller = await live_call(edge, session)
        private_redis.kill()
        # the live call's audio never waits on Redis: ~50 frames a second go on
        assert await frames_over(call, 2.0) >= 80
        await refused_while_down(edge, session)
        assert edge.metric("telephony_edge_coordinator_up") == 0
        assert edge.metric("telephony_edge_coordinator_errors_total", op="register_pending") >= 1
        assert edge.metric("telephony_edge_calls_refused_total", reason="coordinator") >= 1
        private_redis.start()  # same port, empty
        await wait_for(lambda: coordinator_up(edge), 10)
        assert await frames_over(call, 1.0) >= 40  # still the same call
        second, second_caller = await live_call(edge, session)
        assert edge.metric("telephony_edge_coordinator_up") == 1
        await hang_up(second, second_caller)
        await hang_up(call, caller)
        assert edge.process.poll() is None
        stop_serve_process(edge)
        assert_no_tracebacks(edge)


async def test_sentinel_primary_killed_mid_call_call_goes_on_and_new_calls_work_after_failover(
    serve_process: Any, session: aiohttp.ClientSession
) -> None:
    with sentinel_topology("edge", down_after_ms=500) as (primary, _replica, sentinels):
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in sentinels)
        async with talker() as core:
            edge: ServeProcess = serve_process(edge_config(f"redis+sentinel://{hosts}/edge", core))
            call, caller = await live_call(edge, session)
            primary.kill()
            assert await frames_over(call, 2.0) >= 80
            await wait_for(lambda: coordinator_up(edge), 20)  # the replica was promoted
            second, second_caller = await live_call(edge, session)
            assert await frames_over(call, 1.0) >= 40
            await hang_up(second, second_caller)
            await hang_up(call, caller)
            assert edge.process.poll() is None
            stop_serve_process(edge)
            assert_no_tracebacks(edge)


async def test_the_api_answers_503_with_retry_after_while_redis_is_down(
    private_redis: RedisProcess, serve_process: Any, session: aiohttp.ClientSession
) -> None:
    """Every endpoint that needs the coordinator says so (503, Retry-After), never 500."""
    async with talker() as core:
        edge: ServeProcess = serve_process(edge_config(private_redis.url, core))
        private_redis.kill()
        auth = {"Authorization": f"Bearer {API_KEY}"}
        outbound = {"from_phone": LOCAL_NUMBER, "to_phone": "+15555550199", "agent_id": "demo"}
        requests: list[tuple[str, str, dict[str, Any] | None]] = [
            ("GET", "/calls/call_0123456789abcdef0123456789abcdef", None),
            ("GET", "/calls?state=active", None),
            ("POST", "/calls/call_0123456789abcdef0123456789abcdef/hangup", {}),
            (
                "POST",
                "/calls/call_0123456789abcdef0123456789abcdef/transfer",
                {"destination": "+15555550123"},
            ),
            ("GET", "/webhooks/dead-letters", None),
            ("POST", "/start_outbound_call", outbound),
            ("GET", "/status?format=json", None),
        ]
        answers = []
        for method, path, body in requests:
            async with session.request(
                method, edge.base_url + path, json=body, headers=auth
            ) as resp:
                answers.append((path, resp.status, resp.headers.get("Retry-After")))
        assert all(status == 503 and retry for _, status, retry in answers), answers
        assert edge.process.poll() is None
        stop_serve_process(edge)
        assert_no_tracebacks(edge)


async def test_vonage_and_sip_callers_are_refused_clearly_while_redis_is_down(
    private_redis: RedisProcess, serve_process: Any, session: aiohttp.ClientSession
) -> None:
    """Readiness stays up through the outage (issue 22), so every network reaches a worker
    that refuses the call its own way: Vonage an NCCO that says so and connects nothing,
    a SIP trunk's INVITE a 503 (the trunk tries its next route)."""
    vonage_number, sip_number, secret = "+15555550166", "+15555550177", "vonage-secret-outage-01"
    sip_port, rtp_low = free_port(), free_port() // 2 * 2
    config = edge_config(private_redis.url, "ws://127.0.0.1:9/never")
    config["vonage"] = {"enabled": True, "signature_secret": secret}
    config["sip"] = {
        "enabled": True,
        "port": sip_port,
        "rtp_port_min": rtp_low,
        "rtp_port_max": rtp_low + 20,
        "trunks": {"pbx": {"cidrs": ["127.0.0.1/32"]}},
    }
    for number, provider in ((vonage_number, "vonage"), (sip_number, "sip")):
        config["numbers"][number] = {"provider": provider, "agent_id": "demo", "region": "local"}
    edge: ServeProcess = serve_process(config)
    private_redis.kill()
    assert readiness(edge)[0] == 200

    vonage = SimulatedVonageCall(session, edge.base_url, to=vonage_number, signature_secret=secret)
    await vonage.post_answer()
    answer = vonage.result.answer
    assert answer is not None and answer.websocket is None, vonage.result
    assert answer.talk == (OUTAGE_MESSAGE,)

    caller = Caller(("127.0.0.1", sip_port), sip_number, await open_socket())
    try:
        caller.send(caller.request("INVITE", sdp((await open_socket()).port)))
        refused = await caller.response("INVITE", within=10)
        assert refused.status == 503, refused.status
        caller.send(caller.request("ACK", cseq=caller.cseq))
    finally:
        caller.sip.close()
    outage = {"kind": "answer", "outcome": "coordinator_down"}
    assert edge.metric("telephony_edge_vonage_webhooks_total", **outage) == 1
    assert edge.metric("telephony_edge_calls_refused_total", reason="coordinator") >= 1  # SIP
    assert edge.process.poll() is None
    stop_serve_process(edge)
    assert_no_tracebacks(edge)
