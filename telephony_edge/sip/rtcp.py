"""RTCP (RFC 3550 §6 and appendix A), sans-I/O: reception statistics and reports.

Theory of operation
-------------------
:class:`ReceptionStats` follows the caller's RTP source packet by packet, as
it arrives (before the jitter buffer): the extended highest sequence number,
packets received and expected (A.1, A.3; a jump of more than
``MAX_DROPOUT`` or a new SSRC starts a new run, earlier runs' counts kept),
and the interarrival jitter in RTP timestamp units (A.8), from audio packets
only (telephone-events repeat one timestamp).

:class:`RtcpSession` speaks RTCP for one call. :meth:`RtcpSession.report`
builds the compound packet to send every interval: a sender report (SR)
while the edge has sent RTP since the last report or the one before
(§6.4: so a call put on hold goes on reporting, RR once it has sent nothing
for two intervals), a receiver report (RR) otherwise, with one report block
about the caller's source, then SDES CNAME (RFC 3550 §6.1: every compound
packet carries one). :meth:`RtcpSession.receive` reads the caller's
reports: an SR's NTP time is kept as the LSR of our next
block (with its arrival, for DLSR); a block about our SSRC that carries LSR
gives the round-trip time ``A - LSR - DLSR`` (§6.4.1).

Times: ``now`` is wall-clock seconds (NTP timestamps derive from it, and
the round-trip time compares two of ours). Parsing is bounded: a datagram
longer than ``MAX_RTCP_SIZE``, a version other than 2, lengths that do not add
up to the datagram exactly, or a first packet that is not SR/RR (A.2) make it
malformed (``None``), counted by the caller; nothing raises.

:func:`report_interval` is §6.3 for two participants at a voice bitrate, where
the bandwidth term is below the minimum: 5 s (2.5 s for the first report),
randomised over [0.5, 1.5] and divided by e - 3/2.
"""

from __future__ import annotations

import math
import random
import struct
from dataclasses import dataclass

SR = 200
RR = 201
SDES = 202
BYE = 203
MAX_RTCP_SIZE = 1500
MAX_DROPOUT = 3000
MAX_MISORDER = 100
NTP_EPOCH_OFFSET = 2_208_988_800  # 1900-01-01 to 1970-01-01, seconds
MIN_INTERVAL_S = 5.0

_HEADER = struct.Struct("!BBH")
_SENDER_INFO = struct.Struct("!IIIIII")  # SSRC, NTP msw, NTP lsw, RTP ts, packets, octets
_BLOCK = struct.Struct("!IIIIII")  # SSRC, fraction+cumulative, highest seq, jitter, LSR, DLSR
_SSRC = struct.Struct("!I")


def ntp_time(now: float) -> int:
    """64-bit NTP timestamp (RFC 3550 §4) of wall-clock seconds ``now``."""
    return int((now + NTP_EPOCH_OFFSET) * 4_294_967_296) & 0xFFFF_FFFF_FFFF_FFFF


def ntp_middle(now: float) -> int:
    """The middle 32 bits of the NTP timestamp: the unit of LSR, DLSR and round trips."""
    return (ntp_time(now) >> 16) & 0xFFFFFFFF


# -- packets ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReportBlock:
    """What one side says about a source it receives (RFC 3550 §6.4.1)."""

    ssrc: int
    fraction_lost: int  # of 256, since the previous report
    cumulative_lost: int  # signed: duplicates can make it negative
    highest_seq: int  # extended
    jitter: int  # RTP timestamp units
    lsr: int  # middle 32 bits of the last SR's NTP time from that source, 0 if none
    dlsr: int  # 1/65536 s since that SR arrived


@dataclass(frozen=True, slots=True)
class SenderInfo:
    ntp: int
    rtp_timestamp: int
    packets: int
    octets: int


@dataclass(frozen=True, slots=True)
class Report:
    """One SR (``sender`` set) or RR of a compound packet."""

    ssrc: int
    sender: SenderInfo | None
    blocks: tuple[ReportBlock, ...]


def parse_rtcp(data: bytes) -> list[Report] | None:
    """The SRs and RRs of a compound RTCP packet (other kinds skipped), or None if malformed."""
    size = len(data)
    if size < 8 or size > MAX_RTCP_SIZE or data[1] not in (SR, RR):
        return None
    reports: list[Report] = []
    offset = 0
    while offset < size:
        if size - offset < 4:
            return None
        b0, pt, words = _HEADER.unpack_from(data, offset)
        end = offset + 4 * (words + 1)
        if b0 >> 6 != 2 or end > size or (b0 & 0x20 and end != size):
            return None  # padding only in the last packet (A.2)
        count = b0 & 0x1F
        if pt in (SR, RR):
            body = offset + 4
            sender = None
            if pt == SR:
                if body + _SENDER_INFO.size > end:
                    return None
                ssrc, msw, lsw, ts, packets, octets = _SENDER_INFO.unpack_from(data, body)
                sender = SenderInfo((msw << 32) | lsw, ts, packets, octets)
                body += _SENDER_INFO.size
            else:
                if body + 4 > end:
                    return None
                (ssrc,) = _SSRC.unpack_from(data, body)
                body += 4
            if body + count * _BLOCK.size > end:
                return None
            reports.append(Report(ssrc, sender, _blocks(data, body, count)))
        offset = end
    return reports


