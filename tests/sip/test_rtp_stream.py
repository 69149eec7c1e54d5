"""The edge's RTP toward a SIP caller as a PBX sees it, real sockets: a packet every 20 ms
for the whole call (encoded silence while the agent is quiet), nothing but RTCP while the
caller holds the call, and sender reports whose RTP timestamp matches their NTP time.

The test is the caller (``test_udp_edge.Caller``: SIP written out by hand) with its own
RTP socket and an RTCP socket named by ``a=rtcp`` (RFC 3605). The demo agent core greets
with a 1.5 s chime, then stays quiet: the caller says nothing. With early media, the
stream starts at the 183 with the edge's SDP.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import Any

import pytest

from telephony_edge.sip import leg as sip_leg
from telephony_edge.sip.provider import SIP_ENDPOINT
from telephony_edge.sip.rtcp import NTP_EPOCH_OFFSET, parse_rtcp
from telephony_edge.sip.rtp import RtpPacket, parse_rtp
from tests.conftest import Edge, Receiver, wait_for
from tests.sip.conftest import register, sip_test_settings
from tests.sip.test_udp_edge import (
    Caller,
    Socket,
    media_port,
    open_socket,
    pcmu,
    sdp,
    start_call,
)

SILENCE = b"\xff" * 160  # PCMU
REPORT_S = 0.4


def offer(rtp: Socket, rtcp: Socket, direction: str = "sendrecv") -> str:
    return sdp(rtp.port, direction) + f"a=rtcp:{rtcp.port}\r\n"


def arrivals(
    sock: Socket, since: float = 0.0, until: float = 1e18
) -> list[tuple[float, RtpPacket]]:
    """(arrival time, packet) of the RTP the edge sent to ``sock``, in arrival order."""
    parsed = ((t, parse_rtp(data)) for data, _, t in sock.log if since <= t < until)
    return [(t, p) for t, p in parsed if p is not None]


def assert_continuous(packets: list[RtpPacket]) -> None:
    """One stream: every sequence number in turn, the timestamp 160 on per packet."""
    first = packets[0]
    for a, b in itertools.pairwise(packets):
        assert (b.sequence - a.sequence) & 0xFFFF == 1, (a, b)
        assert (b.timestamp - a.timestamp) & 0xFFFFFFFF == 160, (a, b)
    assert {p.ssrc for p in packets} == {first.ssrc}


@pytest.fixture
def quick_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    """RTCP every 0.4 s rather than every ~5 s (RFC 3550 §6.3), so a test sees several."""
    monkeypatch.setattr(sip_leg, "report_interval", lambda first, rng: REPORT_S)


async def call(edge: Edge, direction: str = "sendrecv") -> tuple[Caller, Socket, Socket]:
    rtp, rtcp = await open_socket(), await open_socket()
    caller, _ = await start_call(edge, offer(rtp, rtcp, direction))
    caller.send(caller.request("ACK", cseq=caller.cseq))
    return caller, rtp, rtcp


async def hang_up(caller: Caller, receiver: Receiver, *socks: Socket) -> None:
    caller.send(caller.request("BYE"))
    assert (await caller.response("BYE")).status == 200
    await wait_for(lambda: receiver.received, within=10)
    for sock in (*socks, caller.sip):
        sock.close()


async def test_the_caller_gets_rtp_every_20_ms_for_the_whole_call_silence_while_agent_is_quiet(
    sip_edge: Edge, receiver: Receiver
) -> None:
    caller, rtp, rtcp = await call(sip_edge)
    loop = asyncio.get_running_loop()
    await wait_for(lambda: rtp.log, within=5)
    start = loop.time()
    # the 1.5 s greeting, then the agent says nothing for as long again
    await wait_for(lambda: loop.time() - start > 4.0, within=6)
    seen, until = arrivals(rtp), loop.time()
    await hang_up(caller, receiver, rtp, rtcp)

    packets = [p for _, p in seen]
    assert_continuous(packets)
    times = [t for t, _ in seen]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    span = times[-1] - times[0]
    assert span > 3.9 and until - times[-1] < 0.1  # to the end of the call
    assert abs(len(packets) - 1 - span / 0.02) < 0.05 * span / 0.02  # 50 a second
    assert max(gaps) < 0.1, max(gaps)  # never a pause (a busy machine may bunch a few)
    assert sorted(gaps)[len(gaps) // 2] == pytest.approx(0.02, abs=0.004)
    speech = [n for n, p in enumerate(packets) if p.payload != SILENCE]
    assert speech, "the greeting"
    quiet = packets[speech[-1] + 1 :]
    assert len(quiet) > 75, len(quiet)  # > 1.5 s of encoded silence after the greeting
    assert all(p.payload == SILENCE for p in quiet)
    # the marker bit: the stream's first packet and the greeting's first, no other
    assert [n for n, p in enumerate(packets) if p.marker] == sorted({0, speech[0]})


async def test_hold_stops_rtp_keeps_rtcp_and_resume_continues_the_numbering(
    sip_edge: Edge, receiver: Receiver, quick_reports: None
) -> None:
    caller, rtp, rtcp = await call(sip_edge)
    loop = asyncio.get_running_loop()
    await wait_for(lambda: len(rtp.log) > 25, within=5)
    caller.send(caller.request("INVITE", offer(rtp, rtcp, "sendonly")))
    held = await caller.response("INVITE")
    held_at = loop.time()
    assert held.status == 200 and b"a=recvonly" in held.body
    caller.send(caller.request("ACK", cseq=caller.cseq))
    await asyncio.sleep(2.0)  # the greeting plays meanwhile, to nobody
    caller.send(caller.request("INVITE", offer(rtp, rtcp, "sendrecv")))
    resumed = await caller.response("INVITE")
    resumed_at = loop.time()
    assert resumed.status == 200 and b"a=sendrecv" in resumed.body
    caller.send(caller.request("ACK", cseq=caller.cseq))
    await asyncio.sleep(0.6)
    edge_rtp = ("127.0.0.1", media_port(resumed.body))
    reports = [(t, parse_rtcp(d)) for d, addr, t in rtcp.log if addr[1] == edge_rtp[1] + 1]
    await hang_up(caller, receiver, rtp, rtcp)

    during = arrivals(rtp, held_at + 0.05, resumed_at)
    assert during == []  # no RTP while held
    in_hold = [r for t, r in reports if held_at < t < resumed_at]
    assert len(in_hold) >= 3, reports  # RTCP went on (RFC 3264 §5.1), every 0.4 s here
    assert all(r is not None for r in in_hold)
    senders = [r[0].sender is not None for r in in_hold if r is not None]
    # RFC 3550 §6.4: an SR until nothing was sent for two intervals, then RR
    assert senders[-1] is False and senders == sorted(senders, reverse=True)
    before = arrivals(rtp, 0.0, held_at + 0.05)
    after = arrivals(rtp, resumed_at)
    assert len(after) > 20
    last, first = before[-1], after[0]
    assert (first[1].sequence - last[1].sequence) & 0xFFFF == 1  # no number skipped
    slots = ((first[1].timestamp - last[1].timestamp) & 0xFFFFFFFF) / 160
    assert slots == int(slots)  # the 20 ms grid kept
    assert slots * 0.02 == pytest.approx(first[0] - last[0], abs=0.06)  # the hold's length
    assert_continuous([p for _, p in before])
    assert_continuous([p for _, p in after])


async def test_sender_reports_rtp_timestamp_matches_their_ntp_time(
    sip_edge: Edge, receiver: Receiver, quick_reports: None
) -> None:
    caller, rtp, rtcp = await call(sip_edge)
    loop = asyncio.get_running_loop()
    await wait_for(lambda: rtp.log, within=5)
    start = loop.time()
    # the reports through the greeting and the quiet after it
    await wait_for(lambda: loop.time() - start > 4.0, within=6)
    wall_minus_loop = time.time() - loop.time()
    seen = arrivals(rtp)
    reports = [(t, parse_rtcp(d)) for d, _, t in rtcp.log]
    await hang_up(caller, receiver, rtp, rtcp)

    srs = [(t, r[0].sender) for t, r in reports if r and r[0].sender is not None]
    assert len(srs) >= 8, reports  # one every 0.4 s, the quiet part included
    for arrived, sender in srs:
        assert sender is not None
        sent_at = sender.ntp / 2**32 - NTP_EPOCH_OFFSET - wall_minus_loop  # in loop time
        assert sent_at == pytest.approx(arrived, abs=0.05)
        # the RTP packet sent last before the report, and the time between the two
        t, packet = max(((t, p) for t, p in seen if t <= arrived), key=lambda tp: tp[0])
        elapsed = ((sender.rtp_timestamp - packet.timestamp + 2**31) & 0xFFFFFFFF) - 2**31
        assert elapsed / 8000 == pytest.approx(sent_at - t, abs=0.04), (elapsed, sent_at - t)
    for (_, a), (_, b) in itertools.pairwise(srs):  # and between reports, RTP time = NTP time
        assert a is not None and b is not None
        ntp_s = (b.ntp - a.ntp) / 2**32
        rtp_s = ((b.rtp_timestamp - a.rtp_timestamp) & 0xFFFFFFFF) / 8000
        assert rtp_s == pytest.approx(ntp_s, abs=0.015)
    assert any(p.payload == SILENCE for _, p in seen[-50:])  # the quiet part was covered


async def test_early_media_rtp_flows_from_the_183_and_continues_through_the_answer(
    make_edge: Callable[..., Any], receiver: Receiver
) -> None:
    edge: Edge = await make_edge(sip_test_settings(receiver, {"early_media": True, "ring_s": 1.0}))
    rtp, rtcp = await open_socket(), await open_socket()
    reg = await register(edge)
    endpoint = edge.app[SIP_ENDPOINT]
    caller = Caller(("127.0.0.1", endpoint.port), reg["call_id"], await open_socket())
    loop = asyncio.get_running_loop()
    caller.send(caller.request("INVITE", offer(rtp, rtcp)))
    progress = await caller.response("INVITE", final=False)
    while progress.status == 100:
        progress = await caller.response("INVITE", final=False)
    assert progress.status == 183 and b"m=audio" in progress.body
    edge_rtp = ("127.0.0.1", media_port(progress.body))
    for n in range(10):  # the caller's early RTP: not the agent's to hear, nobody's yet
        rtp.send(pcmu(n), edge_rtp)
    ok = await caller.response("INVITE", within=5)
    answered_at = loop.time()
    assert ok.status == 200
    leg = endpoint.legs[next(iter(endpoint.legs))]
    assert leg.frames_in == 0
    caller.send(caller.request("ACK", cseq=caller.cseq))
    await asyncio.sleep(1.0)
    seen = arrivals(rtp)
    await hang_up(caller, receiver, rtp, rtcp)

    early = [p for t, p in seen if t < answered_at]
    assert len(early) > 35, len(early)  # about 50 in the second of ringing
    assert all(p.payload == SILENCE for p in early)
    assert_continuous([p for _, p in seen])  # one stream through the answer
