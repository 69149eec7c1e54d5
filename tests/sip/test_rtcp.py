"""RTCP without sockets: packets both ways, reception statistics, jitter, round-trip time."""

from __future__ import annotations

import random
import struct

from hypothesis import given
from hypothesis import strategies as st

from telephony_edge.sip.leg import codec_pair
from telephony_edge.sip.rtcp import (
    MAX_RTCP_SIZE,
    ReceptionStats,
    ReportBlock,
    RtcpSession,
    SenderInfo,
    build_bye,
    build_report,
    build_sdes_cname,
    ntp_middle,
    ntp_time,
    parse_rtcp,
    report_interval,
)
from telephony_edge.sip.rtp import RtpInbound, build_rtp
from telephony_edge.sip.rtp_source import SourceLearner

BLOCK = ReportBlock(0xCAFE, 25, -3, 0x1_0005, 80, 0x1234_5678, 65536)


def test_sr_with_a_block_and_sdes_round_trips() -> None:
    sender = SenderInfo(ntp_time(1_700_000_000.25), 16000, 250, 40000)
    compound = build_report(0xBEEF, sender, (BLOCK,)) + build_sdes_cname(0xBEEF, "edge@x")
    assert len(compound) % 4 == 0
    [report] = parse_rtcp(compound) or []
    assert report.ssrc == 0xBEEF and report.sender == sender
    assert report.blocks == (BLOCK,)


def test_rr_and_bye_round_trip() -> None:
    compound = build_report(7, None, ()) + build_bye(7)
    [report] = parse_rtcp(compound) or []
    assert (report.ssrc, report.sender, report.blocks) == (7, None, ())


