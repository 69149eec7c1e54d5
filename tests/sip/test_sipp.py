"""End to end with a real sipp against the edge on real sockets: register, INVITE, RTP, BYE.

The edge runs in-process (``make_edge``) with the built-in agent core. In the
main test sipp does the signalling while the test owns the caller's RTP
socket (the SDP names it: ``-set rtp_port``), so it can both speak PCMA into
the call and count what the edge sends back. A second test lets sipp play
its own PCMA pcap. With CI=true a missing sipp fails instead of skipping.
"""

from __future__ import annotations

import asyncio
import audioop
import itertools
import json
from pathlib import Path

import pytest

from telephony_edge.audio.g711 import Law
from telephony_edge.audio.transcode import G711Encoder
from telephony_edge.sip.provider import SIP_ENDPOINT
from telephony_edge.sip.rtp import build_rtp, parse_rtp
from tests.conftest import Edge, Receiver, read_wav, wait_for
from tests.sip.conftest import finished, register, sipp

PCAP = Path("/usr/share/sip-tester/g711a.pcap")


class CallerMedia(asyncio.DatagramProtocol):
    """The caller's RTP socket: what the edge sends is kept with its source."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, tuple[str, int]]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append((data, addr))


async def speak_pcma(media: CallerMedia, dest: tuple[str, int], pcm: bytes) -> None:
    """Send ``pcm`` (canonical) as 20 ms PCMA RTP at real time."""
    encoder = G711Encoder(Law.ALAW)
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert media.transport is not None
    for i in range(0, len(pcm) - 639, 640):
        n = i // 640
        payload = encoder.encode(pcm[i : i + 640])
        media.transport.sendto(build_rtp(8, 1000 + n, 160 * n, 0xC0FFEE, n == 0, payload), dest)
        await asyncio.sleep(max(0.0, start + (n + 1) * 0.02 - loop.time()))


def loud(payload: bytes) -> bool:
    return audioop.rms(audioop.alaw2lin(payload, 2), 2) > 300


@pytest.mark.both_loops
async def test_register_invite_rtp_both_ways_bye(
    sip_edge: Edge, receiver: Receiver, tmp_path: Path
) -> None:
    reg = await register(sip_edge, metadata={"crm_id": "42"})
    call_id = reg["call_id"]
    port = sip_edge.app[SIP_ENDPOINT].port
    assert reg["sip_uri"] == f"sip:{call_id}@127.0.0.1:{port}"

    loop = asyncio.get_running_loop()
    _, media = await loop.create_datagram_endpoint(CallerMedia, local_addr=("127.0.0.1", 0))
    assert media.transport is not None
    rtp_port = media.transport.get_extra_info("sockname")[1]
    process = await sipp(
        sip_edge, "uac_external_media.xml", call_id, tmp_path,
        "-set", "rtp_port", str(rtp_port), "-d", "6000",
    )  # fmt: skip
    endpoint = sip_edge.app[SIP_ENDPOINT]
    await wait_for(lambda: endpoint.legs, within=5)
    leg = next(iter(endpoint.legs.values()))
    speech = read_wav("speech_table.wav")[: 16000 * 2 * 2]  # two seconds of speech
    await speak_pcma(media, ("127.0.0.1", leg.port), speech + bytes(640 * 60))
    await finished(process, tmp_path)
    media.transport.close()

    packets = [(parse_rtp(data), src) for data, src in media.received]
    assert {src for _, src in packets} == {("127.0.0.1", leg.port)}  # symmetric: from its port
    rtp = [p for p, _ in packets if p is not None and p.payload_type == 8]
    assert len(rtp) > 50, f"only {len(rtp)} RTP packets from the edge"
    assert sum(loud(p.payload) for p in rtp) > 25  # the chime and the echo, not silence
    assert len({p.ssrc for p in rtp}) == 1
    seqs = [p.sequence for p in rtp]
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
    assert rtp[0].marker

    await wait_for(lambda: receiver.received, within=10)
    [payload] = receiver.received
    assert payload["call_id"] == call_id
    assert payload["call_status"] == "user-ended"
    chat = json.dumps(payload.get("chat"))
    assert "caller spoke" in chat, chat[:500]  # the agent core heard the caller
    # the registration was claimed: the same sip_uri again is 404
    again = await sipp(sip_edge, "uac_expect_404.xml", call_id, tmp_path)
    await finished(again, tmp_path)


async def test_sipp_plays_pcma_pcap_into_the_call(
    sip_edge: Edge, receiver: Receiver, tmp_path: Path
) -> None:
    reg = await register(sip_edge)
    process = await sipp(sip_edge, "uac_pcma_pcap.xml", reg["call_id"], tmp_path, "-d", "2500")
    endpoint = sip_edge.app[SIP_ENDPOINT]
    await wait_for(lambda: endpoint.legs, within=5)
    leg = next(iter(endpoint.legs.values()))
    await finished(process, tmp_path)
    assert leg.inbound is not None and leg.inbound.stats.received > 50  # 30 ms packets
    assert leg.frames_in > 75  # re-framed to 20 ms
    assert leg.sender is not None and leg.sender.sent > 0
    await wait_for(lambda: receiver.received, within=10)
    assert receiver.received[0]["call_status"] == "user-ended"


async def test_unknown_call_id_gets_404(sip_edge: Edge, tmp_path: Path) -> None:
    process = await sipp(sip_edge, "uac_expect_404.xml", "call_unknown", tmp_path)
    await finished(process, tmp_path)
