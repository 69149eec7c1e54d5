"""Stall recovery: the agent's mouth-to-ear delay, second by second, around a stall of the edge.

    python bench/stall_recovery.py [--stall-at 4] [--stall-ms 300] [--seconds 10] [--json F]

One ``telephony-edge serve`` (Twilio enabled) runs the call. In this process: an
agent core that streams without pause, 100 ms ahead of real time as TTS does,
and marks each 20 ms frame with its number (two constant levels, which μ-law and
the 16 → 8 kHz filter keep); and a caller that speaks the Media Streams protocol,
reads each frame's number back from the μ-law it hears, and so knows when the
agent sent it. The caller plays what it receives as Twilio does, at real time
from a buffer: a frame is heard when it has arrived and the one before it has
played, so audio that arrives in a burst is heard late. At ``--stall-at``
seconds the edge is stopped (SIGSTOP) for ``--stall-ms`` and continued
(SIGCONT), as a CPU-starved or swapped worker is.

Reported, per second of the call: the p50 of (heard - sent) over the frames heard
in that second, and how many were heard; then the p50 before the stall, after
it (from one second after), and whether it came back within one second. Run it
on two trees (``PYTHONPATH=<tree>``) for before/after figures.
"""

from __future__ import annotations

import argparse
import asyncio
import audioop
import base64
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from telephony_edge.agent import messages
from telephony_edge.twilio.simulator import SimulatedCall, parse_twiml

ACCOUNT_SID = "AC" + "0" * 32
AUTH_TOKEN = "stall-bench-auth-token"
NUMBER = "+15555550100"
LEVELS = 16  # values a half frame carries: a frame number modulo 256
STEP = 2000  # PCM between levels: twice μ-law's widest step (1024), decoded to the nearest
BASE = 1500


