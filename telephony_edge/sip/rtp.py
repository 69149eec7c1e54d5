"""RTP (RFC 3550) and telephone-events (RFC 4733), sans-I/O.

Theory of operation
-------------------
Inbound, :class:`RtpInbound` takes each datagram with its source address and
arrival time and returns what the media shell should do with it: :class:`Audio` payloads in
sequence order (with the silence to put before them where packets were
lost) and :class:`DtmfDigit`\\ s. On the way:

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
  pcap) starts a new sequence space rather than being dropped.
* Reception statistics for RTCP (:class:`~telephony_edge.sip.rtcp.ReceptionStats`:
  sequence numbers received and expected, interarrival jitter) are taken as
  each packet of the latched source arrives, before reordering.
* :class:`JitterBuffer` puts packets back in order: an in-order packet is
  released at once (no added delay); a gap holds later packets until the
  missing one arrives or ``depth`` later packets are waiting, then the missing
  one is counted lost. The depth adapts: it starts at 4 packets (at 20 ms
  packets, a packet up to 60 ms later than its successors is still in time),
  grows by one each time a packet arrives after it was given up (``late``),
  up to ``max_depth``, and shrinks by one after ``SHRINK_AFTER`` packets
  without a late one. A duplicate (held, or already released) is dropped.
  When the stream stops while packets are held (a talkspurt's end after a
  loss), the media shell calls :meth:`RtpInbound.drain` so the tail of what
  the caller said is not held until they speak again.
* Loss concealment works on timestamps: an audio packet whose timestamp is
  ahead of where the previous one ended, without the marker bit of a new
  talkspurt, gets that gap (up to ``max_conceal_samples``) as silence.
* RFC 4733: a key press is reported once, at its first end packet (the end
  packet is sent three times; the marker bit is not required since some
  carriers never set it).

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
from dataclasses import dataclass

from telephony_edge.sip.rtcp import ReceptionStats
from telephony_edge.sip.rtp_source import SourceLearner, Verdict

Address = tuple[str, int]

RTP_VERSION = 2
HEADER = struct.Struct("!BBHII")
DTMF_EVENTS = "0123456789*#ABCD"
SHRINK_AFTER = 500  # packets (10 s at 20 ms) without a late one before the depth shrinks
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
    duplicates: int = 0
    late: int = 0
    lost: int = 0
    concealed_samples: int = 0
    ssrc_changes: int = 0
    dtmf: int = 0


class JitterBuffer:
    """Reorders one SSRC's packets; see the module docstring."""

    __slots__ = (
        "_calm",
        "_first",
        "_given_up",
        "_held",
        "_next",
        "depth",
        "max_depth",
        "max_jump",
        "min_depth",
        "stats",
    )

    def __init__(
        self, stats: RtpStats, depth: int = 4, max_depth: int = 12, max_jump: int = 100
    ) -> None:
        self.depth = self.min_depth = depth
        self.max_depth = max(depth, max_depth)
        self.max_jump = max_jump
        self.stats = stats
        self._held: dict[int, RtpPacket] = {}
        self._next: int | None = None  # extended sequence number expected next
        self._first = 0  # extended sequence number of the first packet taken
        self._given_up: set[int] = set()  # recent sequence numbers counted lost
        self._calm = 0  # packets released since the last late one

    @property
    def holding(self) -> bool:
        return bool(self._held)

    def _extend(self, seq: int) -> int:
        assert self._next is not None
        base = self._next
        ext = (base & ~0xFFFF) | seq
        if ext - base > 0x8000:
            ext -= 0x10000
        elif base - ext > 0x8000:
            ext += 0x10000
        return ext

    def push(self, pkt: RtpPacket) -> list[RtpPacket]:
        """Add a packet; return the packets now due, in order."""
        nxt = self._next
        if nxt is not None and not self._held and pkt.sequence == nxt & 0xFFFF:
            self._next = nxt + 1  # in order, nothing waiting: the common case
            self._calm += 1
            if self._calm >= SHRINK_AFTER:
                self._shrink()
            return [pkt]
        if self._next is None:
            self._next = self._first = pkt.sequence
        ext = self._extend(pkt.sequence)
        if ext < self._next:
            if self._next - ext > self.max_jump:
                return self._restart(pkt)  # the peer restarted its numbering
            if ext in self._given_up:
                self._given_up.discard(ext)
                self.stats.late += 1
                self.depth = min(self.max_depth, self.depth + 1)
                self._calm = 0
            elif ext < self._first:
                self.stats.late += 1  # sent before the first one we took
            else:
                self.stats.duplicates += 1
            return []
        if ext in self._held:
            self.stats.duplicates += 1
            return []
        if ext - self._next > self.max_jump:
            return self._restart(pkt)
        self._held[ext] = pkt
        return self._release(self.depth)

    def _restart(self, pkt: RtpPacket) -> list[RtpPacket]:
        out = self.flush()
        self._next = self._first = pkt.sequence
        self._given_up.clear()
        self._held[pkt.sequence] = pkt
        return out + self._release(self.depth)

    def _release(self, depth: int) -> list[RtpPacket]:
        """Packets due: in order, past gaps once ``depth`` later packets wait."""
        out: list[RtpPacket] = []
        held = self._held
        assert self._next is not None
        while held:
            pkt = held.pop(self._next, None)
            if pkt is not None:
                out.append(pkt)
            elif len(held) >= depth:
                self._give_up(self._next)
            else:
                break
            self._next += 1
        self._calm += len(out)
        if self._calm >= SHRINK_AFTER:
            self._shrink()
        return out

    def _shrink(self) -> None:
        self._calm = 0
        self.depth = max(self.min_depth, self.depth - 1)

    def _give_up(self, ext: int) -> None:
        self.stats.lost += 1
        given_up = self._given_up
        if len(given_up) >= 64:  # bounded: forget the ones too old to come back
            self._given_up = given_up = {s for s in given_up if ext - s <= self.max_jump}
            if len(given_up) >= 64:
                given_up.clear()
        given_up.add(ext)

    def flush(self) -> list[RtpPacket]:
        """Everything held, in order, the gaps before them counted lost (the stream stopped
        or a new one starts)."""
        return self._release(1)