def test_malformed_compounds_are_refused() -> None:
    rr = build_report(7, None, (BLOCK,))
    sdes = build_sdes_cname(7, "x")
    assert parse_rtcp(b"") is None
    assert parse_rtcp(rr[:-4]) is None  # the length says more than there is
    assert parse_rtcp(rr + b"\x00\x00") is None  # trailing bytes that are no packet
    assert parse_rtcp(sdes + rr) is None  # a compound starts with SR or RR
    assert parse_rtcp(bytes([0x40]) + rr[1:]) is None  # version 1
    assert parse_rtcp(bytes([0x82]) + rr[1:]) is None  # two blocks announced, one there
    padded_first = bytes([rr[0] | 0x20]) + rr[1:]
    assert parse_rtcp(padded_first + sdes) is None  # padding only in the last packet
    assert parse_rtcp(rr + sdes * (MAX_RTCP_SIZE // len(sdes))) is None  # too long


@given(st.binary(max_size=200))
def test_random_bytes_never_raise(data: bytes) -> None:
    session = RtcpSession("edge")
    assert session.receive(data, 1.0, 7) is (parse_rtcp(data) is not None)
    assert session.received + session.malformed == 1


@given(st.binary(min_size=1, max_size=60), st.integers(0, 200))
def test_a_valid_report_with_a_mutated_byte_never_raises(noise: bytes, at: int) -> None:
    data = bytearray(build_report(7, SenderInfo(1, 2, 3, 4), (BLOCK,)) + build_bye(7))
    data[at % len(data)] = noise[0]
    parse_rtcp(bytes(data) + noise[1:])


def test_jitter_follows_rfc3550_a8_on_a_synthetic_arrival_series() -> None:
    stats = ReceptionStats(8000)
    offsets_ms = [0, 10] * 50  # every other packet 10 ms late: |D| = 80 timestamp units
    for n, offset in enumerate(offsets_ms):
        stats.packet(n)
        stats.arrival(160 * n + 8 * offset, 160 * n)  # arrival in 8 kHz units
    expected = 0.0
    for _ in range(len(offsets_ms) - 1):
        expected += (80 - expected) / 16
    assert abs(stats.jitter - expected) < 1e-9
    assert 9.9 < stats.jitter_ms < 10.0  # converged on 10 ms
    steady = ReceptionStats(8000)
    for n in range(50):
        steady.packet(n)
        steady.arrival(int(1000 + n * 160), 5_000 + 160 * n)
    assert steady.jitter == 0.0


def test_loss_counts_and_fraction_across_a_wrap_and_a_restart() -> None:
    stats = ReceptionStats()
    for seq in (65530, 65531, 65533, 65533, 65535, 1, 2):  # 65532, 65534, 0 lost; a dup
        stats.packet(seq)
    assert stats.expected == 9 and stats.packets_received == 7
    assert stats.packets_lost == 2  # RFC 3550: duplicates offset losses
    block = stats.block(0xAA, 0, 0)
    assert block.highest_seq == 0x1_0002 and block.cumulative_lost == 2
    assert block.fraction_lost == 2 * 256 // 9
    for seq in (3, 4):
        stats.packet(seq)
    assert stats.block(0xAA, 0, 0).fraction_lost == 0  # nothing lost this interval
    stats.packet(40_000)  # a jump: the sender restarted
    stats.packet(40_002)
    assert stats.packets_received == 11 and stats.packets_lost == 3


def test_round_trip_time_from_lsr_and_dlsr() -> None:
    edge = RtcpSession("edge")
    sr = edge.report(100.0, 0xE, (50, 8000, 1234), None)
    [ours] = parse_rtcp(sr) or []
    assert ours.sender is not None and ours.sender.packets == 50
    # the caller holds our SR 0.2 s, its reply takes 0.05 s in all to travel
    reply = build_report(
        0xC, None, (ReportBlock(0xE, 0, 0, 10, 0, (ours.sender.ntp >> 16) & 0xFFFFFFFF, 13107),)
    )
    assert edge.receive(reply, 100.25, 0xE)
    assert edge.rtt is not None and abs(edge.rtt - 0.05) < 0.001 and edge.rtt_samples == 1
    # a block about another SSRC is ignored
    other = RtcpSession("edge")
    assert other.receive(reply, 100.25, 0xF) and other.rtt is None


def test_report_is_sr_while_sending_rr_two_intervals_after_and_carries_lsr_dlsr() -> None:
    edge = RtcpSession("edge")
    caller_sr = build_report(0xC, SenderInfo(ntp_time(10.0), 0, 1, 160), ())
    assert edge.receive(caller_sr, 10.0, 0xE)
    stats = ReceptionStats()
    stats.packet(1)
    first = parse_rtcp(edge.report(10.5, 0xE, (3, 480, 0), (0xC, stats)))
    again = parse_rtcp(edge.report(15.5, 0xE, (3, 480, 0), (0xC, stats)))
    then = parse_rtcp(edge.report(20.5, 0xE, (3, 480, 0), (0xC, stats)))
    assert first and again and then
    # RFC 3550 §6.4: a sender until it has sent nothing since the report before the last
    assert first[0].sender is not None and again[0].sender is not None
    assert then[0].sender is None
    [block] = first[0].blocks
    assert block.ssrc == 0xC and block.lsr == ntp_middle(10.0)
    assert abs(block.dlsr / 65536 - 0.5) < 0.001


def test_report_interval_is_randomised_around_the_minimum() -> None:
    rng = random.Random(3)
    first = [report_interval(True, rng) for _ in range(200)]
    later = [report_interval(False, rng) for _ in range(200)]
    assert min(first) > 1.0 and max(first) < 3.1
    assert min(later) > 2.0 and max(later) < 6.2 and len(set(later)) == 200


def test_inbound_rtp_feeds_reception_statistics_as_it_arrives() -> None:
    peer = ("192.0.2.1", 4000)
    rx = RtpInbound(
        8, 101, lambda size: codec_pair("PCMA", size)[0], sources=SourceLearner(peer, 0.0)
    )
    for n, seq in enumerate((1, 3, 2, 5)):  # 4 lost, 2 reordered
        rx.receive(build_rtp(8, seq, seq * 160, 9, False, b"\xd5" * 160), peer, n * 0.02)
    rx.receive(struct.pack("!BBHII", 0x80, 101, 6, 0, 9) + b"\x01\x80\x00\xa0", peer, 0.1)
    assert rx.ssrc == 9
    assert (rx.reception.packets_received, rx.reception.packets_lost) == (5, 1)
    assert rx.reception.jitter > 0  # the reordered packets arrived off their clock
