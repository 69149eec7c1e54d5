"""RTP parsing, the source rule, reordering, concealment, RFC 4733 and numbering, without
sockets (the source rule on its own: ``test_rtp_source.py``)."""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence

from telephony_edge.sip.rtp import (
    SHRINK_AFTER,
    Audio,
    DtmfDigit,
    RtpInbound,
    RtpSender,
    build_rtp,
    parse_rtp,
)
from telephony_edge.sip.rtp_source import SourceLearner

PEER = ("192.0.2.10", 40000)
STRANGER = ("198.51.100.7", 40000)


def inbound(audio_pt: int, event_pt: int | None, **options: int) -> RtpInbound:
    """The receiver of a call whose SDP named ``PEER``."""
    return RtpInbound(audio_pt, event_pt, sources=SourceLearner(PEER, 0.0), **options)


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


def payloads(events: Sequence[object]) -> list[int]:
    return [e.payload[0] for e in events if isinstance(e, Audio)]


def test_takes_the_sdp_address_and_drops_strangers() -> None:
    rx = inbound(8, 101)
    assert rx.receive(audio(1, 0), STRANGER, 0.0) == []  # before the caller: held, not taken
    assert payloads(rx.receive(audio(1, 0), PEER, 0.0)) == [1]
    assert rx.receive(audio(2, 160), STRANGER, 0.0) == []
    assert payloads(rx.receive(audio(2, 160), PEER, 0.0)) == [2]
    assert rx.source == PEER and rx.stats.strangers == 2  # the held one too, once let go
    assert rx.receive(build_rtp(0, 3, 320, 7, False, b"x"), PEER, 0.0) == []  # PT not negotiated
    assert rx.stats.unknown_payload_type == 1


def test_reorders_drops_duplicates_and_counts_a_loss() -> None:
    rx = inbound(8, None, depth=3)
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
    rx = inbound(8, None)
    out = []
    for seq, ts in ((65534, 0), (65535, 160), (0, 320), (1, 8000)):
        out += rx.receive(audio(seq, ts, marker=ts == 8000), PEER, 0.0)
    assert payloads(out) == [254, 255, 0, 1]
    assert all(isinstance(e, Audio) and e.silence_samples == 0 for e in out)


def test_a_new_ssrc_from_the_latched_source_is_a_new_stream() -> None:
    rx = inbound(8, None)
    rx.receive(audio(100, 0), PEER, 0.0)
    assert payloads(rx.receive(audio(5000, 99, ssrc=8), PEER, 0.0)) == [5000 & 0xFF]
    assert rx.stats.ssrc_changes == 1


def test_rfc4733_key_reported_once_at_its_end() -> None:
    rx = inbound(8, 101)
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


def feed(rx: RtpInbound, arrivals: list[tuple[float, int]]) -> list[Audio]:
    """Packets (arrival ms, seq) in arrival order; a tie goes to the later packet first."""
    out: list[Audio] = []
    for at, seq in sorted(arrivals, key=lambda a: (a[0], -a[1])):
        out += [
            e for e in rx.receive(audio(seq, seq * 160), PEER, at / 1000) if isinstance(e, Audio)
        ]
    return out


def test_60_ms_of_jitter_is_absorbed_without_gaps() -> None:
    rng = random.Random(7)
    arrivals = [(20.0 * n + rng.uniform(0, 60), n) for n in range(1000)]
    arrivals += [(20.0 * n + 60, n) for n in range(1000, 1100, 10)]  # the worst case: 60 ms
    arrivals += [(20.0 * n, n) for n in range(1000, 1100) if n % 10]  # behind, the rest on time
    rx = inbound(8, None)
    out = feed(rx, arrivals)
    out += [e for e in rx.drain() if isinstance(e, Audio)]
    assert [e.payload[0] for e in out] == [n & 0xFF for n in range(1100)]  # complete, in order
    assert all(e.silence_samples == 0 for e in out)  # no concealment: nothing was missing
    assert (rx.stats.lost, rx.stats.late, rx.stats.concealed_samples) == (0, 0, 0)
    assert rx.reception.jitter_ms > 5


def test_duplicates_reordering_and_losses_in_one_stream() -> None:
    script = [0, 1, 3, 2, 2, 4, 1, 6, 7, 8, 9, 10, 11, 12, 13, 15, 14, 16, 17, 18, 19, 20, 21]
    # 2 duplicated while in order, 1 duplicated after release; 5 lost; 14/15 swapped;
    # 22 and 23 lost in a row at the end of a run that goes on to 30
    script += [24, 25, 26, 27, 28, 29, 30]
    rx = inbound(8, None)
    out = feed(rx, [(20.0 * i, seq) for i, seq in enumerate(script)])
    got = [e.payload[0] for e in out]
    assert got == [n for n in range(31) if n not in (5, 22, 23)]
    silence = {e.payload[0]: e.silence_samples for e in out if e.silence_samples}
    assert silence == {6: 160, 24: 320}  # each loss concealed by its own length
    assert (rx.stats.duplicates, rx.stats.lost, rx.stats.late) == (2, 3, 0)
    assert rx.stats.concealed_samples == 480


def test_the_depth_grows_on_late_packets_and_shrinks_when_calm() -> None:
    rx = inbound(8, None)
    arrivals = []
    for n in range(400):
        spike = n % 50 == 25  # every second, one packet 100 ms late
        arrivals.append((20.0 * n + (100 if spike else 0), n))
    out = feed(rx, arrivals)
    assert rx.stats.late == 2  # given up twice: the depth grew 4 → 6 packets
    assert rx.stats.lost == 2 and len(out) == 400 - 2
    assert rx._jitter.depth == 6
    calm = [(20.0 * n, n) for n in range(400, 400 + SHRINK_AFTER)]
    feed(rx, calm)
    assert rx._jitter.depth == 5


def test_drain_releases_what_waits_behind_a_gap_when_the_stream_stops() -> None:
    rx = inbound(8, None)
    for seq in (1, 3, 4):
        rx.receive(audio(seq, seq * 160), PEER, seq * 0.02)
    assert rx.holding
    drained = rx.drain()
    assert payloads(drained) == [3, 4] and not rx.holding
    assert isinstance(drained[0], Audio) and drained[0].silence_samples == 160
    assert rx.receive(audio(2, 320), PEER, 0.2) == []  # it came after all: late
    assert (rx.stats.lost, rx.stats.late) == (1, 1)
    assert rx._jitter.depth == 5


def test_a_natted_caller_is_learned_and_its_first_packets_are_not_lost() -> None:
    rx = RtpInbound(8, None, sources=SourceLearner(("10.0.0.9", 4000), 0.0, learn_packets=4))
    out = []
    for n in range(3):
        out += rx.receive(audio(10 + n, n * 160), PEER, n * 0.02)
    assert out == [] and rx.source is None  # on probation
    out += rx.receive(audio(13, 480), PEER, 0.06)
    assert payloads(out) == [10, 11, 12, 13] and rx.source == PEER
    assert rx.reception.packets_received == 4 and rx.reception.packets_lost == 0
