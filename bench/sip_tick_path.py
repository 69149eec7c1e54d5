"""CPU cost of one SIP call's 20 ms media tick through the leg, both ways, without sockets.

    python bench/sip_tick_path.py [--ticks 3000] [--repeat 7] [--codec PCMA|G722] [--once]

Per tick, as ``bench/sip_load.py``'s calls do it: the caller's RTP packet (PCMA, 20 ms)
through ``SipLeg.on_rtp`` (parse, source, reception statistics, playout buffer); the
pacer's after-playout tick (``SipLeg._tick``: the frame toward the agent, decoded and
queued, and the slot filled); the agent talks for a second (a frame a tick through
``SipLeg.send_frame``: encode, number, send), then listens for one (encoded silence). The
transport is a null one (``sendto`` does nothing), so the figure is the Python and codec
work without the syscalls. CPU time (``process_time``), best of ``--repeat``; ``--once``
runs a single pass for ``valgrind --tool=callgrind`` (instruction counts, which the
machine's other load does not move; the ticks run inside ``sum()``, so
``--toggle-collect=builtin_sum`` counts them and nothing else)::

    valgrind --tool=callgrind --collect-atstart=no --toggle-collect=builtin_sum \\
        --callgrind-out-file=/tmp/cg.out .venv/bin/python bench/sip_tick_path.py --once
    callgrind_annotate /tmp/cg.out | head   # the total over --ticks (3000)
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from typing import Any

from telephony_edge.calls.leg import LegInfo
from telephony_edge.calls.pacing import Pacer
from telephony_edge.sip.leg import SipLeg, codec_pair
from telephony_edge.sip.rtp import build_rtp
from telephony_edge.sip.rtp_socket import RtpProtocol
from telephony_edge.sip.sdp import CODECS, Negotiated

SOURCE = ("127.0.0.1", 40000)
PTS = {"PCMA": 8, "G722": 9}


class NoControl:
    def hangup(self, ref: str) -> None: ...

    def release(self, ref: str) -> None: ...


class NullTransport:
    """A UDP transport that sends nothing (the syscall is not what this measures)."""

    def sendto(self, data: bytes, addr: Any = None) -> None: ...

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "sockname" else default

    def close(self) -> None: ...

    def is_closing(self) -> bool:
        return False


def agent_frame(n: int) -> bytes:
    """20 ms of a 440 Hz tone at 16 kHz (speech-level, not silence)."""
    import struct

    return struct.pack(
        "<320h",
        *(int(8000 * math.sin(2 * math.pi * 440 * (n * 320 + i) / 16000)) for i in range(320)),
    )


async def per_tick_us(codec: str, ticks: int, repeat: int) -> float:
    pt = PTS[codec]
    frames = [agent_frame(n) for n in range(50)]
    encoder = codec_pair(codec)[1]
    caller = [encoder.encode(frames[(n + 7) % 50]) for n in range(50)]
    packets = [build_rtp(pt, n & 0xFFFF, n * 160, 5, n == 0, caller[n % 50]) for n in range(ticks)]
    best = float("inf")
    for _ in range(repeat):
        now = [0.0]  # the bench is the clock
        rtp = RtpProtocol()
        rtp.connection_made(NullTransport())  # type: ignore[arg-type]
        leg = SipLeg(
            LegInfo("sip", "inbound", "a", "b"), "bench", rtp, 40000, NoControl(),
            lambda t=now: t[0], pacer=Pacer(),
        )  # fmt: skip
        leg.set_media(Negotiated(CODECS[codec], pt, 101, *SOURCE, "sendrecv", None, 0))
        leg._pacer.unsubscribe(leg)

        def tick(n: int, leg: SipLeg = leg, now: list[float] = now) -> int:
            now[0] = n * 0.02
            leg.on_rtp(packets[n], SOURCE)
            if n // 50 % 2 == 0:  # the agent talks for a second, then listens for one
                leg.send_frame(frames[n % 50], n % 50 == 0)
            leg._tick()
            leg._events.clear()
            return 0

        start = time.process_time()
        sum(map(tick, range(ticks)))  # in C's builtin_sum: what callgrind's toggle counts
        best = min(best, time.process_time() - start)
        await leg.close()
    return best / ticks * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ticks", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--codec", choices=tuple(PTS), default="PCMA")
    parser.add_argument("--once", action="store_true", help="one pass (for callgrind)")
    args = parser.parse_args()
    us = asyncio.run(per_tick_us(args.codec, args.ticks, 1 if args.once else args.repeat))
    print(f"{args.codec}: {us:6.1f} µs a tick, {us * 3000 / 1e6:.4f} CPU s/call-minute")


if __name__ == "__main__":
    main()
