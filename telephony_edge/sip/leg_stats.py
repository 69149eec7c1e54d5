"""What a SIP leg reports of its media: Prometheus counters, ``voip.media`` and its log line.

The leg's RTP path counts in plain integers (:class:`~telephony_edge.sip.rtp.RtpStats`,
the reception statistics, the playout buffer's
:class:`~telephony_edge.sip.playout.PlayoutStats`), never a Prometheus call per
packet; :class:`MediaCounters` adds what changed to the process's counters at each
RTCP report and at the end of the call.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from telephony_edge import metrics
from telephony_edge.sip.playout import TICKS_PER_FRAME, PlayoutStats
from telephony_edge.sip.rtcp import RtcpSession
from telephony_edge.sip.rtp import RtpInbound, RtpSender
from telephony_edge.sip.rtp_out import OutboundStream
from telephony_edge.sip.srtp import SrtpSession

_RECEIVED = metrics.SIP_RTP_PACKETS.labels(outcome="received")
_LOST = metrics.SIP_RTP_PACKETS.labels(outcome="lost")
_LATE = metrics.SIP_RTP_PACKETS.labels(outcome="late")
_PLAYOUT = tuple(
    metrics.SIP_PLAYOUT_FRAMES.labels(kind=k)
    for k in ("concealed", "silence", "dropped", "inserted")
)


class MediaCounters:
    """One stream's share of the Prometheus counters: what it has added so far."""

    __slots__ = ("_exported", "_exported_playout")

    def __init__(self) -> None:
        self._exported: tuple[int, ...] = (0, 0, 0)  # received, lost, late already counted
        self._exported_playout: tuple[int, ...] = (0, 0, 0, 0)  # concealed, silence, …

    def export(self, inbound: RtpInbound) -> None:
        """Add what changed since the last call to the Prometheus counters."""
        reception = inbound.reception
        playout = inbound.playout.stats
        counts = (reception.packets_received, reception.packets_lost, playout.late)
        self._exported = _add(zip((_RECEIVED, _LOST, _LATE), counts, self._exported, strict=True))
        frames = (
            playout.concealed_ticks // TICKS_PER_FRAME,
            playout.silence_ticks // TICKS_PER_FRAME,
            playout.dropped_frames,
            playout.inserted_frames,
        )
        self._exported_playout = _add(zip(_PLAYOUT, frames, self._exported_playout, strict=True))
        if reception.packets_received:
            metrics.SIP_RTP_JITTER_SECONDS.observe(reception.jitter_ms / 1000)
            metrics.SIP_JITTER_BUFFER_DELAY_SECONDS.observe(inbound.playout.target_ms / 1000)


def media_report(
    codec: str,
    inbound: RtpInbound,
    sender: RtpSender,
    out: OutboundStream | None,
    rtcp: RtcpSession,
    srtp: SrtpSession | None,
) -> dict[str, Any]:
    """``voip.media``: what the edge saw of the caller's RTP and sent back."""
    reception = inbound.reception
    received, lost = reception.packets_received, reception.packets_lost
    stats: dict[str, Any] = {
        "codec": codec,
        "packets_received": received,
        "packets_lost": lost,
        "fraction_lost": round(lost / (received + lost), 4) if received + lost else 0.0,
        "jitter_ms": round(reception.jitter_ms, 2),
        "late_packets": inbound.playout.stats.late,
        "jitter_buffer": jitter_buffer_stats(inbound.playout.stats, reception.clock_rate),
        "packets_sent": sender.sent,
        "silence_packets_sent": out.silence_sent if out is not None else 0,
    }
    if rtcp.rtt is not None:
        stats["rtt_ms"] = round(rtcp.rtt * 1000, 2)
    if srtp is not None:
        stats["srtp"] = srtp.terms.suite
        stats["srtp_dropped"] = srtp.dropped
    return stats


def jitter_buffer_stats(stats: PlayoutStats, clock_rate: int) -> dict[str, float | int]:
    """The playout buffer's account of the call, in milliseconds and 20 ms frames."""

    def ms(ticks: float) -> float:
        return round(ticks * 1000 / clock_rate, 1)

    mean = stats.delay_sum_ticks / stats.audio_frames if stats.audio_frames else 0
    return {
        "target_ms": ms(stats.target_ticks),
        "mean_delay_ms": ms(mean),
        "max_delay_ms": ms(stats.max_delay_ticks),
        "late_packets": stats.late,
        "duplicate_packets": stats.duplicates,
        "concealed_ms": ms(stats.concealed_ticks),
        "silence_ms": ms(stats.silence_ticks),
        "dropped_frames": stats.dropped_frames,
        "inserted_frames": stats.inserted_frames,
        "resyncs": stats.resyncs,
    }


def _add(changes: Iterable[tuple[Any, int, int]]) -> tuple[int, ...]:
    """Add to each Prometheus counter what its value gained since ``before``; the values."""
    values = []
    for child, value, before in changes:
        if value > before:
            child.inc(value - before)
        values.append(value)
    return tuple(values)


def vars_of(stats: object) -> dict[str, int]:
    """The counters of a slotted stats dataclass, for a log line."""
    return {name: getattr(stats, name) for name in getattr(stats, "__slots__", ())}