def sender_ssrc(data: bytes) -> int | None:
    """The SSRC of a compound packet's first SR or RR (whose source it is), before parsing it."""
    if len(data) < 8 or data[1] not in (SR, RR):
        return None
    ssrc: int = _SSRC.unpack_from(data, 4)[0]
    return ssrc


def _blocks(data: bytes, offset: int, count: int) -> tuple[ReportBlock, ...]:
    blocks = []
    for i in range(count):
        ssrc, lost, highest, jitter, lsr, dlsr = _BLOCK.unpack_from(data, offset + i * _BLOCK.size)
        cumulative = lost & 0xFFFFFF
        if cumulative & 0x800000:
            cumulative -= 0x1000000
        blocks.append(ReportBlock(ssrc, lost >> 24, cumulative, highest, jitter, lsr, dlsr))
    return tuple(blocks)


def _pack_block(block: ReportBlock) -> bytes:
    cumulative = max(-0x800000, min(0x7FFFFF, block.cumulative_lost)) & 0xFFFFFF
    return _BLOCK.pack(
        block.ssrc,
        (block.fraction_lost & 0xFF) << 24 | cumulative,
        block.highest_seq & 0xFFFFFFFF,
        min(block.jitter, 0xFFFFFFFF),
        block.lsr,
        block.dlsr,
    )