def marked_frame(n: int) -> bytes:
    """20 ms of 16 kHz PCM16 whose two halves carry ``n`` mod 256."""
    low, high = n % LEVELS, (n // LEVELS) % LEVELS
    half = b"\x01\x00" * 160  # 10 ms of samples equal to 1
    return audioop.mul(half, 2, BASE + low * STEP) + audioop.mul(half, 2, BASE + high * STEP)


def frame_number(ulaw: bytes) -> int | None:
    """The mark of a 20 ms μ-law frame (8 kHz), or None for silence or a boundary."""
    pcm = audioop.ulaw2lin(ulaw, 2)
    samples = [int.from_bytes(pcm[i * 2 : i * 2 + 2], "little", signed=True) for i in (40, 120)]
    if min(samples) < BASE / 2:
        return None  # silence, or a frame of the agent's that is not marked
    digits = [min(LEVELS - 1, round((s - BASE) / STEP)) for s in samples]
    return digits[0] + LEVELS * digits[1]


class Agent:
    """Streams marked frames at real time (plus the lead) and notes when each left."""

    def __init__(self, lead_s: float) -> None:
        self.lead_s = lead_s  # how far ahead of real time it sends
        self.sent_at: dict[int, float] = {}

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive()  # initiate
        await ws.send_str(messages.encode(messages.ONREADY))
        reader = asyncio.create_task(self._drain(ws))
        loop = asyncio.get_running_loop()
        start = loop.time()
        n = 0
        with contextlib.suppress(ConnectionError, RuntimeError):
            while not ws.closed:
                self.sent_at[n] = loop.time()
                await ws.send_bytes(marked_frame(n))
                n += 1
                await asyncio.sleep(max(0.0, start + n * 0.02 - self.lead_s - loop.time()))
        reader.cancel()
        return ws

    @staticmethod
    async def _drain(ws: web.WebSocketResponse) -> None:
        async for _ in ws:
            pass


def edge_config(port: int, core_url: str, lead_ms: int) -> dict[str, Any]:
    base = f"http://127.0.0.1:{port}"
    return {
        "server": {"host": "127.0.0.1", "port": port, "public_url": base},
        "api": {"private_key": "stall-bench-private-key-0001"},
        "twilio": {
            "enabled": True,
            "account_sid": ACCOUNT_SID,
            "auth_token": AUTH_TOKEN,
            "api_base_url": f"http://127.0.0.1:{port + 1}",  # never called
            "playout_lead_ms": lead_ms,
        },
        "agent_core": {"url": core_url},
        "agents": {"demo": {"prompt": "You stream.", "first_message": "Hello."}},
        "regions": {"local": {"public_url": base}},
        "numbers": {NUMBER: {"provider": "twilio", "agent_id": "demo", "region": "local"}},
        "calls": {"inactivity_timeout_s": 60},
    }


async def caller(
    session: aiohttp.ClientSession, base: str, agent: Agent, seconds: float
) -> list[tuple[float, float]]:
    """Place the call and listen: (when heard, its delay) per marked frame."""
    call = SimulatedCall(session, base, to=NUMBER, auth_token=AUTH_TOKEN, account_sid=ACCOUNT_SID)
    answer = parse_twiml(await call.post_webhook())
    assert answer.stream is not None, answer
    ws = await session.ws_connect(answer.stream.url)
    await ws.send_json({"event": "connected", "protocol": "Call", "version": "1.0.0"})
    start = {
        "accountSid": ACCOUNT_SID,
        "streamSid": call.stream_sid,
        "callSid": call.call_sid,
        "tracks": ["inbound"],
        "customParameters": answer.stream.parameters,
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    }
    await ws.send_json({"event": "start", "sequenceNumber": "1", "start": start})
    loop = asyncio.get_running_loop()
    silence = base64.b64encode(b"\xff" * 160).decode()

    async def speak() -> None:  # the caller's side: silence at real time
        t0, seq = loop.time(), 2
        while not ws.closed:
            media = {"payload": silence}
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_json({"event": "media", "sequenceNumber": str(seq), "media": media})
            seq += 1
            await asyncio.sleep(max(0.0, t0 + (seq - 2) * 0.02 - loop.time()))

    talking = asyncio.create_task(speak())
    heard: list[tuple[float, float]] = []
    last = -1
    played = 0.0  # when the caller heard the last frame
    end = loop.time() + seconds
    while loop.time() < end:
        try:
            msg = await ws.receive(timeout=1.0)
        except TimeoutError:
            continue
        if msg.type is not aiohttp.WSMsgType.TEXT:
            break
        event = json.loads(msg.data)
        if event.get("event") != "media":
            continue
        mark = frame_number(base64.b64decode(event["media"]["payload"]))
        if mark is None:
            continue
        n = last + 1 + (mark - (last + 1)) % 256  # the next frame with this mark
        last = n
        sent = agent.sent_at.get(n)
        if sent is not None:  # played as Twilio plays: at real time, after what it holds
            played = max(loop.time(), played + 0.02)
            heard.append((played, played - sent))
    talking.cancel()
    await ws.send_json({"event": "stop", "sequenceNumber": "0"})
    await ws.close()
    return heard


async def run(args: argparse.Namespace) -> dict[str, Any]:
    agent = Agent(args.agent_lead_ms / 1000)
    app = web.Application()
    app.router.add_get("/agent", agent.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    core_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    port = 19000 + os.getpid() % 1000 * 2
    work = Path(tempfile.mkdtemp(prefix="stall-bench-"))
    config = work / "edge.yaml"
    core_url = f"ws://127.0.0.1:{core_port}/agent"
    config.write_text(yaml.safe_dump(edge_config(port, core_url, args.network_lead_ms)))
    edge = subprocess.Popen(  # noqa: ASYNC220 (started once, before the measurement)
        [sys.executable, "-m", "telephony_edge", "serve", "--config", str(config)],
        stdout=(work / "edge.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(base + "/healthz") as resp:
                        if resp.status == 200:
                            break
                await asyncio.sleep(0.1)
            listening = asyncio.create_task(caller(session, base, agent, args.seconds))
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            await asyncio.sleep(args.stall_at)
            edge.send_signal(signal.SIGSTOP)
            await asyncio.sleep(args.stall_ms / 1000)
            edge.send_signal(signal.SIGCONT)
            heard = await listening
    finally:
        edge.terminate()
        edge.wait(10)
        await runner.cleanup()
    return summarise(heard, t0, args)


def summarise(
    heard: list[tuple[float, float]], t0: float, args: argparse.Namespace
) -> dict[str, Any]:
    per_second: list[dict[str, Any]] = []
    for second in range(int(args.seconds)):
        delays = [d for at, d in heard if second <= at - t0 < second + 1]
        p50 = statistics.median(delays) * 1000 if delays else None
        per_second.append({"second": second, "p50_ms": p50, "frames": len(delays)})
    stall = args.stall_at
    before = [d for at, d in heard if 1 <= at - t0 < stall]
    after = [d for at, d in heard if stall + 1 + args.stall_ms / 1000 <= at - t0]
    p50_before = statistics.median(before) * 1000 if before else None
    p50_after = statistics.median(after) * 1000 if after else None
    recovered = p50_before is not None and p50_after is not None and p50_after <= p50_before + 20
    return {
        "stall_at_s": stall,
        "stall_ms": args.stall_ms,
        "agent_lead_ms": args.agent_lead_ms,
        "network_lead_ms": args.network_lead_ms,
        "per_second": per_second,
        "p50_before_ms": p50_before,
        "p50_from_1s_after_ms": p50_after,
        "back_within_1s": recovered,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stall-at", type=float, default=4.0)
    parser.add_argument("--stall-ms", type=float, default=300.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--agent-lead-ms", type=float, default=400.0, help="how far ahead the agent sends"
    )
    parser.add_argument(
        "--network-lead-ms", type=int, default=200, help="the edge's twilio.playout_lead_ms"
    )
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    for row in result["per_second"]:
        p50 = "-" if row["p50_ms"] is None else f"{row['p50_ms']:6.1f} ms"
        print(f"  {row['second']:3d} s  p50 {p50}  ({row['frames']} frames)")
    print(
        f"p50 before the stall {result['p50_before_ms']:.1f} ms, from 1 s after it "
        f"{result['p50_from_1s_after_ms']:.1f} ms: "
        f"{'back' if result['back_within_1s'] else 'NOT back'} within 1 s"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
