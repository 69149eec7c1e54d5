"""A minimal custom agent core for telephony-edge (protocol: docs/agent-protocol.md).

Greets with a tone, answers each utterance or key press with a transcript and a beep; put
your STT, LLM and TTS in ``respond``. Run it as examples/README.md shows. Needs aiohttp.
"""

from __future__ import annotations

import argparse
import json
import math
import struct
import time
from typing import Any

from aiohttp import WSMsgType, web

WS = web.WebSocketResponse
RATE = 16000  # audio both ways: PCM16 little-endian, mono, 16 kHz
QUIET_BYTES = int(RATE * 2 * 0.6)  # 0.6 s of quiet ends an utterance


def tone(seconds: float = 0.3, freq: float = 880.0) -> bytes:
    """A beep as PCM16 LE 16 kHz: what a TTS would return."""
    n, step = int(RATE * seconds), math.tau * freq / RATE
    return struct.pack(f"<{n}h", *(int(6000 * math.sin(step * i)) for i in range(n)))


def loud(pcm: bytes) -> bool:
    """Crude voice activity: mean amplitude above about -40 dBFS."""
    samples = struct.unpack(f"<{len(pcm) // 2}h", pcm[: len(pcm) // 2 * 2])
    return bool(samples) and sum(map(abs, samples)) / len(samples) > 300


async def send(ws: WS, method: str, data: dict[str, Any] | None = None) -> None:
    await ws.send_str(json.dumps({"method": method, **({} if data is None else {"data": data})}))


async def play(ws: WS, pcm: bytes, until: float) -> float:
    """Send agent audio; return when it will have played (the edge plays it at real time)."""
    await ws.send_bytes(pcm)
    return max(time.monotonic(), until) + len(pcm) / (2 * RATE)


# ---- plug your STT / LLM / TTS in here: this function ------------------------------
async def respond(ws: WS, config: dict[str, Any], heard: bytes, digit: str) -> bytes:
    """One turn: the caller's utterance ``heard`` (PCM16 16 kHz) or key ``digit`` in, audio out.

    A real core returns TTS(LLM(config["prompt"], STT(heard))), or streams it with ``play``
    as it is synthesised; ``config["extra"]`` holds the agent's free-form settings.
    """
    text = f"[key {digit}]" if digit else f"[caller spoke {len(heard) / (2 * RATE):.1f} s]"
    await send(ws, "ontranscript", {"text": text, "is_final": True})  # what the caller said
    await send(ws, "start_answering")
    await send(ws, "onresponsetext", {"text": "beep", "is_final": True})  # what we answer
    return tone()  # the answer's audio


async def call(request: web.Request) -> WS:
    """One WebSocket = one call: initiate → onready, then audio and events both ways."""
    ws = WS()
    await ws.prepare(request)
    first = await ws.receive(timeout=10)
    message = json.loads(first.data) if first.type is WSMsgType.TEXT else {}
    if message.get("method") != "initiate":
        await ws.close(code=1008, message=b"expected initiate")
        return ws
    config = message["data"]["agent"]["agent_config"]  # merged, {variables} filled
    await send(ws, "onready")  # the edge now sends the caller's audio (buffered since pick-up)
    await send(ws, "onresponsetext", {"text": config.get("first_message", ""), "is_final": True})
    playing_until = await play(ws, tone(0.5, 660.0), 0.0)  # the greeting
    speech, quiet = bytearray(), 0
    async for msg in ws:
        turn = None
        if msg.type is WSMsgType.BINARY:  # caller audio, 20 ms frames
            voiced = loud(msg.data)
            if voiced and not speech and time.monotonic() < playing_until:
                await send(ws, "clear")  # barge-in: the edge drops our unplayed audio
            if voiced or speech:
                speech += msg.data
                quiet = 0 if voiced else quiet + len(msg.data)
            if quiet >= QUIET_BYTES:
                turn, speech, quiet = (bytes(speech), ""), bytearray(), 0
        elif msg.type is WSMsgType.TEXT and (event := json.loads(msg.data))["method"] == "dtmf":
            turn = (b"", str(event["data"]["digit"]))  # ping and playback need no answer
        if turn:
            playing_until = await play(ws, await respond(ws, config, *turn), playing_until)
    return ws


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="a minimal custom agent core")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8765, help="port to listen on")
    args = parser.parse_args()
    app = web.Application()
    app.router.add_get("/agent", call)
    banner = f"custom agent core on ws://{args.host}:{args.port}/agent"  # once it listens:
    web.run_app(app, host=args.host, port=args.port, print=lambda _: print(banner, flush=True))
