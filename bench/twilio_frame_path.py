"""CPU cost of one Twilio call's 20 ms, both ways through the leg and the agent link, no sockets.

    python bench/twilio_frame_path.py [--ticks 3000] [--repeat 7] [--send await|now] [--once]

Per tick, as ``bench/twilio_load.py``'s calls do it: the caller's ``media`` message
(20 ms of μ-law, base64, in Twilio's JSON) through ``TwilioMediaLeg._on_text``
(parse, sequence check, decode to a 640-byte frame), then to the agent core through
the ``AgentLink`` (``--send now``: ``send_audio_now``, the masked frame written to the
transport; ``--send await``: ``send_audio``, aiohttp's writer); the agent talks for a
second (a 100 ms chunk every fifth tick into the call's ``Playout``) and listens for one,
and the pacer's tick for the call (``AgentPlayout.tick``: a frame through
``TwilioMediaLeg.send_frame``, encoded into a ``media`` message). The transports are
null ones (``write`` does nothing), so the figure is the Python and codec work without
the syscalls and without the event loop's wake-ups. CPU time (``process_time``), best of
``--repeat``; ``--once`` runs a single pass for ``valgrind --tool=callgrind``
(instruction counts, which the machine's other load does not move), the ticks alone
counted (they run inside one ``sum``)::

    valgrind --tool=callgrind --collect-atstart=no --toggle-collect=builtin_sum \\
        --callgrind-out-file=/tmp/cg.out .venv/bin/python bench/twilio_frame_path.py --once
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import math
import time
from collections.abc import Coroutine
from typing import Any

import orjson
from aiohttp import WSMsgType
from aiohttp._websocket.writer import WebSocketWriter

from telephony_edge.agent.link import AgentLink
from telephony_edge.calls.agent_playout import AgentPlayout
from telephony_edge.calls.leg import LegInfo
from telephony_edge.calls.machine import CallMachine, Limits
from telephony_edge.calls.pacing import Pacer
from telephony_edge.calls.playout import Playout
from telephony_edge.twilio.media import StreamStart, TwilioMediaLeg

STREAM_SID = "MZ" + "0" * 32


class NullTransport:
    """A TCP transport that sends nothing (the syscall is not what this measures)."""

    def write(self, data: Any) -> None: ...

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class NullProtocol:
    _paused = False


class Socket:
    """The parts of aiohttp's server and client WebSocket objects the path reads."""

    closed = False

    def __init__(self, transport: NullTransport) -> None:
        self._writer = WebSocketWriter(NullProtocol(), transport, use_mask=True)  # type: ignore[arg-type]

    async def send_bytes(self, data: bytes) -> None:
        await self._writer.send_frame(data, WSMsgType.BINARY)


class Request:
    def __init__(self, transport: NullTransport) -> None:
        self.transport = transport
        self.remote = "127.0.0.1"


def media_messages(count: int) -> list[str]:
    """Twilio's ``media`` messages of a voiced caller, numbered as Twilio numbers them."""
    ulaw = bytes((i * 37) & 0x7F for i in range(160))
    payload = base64.b64encode(ulaw).decode()
    return [
        orjson.dumps(
            {
                "event": "media",
                "sequenceNumber": str(n + 2),
                "media": {
                    "track": "inbound",
                    "chunk": str(n + 1),
                    "timestamp": str(n * 20),
                    "payload": payload,
                },
                "streamSid": STREAM_SID,
            }
        ).decode()
        for n in range(count)
    ]


def agent_chunk() -> bytes:
    """100 ms of a 440 Hz tone at 16 kHz, as the agent core sends it."""
    return b"".join(
        int(8000 * math.sin(2 * math.pi * 440 * i / 16000)).to_bytes(2, "little", signed=True)
        for i in range(1600)
    )


async def run(ticks: int, send: str) -> float:
    """CPU seconds for ``ticks`` ticks of one call."""
    transport = NullTransport()
    start = StreamStart(STREAM_SID, "CA" + "0" * 32, "AC" + "0" * 32, {}, next_sequence=2)
    info = LegInfo("twilio", "inbound", "+15555550100", "+15555550199")
    leg = TwilioMediaLeg(Socket(transport), Request(transport), start, info, call_id="c1")  # type: ignore[arg-type]
    link = AgentLink(None, "ws://127.0.0.1/agent")  # type: ignore[arg-type]
    link._ws = Socket(transport)  # type: ignore[assignment]
    link._transport = transport  # type: ignore[assignment]
    pacer = Pacer()
    playout = Playout()
    machine = CallMachine(Limits(), time.monotonic())
    agent = AgentPlayout(
        leg,
        pacer,
        playout,
        machine,
        recorder=None,
        exemplar=None,
        drained=lambda: None,
        failed=lambda exc: None,
    )
    messages = media_messages(ticks)
    chunk = agent_chunk()
    now = send == "now"

    def tick(n: int) -> int:
        frame = leg._on_text(messages[n])
        assert type(frame) is bytes
        if not now or not link.send_audio_now(frame):
            _complete(link.send_audio(frame))  # never waits: the null transport has room
        if n % 100 < 50 and n % 5 == 0:  # the agent talks a second, then listens one
            playout.push(chunk, time.perf_counter())
        agent.tick()
        return 0

    t0 = time.process_time()
    sum(map(tick, range(ticks)))  # callgrind --toggle-collect=builtin_sum counts this alone
    cpu = time.process_time() - t0
    assert leg.stats.frames_out > ticks // 3
    if leg._mark_timer is not None:
        leg._mark_timer.cancel()
    return cpu


def _complete(coro: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine that does not suspend (aiohttp's writer with room) to its end."""
    try:
        coro.send(None)
    except StopIteration:
        return
    raise AssertionError("the send waited")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ticks", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--send", choices=("await", "now"), default="now")
    parser.add_argument("--once", action="store_true", help="one pass (for callgrind)")
    args = parser.parse_args()
    if args.once:
        asyncio.run(run(args.ticks, args.send))
        return
    best = min(asyncio.run(run(args.ticks, args.send)) for _ in range(args.repeat))
    print(f"{best / args.ticks * 1e6:.2f} us of CPU per 20 ms tick, both ways (--send {args.send})")


if __name__ == "__main__":
    main()
