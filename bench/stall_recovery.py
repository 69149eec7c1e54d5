"""Stall recovery: the agent's mouth-to-ear delay, second by second, around a stall of the edge.

    python bench/stall_recovery.py [--network twilio|sip|both] [--stall-at 4] [--stall-ms 300]
                                   [--seconds 10] [--json F]

One ``telephony-edge serve`` (Twilio and SIP enabled) runs one call per network
(``--network both``: a Twilio call and a SIP call at once, through the same
stall). In this process: an agent core that streams without pause, 100 ms
ahead of real time as TTS does, and marks each 20 ms frame with its number (two
constant levels, which G.711 and the 16 → 8 kHz filter keep); and a caller per
network that reads each frame's number back from the audio it hears, and so
knows when the agent sent it. The Twilio caller speaks the Media Streams
protocol (μ-law); the SIP caller places a call over UDP (INVITE, ACK, BYE) and
sends and receives PCMA RTP. Each plays what it receives as a phone does, at
real time from a buffer: a frame is heard when it has arrived and the one
before it has played, so audio that arrives in a burst is heard late. At
``--stall-at`` seconds the edge is stopped (SIGSTOP) for ``--stall-ms`` and
continued (SIGCONT), as a CPU-starved or swapped worker is.

Reported per network, per second of the call: the p50 of (heard - sent) over
the frames heard in that second, and how many were heard; then the p50 before
the stall, after it (from one second after), and whether it came back within
one second. Run it on two trees (``PYTHONPATH=<tree>``) for before/after
figures.
"""

from __future__ import annotations

import argparse
import asyncio
import audioop
import base64
import contextlib
import json
import secrets
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))

import twilio_load as tl  # bench/ helpers: free ports

from telephony_edge.agent import messages
from telephony_edge.twilio.simulator import SimulatedCall, parse_twiml

ACCOUNT_SID = "AC" + "0" * 32
AUTH_TOKEN = "stall-bench-auth-token"
API_KEY = "stall-bench-private-key-0001"
NUMBER = "+15555550100"
LEVELS = 16  # values a half frame carries: a frame number modulo 256
STEP = 2000  # PCM between levels: twice G.711's widest step (1024), decoded to the nearest
BASE = 1500
NETWORKS = ("twilio", "sip")


