"""A caller whose RTP stops after speech still gets its answer (issue 18: the call's clock).

Phones and PBXs with silence suppression, RFC 3389 comfort noise and Opus DTX send
nothing while the caller is quiet. The agent core's turn detection counts time in the
audio it is given, so the edge must keep giving it a frame per 20 ms of call time:
the test's caller speaks (the speech fixture as 20 ms PCMU packets) and then sends
nothing at all (or one RFC 3389 CN packet, having negotiated CN), and the agent's
answer (the demo core's echo of what it heard, and its transcript in the end-of-call
webhook) must come back. The SIP leg's playout buffer fills the silence
(``telephony_edge_sip_playout_frames_total{kind="silence"}``).
"""

from __future__ import annotations

import asyncio
import audioop
import secrets

import pytest
from prometheus_client import REGISTRY

from telephony_edge.audio.g711 import Law
from telephony_edge.audio.transcode import G711Encoder
from telephony_edge.sip.rtp import build_rtp, parse_rtp
from tests.conftest import Edge, Receiver, read_wav, wait_for
from tests.sip.test_rtp_hijack import play, spoke
from tests.sip.test_udp_edge import Socket, media_port, open_socket, rtp_from, sdp, start_call

SPEECH_S = 1.2


def speech_packets() -> list[bytes]:
    pcm = read_wav("speech_table.wav")[: int(SPEECH_S * 32000)]
    encoder = G711Encoder(Law.ULAW)
    ssrc = secrets.randbits(32)
    return [
        build_rtp(0, n, 160 * n, ssrc, n == 0, encoder.encode(pcm[i : i + 640]))
        for n, i in enumerate(range(0, len(pcm) - 639, 640))
    ]


def loud_packets(sock: Socket, since: float) -> int:
    """Packets from the edge since ``since`` that carry sound (not encoded silence)."""
    return sum(
        audioop.rms(audioop.ulaw2lin(p.payload, 2), 2) > 300 for p in rtp_from(sock, since=since)
    )


def filled(kind: str) -> float:
    value = REGISTRY.get_sample_value("telephony_edge_sip_playout_frames_total", {"kind": kind})
    return value or 0.0


def with_cn(offer: str) -> str:
    return offer.replace("RTP/AVP 0 101", "RTP/AVP 0 101 13").replace(
        "a=fmtp:101 0-16\r\n", "a=fmtp:101 0-16\r\na=rtpmap:13 CN/8000\r\n"
    )


@pytest.mark.parametrize("comfort_noise", [False, True], ids=["nothing", "rfc3389-cn"])
async def test_a_caller_that_stops_sending_rtp_after_speech_gets_the_agents_answer(
    sip_edge: Edge, receiver: Receiver, comfort_noise: bool
) -> None:
    rtp = await open_socket()
    offer = sdp(rtp.port)
    caller, ok = await start_call(sip_edge, with_cn(offer) if comfort_noise else offer)
    assert (b"CN/8000" in ok.body) is comfort_noise
    edge_rtp = ("127.0.0.1", media_port(ok.body))
    caller.send(caller.request("ACK", cseq=caller.cseq))
    await wait_for(lambda: rtp.log, within=5)  # the greeting
    await asyncio.sleep(1.0)  # let it finish
    packets = speech_packets()
    if comfort_noise:  # the phone's VAD: one CN packet at -70 dBov, then nothing
        last = parse_rtp(packets[-1])
        assert last is not None
        packets.append(
            build_rtp(13, last.sequence + 1, last.timestamp + 160, last.ssrc, False, b"\x46")
        )
    await play(rtp, edge_rtp, packets)
    silence_before = filled("silence")
    speech_ended = asyncio.get_running_loop().time()
    # and then not one packet more: the agent's turn detection must still see the end
    await wait_for(lambda: loud_packets(rtp, speech_ended) > 20, within=5)
    caller.send(caller.request("BYE"))
    assert (await caller.response("BYE")).status == 200
    await wait_for(lambda: receiver.received, within=10)
    [payload] = receiver.received
    assert abs(spoke(payload) - SPEECH_S) < 0.5
    assert filled("silence") - silence_before > 20  # the buffer filled the caller's silence
    assert payload["voip"]["media"]["jitter_buffer"]["silence_ms"] > 400
    for sock in (rtp, caller.sip):
        sock.close()
