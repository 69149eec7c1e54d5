"""RTP (RFC 3550) and telephone-events (RFC 4733), sans-I/O.

Theory of operation
-------------------
Inbound, :class:`RtpInbound` takes each datagram with its source address and
arrival time. Audio goes to the call's playout buffer
(:class:`~telephony_edge.sip.playout.PlayoutBuffer`, which the pacer pulls
one 20 ms frame from every 20 ms); what comes back is the keys pressed
(:class:`DtmfDigit`). On the way:

* :func:`parse_rtp` reads the 12-byte header, skips CSRCs and the header
  extension, strips padding, and refuses anything else (version ≠ 2, short,
  RTCP's payload types 72-76).
* Strict source learning (:mod:`telephony_edge.sip.rtp_source`): packets
  from the peer go on at the cost of one tuple comparison; any other source
  asks the call's :class:`~telephony_edge.sip.rtp_source.SourceLearner`,
  which takes the SDP's address at once, learns a NAT'd one from a run of
  in-sequence packets (held meanwhile, then released in order), and drops
  everything else as foreign (counted in ``strangers``), never re-latching
  mid-call. A new SSRC from the peer (a PBX switching its stream, sipp's DTMF
  pcap) starts a new timeline rather than being dropped.
* Reception statistics for RTCP (:class:`~telephony_edge.sip.rtcp.ReceptionStats`:
  sequence numbers received and expected, interarrival jitter) are taken as
  each packet of the latched source arrives.
* RFC 3389 comfort noise (the negotiated CN payload type) sets the level of
  the noise the playout buffer plays until the caller speaks again.
* RFC 4733: a key press is reported once, at the first packet of its event
  that arrives (every packet of an event carries its start timestamp, so the
  start, the updates and the three end packets are one key), so the agent
  hears of it as the caller presses, not when the key is let go.

Outbound, :class:`RtpSender` numbers packets: one random SSRC, consecutive
sequence numbers, timestamps advancing by the samples of each slot. A
``continuous`` stream (one slot per tick of the worker's 20 ms pacer:
:mod:`telephony_edge.sip.rtp_out`) advances the timestamp for slots it does
not send (:meth:`RtpSender.skip`, on hold) and jumps it only over a gap the
pacer could not catch up, in whole slots; otherwise the timestamp jumps by
the wall-clock time of a pause at a talkspurt's start. The marker bit is set
at a talkspurt's start. :meth:`RtpSender.rtp_time` gives the timestamp of
any moment, for RTCP sender reports.
"""

from __future__ import annotations

import secrets
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from telephony_edge.sip.playout import Decoder, PlayoutBuffer
from telephony_edge.sip.rtcp import ReceptionStats
from telephony_edge.sip.rtp_source import SourceLearner, Verdict

Address = tuple[str, int]

RTP_VERSION = 2
HEADER = struct.Struct("!BBHII")
DTMF_EVENTS = "0123456789*#ABCD"
RESYNC_SLOTS = 7  # a continuous stream's gap beyond the pacer's catch-up (5) that moves its ts


@dataclass(slots=True)
class RtpPacket:
    """One parsed packet (not frozen: built per packet, and frozen init is slower)."""

    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    marker: bool
    payload: bytes


def parse_rtp(data: bytes) -> RtpPacket | None:
    """One RTP packet, or None when ``data`` is not one we can use."""
    if len(data) < HEADER.size:
        return None
    b0, b1, seq, ts, ssrc = HEADER.unpack_from(data)
    pt = b1 & 0x7F
    if 72 <= pt <= 76:  # RTCP multiplexed on the port (RFC 5761)
        return None
    if b0 == 0x80:  # the common case: no padding, extension or CSRCs
        return RtpPacket(pt, seq, ts, ssrc, b1 > 0x7F, data[12:])
    if b0 >> 6 != RTP_VERSION:
        return None
    offset = HEADER.size + 4 * (b0 & 0x0F)
    if b0 & 0x10:  # header extension: 16-bit profile, 16-bit length in words
        if len(data) < offset + 4:
            return None
        (words,) = struct.unpack_from("!H", data, offset + 2)
        offset += 4 + 4 * words
    end = len(data)
    if b0 & 0x20:  # padding: the last byte counts the padding bytes
        pad = data[-1]
        if pad == 0:
            return None
        end -= pad
    if offset > end:
        return None
    return RtpPacket(pt, seq, ts, ssrc, bool(b1 & 0x80), data[offset:end])


def build_rtp(
    payload_type: int, sequence: int, timestamp: int, ssrc: int, marker: bool, payload: bytes
) -> bytes:
    b1 = (0x80 if marker else 0) | (payload_type & 0x7F)
    return HEADER.pack(0x80, b1, sequence & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc) + payload


