"""RTP parsing, the source rule, handing audio to the playout buffer, RFC 4733 and
numbering, without sockets (the source rule on its own: ``test_rtp_source.py``; the
playout buffer: ``test_playout.py``)."""

from __future__ import annotations

import struct

from telephony_edge.sip.rtp import DtmfDigit, RtpInbound, RtpSender, build_rtp, parse_rtp
from telephony_edge.sip.rtp_source import SourceLearner

PEER = ("192.0.2.10", 40000)
STRANGER = ("198.51.100.7", 40000)


class Marks:
    """A stand-in codec for ordering tests: each payload byte ``b`` becomes one tick of PCM,
    two loud samples whose low byte is ``b``, so a frame shows which packet it came from."""

    def decode(self, payload: bytes) -> bytes:
        return b"".join(bytes((b, 0x50)) * 2 for b in payload)


def inbound(audio_pt: int, event_pt: int | None) -> RtpInbound:
    """The receiver of a call whose SDP named ``PEER``."""
    return RtpInbound(audio_pt, event_pt, lambda _: Marks(), sources=SourceLearner(PEER, 0.0))


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


def played(rx: RtpInbound, pulls: int, start: float = 1.0) -> list[int | None]:
    """The packet marks of ``pulls`` frames pulled 20 ms apart (None: not one packet's)."""
    frames = [rx.pull(start + n * 0.02) or b"" for n in range(pulls)]
    return [f[0] if f and f == bytes((f[0], 0x50)) * (len(f) // 2) else None for f in frames]


def test_takes_the_sdp_address_and_drops_strangers() -> None:
    rx = inbound(8, 101)
    assert rx.receive(audio(1, 0), STRANGER, 0.0) == []  # before the caller: held, not taken
    rx.receive(audio(1, 0), PEER, 0.0)
    rx.receive(audio(2, 160), STRANGER, 0.0)
    rx.receive(audio(2, 160), PEER, 0.0)
    assert rx.source == PEER and rx.stats.strangers == 2  # the held one too, once let go
    rx.receive(build_rtp(0, 3, 320, 7, False, b"x"), PEER, 0.0)  # PT not negotiated
    assert rx.stats.unknown_payload_type == 1
    assert [m for m in played(rx, 6, 0.0) if m is not None] == [1, 2]  # not the stranger's


def test_sequence_and_timestamp_wrap_play_in_order() -> None:
    rx = inbound(8, None)
    wrapping = ((65534, 0xFFFFFF00), (65535, 0xFFFFFFA0), (0, 0x40), (1, 0xE0))
    for n, (seq, ts) in enumerate(wrapping):
        rx.receive(audio(seq, ts), PEER, n * 0.02)
    assert played(rx, 5, 0.07) == [254, 255, 0, 1, None]


def test_a_new_ssrc_from_the_latched_source_is_a_new_timeline() -> None:
    rx = inbound(8, None)
    rx.receive(audio(100, 0), PEER, 0.0)
    rx.receive(audio(5000, 99_999, ssrc=8), PEER, 0.0)
    assert rx.stats.ssrc_changes == 1 and rx.playout.stats.resyncs == 1
    assert 5000 & 0xFF in played(rx, 4, 0.0)


def test_rfc4733_key_reported_at_its_first_packet_once() -> None:
    rx = inbound(8, 101)
    first = rx.receive(event(1, 4000, 5, False), PEER, 0.0)
    assert first == [DtmfDigit("5")]  # as the caller presses, not when the key is let go
    events = []
    seq = 2
    for end in (False, True, True, True):  # updates and the three end packets: the same key
        events += rx.receive(event(seq, 4000, 5, end), PEER, 0.0)
        seq += 1
    events += rx.receive(event(seq, 6000, 11, True), PEER, 0.0)  # only its end got through
    assert events == [DtmfDigit("#")]


def test_duplicated_end_packets_never_make_the_loss_negative() -> None:
    rx = inbound(8, 101)
    for seq in range(1, 4):
        rx.receive(event(seq, 4000, 5, seq == 3), PEER, 0.0)
    for _ in range(5):  # a gateway repeating its end packet with the same sequence number
        rx.receive(event(3, 4000, 5, True), PEER, 0.0)
    assert rx.reception.packets_lost == 0
    block = rx.reception.block(1, 0, 0)
    assert block.cumulative_lost == 0 and block.fraction_lost == 0


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


def test_a_natted_caller_is_learned_and_its_first_packets_are_not_lost() -> None:
    learner = SourceLearner(("10.0.0.9", 4000), 0.0, learn_packets=4)
    rx = RtpInbound(8, None, lambda _: Marks(), sources=learner)
    for n in range(3):
        rx.receive(audio(10 + n, n * 160), PEER, n * 0.02)
    assert rx.pull(0.06) is None and rx.source is None  # on probation: nothing taken yet
    rx.receive(audio(13, 480), PEER, 0.06)
    assert rx.source == PEER
    assert [m for m in played(rx, 8, 0.08) if m is not None] == [10, 11, 12, 13]
    assert rx.reception.packets_received == 4 and rx.reception.packets_lost == 0
