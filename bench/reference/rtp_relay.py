"""A bare RTP echo relay: the floor the edge's SIP media path is measured against.

    python bench/reference/rtp_relay.py --port 5080

Written for issue 21's scorecard (``bench/scorecard.py``), driven by the edge's
own SIP load generator (``bench/sip_load.py --target reference``, sipp). Per
RTP packet it does the least a relay that transcodes for an agent must: decode
the G.711 payload to PCM (``audioop``, A-law or μ-law by payload type), lift it
8 → 16 kHz and take it back 16 → 8 kHz (``audioop.ratecv``, in C), encode it
again and send it back to the caller with its own RTP header.

Left out on purpose (what the edge's cost pays for): the agent hop, pacing
(each packet is echoed as it arrives), a jitter buffer, RTCP, a resampling
filter, DTMF, SRTP, limits, logs and metrics. Of SIP it has only what sipp
needs to place a call: INVITE answered 200 with an SDP (one RTP socket per
call), ACK taken, BYE answered 200; no dialog state, no transactions, no
retransmission. G.711 only: the scorecard compares both SIP rows (G.711 and
G.722) with this one relay, as issue 21 does. On SIGTERM it prints one JSON
line of counters (RTP packets in and out) for the load generator's loss check.
"""

from __future__ import annotations

import argparse
import asyncio
import audioop
import json
import signal
import struct
import uuid
from collections.abc import Callable

import uvloop

DECODE: dict[int, Callable[[bytes, int], bytes]] = {0: audioop.ulaw2lin, 8: audioop.alaw2lin}
ENCODE: dict[int, Callable[[bytes, int], bytes]] = {0: audioop.lin2ulaw, 8: audioop.lin2alaw}
HEADER = struct.Struct("!BBHII")
State = tuple[int, tuple[tuple[int, int], ...]] | None  # audioop.ratecv's
counters = {"calls": 0, "rtp_in": 0, "rtp_out": 0}
LINGER_S = 1.0  # a call's RTP socket stays open this long after its BYE


class Echo(asyncio.DatagramProtocol):
    """One call's RTP: each packet decoded, round-tripped 8 → 16 → 8 kHz, encoded, sent back."""

    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer = peer
        self.transport: asyncio.DatagramTransport | None = None
        self.up: State = None
        self.down: State = None
        self.seq = 0
        self.ts = 0
        self.ssrc = uuid.uuid4().int & 0xFFFFFFFF

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        pt = data[1] & 0x7F
        decode = DECODE.get(pt)
        if decode is None or self.transport is None:
            return  # not G.711 (telephone-event, comfort noise): not relayed
        counters["rtp_in"] += 1
        pcm16, self.up = audioop.ratecv(decode(data[12:], 2), 2, 1, 8000, 16000, self.up)
        pcm8, self.down = audioop.ratecv(pcm16, 2, 1, 16000, 8000, self.down)
        payload = ENCODE[pt](pcm8, 2)
        self.seq = (self.seq + 1) & 0xFFFF
        self.ts = (self.ts + len(payload)) & 0xFFFFFFFF
        header = HEADER.pack(0x80, pt, self.seq, self.ts, self.ssrc)
        self.transport.sendto(header + payload, self.peer)
        counters["rtp_out"] += 1


def headers(message: str) -> tuple[str, dict[str, str], str]:
    """Start line, headers (lower-case names; the first of each), body."""
    head, _, body = message.partition("\r\n\r\n")
    start, *lines = head.split("\r\n")
    fields: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        fields.setdefault(name.strip().lower(), value.strip())
    return start, fields, body


def media_address(sdp: str) -> tuple[str, int, int]:
    """The offer's connection address, audio port and first payload type."""
    host, port, pt = "127.0.0.1", 0, 8
    for line in sdp.splitlines():
        if line.startswith("c=IN IP4 "):
            host = line.split()[-1]
        elif line.startswith("m=audio "):
            parts = line.split()
            port, pt = int(parts[1]), int(parts[3])
    return host, port, pt


class Signalling(asyncio.DatagramProtocol):
    """Just enough SIP over UDP for sipp's calls: INVITE → 200 with SDP, ACK, BYE → 200."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0
        self.calls: dict[str, tuple[asyncio.DatagramTransport, int]] = {}
        self.answering: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.port = transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        start, fields, body = headers(data.decode(errors="replace"))
        method = start.split(" ", 1)[0]
        call_id = fields.get("call-id", "")
        if method == "INVITE":
            task = asyncio.ensure_future(self.answer(call_id, fields, body, addr))
            self.answering.add(task)
            task.add_done_callback(self.answering.discard)
        elif method == "BYE":
            call = self.calls.pop(call_id, None)
            if call is not None:  # the caller's last packets may pass its BYE on the way
                asyncio.get_running_loop().call_later(LINGER_S, call[0].close)
            self.reply(fields, addr)
        elif method not in ("ACK", "SIP/2.0"):
            self.reply(fields, addr)

    async def answer(
        self, call_id: str, fields: dict[str, str], offer: str, addr: tuple[str, int]
    ) -> None:
        host, port, pt = media_address(offer)
        if pt not in DECODE:
            self.reply(fields, addr, "488 Not Acceptable Here")
            return
        if call_id not in self.calls:  # a retransmitted INVITE gets the same answer
            loop = asyncio.get_running_loop()
            transport, _ = await loop.create_datagram_endpoint(
                lambda: Echo((host, port)), local_addr=(self.host, 0)
            )
            self.calls[call_id] = (transport, transport.get_extra_info("sockname")[1])
            counters["calls"] += 1
        name = "PCMU" if pt == 0 else "PCMA"
        sdp = (
            f"v=0\r\no=bare 1 1 IN IP4 {self.host}\r\ns=-\r\nc=IN IP4 {self.host}\r\nt=0 0\r\n"
            f"m=audio {self.calls[call_id][1]} RTP/AVP {pt}\r\na=rtpmap:{pt} {name}/8000\r\n"
        )
        self.reply(fields, addr, "200 OK", sdp)

    def reply(
        self, fields: dict[str, str], addr: tuple[str, int], status: str = "200 OK", sdp: str = ""
    ) -> None:
        assert self.transport is not None
        head = [f"SIP/2.0 {status}"]
        head += [f"{h}: {fields.get(h.lower(), '')}" for h in ("Via", "From", "Call-ID", "CSeq")]
        head.append(f"To: {fields.get('to', '')};tag=bare")
        head.append(f"Contact: <sip:bare@{self.host}:{self.port}>")
        if sdp:
            head.append("Content-Type: application/sdp")
        head.append(f"Content-Length: {len(sdp)}")
        self.transport.sendto(("\r\n".join(head) + "\r\n\r\n" + sdp).encode(), addr)


async def main(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: Signalling(host), local_addr=(host, port)
    )
    print("listening", flush=True)
    done = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, done.set)
    await done.wait()
    transport.close()
    print(json.dumps(counters), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="SIP over UDP")
    args = parser.parse_args()
    uvloop.run(main(args.host, args.port))
