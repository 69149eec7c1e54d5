"""The agent link against a misbehaving agent core: bad input is skipped, the call goes on."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from telephony_edge import metrics
from telephony_edge.calls.record import CallStatus
from tests.calls.test_bridge import start_call, voiced
from tests.conftest import Edge, TestLeg, edge_settings, wait_for

TONE = bytes.fromhex("ff3f") * 320 * 5  # 100 ms of loud square-ish audio


async def sloppy_core(request: web.Request) -> web.WebSocketResponse:
    """Answers initiate, then sends garbage around real audio, then ends the call."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    first = await ws.receive()
    assert first.type is WSMsgType.TEXT and json.loads(first.data)["method"] == "initiate"
    await ws.send_str('{"method":"onready"}')
    await ws.send_str("{not json")
    await ws.send_str('["a list", "not an object"]')
    await ws.send_str('{"method":"no_such_method","data":{}}')
    await ws.send_str('{"method":"ontranscript","data":"not an object"}')
    await ws.send_bytes(TONE[:333])  # not a whole frame: the rest follows
    await ws.send_bytes(TONE[333:])
    await asyncio.sleep(0.3)
    await ws.send_str('{"method":"end_call","data":{"reason":"done"}}')
    async for _ in ws:
        pass
    return ws


async def test_malformed_agent_messages_are_skipped_not_fatal(make_edge: Any) -> None:
    app = web.Application()
    app.router.add_get("/agent", sloppy_core)
    core = TestServer(app, host="127.0.0.1", port=0)
    await core.start_server()
    try:
        url = str(core.make_url("/agent")).replace("http", "ws", 1)
        edge: Edge = await make_edge(edge_settings(agent_core={"url": url}))
        bad = metrics.BAD_INPUT.labels(source="agent-core")
        before = bad._value.get()
        leg = TestLeg()
        _, task = await start_call(edge, leg)
        final = await asyncio.wait_for(task, 10)
        assert final.call_status is CallStatus.AGENT_ENDED
        await wait_for(lambda: leg.hung_up)
        # all 100 ms of audio played, split across two messages
        assert sum(voiced(f) for _, f in leg.heard) == 5
        assert bad._value.get() - before == 2  # the bad JSON and the non-object
    finally:
        await core.close()


GOT = web.AppKey("got", list)
CORE_TRANSPORT = web.AppKey("transport", asyncio.BaseTransport)


async def recording_core(request: web.Request) -> web.WebSocketResponse:
    """Answers initiate, then keeps every message it reads (type and data) on the app."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    got: list[tuple[WSMsgType, Any]] = request.app[GOT]
    transport = request.transport
    assert transport is not None
    request.app[CORE_TRANSPORT] = transport
    async for msg in ws:
        got.append((msg.type, msg.data))
        if msg.type is WSMsgType.TEXT and json.loads(msg.data)["method"] == "initiate":
            await ws.send_str('{"method":"onready"}')
    return ws


async def test_audio_written_now_arrives_masked_in_order() -> None:
    """send_audio_now writes a client frame itself (masked, RFC 6455 §5.3) without
    awaiting: aiohttp's server reads every one, in order with the awaited messages, and
    a socket backed up past SEND_NOW_LIMIT gets nothing written (False: the caller
    awaits send_audio)."""
    from aiohttp import ClientSession

    from telephony_edge.agent import link as agent_link

    app = web.Application()
    app[GOT] = []
    app.router.add_get("/agent", recording_core)
    core = TestServer(app, host="127.0.0.1", port=0)
    await core.start_server()
    try:
        url = str(core.make_url("/agent")).replace("http", "ws", 1)
        async with ClientSession() as http:
            link = agent_link.AgentLink(http, url)
            await link.open({"call_id": "c1"})
            frames = [bytes([i]) * 640 for i in range(1, 6)]
            assert all(link.send_audio_now(f) for f in frames[:3])
            await link.send_message("dtmf", {"digit": "5"})
            assert all(link.send_audio_now(f) for f in frames[3:])
            await link.send_audio(bytes(130))  # a longer header (126-65535 bytes)
            assert link.send_audio_now(bytes(70000))  # and the longest
            await wait_for(lambda: len(app[GOT]) == 9)
            got = app[GOT][1:]
            assert [d for t, d in got if t is WSMsgType.BINARY] == [
                *frames,
                bytes(130),
                bytes(70000),
            ]
            assert got[3][0] is WSMsgType.TEXT and json.loads(got[3][1])["method"] == "dtmf"
            app[CORE_TRANSPORT].pause_reading()  # type: ignore[attr-defined]  # the core stops reading: the socket backs up
            sent = 0
            while link.send_audio_now(bytes(60000)):
                sent += 1
                assert sent < 10_000, "the socket never backed up"
            transport = link._transport
            assert transport is not None
            assert transport.get_write_buffer_size() > agent_link.SEND_NOW_LIMIT
            app[CORE_TRANSPORT].resume_reading()  # type: ignore[attr-defined]
            await link.close()
            assert not link.send_audio_now(frames[0])  # closed: send_audio raises
    finally:
        await core.close()
