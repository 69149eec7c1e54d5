"""The agent's keys as RFC 4733 events in the SIP leg's RTP stream.

First the plan and the stream on their own (sans-I/O), read back with the
edge's own RFC 4733 receiver; then a :class:`SipLeg` on a real UDP socket
sending to a plain socket of the test, whose every datagram is checked: the
event packets (marker, durations on the 8 kHz clock, the end three times, the
event's one timestamp) and the stream around them (one SSRC, sequence numbers
without a gap, timestamps that only go forward, one packet per 20 ms slot).
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from telephony_edge.audio.frames import FRAME_BYTES
from telephony_edge.calls.dtmf import DtmfRequest
from telephony_edge.calls.leg import LegInfo, NotSupported
from telephony_edge.calls.pacing import Pacer
from telephony_edge.sip.dtmf_out import KeyPresses, plan
from telephony_edge.sip.leg import SipLeg, codec_pair
from telephony_edge.sip.rtp import RtpInbound, RtpSender, parse_rtp
from telephony_edge.sip.rtp_out import OutboundStream
from telephony_edge.sip.rtp_socket import RtpProtocol
from telephony_edge.sip.sdp import CODECS, Negotiated

EVENT_PT = 101


@dataclass(frozen=True)
class Event:
    key: int
    end: bool
    volume: int
    duration: int


def event_of(payload: bytes) -> Event:
    key, flags, duration = struct.unpack("!BBH", payload)
    return Event(key, bool(flags & 0x80), flags & 0x3F, duration)


def test_a_key_is_its_slots_then_the_end_three_times_then_quiet() -> None:
    slots = plan(DtmfRequest("5", 250))
    events = [(event_of(s.payload), s.marker) if s else None for s in slots]
    assert len(slots) == 13 + 2 + 3  # 250 ms in 20 ms slots, two more ends, 60 ms of quiet
    assert [marker for e in events[:13] if e for _, marker in [e]] == [True] + [False] * 12
    durations = [e[0].duration for e in events[:15] if e]
    assert durations == [160 * k for k in range(1, 13)] + [2000] * 3  # 250 ms at 8 kHz
    assert [e[0].end for e in events[:15] if e] == [False] * 12 + [True] * 3
    assert {e[0].key for e in events[:15] if e} == {5} and events[15:] == [None] * 3
    assert {e[0].volume for e in events[:15] if e} == {10}


def test_keys_pauses_and_the_short_ones() -> None:
    slots = plan(DtmfRequest("#w*", 40))  # two slots a key, the end in the second
    kinds = ["k" if s else "." for s in slots]
    assert "".join(kinds) == "kkkk..." + "." * 25 + "kkkk..."
    keys = [event_of(s.payload).key for s in slots if s is not None]
    assert keys == [11] * 4 + [10] * 4
    one = plan(DtmfRequest("1", 20))
    assert one[0] is not None and one[0].marker and event_of(one[0].payload).end


def stream_with_keys(request: DtmfRequest, before: int, after: int) -> list[bytes]:
    """A continuous stream: ``before`` slots, the request's, ``after`` more; agent audio in
    every other slot that is not an event's, encoded silence in the rest."""
    name = "PCMA"
    out = OutboundStream(name, codec_pair(name)[1], RtpSender(8, continuous=True))
    presses = KeyPresses(request, EVENT_PT)
    packets: list[bytes] = []
    for n in range(before + len(plan(request)) + after):
        now = n * 0.02
        slot = presses.step() if n >= before else None
        if slot is not None:
            start = None if slot.marker else presses.start
            packet, presses.start = out.event(EVENT_PT, slot.payload, slot.marker, start, now)
            packets.append(packet)
        elif n % 2:
            packets.append(out.audio(bytes(FRAME_BYTES), False, now))
            assert out.fill(now, True) is None  # the agent's frame took the slot
        else:
            silence = out.fill(now, True)
            assert silence is not None
            packets.append(silence)
    return packets


def test_the_stream_stays_one_and_monotonic_and_the_edge_reads_the_keys_back() -> None:
    packets = [parse_rtp(p) for p in stream_with_keys(DtmfRequest("12", 100), 5, 5)]
    assert all(p is not None for p in packets)
    parsed = [p for p in packets if p is not None]
    assert len({p.ssrc for p in parsed}) == 1
    seqs = [p.sequence for p in parsed]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(len(seqs))]  # one a slot, no gap
    audio = [p.timestamp for p in parsed if p.payload_type == 8]
    assert audio == sorted(audio) and all(b - a >= 160 for a, b in itertools.pairwise(audio))
    events = [p for p in parsed if p.payload_type == EVENT_PT]
    starts = sorted({p.timestamp for p in events})
    assert len(starts) == 2  # one timestamp per key, that of its first slot
    for start in starts:
        last = max(event_of(p.payload).duration for p in events if p.timestamp == start)
        after = [ts for ts in audio if ts > start]
        assert after and after[0] >= start + last  # audio goes on past the event's end
    inbound = RtpInbound(8, EVENT_PT, lambda size: codec_pair("PCMA", size)[0])
    keys = []
    for n, data in enumerate(stream_with_keys(DtmfRequest("12", 100), 5, 5)):
        keys += inbound.receive(data, ("192.0.2.1", 4000), n * 0.02)
    assert [k.digit for k in keys] == ["1", "2"]


# -- a SipLeg on a real socket -------------------------------------------------------------


class InfoControl:
    """The SIP side as the leg sees it; INFO requests kept."""

    def __init__(self) -> None:
        self.infos: list[tuple[str, bytes]] = []

    def hangup(self, ref: str) -> None: ...

    def release(self, ref: str) -> None: ...

    async def transfer(self, ref: str, destination: str) -> None: ...

    def info(self, ref: str, content_type: str, body: bytes) -> bool:
        self.infos.append((content_type, body))
        return True


