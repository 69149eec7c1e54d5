"""A bare Twilio Media Streams relay: the floor the edge's Twilio path is measured against.

    python bench/reference/twilio_relay.py --port 8000 --agent ws://127.0.0.1:9000/agent

Written for issue 21's scorecard (``bench/scorecard.py``), driven by the edge's
own load generator (``bench/twilio_load.py --target reference``). It does what
any relay between Twilio and an agent must, and nothing more:

* answers the voice webhook with ``<Connect><Stream>`` to itself;
* for each call's stream, opens one WebSocket to the agent and sends it an
  ``initiate`` once ``start`` arrives;
* caller → agent: each ``media`` message is ``json``-decoded, its payload
  base64- and μ-law-decoded (``audioop``), lifted 8 → 16 kHz with
  ``audioop.ratecv`` and sent to the agent as one binary message;
* agent → caller: the agent's 16 kHz PCM taken 16 → 8 kHz (``ratecv``),
  μ-law-encoded, and sent at once as 20 ms ``media`` messages (``json``).

Left out on purpose (what the edge's cost pays for): the signature check, a
resampling filter (``ratecv`` interpolates), pacing, marks and ``clear``,
playout bookkeeping, call records, limits, logs and metrics. It runs on uvloop
with aiohttp, the edge's own HTTP and WebSocket library, so the difference is
the edge's own work. On SIGTERM it prints one JSON line of counters (frames
each way) for the load generator's loss check.
"""

from __future__ import annotations

import argparse
import asyncio
import audioop
import base64
import json
import signal
import sys

import uvloop
from aiohttp import ClientSession, ClientWebSocketResponse, TCPConnector, WSMsgType, web

FRAME = 160  # 20 ms of 8 kHz μ-law
AGENT_URL = web.AppKey("agent_url", str)
HTTP = web.AppKey("http", ClientSession)
counters = {"frames_to_agent": 0, "frames_to_caller": 0, "streams": 0}


async def voice(request: web.Request) -> web.Response:
    url = f"ws://{request.host}/stream"
    twiml = f'<?xml version="1.0"?><Response><Connect><Stream url="{url}"/></Connect></Response>'
    return web.Response(text=twiml, content_type="text/xml")


async def healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok")


async def to_caller(
    agent: ClientWebSocketResponse, caller: web.WebSocketResponse, sid: str
) -> None:
    """The agent's PCM back to the caller as μ-law media messages, unpaced."""
    state = None
    async for msg in agent:
        if msg.type is not WSMsgType.BINARY:
            continue
        pcm, state = audioop.ratecv(msg.data, 2, 1, 16000, 8000, state)
        ulaw = audioop.lin2ulaw(pcm, 2)
        for i in range(0, len(ulaw), FRAME):
            payload = base64.b64encode(ulaw[i : i + FRAME]).decode()
            media = {"event": "media", "streamSid": sid, "media": {"payload": payload}}
            await caller.send_str(json.dumps(media))
            counters["frames_to_caller"] += 1


async def stream(request: web.Request) -> web.WebSocketResponse:
    caller = web.WebSocketResponse()
    await caller.prepare(request)
    agent: ClientWebSocketResponse | None = None
    back: asyncio.Task[None] | None = None
    state = None
    try:
        async for msg in caller:
            if msg.type is not WSMsgType.TEXT:
                continue
            event = json.loads(msg.data)
            kind = event.get("event")
            if kind == "media" and agent is not None:
                ulaw = base64.b64decode(event["media"]["payload"])
                pcm, state = audioop.ratecv(audioop.ulaw2lin(ulaw, 2), 2, 1, 8000, 16000, state)
                await agent.send_bytes(pcm)
                counters["frames_to_agent"] += 1
            elif kind == "start":
                agent = await request.app[HTTP].ws_connect(request.app[AGENT_URL])
                await agent.send_str(json.dumps({"method": "initiate"}))
                back = asyncio.create_task(to_caller(agent, caller, event["start"]["streamSid"]))
                counters["streams"] += 1
            elif kind == "stop":
                break
    finally:
        if back is not None:
            back.cancel()
        if agent is not None:
            await agent.close()
    await caller.close()
    return caller


async def main(port: int, agent_url: str) -> None:
    app = web.Application()
    app[AGENT_URL] = agent_url
    app.router.add_post("/twilio/voice", voice)
    app.router.add_get("/stream", stream)
    app.router.add_get("/healthz", healthz)
    async with ClientSession(connector=TCPConnector(limit=0)) as http:
        app[HTTP] = http
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        done = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, done.set)
        await done.wait()
        await runner.cleanup()
    print(json.dumps(counters), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--agent", required=True, help="the agent core's WebSocket URL")
    args = parser.parse_args()
    uvloop.run(main(args.port, args.agent))
    sys.exit(0)
