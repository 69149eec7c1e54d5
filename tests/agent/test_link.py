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