# -- receiving ---------------------------------------------------------------------------


@dataclass(slots=True)
class RtpStats:
    received: int = 0
    malformed: int = 0
    strangers: int = 0  # foreign: from an address other than the peer's
    unknown_payload_type: int = 0
    ssrc_changes: int = 0
    dtmf: int = 0
    comfort_noise: int = 0  # RFC 3389 packets


@dataclass(frozen=True, slots=True)
class DtmfDigit:
    digit: str


Held = tuple[RtpPacket, float]  # a packet on probation and its arrival time


class RtpInbound:
    """One call's inbound RTP: source rule, statistics, playout, telephone-events."""

    def __init__(
        self,
        audio_pt: int,
        event_pt: int | None,
        decoder_for: Callable[[int], Decoder],
        *,
        clock_rate: int = 8000,
        cn_pt: int | None = None,
        max_delay_ms: int = 200,
        sources: SourceLearner[Held] | None = None,
    ) -> None:
        self.audio_pt = audio_pt
        self._fast_pt = -1 if 72 <= audio_pt <= 76 else audio_pt  # parse_rtp refuses 72-76
        self.event_pt = event_pt
        self.cn_pt = cn_pt
        self.stats = RtpStats()
        self.reception = ReceptionStats(clock_rate)
        self.playout = PlayoutBuffer(decoder_for, clock_rate=clock_rate, max_delay_ms=max_delay_ms)
        self.sources: SourceLearner[Held] = sources or SourceLearner(None, 0.0)
        self.ssrc: int | None = None  # the caller's, once a packet came
        self._events_seen: deque[int] = deque(maxlen=8)  # timestamps of recent key presses

    @property
    def source(self) -> Address | None:
        """The peer: where the caller's RTP comes from (None until known)."""
        return self.sources.peer

    def receive(self, data: bytes, source: Address, now: float) -> list[DtmfDigit]:
        """One datagram from ``source``, arrived at ``now`` (seconds, any steady clock): audio
        goes to the playout buffer; what comes back is the keys pressed."""
        stats = self.stats
        stats.received += 1
        if (
            source == self.sources.peer
            and len(data) >= 12
            and data[0] == 0x80
            and data[1] & 0x7F == self._fast_pt
        ):  # the common case: the peer's audio, no CSRCs, extension or padding
            _, _, seq, ts, ssrc = HEADER.unpack_from(data)
            if ssrc == self.ssrc:
                reception = self.reception
                reception.packet(seq)
                reception.arrival(int(now * reception.clock_rate), ts)
                self.playout.push(ts, data[12:], now)
                return []
        pkt = parse_rtp(data)
        if pkt is None:
            stats.malformed += 1
            return []
        if source != self.sources.peer:
            return self._unlatched(pkt, source, now)
        return self._accepted(pkt, now)

    def pull(self, now: float) -> bytes | None:
        """The caller's next 20 ms frame, on the clock (None before the first packet)."""
        return self.playout.pull(now)

    def _unlatched(self, pkt: RtpPacket, source: Address, now: float) -> list[DtmfDigit]:
        """A packet from elsewhere than the peer: the source rule decides."""
        sources = self.sources
        foreign = sources.stats.foreign
        verdict = sources.check(source, pkt.ssrc, pkt.sequence, now, (pkt, now))
        self.stats.strangers += sources.stats.foreign - foreign  # with held ones let go
        if verdict is Verdict.FOREIGN or verdict is Verdict.HELD:
            return []
        out: list[DtmfDigit] = []  # LOCKED: its held packets first, in order
        for held, at in sources.take_held():
            out += self._accepted(held, at)
        return out + self._accepted(pkt, now)

    def _accepted(self, pkt: RtpPacket, now: float) -> list[DtmfDigit]:
        pt = pkt.payload_type
        if pt != self.audio_pt and pt != self.event_pt and pt != self.cn_pt:
            self.stats.unknown_payload_type += 1
            return []
        if pkt.ssrc != self.ssrc:
            self._new_stream(pkt)
        reception = self.reception
        reception.packet(pkt.sequence)
        if pt == self.audio_pt:
            reception.arrival(int(now * reception.clock_rate), pkt.timestamp)
            self.playout.push(pkt.timestamp, pkt.payload, now)
            return []
        if pt == self.cn_pt:
            self.stats.comfort_noise += 1
            self.playout.comfort_noise(pkt.payload[0] if pkt.payload else 127)
            return []
        return self._event(pkt)

    def _new_stream(self, pkt: RtpPacket) -> None:
        """The first packet, or a new SSRC from the peer: a new timeline."""
        if self.ssrc is not None:
            self.stats.ssrc_changes += 1
            self.playout.new_timeline()
            self.reception.restart(pkt.sequence)
        self.ssrc = pkt.ssrc

    def _event(self, pkt: RtpPacket) -> list[DtmfDigit]:
        """A key, reported at the first packet of its event (RFC 4733 §2.5.1.2: every packet
        of one event carries the event's start timestamp), once."""
        if len(pkt.payload) < 4:
            self.stats.malformed += 1
            return []
        event = pkt.payload[0]
        if event >= len(DTMF_EVENTS) or pkt.timestamp in self._events_seen:
            return []  # not a key (flash, tones), or a key already reported
        self._events_seen.append(pkt.timestamp)
        self.stats.dtmf += 1
        return [DtmfDigit(DTMF_EVENTS[event])]


