"""RTP parsing, latching, reordering, concealment, RFC 4733 and numbering, without sockets."""

from __future__ import annotations

import struct

from telephony_edge.sip.rtp import (
    Audio,
    DtmfDigit,
    RtpInbound,
    RtpSender,
    build_rtp,
    parse_rtp,
)

PEER = ("192.0.2.10", 40000)
STRANGER = ("198.51.100.7", 40000)


def audio(seq: int, ts: int, *, ssrc: int = 7, marker: bool = False, size: int = 160) -> bytes:
    return build_rtp(8, seq, ts, ssrc, marker, bytes([seq & 0xFF]) * size)


def event(seq: int, ts: int, key: int, end: bool, duration: int = 800) -> bytes:
    body = struct.pack("!BBH", key, (0x80 if end else 0) | 10, duration)
    return build_rtp(101, seq, ts, 7, False, body)


def test_parse_skips_csrcs_extension_and_padding() -> None:
    header = struct.pack("!BBHII", 0x80 | 0x20 | 0x10 | 2, 0x80 | 8, 1, 2, 3)
    csrcs = struct.pack("!II", 11, 12)
    extension = struct.pack("!HH", 0xBEDE, 1) + b"\x00" * 4
    packet = parse_rtp(header + csrcs + extension + b"abc" + b"\x00\x02")
    assert packet is not None
    assert (packet.payload_type, packet.marker) == (8, True)
    assert (packet.sequence, packet.timestamp) == (1, 2)
    assert packet.payload == b"abc"


def test_parse_refuses_what_is_not_rtp() -> None:
    assert parse_rtp(b"\x80\x08") is None  # short
    assert parse_rtp(struct.pack("!BBHII", 0x40, 8, 1, 2, 3)) is None  # version 1
    assert parse_rtp(struct.pack("!BBHII", 0x80, 200, 1, 2, 3)) is None  # RTCP SR
    assert parse_rtp(struct.pack("!BBHII", 0x8F, 8, 1, 2, 3)) is None  # CSRCs past the end
    assert parse_rtp(struct.pack("!BBHII", 0xA0, 8, 1, 2, 3) + b"\x00") is None  # padding 0


def payloads(events: list[object]) -> list[int]:
    return [e.payload[0] for e in events if isinstance(e, Audio)]


def test_latches_to_the_first_source_and_drops_strangers() -> None:
    rx = RtpInbound(8, 101)
    assert payloads(rx.receive(audio(1, 0), PEER, 0.0)) == [1]
    assert rx.receive(audio(2, 160), STRANGER, 0.0) == []
    assert payloads(rx.receive(audio(2, 160), PEER, 0.0)) == [2]
    assert rx.source == PEER and rx.stats.strangers == 1
    assert rx.receive(build_rtp(0, 3, 320, 7, False, b"x"), PEER, 0.0) == []  # PT not negotiated
    assert rx.stats.unknown_payload_type == 1


def test_reorders_drops_duplicates_and_counts_a_loss() -> None:
    rx = RtpInbound(8, None, depth=3)
    out: list[int] = []
    for seq in (10, 12, 12, 11, 13, 9):  # 12 twice while held; 9 after its turn
        out += payloads(rx.receive(audio(seq, seq * 160), PEER, 0.0))
    assert out == [10, 11, 12, 13]
    assert (rx.stats.duplicates, rx.stats.late) == (1, 1)
    # 14 lost: released once three later packets wait, its 20 ms concealed with silence
    events = []
    for seq in (15, 16, 17):
        events += rx.receive(audio(seq, seq * 160), PEER, 0.0)
    assert payloads(events) == [15, 16, 17]
    assert isinstance(events[0], Audio) and events[0].silence_samples == 160
    assert rx.stats.lost == 1 and rx.stats.concealed_samples == 160


def test_sequence_wraps_and_a_new_talkspurt_is_not_concealed() -> None:
    rx = RtpInbound(8, None)
    out = []
    for seq, ts in ((65534, 0), (65535, 160), (0, 320), (1, 8000)):
        out += rx.receive(audio(seq, ts, marker=ts == 8000), PEER, 0.0)
    assert payloads(out) == [254, 255, 0, 1]
    assert all(isinstance(e, Audio) and e.silence_samples == 0 for e in out)


def test_a_new_ssrc_from_the_latched_source_is_a_new_stream() -> None:
    rx = RtpInbound(8, None)
    rx.receive(audio(100, 0), PEER, 0.0)
    assert payloads(rx.receive(audio(5000, 99, ssrc=8), PEER, 0.0)) == [5000 & 0xFF]
    assert rx.stats.ssrc_changes == 1


def test_rfc4733_key_reported_once_at_its_end() -> None:
    rx = RtpInbound(8, 101)
    events = []
    seq = 1
    for end in (False, False, True, True, True):
        events += rx.receive(event(seq, 4000, 5, end), PEER, 0.0)
        seq += 1
    events += rx.receive(event(seq, 6000, 11, True), PEER, 0.0)
    assert events == [DtmfDigit("5"), DtmfDigit("#")]


def test_sender_numbers_packets_and_marks_talkspurts() -> None:
    tx = RtpSender(8, ssrc=42, seq=65535, ts=1000)
    first = parse_rtp(tx.packet(b"\x00" * 160, 160, 10.0, True))
    second = parse_rtp(tx.packet(b"\x00" * 160, 160, 10.02, False))
    after_pause = parse_rtp(tx.packet(b"\x00" * 160, 160, 11.02, True))
    assert first and second and after_pause
    assert (first.sequence, second.sequence, after_pause.sequence) == (65535, 0, 1)
    assert (first.marker, second.marker, after_pause.marker) == (True, False, True)
    assert second.timestamp == 1160
    assert after_pause.timestamp == 1160 + 8000  # one second of pause at 8 kHz
    assert {first.ssrc, second.ssrc, after_pause.ssrc} == {42}
