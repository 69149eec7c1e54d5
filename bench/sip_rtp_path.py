"""CPU cost of one caller RTP packet through the SIP leg, without sockets or sipp.

    python bench/sip_rtp_path.py [--packets 3000] [--repeat 7]

Feeds prebuilt packets to ``SipLeg.on_rtp`` (the RTP socket's callback): parse,
latch, reception statistics, into the playout buffer; and pulls from it as the
pacer does, one 20 ms frame per 20 ms of the packets' time (decode to canonical
PCM, the leg's queue, emptied as the bridge would). CPU time
(``process_time``), best of ``--repeat`` runs, so the figure moves less with
the machine's other load than ``bench/sip_load.py``'s; that one measures the
whole edge (SIP, the bridge, the agent link, sending).

Cases: PCMA in 20 ms packets (most trunks), PCMA in 30 ms packets (Debian
sip-tester's pcap, as ``sip_load.py`` plays it), G.722 in 20 ms packets.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

from telephony_edge.calls.leg import LegInfo
from telephony_edge.calls.pacing import Pacer
from telephony_edge.sip.leg import SipLeg
from telephony_edge.sip.rtp import build_rtp
from telephony_edge.sip.rtp_socket import RtpProtocol
from telephony_edge.sip.sdp import CODECS, Negotiated

CASES = (("PCMA", 8, 160), ("PCMA", 8, 240), ("G722", 9, 160))
SOURCE = ("127.0.0.1", 40000)


class NoControl:
    def hangup(self, ref: str) -> None: ...

    def release(self, ref: str) -> None: ...


async def per_packet_us(codec: str, pt: int, size: int, packets: int, repeat: int) -> float:
    rng = random.Random(1)
    data = [
        build_rtp(pt, n & 0xFFFF, n * size, 5, n == 0, rng.randbytes(size)) for n in range(packets)
    ]
    best = float("inf")
    for _ in range(repeat):
        info = LegInfo("sip", "inbound", "a", "b")
        now = [0.0]  # the bench is the clock
        leg = SipLeg(
            info, "bench", RtpProtocol(), 40000, NoControl(), lambda t=now: t[0], pacer=Pacer()
        )
        leg.set_media(Negotiated(CODECS[codec], pt, 101, *SOURCE, "sendrecv", None, 0))
        leg._pacer.unsubscribe(leg)
        pulled = 0
        start = time.process_time()
        for n, packet in enumerate(data):
            now[0] = at = n * size / 8000
            leg.on_rtp(packet, SOURCE)
            while pulled * 0.02 <= at:  # the pacer's ticks up to this packet's arrival
                leg._pull(pulled * 0.02)
                pulled += 1
            leg._events.clear()
        best = min(best, time.process_time() - start)
        await leg.close()
    return best / packets * 1e6


async def run(packets: int, repeat: int) -> None:
    for codec, pt, size in CASES:
        us = await per_packet_us(codec, pt, size, packets, repeat)
        ms = size // 8
        per_minute = us * 60_000 / ms / 1e6
        print(f"{codec} {ms} ms packets: {us:6.1f} µs a packet, {per_minute:.4f} CPU s/call-minute")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    asyncio.run(run(args.packets, args.repeat))


if __name__ == "__main__":
    main()
