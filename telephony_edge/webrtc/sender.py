"""The outbound RTP loop: the agent's Opus payloads into SRTP with a header built once.

aiortc's ``RTCRtpSender`` runs one loop per call that, for every 20 ms packet,
awaits the track's ``recv()``, converts the packet's time base (fractions),
builds an ``RtpPacket`` with its header extensions, reads the wall clock
twice through ``datetime``, serialises the packet and keeps it in a
retransmission history (which audio never uses: aiortc negotiates no NACK
for audio). :func:`install` puts :func:`run` in the loop's place, on one
sender, before it starts: the RTP header (the negotiated ``mid`` extension
included) is serialised by aiortc once, and each packet only writes its
sequence number and timestamp into a copy and appends the payload. The
packets are byte for byte aiortc's (the marker bit set on each, as aiortc
does for one-packet frames). SRTP, ICE, RTCP and ``getStats()`` stay
aiortc's: the loop keeps the sender's counters (packets, octets, the last
RTP/NTP timestamp pair its sender reports are built from).

This reaches into ``RTCRtpSender``'s private attributes (aiortc 1.16);
:func:`install` raises when one is missing, so an aiortc upgrade that renames
them fails the WebRTC tests instead of sending nothing.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Final

from aiortc import RTCRtpSender
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket
from aiortc.utils import random16, random32

log = logging.getLogger(__name__)

NextPayload = Callable[[], Awaitable[tuple[bytes, int]]]
"""The next 20 ms Opus payload and its timestamp on the 48 kHz RTP clock (waits for its slot)."""

_PRIVATE: Final = "_RTCRtpSender__"
_USED: Final = (
    "mid",
    "rtp_header_extensions_map",
    "rtp_started",
    "rtp_exited",
    "ntp_timestamp",
    "rtp_timestamp",
    "octet_count",
    "packet_count",
)
_SEQ_TS: Final = struct.Struct("!HI")  # the header's bytes 2-7
_NTP_FROM_UNIX: Final = 2_208_988_800  # seconds from 1900 (NTP) to 1970


def install(sender: RTCRtpSender, next_payload: NextPayload) -> None:
    """Make ``sender`` send ``next_payload``'s packets through :func:`run` once it starts."""
    missing = [name for name in _USED if not hasattr(sender, _PRIVATE + name)]
    if missing:
        raise RuntimeError(f"aiortc's RTCRtpSender has no {missing}: re-check webrtc/sender.py")

    async def run_rtp(codec: RTCRtpCodecParameters) -> None:
        await run(sender, codec, next_payload)

    sender._run_rtp = run_rtp  # type: ignore[method-assign]


def header(sender: RTCRtpSender, payload_type: int) -> bytearray:
    """The RTP header aiortc would put on this sender's packets (sequence and timestamp 0)."""
    packet = RtpPacket(payload_type=payload_type, marker=1, ssrc=sender._ssrc)
    packet.extensions.mid = getattr(sender, _PRIVATE + "mid")
    return bytearray(packet.serialize(getattr(sender, _PRIVATE + "rtp_header_extensions_map")))


def ntp_now() -> int:
    """The wall clock as a 64-bit NTP timestamp (what aiortc's sender reports carry)."""
    return int((time.time() + _NTP_FROM_UNIX) * (1 << 32))


async def run(
    sender: RTCRtpSender, codec: RTCRtpCodecParameters, next_payload: NextPayload
) -> None:
    """Send until the track ends, the transport closes or the task is cancelled."""
    state = sender.__dict__
    state[_PRIVATE + "rtp_started"].set()
    transport = sender.transport
    assert codec.payloadType is not None  # the negotiated codec's, always set
    template = header(sender, codec.payloadType)
    seq = random16()
    origin = random32()
    pack = _SEQ_TS.pack_into
    try:
        while True:
            payload, pts = await next_payload()
            timestamp = (origin + pts) & 0xFFFFFFFF
            pack(template, 2, seq, timestamp)
            await transport._send_rtp(bytes(template) + payload)
            state[_PRIVATE + "ntp_timestamp"] = ntp_now()
            state[_PRIVATE + "rtp_timestamp"] = timestamp
            state[_PRIVATE + "octet_count"] += len(payload)
            state[_PRIVATE + "packet_count"] += 1
            seq = (seq + 1) & 0xFFFF
    except (asyncio.CancelledError, ConnectionError, MediaStreamError):
        pass  # as aiortc's own loop: the call's end
    except Exception:
        log.exception("WebRTC outbound RTP failed", extra={"provider": "webrtc"})
    finally:  # aiortc's sender.stop() waits for this
        state[_PRIVATE + "rtp_exited"].set()