@pytest.fixture
async def peer() -> AsyncIterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    yield sock
    sock.close()


async def open_leg(peer: socket.socket, event_pt: int | None) -> tuple[SipLeg, Pacer]:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(RtpProtocol, local_addr=("127.0.0.1", 0))
    assert protocol.transport is not None
    port = protocol.transport.get_extra_info("sockname")[1]
    pacer = Pacer()
    info = LegInfo("sip", "inbound", "caller", "call_x")
    leg = SipLeg(info, "ref-1", protocol, port, InfoControl(), pacer=pacer)
    address = peer.getsockname()
    leg.set_media(Negotiated(CODECS["PCMU"], 0, event_pt, *address, "sendrecv", None, 0))
    return leg, pacer


async def listen(peer: socket.socket, into: list[tuple[float, bytes]]) -> None:
    """Every datagram to ``peer`` with its arrival time, until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        data = await loop.sock_recv(peer, 2048)
        into.append((loop.time(), data))


async def test_the_leg_sends_the_keys_in_its_stream(peer: socket.socket) -> None:
    leg, pacer = await open_leg(peer, 96)
    arrivals: list[tuple[float, bytes]] = []
    listening = asyncio.ensure_future(listen(peer, arrivals))
    try:
        await asyncio.sleep(0.2)
        await leg.send_dtmf(DtmfRequest("7#", 200))
        returned = asyncio.get_running_loop().time()
        await asyncio.sleep(0.2)
    finally:
        listening.cancel()
        await leg.close()
        await pacer.close()
    packets = [(at, p) for at, p in ((at, parse_rtp(d)) for at, d in arrivals) if p is not None]
    events = [p for _, p in packets if p.payload_type == 96]
    assert [event_of(p.payload).key for p in events] == [7] * 12 + [11] * 12  # 10 + 2 each
    assert [p.marker for p in events].count(True) == 2
    for key in (7, 11):
        mine = [p for p in events if event_of(p.payload).key == key]
        assert len({p.timestamp for p in mine}) == 1
        assert [event_of(p.payload).end for p in mine] == [False] * 9 + [True] * 3
        assert event_of(mine[-1].payload).duration == 1600  # 200 ms on the 8 kHz clock
    last_end = max(at for at, p in packets if p.payload_type == 96)
    assert returned >= last_end  # send_dtmf returns once the keys are out
    seqs = [p.sequence for _, p in packets]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(len(seqs))]
    audio = [p.timestamp for _, p in packets if p.payload_type == 0]
    assert len(audio) > 10 and all(b - a >= 160 for a, b in itertools.pairwise(audio))


async def test_without_telephone_event_the_keys_go_as_sip_info(peer: socket.socket) -> None:
    leg, pacer = await open_leg(peer, None)
    try:
        await leg.send_dtmf(DtmfRequest("4w*", 60))
    finally:
        await leg.close()
        await pacer.close()
    control = leg._control
    assert isinstance(control, InfoControl)
    assert control.infos == [
        ("application/dtmf-relay", b"Signal=4\r\nDuration=60\r\n"),
        ("application/dtmf-relay", b"Signal=*\r\nDuration=60\r\n"),
    ]


async def test_the_agents_audio_gives_way_to_the_keys_and_resumes_after(
    peer: socket.socket,
) -> None:
    """The agent speaks all along (a frame every pacer tick, before the leg's own tick, as
    the bridge's playout does): its packets stop for the key's slots and start again after
    it as a new talkspurt, one packet per slot throughout."""
    leg, pacer = await open_leg(peer, 101)
    voice = b"\x10\x27" * (FRAME_BYTES // 2)  # a loud constant frame
    pacer.subscribe(voice, lambda: leg.send_frame(voice, False))
    arrivals: list[tuple[float, bytes]] = []
    listening = asyncio.ensure_future(listen(peer, arrivals))
    try:
        await asyncio.sleep(0.2)
        await leg.send_dtmf(DtmfRequest("3", 100))
        await asyncio.sleep(0.2)
    finally:
        pacer.unsubscribe(voice)
        listening.cancel()
        await leg.close()
        await pacer.close()
    packets = [p for p in (parse_rtp(d) for _, d in arrivals) if p is not None]
    kinds = "".join("e" if p.payload_type == 101 else "a" for p in packets)
    assert kinds.count("e") == 7  # 5 slots of 20 ms, the end twice more
    assert "e" * 7 in kinds  # the key's packets in one run, no audio between them
    start = packets[kinds.index("e")].timestamp
    audio = [p for p in packets if p.payload_type == 0]
    assert not [p for p in audio if start <= p.timestamp < start + 800]  # none over the key
    after = [p for p in audio if p.timestamp > start]
    assert after and after[0].marker  # the agent's audio comes back as a new talkspurt
    slots = [p.timestamp for p in packets if p.payload_type == 0] + [
        start + 160 * k for k in range(7)
    ]
    assert len(set(slots)) == len(slots)  # one packet per slot


async def test_keys_for_a_caller_who_holds_the_call_are_refused(peer: socket.socket) -> None:
    leg, pacer = await open_leg(peer, 101)
    address = peer.getsockname()
    leg.set_media(Negotiated(CODECS["PCMU"], 0, 101, *address, "recvonly", None, 0))
    try:
        with pytest.raises(NotSupported, match="holds the call"):
            await leg.send_dtmf(DtmfRequest("1"))
    finally:
        await leg.close()
        await pacer.close()