@dataclass(slots=True)
class Audio:
    """A codec payload to decode, after ``silence_samples`` (at the RTP clock) of silence."""

    payload: bytes
    silence_samples: int = 0


@dataclass(frozen=True, slots=True)
class DtmfDigit:
    digit: str


InboundEvent = Audio | DtmfDigit


Held = tuple[RtpPacket, float]  # a packet on probation and its arrival time


class RtpInbound:
    """One call's inbound RTP: source rule, reorder, conceal, pick out telephone-events."""

    def __init__(
        self,
        audio_pt: int,
        event_pt: int | None,
        *,
        clock_rate: int = 8000,
        depth: int = 4,
        max_conceal_samples: int = 800,
        sources: SourceLearner[Held] | None = None,
    ) -> None:
        self.audio_pt = audio_pt
        self.event_pt = event_pt
        self.max_conceal_samples = max_conceal_samples
        self.depth = depth
        self.stats = RtpStats()
        self.reception = ReceptionStats(clock_rate)
        self.sources: SourceLearner[Held] = sources or SourceLearner(None, 0.0)
        self.ssrc: int | None = None  # the caller's, once a packet came
        self._jitter = JitterBuffer(self.stats, depth)
        self._audio_end: int | None = None  # timestamp where the last audio payload ended
        self._last_event_end: int | None = None  # timestamp of the last event reported

    @property
    def source(self) -> Address | None:
        """The peer: where the caller's RTP comes from (None until known)."""
        return self.sources.peer

    def receive(self, data: bytes, source: Address, now: float) -> list[InboundEvent]:
        """One datagram from ``source``, arrived at ``now`` (seconds, any steady clock)."""
        stats = self.stats
        stats.received += 1
        pkt = parse_rtp(data)
        if pkt is None:
            stats.malformed += 1
            return []
        if source != self.sources.peer:
            return self._unlatched(pkt, source, now)
        return self._accepted(pkt, now)

    def _unlatched(self, pkt: RtpPacket, source: Address, now: float) -> list[InboundEvent]:
        """A packet from elsewhere than the peer: the source rule decides."""
        sources = self.sources
        foreign = sources.stats.foreign
        verdict = sources.check(source, pkt.ssrc, pkt.sequence, now, (pkt, now))
        self.stats.strangers += sources.stats.foreign - foreign  # with held ones let go
        if verdict is Verdict.FOREIGN or verdict is Verdict.HELD:
            return []
        out: list[InboundEvent] = []  # LOCKED: its held packets first, in order
        for held, at in sources.take_held():
            out += self._accepted(held, at)
        return out + self._accepted(pkt, now)

    def _accepted(self, pkt: RtpPacket, now: float) -> list[InboundEvent]:
        pt = pkt.payload_type
        if pt != self.audio_pt and pt != self.event_pt:
            self.stats.unknown_payload_type += 1
            return []
        if pkt.ssrc != self.ssrc:
            return self._new_stream(pkt) + self._take(pkt, now)
        return self._take(pkt, now)

    def _take(self, pkt: RtpPacket, now: float) -> list[InboundEvent]:
        reception = self.reception
        reception.packet(pkt.sequence)
        if pkt.payload_type != self.audio_pt:
            return self._events(self._jitter.push(pkt))
        reception.arrival(int(now * reception.clock_rate), pkt.timestamp)
        packets = self._jitter.push(pkt)
        if len(packets) == 1 and packets[0] is pkt:
            return [self._audio(pkt)]  # the common case, without the loop
        return self._events(packets)

    def _new_stream(self, pkt: RtpPacket) -> list[InboundEvent]:
        """The first packet, or a new SSRC from the peer: what the old one held."""
        out: list[InboundEvent] = []
        if self.ssrc is not None:
            self.stats.ssrc_changes += 1
            out = self._events(self._jitter.flush())
            self._jitter = JitterBuffer(self.stats, self.depth)
            self._audio_end = None
            self.reception.restart(pkt.sequence)
        self.ssrc = pkt.ssrc
        return out

    @property
    def holding(self) -> bool:
        """Packets wait behind a gap (the shell drains them if the stream stops)."""
        return self._jitter.holding

    def drain(self) -> list[InboundEvent]:
        """What is held, released now, the gaps counted lost and concealed."""
        return self._events(self._jitter.flush())

    def _events(self, packets: list[RtpPacket]) -> list[InboundEvent]:
        out: list[InboundEvent] = []
        for pkt in packets:
            if pkt.payload_type == self.audio_pt:
                out.append(self._audio(pkt))
            else:
                digit = self._event(pkt)
                if digit is not None:
                    out.append(DtmfDigit(digit))
        return out

    def _audio(self, pkt: RtpPacket) -> Audio:
        samples = len(pkt.payload)  # one byte per RTP clock tick: G.711, G.722 (RFC 3551)
        silence = 0
        if self._audio_end is not None and not pkt.marker:
            gap = (pkt.timestamp - self._audio_end) & 0xFFFFFFFF
            if 0 < gap <= self.max_conceal_samples:
                silence = gap
                self.stats.concealed_samples += gap
        self._audio_end = (pkt.timestamp + samples) & 0xFFFFFFFF
        return Audio(pkt.payload, silence)

    def _event(self, pkt: RtpPacket) -> str | None:
        if len(pkt.payload) < 4:
            self.stats.malformed += 1
            return None
        event, flags = pkt.payload[0], pkt.payload[1]
        if not flags & 0x80 or event >= len(DTMF_EVENTS):
            return None  # not the end yet, or not a key (flash, tones)
        if pkt.timestamp == self._last_event_end:
            return None  # the end packet's repeats
        self._last_event_end = pkt.timestamp
        self.stats.dtmf += 1
        return DTMF_EVENTS[event]


# -- sending -------------------------------------------------------------------------------


class RtpSender:
    """Numbers one outbound stream; see the module docstring."""

    __slots__ = (
        "_anchor",
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
        data = build_rtp(self.payload_type, self.seq, ts, self.ssrc, marker, payload)
        self.seq = (self.seq + 1) & 0xFFFF
        self.ts = (ts + samples) & 0xFFFFFFFF
        self.sent += 1
        self.octets += len(payload)
        return data

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
