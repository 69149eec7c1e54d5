"""The SIP leg's media watch without a SIP peer: the RTP timeout's exceptions, RTCP muxed
on the RTP port, ``media_stats``. Packets go straight to ``on_rtp`` (the socket's callback);
the sipp tests (``test_sipp_media.py``) cover the same over real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from telephony_edge.calls.leg import LegEnded, LegInfo
from telephony_edge.calls.pacing import Pacer
from telephony_edge.sip.leg import SipLeg
from telephony_edge.sip.rtcp import ReportBlock, build_report, build_sdes_cname
from telephony_edge.sip.rtp import build_rtp
from telephony_edge.sip.rtp_socket import RtpProtocol
from telephony_edge.sip.sdp import CODECS, Negotiated

PEER = ("192.0.2.10", 40000)


class NoControl:
    def __init__(self) -> None:
        self.hangups = 0

    def hangup(self, ref: str) -> None:
        self.hangups += 1

    def release(self, ref: str) -> None: ...


def media(direction: str = "sendrecv") -> Negotiated:
    return Negotiated(CODECS["PCMA"], 8, 101, *PEER, direction, None, 0)


@pytest.fixture
async def leg() -> AsyncIterator[SipLeg]:
    info = LegInfo("sip", "inbound", "caller", "call_x")
    sip_leg = SipLeg(
        info, "ref-1", RtpProtocol(), 40000, NoControl(), rtp_timeout_s=0.3, pacer=Pacer()
    )
    yield sip_leg
    await sip_leg.close()


async def test_no_rtp_timeout_while_the_caller_only_listens_then_it_ends_the_leg(
    leg: SipLeg,
) -> None:
    leg.set_media(media("sendonly"))  # ours: the caller answered recvonly
    await asyncio.sleep(0.7)
    assert leg._ended is None
    leg.set_media(media("sendrecv"))
    ended = await asyncio.wait_for(leg.recv(), 2)
    assert ended == LegEnded("rtp-timeout", "no RTP for 0.3s", timeout=True)


async def test_rtp_keeps_the_call_up(leg: SipLeg) -> None:
    leg.set_media(media())
    for n in range(40):
        leg.on_rtp(build_rtp(8, n, 160 * n, 7, n == 0, b"\xd5" * 160), PEER)
        await asyncio.sleep(0.02)
    assert leg._ended is None
    assert 35 <= leg.frames_in <= 41  # one a pacer tick, from the first packet on


async def test_rtcp_muxed_on_the_rtp_port_is_read_and_bad_rtcp_only_counted(
    leg: SipLeg,
) -> None:
    leg.set_media(media())
    assert leg.sender is not None
    rr = build_report(7, None, (ReportBlock(leg.sender.ssrc, 0, 0, 1, 0, 0, 0),))
    leg.on_rtp(rr + build_sdes_cname(7, "caller"), PEER)
    leg.on_rtp(rr[:-4], PEER)  # the length says more than there is
    leg.on_rtp(rr, ("198.51.100.1", 40001))  # not the caller's host: ignored
    assert (leg.rtcp.received, leg.rtcp.malformed) == (1, 1)
    assert leg.inbound is not None and leg.inbound.stats.received == 0  # none taken as RTP


async def test_media_stats_for_voip_media(leg: SipLeg) -> None:
    assert await leg.media_stats() == {}  # nothing negotiated yet
    leg.set_media(media())
    for n in (0, 1, 2, 4, 5, 6, 7, 8):  # 3 lost
        leg.on_rtp(build_rtp(8, n, 160 * n, 7, n == 0, b"\xd5" * 160), PEER)
    stats = await leg.media_stats()
    assert stats == {
        "codec": "PCMA",
        "packets_received": 8,
        "packets_lost": 1,
        "fraction_lost": round(1 / 9, 4),
        "jitter_ms": stats["jitter_ms"],
        "late_packets": 0,
        "jitter_buffer": stats["jitter_buffer"],
        "packets_sent": 0,
        "silence_packets_sent": 0,
    }
    assert stats["jitter_buffer"]["target_ms"] == 40  # where it starts, before any jitter
    assert stats["jitter_ms"] >= 0  # no rtt_ms: the caller sent no report about us
