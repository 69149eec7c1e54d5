"""The Vonage simulator runs an NCCO as Vonage documents: after a websocket ``connect``.

Vonage runs an NCCO's actions in order, each once the one before finished; a
``connect`` to a websocket finishes when its socket closes, and the call goes on
with what follows unless the caller hung up. ``notify`` sends its payload to its
``eventUrl`` (signed as every webhook; tried once more after a 429, 503 or 504, as
Vonage does for a request for an NCCO) and an NCCO in the answer replaces the rest.
A small application on real sockets (no edge) answers the simulated call.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from telephony_edge.vonage.signature import verified_body
from telephony_edge.vonage.simulator import FRAME_BYTES, SimulatedVonageCall

SECRET = "ncco-continuation-signature-secret-0001"
TONE = b"\x10\x20" * (FRAME_BYTES // 2)


class App:
    """Answers ``connect`` websocket then ``notify``; its sockets talk, then close."""

    def __init__(self) -> None:
        self.notified: list[dict[str, Any]] = []
        self.sockets = 0
        self.reconnect = True  # the notify's answer: a new connect, or nothing (the end)
        self.busy = 0  # notifies answered 503 first (Vonage tries once more)
        self.method = "POST"
        self.app = web.Application()
        self.app.router.add_post("/answer", self.answer)
        self.app.router.add_post("/notify", self.notify)
        self.app.router.add_get("/notify", self.notify)
        self.app.router.add_get("/ws", self.ws)
        self.server = TestServer(self.app, host="127.0.0.1", port=0)

    def ncco(self) -> list[dict[str, Any]]:
        base = str(self.server.make_url("")).rstrip("/")
        return [
            {
                "action": "connect",
                "endpoint": [
                    {
                        "type": "websocket",
                        "uri": base.replace("http://", "ws://") + "/ws",
                        "content-type": "audio/l16;rate=16000",
                        "headers": {"n": str(self.sockets)},
                    }
                ],
            },
            {
                "action": "notify",
                "payload": {"why": "socket"},
                "eventUrl": [base + "/notify?n=1"],
                "eventMethod": self.method,
            },
        ]

    async def answer(self, request: web.Request) -> web.Response:
        return web.json_response(self.ncco())

    async def notify(self, request: web.Request) -> web.Response:
        verified = await verified_body(request, SECRET, enabled=True, max_age_s=60)
        if self.busy:
            self.busy -= 1
            return web.Response(status=503)
        if request.method == "GET":  # the fields in the query, the payload's among them
            self.notified.append({**request.query, "payload": {"why": request.query["why"]}})
        else:
            self.notified.append(orjson.loads(verified.body))
        if not self.reconnect:
            return web.Response(status=204)  # no NCCO: the current one goes on, and it is done
        return web.json_response(self.ncco())

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        connected = orjson.loads((await ws.receive()).data)
        assert connected["event"] == "websocket:connected"
        self.sockets += 1
        for _ in range(5):
            await ws.send_bytes(TONE)
            await asyncio.sleep(0.02)
        if self.sockets == 1:  # the first socket goes away mid-call (its worker died)
            await asyncio.sleep(0.3)
            await ws.close()
            return ws
        async for _ in ws:  # the next one stays until the caller hangs up
            pass
        return ws


async def _answered(session: aiohttp.ClientSession, app: App) -> SimulatedVonageCall:
    call = SimulatedVonageCall(
        session,
        str(app.server.make_url("")),
        to="15555550299",
        signature_secret=SECRET,
        answer_path="/answer",
        event_path="/event",
    )
    await call.post_answer()
    answer = call.result.answer
    assert answer is not None and answer.websocket is not None
    assert [a["action"] for a in answer.after] == ["notify"]
    await call.open_socket(answer.websocket)
    return call


@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_the_ncco_goes_on_after_the_socket_closes_and_the_gap_is_measured(
    method: str,
) -> None:
    app = App()
    app.method = method
    app.busy = 1  # the first notify is answered 503: Vonage tries it once more

    async def event(request: web.Request) -> web.Response:
        return web.Response(status=204)

    app.app.router.add_post("/event", event)
    await app.server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            call = await _answered(session, app)
            talking = asyncio.create_task(call.silence_until(lambda _: False, 10))
            for _ in range(200):
                if len(call.result.sockets) == 2 and call.result.sockets[1].first_audio_at:
                    break
                await asyncio.sleep(0.02)
            assert not talking.done(), "the caller's audio goes on across the sockets"
            talking.cancel()
            await call.hang_up()
        assert app.sockets == 2
        [notified] = app.notified
        assert notified["payload"] == {"why": "socket"} and notified["uuid"] == call.uuid
        result = call.result
        assert [status for _, status in result.notified] == [503, 200]
        [gap] = result.gaps_s
        assert 0.3 <= gap < 2.0  # the first socket's 0.3 s of silence, then the new one
        assert result.sockets[0].close_code == 1000
        assert ("completed", 204) in result.events_posted and not result.ncco_ended
        assert len(result.heard_pcm) > 0
    finally:
        await app.server.close()


async def test_an_empty_notify_answer_ends_the_ncco_and_a_hang_up_runs_nothing_more() -> None:
    app = App()
    app.reconnect = False
    events: list[str] = []

    async def event(request: web.Request) -> web.Response:
        events.append(orjson.loads(await request.read())["status"])
        return web.Response(status=204)

    app.app.router.add_post("/event", event)
    await app.server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            ended = await _answered(session, app)
            assert await ended.wait_over(5), "the NCCO ran out after the notify"
            assert ended.result.ncco_ended and len(app.notified) == 1
            assert events == ["completed"]
            await ended.hang_up()  # nothing more: Vonage reported the end already
            assert events == ["completed"]

            app.reconnect = True
            hung_up = await _answered(session, app)
            await hung_up.hang_up()  # the caller: the call ends, the NCCO goes no further
            await asyncio.sleep(0.5)
            assert len(app.notified) == 1 and hung_up.result.notified == []
            assert events == ["completed", "completed"]
    finally:
        await app.server.close()
