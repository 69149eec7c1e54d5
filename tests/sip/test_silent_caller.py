"""A caller whose RTP stops after speech still gets its answer (issue 18: the call's clock).

Phones and PBXs with silence suppression, RFC 3389 comfort noise and Opus DTX send
nothing while the caller is quiet. The agent core's turn detection counts time in the
audio it is given, so the edge must keep giving it a frame per 20 ms of call time:
the test's caller speaks (the speech fixture as 20 ms PCMU packets) and then sends
nothing at all, and the agent's answer (the demo core's echo of what it heard, and its
transcript in the end-of-call webhook) must come back.
"""

from __future__ import annotations

import asyncio
import audioop
import secrets

from prometheus_client import REGISTRY

from telephony_edge.audio.g711 import Law
from telephony_edge.audio.transcode import G711Encoder
from telephony_edge.sip.rtp import build_rtp
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
    value = REGISTRY.get_sample_value("telephony_edge_caller_frames_filled_total", {"kind": kind})
    return value or 0.0


async def test_a_caller_that_stops_sending_rtp_after_speech_gets_the_agents_answer(
    sip_edge: Edge, receiver: Receiver
) -> None:
    rtp = await open_socket()
    caller, ok = await start_call(sip_edge, sdp(rtp.port))
    edge_rtp = ("127.0.0.1", media_port(ok.body))
    caller.send(caller.request("ACK", cseq=caller.cseq))
    await wait_for(lambda: rtp.log, within=5)  # the greeting
    await asyncio.sleep(1.0)  # let it finish
    silence_before = filled("silence")
    await play(rtp, edge_rtp, speech_packets())
    speech_ended = asyncio.get_running_loop().time()
    # and then not one packet more: the agent's turn detection must still see the end
    await wait_for(lambda: loud_packets(rtp, speech_ended) > 20, within=5)
    assert filled("silence") - silence_before > 20  # the clock filled the caller's silence
    caller.send(caller.request("BYE"))
    assert (await caller.response("BYE")).status == 200
    await wait_for(lambda: receiver.received, within=10)
    [payload] = receiver.received
    assert abs(spoke(payload) - SPEECH_S) < 0.5
    for sock in (rtp, caller.sip):
        sock.close()