def marked_frame(n: int) -> bytes:
    """20 ms of 16 kHz PCM16 whose two halves carry ``n`` mod 256."""
    low, high = n % LEVELS, (n // LEVELS) % LEVELS
    half = b"\x01\x00" * 160  # 10 ms of samples equal to 1
    return audioop.mul(half, 2, BASE + low * STEP) + audioop.mul(half, 2, BASE + high * STEP)


def frame_number(pcm: bytes) -> int | None:
    """The mark of a 20 ms frame of 8 kHz PCM16, or None for silence or a boundary."""
    samples = [int.from_bytes(pcm[i * 2 : i * 2 + 2], "little", signed=True) for i in (40, 120)]
    if min(samples) < BASE / 2:
        return None  # silence, or a frame of the agent's that is not marked
    digits = [min(LEVELS - 1, round((s - BASE) / STEP)) for s in samples]
    return digits[0] + LEVELS * digits[1]


class Agent:
    """Streams marked frames at real time (plus the lead) and notes when each left, per network."""

    def __init__(self, lead_s: float) -> None:
        self.lead_s = lead_s  # how far ahead of real time it sends
        self.sent_at: dict[str, dict[int, float]] = {network: {} for network in NETWORKS}

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        initiate = json.loads((await ws.receive()).data)
        provider = initiate.get("data", initiate).get("call", {}).get("provider", "twilio")
        sent_at = self.sent_at[provider]
        await ws.send_str(messages.encode(messages.ONREADY))
        reader = asyncio.create_task(self._drain(ws))
        loop = asyncio.get_running_loop()
        start = loop.time()
        n = 0
        with contextlib.suppress(ConnectionError, RuntimeError):
            while not ws.closed:
                sent_at[n] = loop.time()
                await ws.send_bytes(marked_frame(n))
                n += 1
                await asyncio.sleep(max(0.0, start + n * 0.02 - self.lead_s - loop.time()))
        reader.cancel()
        return ws

    @staticmethod
    async def _drain(ws: web.WebSocketResponse) -> None:
        async for _ in ws:
            pass


class Ear:
    """What a caller hears: each marked frame's delay, played at real time after the last."""

    def __init__(self, sent_at: dict[int, float]) -> None:
        self.sent_at = sent_at
        self.heard: list[tuple[float, float]] = []  # (when heard, delay)
        self._last = -1
        self._played = 0.0  # when the caller heard the last frame

    def hear(self, now: float, pcm: bytes) -> None:
        mark = frame_number(pcm)
        if mark is None:
            return
        n = self._last + 1 + (mark - (self._last + 1)) % 256  # the next frame with this mark
        self._last = n
        sent = self.sent_at.get(n)
        if sent is not None:  # played as a phone plays: at real time, after what it holds
            self._played = max(now, self._played + 0.02)
            self.heard.append((self._played, self._played - sent))


def edge_config(port: int, sip_port: int, core_url: str, lead_ms: int) -> dict[str, Any]:
    base = f"http://127.0.0.1:{port}"
    return {
        "server": {"host": "127.0.0.1", "port": port, "public_url": base},
        "api": {"private_key": API_KEY},
        "twilio": {
            "enabled": True,
            "account_sid": ACCOUNT_SID,
            "auth_token": AUTH_TOKEN,
            "api_base_url": "http://127.0.0.1:9",  # never called
            "playout_lead_ms": lead_ms,
        },
        "sip": {
            "enabled": True,
            "bind_host": "127.0.0.1",
            "port": sip_port,
            "rtp_port_min": 40000,
            "rtp_port_max": 40100,
        },
        "agent_core": {"url": core_url},
        "agents": {"demo": {"prompt": "You stream.", "first_message": "Hello."}},
        "regions": {"local": {"public_url": base}},
        "numbers": {NUMBER: {"provider": "twilio", "agent_id": "demo", "region": "local"}},
        "calls": {"inactivity_timeout_s": 60},
    }


async def twilio_caller(
    session: aiohttp.ClientSession, base: str, ear: Ear, seconds: float
) -> None:
    """Place a Twilio call and listen for ``seconds``, saying silence at real time."""
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
    end = loop.time() + seconds
    while loop.time() < end:
        try:
            msg = await ws.receive(timeout=1.0)
        except TimeoutError:
            continue
        if msg.type is not aiohttp.WSMsgType.TEXT:
            break
        event = json.loads(msg.data)
        if event.get("event") == "media":
            ulaw = base64.b64decode(event["media"]["payload"])
            ear.hear(loop.time(), audioop.ulaw2lin(ulaw, 2))
    talking.cancel()
    await ws.send_json({"event": "stop", "sequenceNumber": "0"})
    await ws.close()


class Datagrams(asyncio.DatagramProtocol):
    """A UDP socket's datagrams as a queue (the SIP caller's signalling and RTP)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queue.put_nowait(data)


def sip_request(method: str, uri: str, dialog: dict[str, str], cseq: int, sdp: str = "") -> bytes:
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/UDP {dialog['local']};branch=z9hG4bK{secrets.token_hex(8)};rport",
        "Max-Forwards: 70",
        f"From: <sip:stall@127.0.0.1>;tag={dialog['tag']}",
        f"To: {dialog['to']}",
        f"Call-ID: {dialog['call_id']}",
        f"CSeq: {cseq} {method}",
        f"Contact: <sip:stall@{dialog['local']}>",
    ]
    if sdp:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(sdp)}")
    return ("\r\n".join(lines) + "\r\n\r\n" + sdp).encode()


def sip_field(message: str, name: str) -> str:
    for line in message.split("\r\n\r\n", 1)[0].split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name:
            return value.strip()
    return ""


async def sip_caller(base: str, sip_port: int, ear: Ear, seconds: float) -> None:
    """Register a call, place it over UDP with PCMA, listen for ``seconds``, hang up."""
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with http.post(
            base + "/register_sip_call", json={"agent_id": "demo"}, headers=headers
        ) as resp:
            call_id = (await resp.json())["call_id"]
    loop = asyncio.get_running_loop()
    sig, signalling = await loop.create_datagram_endpoint(
        Datagrams, local_addr=("127.0.0.1", 0), remote_addr=("127.0.0.1", sip_port)
    )
    rtp, media = await loop.create_datagram_endpoint(Datagrams, local_addr=("127.0.0.1", 0))
    rtp_port = rtp.get_extra_info("sockname")[1]
    uri = f"sip:{call_id}@127.0.0.1:{sip_port}"
    dialog = {
        "local": f"127.0.0.1:{sig.get_extra_info('sockname')[1]}",
        "tag": secrets.token_hex(4),
        "to": f"<{uri}>",
        "call_id": secrets.token_hex(8) + "@stall-bench",
    }
    offer = (
        "v=0\r\no=stall 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {rtp_port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=ptime:20\r\n"
    )
    sig.sendto(sip_request("INVITE", uri, dialog, 1, offer))
    while True:  # 1xx, then the 200 with the edge's SDP
        answer = (await asyncio.wait_for(signalling.queue.get(), 10)).decode()
        code = int(answer.split(" ", 2)[1]) if answer.startswith("SIP/2.0 ") else 0
        if code >= 200:
            break
    assert code == 200, answer.split("\r\n", 1)[0]
    dialog["to"] = sip_field(answer, "to")
    target = sip_field(answer, "contact").strip("<>").split(";")[0] or uri
    sig.sendto(sip_request("ACK", target, dialog, 1))
    sdp = answer.split("\r\n\r\n", 1)[1]
    host = next(x.split()[-1] for x in sdp.splitlines() if x.startswith("c=IN IP4"))
    port = next(int(x.split()[1]) for x in sdp.splitlines() if x.startswith("m=audio"))

    async def speak() -> None:  # the caller's side: PCMA silence at real time
        t0, seq = loop.time(), 0
        while True:
            header = struct.pack("!BBHII", 0x80, 8, seq & 0xFFFF, seq * 160, 0x5747)
            rtp.sendto(header + b"\xd5" * 160, (host, port))
            seq += 1
            await asyncio.sleep(max(0.0, t0 + seq * 0.02 - loop.time()))

    talking = asyncio.create_task(speak())
    end = loop.time() + seconds
    while loop.time() < end:
        try:
            packet = await asyncio.wait_for(media.queue.get(), 1.0)
        except TimeoutError:
            continue
        offset = 12 + 4 * (packet[0] & 0x0F)
        if packet[0] & 0x10:  # a header extension
            offset += 4 + 4 * int.from_bytes(packet[offset + 2 : offset + 4], "big")
        if packet[1] & 0x7F == 8:
            ear.hear(loop.time(), audioop.alaw2lin(packet[offset:], 2))
    talking.cancel()
    sig.sendto(sip_request("BYE", target, dialog, 2))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(signalling.queue.get(), 2)
    sig.close()
    rtp.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    networks = NETWORKS if args.network == "both" else (args.network,)
    agent = Agent(args.agent_lead_ms / 1000)
    app = web.Application()
    app.router.add_get("/agent", agent.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    core_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    port, sip_port = tl.free_port(), tl.free_port()
    work = Path(tempfile.mkdtemp(prefix="stall-bench-"))
    config = work / "edge.yaml"
    core_url = f"ws://127.0.0.1:{core_port}/agent"
    config.write_text(yaml.safe_dump(edge_config(port, sip_port, core_url, args.network_lead_ms)))
    edge = subprocess.Popen(  # noqa: ASYNC220 (started once, before the measurement)
        [sys.executable, "-m", "telephony_edge", "serve", "--config", str(config)],
        stdout=(work / "edge.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    ears = {network: Ear(agent.sent_at[network]) for network in networks}
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(base + "/healthz") as resp:
                        if resp.status == 200:
                            break
                await asyncio.sleep(0.1)
            callers = {
                "twilio": lambda: twilio_caller(session, base, ears["twilio"], args.seconds),
                "sip": lambda: sip_caller(base, sip_port, ears["sip"], args.seconds),
            }
            listening = asyncio.gather(*(callers[network]() for network in networks))
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            await asyncio.sleep(args.stall_at)
            edge.send_signal(signal.SIGSTOP)
            await asyncio.sleep(args.stall_ms / 1000)
            edge.send_signal(signal.SIGCONT)
            await listening
    finally:
        edge.send_signal(signal.SIGCONT)
        edge.terminate()
        edge.wait(10)
        await runner.cleanup()
    return {
        "stall_at_s": args.stall_at,
        "stall_ms": args.stall_ms,
        "agent_lead_ms": args.agent_lead_ms,
        "network_lead_ms": args.network_lead_ms,
        "networks": {network: summarise(ears[network].heard, t0, args) for network in networks},
    }


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
        "per_second": per_second,
        "p50_before_ms": p50_before,
        "p50_from_1s_after_ms": p50_after,
        "back_within_1s": recovered,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--network", choices=(*NETWORKS, "both"), default="twilio")
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
    for network, figures in result["networks"].items():
        print(f"{network}:")
        for row in figures["per_second"]:
            p50 = "-" if row["p50_ms"] is None else f"{row['p50_ms']:6.1f} ms"
            print(f"  {row['second']:3d} s  p50 {p50}  ({row['frames']} frames)")
        before, after = figures["p50_before_ms"], figures["p50_from_1s_after_ms"]
        print(
            f"  p50 before the stall {tl._num(before, 1)} ms, from 1 s after it "
            f"{tl._num(after, 1)} ms: "
            f"{'back' if figures['back_within_1s'] else 'NOT back'} within 1 s"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
