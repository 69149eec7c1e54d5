"""webrtc/sender.py: the edge's RTP loop in place of aiortc's, seen by a real aiortc peer.

Two in-process peer connections on loopback; the offerer's audio sender runs
:func:`telephony_edge.webrtc.sender.run` with a payload source that counts its
pulls. The answerer parses every packet as aiortc does: version 2, the
negotiated payload type, the marker bit, the sender's SSRC and ``mid``
extension, consecutive sequence numbers and timestamps that follow the
payloads' ``pts``; the payloads arrive unchanged, and the sender's own
statistics (its RTCP sender reports) count them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtp import RtpPacket
from aiortc.stats import RTCOutboundRtpStreamStats

from telephony_edge.webrtc import sender
from telephony_edge.webrtc.ice import gather_on
from tests.conftest import wait_for

SAMPLES = 960


class Silent(MediaStreamTrack):
    """A track aiortc's own loop would pull; with the edge's loop installed, never pulled."""

    kind = "audio"

    async def recv(self) -> Any:
        raise AssertionError("aiortc's own sender loop ran")


async def test_packets_are_aiortc_s_with_the_header_built_once() -> None:
    offerer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    answerer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    transceiver = offerer.addTransceiver(Silent(), direction="sendonly")
    pulls = 0

    async def next_payload() -> tuple[bytes, int]:
        nonlocal pulls
        await asyncio.sleep(0.02)
        pulls += 1
        return pulls.to_bytes(2, "big") * 20, pulls * SAMPLES

    sender.install(transceiver.sender, next_payload)
    got: list[RtpPacket] = []

    def on_track(track: Any) -> None:
        receiver = next(t.receiver for t in answerer.getTransceivers() if t.receiver.track is track)
        handle = receiver._handle_rtp_packet

        async def seen(packet: RtpPacket, arrival_time_ms: int) -> None:
            got.append(packet)
            await handle(packet, arrival_time_ms)

        receiver._handle_rtp_packet = seen  # type: ignore[method-assign]

    answerer.on("track", on_track)
    try:
        gather_on(offerer, ["127.0.0.1"])
        await offerer.setLocalDescription(await offerer.createOffer())
        await answerer.setRemoteDescription(offerer.localDescription)
        gather_on(answerer, ["127.0.0.1"])
        await answerer.setLocalDescription(await answerer.createAnswer())
        await offerer.setRemoteDescription(answerer.localDescription)
        await wait_for(lambda: len(got) >= 50, within=15)
        stats = [
            s for s in (await offerer.getStats()).values()
            if isinstance(s, RTCOutboundRtpStreamStats)
        ]  # fmt: skip
    finally:
        await offerer.close()
        await answerer.close()

    rtp: RTCRtpSender = transceiver.sender
    mid = transceiver.mid
    first = got[0]
    for n, packet in enumerate(got):
        assert packet.version == 2 and packet.marker == 1
        assert packet.payload_type == first.payload_type and packet.ssrc == rtp._ssrc
        assert packet.extensions.mid == mid
        assert packet.sequence_number == (first.sequence_number + n) & 0xFFFF
        pull = int.from_bytes(packet.payload[:2], "big")
        assert packet.payload == pull.to_bytes(2, "big") * 20
        assert pull == int.from_bytes(first.payload[:2], "big") + n  # none lost on loopback
        assert (packet.timestamp - first.timestamp) & 0xFFFFFFFF == n * SAMPLES
    assert pulls >= len(got)
    [out] = stats
    assert out.packetsSent >= len(got) and out.bytesSent >= 40 * len(got)
