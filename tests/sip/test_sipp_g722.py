"""A G.722 call end to end with a real sipp: wideband offer, PT 9 answered, G.722 RTP both ways.

sipp does the signalling (``sip/uac_g722_external_media.xml`` offers PCMU then
G.722 and fails unless the 200 answers PT 9 alone); the test owns the caller's
RTP socket, speaks the speech fixture encoded with the edge's own
:class:`G722Encoder`, and decodes what the edge sends back.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

from telephony_edge.audio.g722 import G722Decoder, G722Encoder
from telephony_edge.sip.provider import SIP_ENDPOINT
from telephony_edge.sip.rtp import build_rtp, parse_rtp
from tests.audio.signals import rms, samples
from tests.conftest import Edge, Receiver, read_wav, wait_for
from tests.sip.conftest import finished, register, sipp
from tests.sip.test_sipp import CallerMedia


async def speak_g722(media: CallerMedia, dest: tuple[str, int], pcm: bytes) -> None:
    """Send ``pcm`` (canonical 16 kHz) as 20 ms G.722 RTP (PT 9, 160 clock units) at real time."""
    encoder = G722Encoder()
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert media.transport is not None
    for i in range(0, len(pcm) - 639, 640):
        n = i // 640
        payload = encoder.encode(pcm[i : i + 640])
        assert len(payload) == 160
        media.transport.sendto(build_rtp(9, 500 + n, 160 * n, 0x722722, n == 0, payload), dest)
        await asyncio.sleep(max(0.0, start + (n + 1) * 0.02 - loop.time()))


async def test_g722_call_both_ways(sip_edge: Edge, receiver: Receiver, tmp_path: Path) -> None:
    reg = await register(sip_edge)
    call_id = reg["call_id"]
    loop = asyncio.get_running_loop()
    _, media = await loop.create_datagram_endpoint(CallerMedia, local_addr=("127.0.0.1", 0))
    assert media.transport is not None
    rtp_port = media.transport.get_extra_info("sockname")[1]
    process = await sipp(
        sip_edge, "uac_g722_external_media.xml", call_id, tmp_path,
        "-set", "rtp_port", str(rtp_port), "-d", "6000",
    )  # fmt: skip
    endpoint = sip_edge.app[SIP_ENDPOINT]
    await wait_for(lambda: endpoint.legs, within=5)
    leg = next(iter(endpoint.legs.values()))
    assert leg.media is not None and leg.media.codec.name == "G722"
    speech = read_wav("speech_table.wav")[: 16000 * 2 * 2]  # two seconds
    await speak_g722(media, ("127.0.0.1", leg.port), speech + bytes(640 * 60))
    await finished(process, tmp_path)  # exit 0: the 200 answered PT 9
    media.transport.close()

    # the caller's G.722 reached the edge as 16 kHz frames, one per packet
    assert leg.inbound is not None and leg.inbound.stats.received >= 150
    assert leg.frames_in >= 150

    rtp = [p for p in (parse_rtp(d) for d, _ in media.received) if p is not None]
    assert rtp and {p.payload_type for p in rtp} == {9}
    assert all(len(p.payload) == 160 for p in rtp)
    for a, b in itertools.pairwise(rtp):
        assert (b.sequence - a.sequence) & 0xFFFF == 1
        step = (b.timestamp - a.timestamp) & 0xFFFFFFFF
        # 8000 Hz RTP clock: 160 per 20 ms within a talkspurt, the pause's length across one
        assert step == 160 or (b.marker and step > 160), (step, b.marker)
    decoder = G722Decoder()
    frames = [decoder.decode(p.payload) for p in rtp]
    assert all(len(f) == 640 for f in frames)
    loud = sum(rms(samples(f)) > 300 for f in frames)
    assert loud > 25, f"{loud} loud frames of {len(frames)}"  # the greeting and echo, decoded

    await wait_for(lambda: receiver.received, within=10)
    [payload] = receiver.received
    assert payload["call_id"] == call_id and payload["call_status"] == "user-ended"
    assert "caller spoke" in json.dumps(payload.get("chat"))  # the agent heard G.722 speech