# -- sending -------------------------------------------------------------------------------


class RtpSender:
    """Numbers one outbound stream; see the module docstring."""

    __slots__ = (
        "_anchor",
        "_b1",
        "_slot_ts",
        "_started",
        "clock_rate",
        "continuous",
        "octets",
        "payload_type",
        "sent",
        "seq",
        "ssrc",
        "ts",
    )

    def __init__(
        self,
        payload_type: int,
        clock_rate: int = 8000,
        *,
        ssrc: int | None = None,
        seq: int | None = None,
        ts: int | None = None,
        continuous: bool = False,
    ) -> None:
        self.payload_type = payload_type
        self._b1 = (payload_type & 0x7F, 0x80 | payload_type & 0x7F)  # header byte 1, by marker
        self.clock_rate = clock_rate
        self.ssrc = secrets.randbits(32) if ssrc is None else ssrc
        self.seq = secrets.randbits(16) if seq is None else seq
        self.ts = secrets.randbits(32) if ts is None else ts  # of the next packet
        self.continuous = continuous  # one slot per tick of a clock: see _advance
        self.sent = 0
        self.octets = 0  # payload bytes sent, for RTCP sender reports
        self._started = False
        self._anchor = 0.0  # wall-clock time of the last slot
        self._slot_ts = self.ts  # its timestamp

    def _advance(self, samples: int, now: float, talkspurt_start: bool) -> None:
        """Move the timestamp over wall-clock time no slot covered (RFC 3550 §5.1)."""
        if not self._started:
            self._started = True
            return
        behind = round((now - self._anchor) * self.clock_rate) - samples
        if self.continuous:
            # ticks a late clock caught up keep the grid; a longer gap (its schedule
            # restarted) is skipped in whole slots
            if behind >= RESYNC_SLOTS * samples:
                self.ts = (self.ts + behind // samples * samples) & 0xFFFFFFFF
        elif talkspurt_start and behind > 0:
            self.ts = (self.ts + behind) & 0xFFFFFFFF  # the pause before a talkspurt

    def packet(self, payload: bytes, samples: int, now: float, talkspurt_start: bool) -> bytes:
        """The next packet; ``samples`` at the RTP clock in ``payload``."""
        marker = talkspurt_start or not self._started
        self._advance(samples, now, talkspurt_start)
        self._anchor = now
        self._slot_ts = ts = self.ts
        seq = self.seq
        data = HEADER.pack(0x80, self._b1[marker], seq, ts, self.ssrc) + payload
        self.seq = (seq + 1) & 0xFFFF
        self.ts = (ts + samples) & 0xFFFFFFFF
        self.sent += 1
        self.octets += len(payload)
        return data

    def event(
        self,
        payload_type: int,
        payload: bytes,
        samples: int,
        now: float,
        marker: bool,
        start: int | None,
    ) -> tuple[bytes, int]:
        """A telephone-event packet (RFC 4733) in the stream's next slot: the next sequence
        number, and the timestamp ``start`` (its event's first slot's; None: this slot's).
        The slot's timestamp moves on as for audio. Returns the packet and its timestamp."""
        self._advance(samples, now, False)
        self._anchor = now
        self._slot_ts = slot = self.ts
        ts = slot if start is None else start
        data = build_rtp(payload_type, self.seq, ts, self.ssrc, marker, payload)
        self.seq = (self.seq + 1) & 0xFFFF
        self.ts = (slot + samples) & 0xFFFFFFFF
        self.sent += 1
        self.octets += len(payload)
        return data, ts

    def skip(self, samples: int, now: float) -> None:
        """A slot with no packet (on hold): the timestamp moves on, the sequence does not."""
        self._advance(samples, now, False)
        self._anchor = now
        self._slot_ts = self.ts
        self.ts = (self.ts + samples) & 0xFFFFFFFF

    def rtp_time(self, now: float) -> int:
        """The stream's timestamp at ``now`` (an RTCP SR's, matching its NTP time, §6.4.1)."""
        if not self._started:
            return self.ts
        elapsed = round((now - self._anchor) * self.clock_rate)
        return (self._slot_ts + elapsed) & 0xFFFFFFFF