def build_report(ssrc: int, sender: SenderInfo | None, blocks: tuple[ReportBlock, ...]) -> bytes:
    """An SR (``sender`` given) or RR with up to 31 report blocks."""
    blocks = blocks[:31]
    body = b"".join(_pack_block(b) for b in blocks)
    if sender is None:
        head = _SSRC.pack(ssrc)
        pt = RR
    else:
        ntp = sender.ntp
        head = _SENDER_INFO.pack(
            ssrc, ntp >> 32, ntp & 0xFFFFFFFF, sender.rtp_timestamp & 0xFFFFFFFF,
            sender.packets & 0xFFFFFFFF, sender.octets & 0xFFFFFFFF,
        )  # fmt: skip
        pt = SR
    payload = head + body
    return _HEADER.pack(0x80 | len(blocks), pt, len(payload) // 4) + payload


def build_sdes_cname(ssrc: int, cname: str) -> bytes:
    """SDES with one chunk: our SSRC's CNAME, null-terminated and padded to 32 bits."""
    text = cname.encode()[:255]
    chunk = _SSRC.pack(ssrc) + bytes((1, len(text))) + text + b"\x00"
    chunk += bytes(-len(chunk) % 4)
    return _HEADER.pack(0x81, SDES, len(chunk) // 4) + chunk


def build_bye(ssrc: int) -> bytes:
    return _HEADER.pack(0x81, BYE, 1) + _SSRC.pack(ssrc)


def report_interval(first: bool, rng: random.Random) -> float:
    """Seconds to the next report; see the module docstring."""
    base = MIN_INTERVAL_S / 2 if first else MIN_INTERVAL_S
    return base * rng.uniform(0.5, 1.5) / (math.e - 1.5)


# -- reception statistics ----------------------------------------------------------------


class ReceptionStats:
    """One incoming source's counters and jitter (RFC 3550 A.1, A.3, A.8)."""

    __slots__ = (
        "_base",
        "_expected_prior",
        "_lost_before",
        "_received_before",
        "_received_prior",
        "_transit",
        "clock_rate",
        "jitter",
        "max_seq",
        "received",
    )

    def __init__(self, clock_rate: int = 8000) -> None:
        self.clock_rate = clock_rate
        self.max_seq = -1  # extended highest sequence number; -1 before the first packet
        self._base = 0
        self.received = 0  # in this run
        self._received_before = 0  # earlier runs
        self._lost_before = 0
        self._expected_prior = 0
        self._received_prior = 0
        self._transit: int | None = None
        self.jitter = 0.0  # RTP timestamp units

    def restart(self, seq: int) -> None:
        """A new run (the source restarted its numbering, or a new SSRC): counts kept."""
        if self.max_seq >= 0:
            self._lost_before += max(0, self.expected - self.received)
            self._received_before += self.received
        self._base = self.max_seq = seq
        self.received = 0
        self._expected_prior = self._received_prior = 0
        self._transit = None

    def packet(self, seq: int) -> None:
        """Count a packet of the source by its 16-bit sequence number."""
        if self.max_seq < 0:
            self.restart(seq)
        else:
            delta = (seq - self.max_seq) & 0xFFFF
            if delta < MAX_DROPOUT:
                self.max_seq += delta
            elif delta <= 0x10000 - MAX_MISORDER:
                self.restart(seq)  # a big jump: the sender restarted
            # else: an old packet, late or duplicated
        self.received += 1

    def arrival(self, arrival_ts: int, rtp_ts: int) -> None:
        """An audio packet's arrival (seconds x clock rate) against its timestamp (A.8)."""
        transit = arrival_ts - rtp_ts
        previous = self._transit
        self._transit = transit
        if previous is None:
            return
        d = (transit - previous + 0x80000000) % 0x100000000 - 0x80000000
        if d < 0:
            d = -d
        if d > self.clock_rate * 10:
            return  # a timestamp jump (a looping or restarted sender), not jitter
        self.jitter += (d - self.jitter) / 16

    @property
    def expected(self) -> int:
        return self.max_seq - self._base + 1 if self.max_seq >= 0 else 0

    @property
    def packets_received(self) -> int:
        return self._received_before + self.received

    @property
    def packets_lost(self) -> int:
        """Cumulative, as RFC 3550 counts it (late packets are received, not lost)."""
        return self._lost_before + max(0, self.expected - self.received)

    @property
    def jitter_ms(self) -> float:
        return self.jitter * 1000 / self.clock_rate

    def block(self, ssrc: int, lsr: int, dlsr: int) -> ReportBlock:
        """The report block for this source; starts the next reporting interval."""
        expected = self.expected
        interval_expected = expected - self._expected_prior
        interval_lost = interval_expected - (self.received - self._received_prior)
        self._expected_prior = expected
        self._received_prior = self.received
        fraction = 0
        if interval_expected > 0 and interval_lost > 0:
            fraction = min(255, (interval_lost << 8) // interval_expected)
        return ReportBlock(
            ssrc,
            fraction,
            max(0, self._lost_before + expected - self.received),  # duplicates: never < 0
            self.max_seq & 0xFFFFFFFF,
            int(self.jitter),
            lsr,
            dlsr,
        )


# -- the session -------------------------------------------------------------------------


class RtcpSession:
    """One call's RTCP state beyond the RTP counters; see the module docstring."""

    __slots__ = (
        "_lsr",
        "_lsr_at",
        "_sent_at_report",
        "_sent_before",
        "cname",
        "malformed",
        "received",
        "rtt",
        "rtt_samples",
    )

    def __init__(self, cname: str) -> None:
        self.cname = cname
        self.rtt: float | None = None  # seconds, from the caller's latest block about us
        self.rtt_samples = 0  # how many blocks gave one
        self.received = 0  # compound packets read
        self.malformed = 0
        self._lsr = 0
        self._lsr_at = 0.0
        self._sent_at_report = 0
        self._sent_before = 0  # at the report before that

    def receive(self, data: bytes, now: float, our_ssrc: int | None) -> bool:
        """Read a compound packet from the caller; False (and counted) when malformed."""
        reports = parse_rtcp(data)
        if reports is None:
            self.malformed += 1
            return False
        self.received += 1
        for report in reports:
            if report.sender is not None:
                self._lsr = (report.sender.ntp >> 16) & 0xFFFFFFFF
                self._lsr_at = now
            for block in report.blocks:
                if block.ssrc == our_ssrc and block.lsr:
                    rtt = ((ntp_middle(now) - block.lsr - block.dlsr) & 0xFFFFFFFF) / 65536
                    if rtt < 60:  # else a clock step or a bogus block
                        self.rtt = rtt
                        self.rtt_samples += 1
        return True

    def report(
        self,
        now: float,
        ssrc: int,
        sent: tuple[int, int, int],
        source: tuple[int, ReceptionStats] | None,
    ) -> bytes:
        """The compound packet to send now.

        ``sent`` is our stream's (packets, octets, RTP timestamp at ``now``);
        ``source`` the caller's SSRC and its statistics, once known.
        """
        blocks: tuple[ReportBlock, ...] = ()
        if source is not None:
            dlsr = int((now - self._lsr_at) * 65536) & 0xFFFFFFFF if self._lsr else 0
            blocks = (source[1].block(source[0], self._lsr, dlsr),)
        packets, octets, timestamp = sent
        sender = None
        if packets > self._sent_before:
            sender = SenderInfo(ntp_time(now), timestamp, packets, octets)
        self._sent_before, self._sent_at_report = self._sent_at_report, packets
        return build_report(ssrc, sender, blocks) + build_sdes_cname(ssrc, self.cname)
