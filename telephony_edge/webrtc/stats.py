"""The peer connection's RTP statistics as the end-of-call payload's ``voip.media``.

From aiortc's ``RTCPeerConnection.getStats()`` (read just before the leg
closes)::

    {"codec": "opus/48000/2",
     "inbound":  {"packets": 1500, "lost": 2, "jitter_ms": 1.2},
     "outbound": {"packets": 1510, "lost": 0, "jitter_ms": 0.8, "round_trip_time_ms": 0.9}}

``inbound`` (caller → edge) is measured by the edge; ``outbound`` (edge →
caller) counts what the edge sent, and the rest comes from the peer's RTCP
receiver reports.

``outbound`` has ``lost``, ``jitter_ms`` and ``round_trip_time_ms`` only
once the peer has sent an RTCP receiver report (every few seconds): a very
short call may have none. Jitter is converted from RTP clock units (48 kHz
for Opus) to milliseconds.
"""

from __future__ import annotations

from typing import Any

from aiortc.stats import (
    RTCInboundRtpStreamStats,
    RTCOutboundRtpStreamStats,
    RTCRemoteInboundRtpStreamStats,
    RTCStatsReport,
)


def media_report(report: RTCStatsReport, codec: str, clock_rate: int) -> dict[str, Any]:
    """``voip.media`` from one ``getStats()`` report of an audio-only connection."""
    per_ms = clock_rate / 1000
    inbound: dict[str, Any] = {}
    outbound: dict[str, Any] = {}
    for stats in report.values():
        if isinstance(stats, RTCInboundRtpStreamStats):
            inbound["packets"] = inbound.get("packets", 0) + stats.packetsReceived
            inbound["lost"] = inbound.get("lost", 0) + stats.packetsLost
            inbound["jitter_ms"] = round(stats.jitter / per_ms, 2)
        elif isinstance(stats, RTCOutboundRtpStreamStats):
            outbound["packets"] = outbound.get("packets", 0) + stats.packetsSent
        elif isinstance(stats, RTCRemoteInboundRtpStreamStats):
            outbound["lost"] = stats.packetsLost
            outbound["jitter_ms"] = round(stats.jitter / per_ms, 2)
            if stats.roundTripTime is not None:
                outbound["round_trip_time_ms"] = round(stats.roundTripTime * 1000, 2)
    return {"codec": codec, "inbound": inbound, "outbound": outbound}
