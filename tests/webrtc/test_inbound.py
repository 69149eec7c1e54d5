"""The caller's audio is decoded on the edge's loop, with no decoder thread per call.

aiortc would run one ``audio-decoder`` thread per receiver (a queue, a thread
wake-up and a hop back to the loop per packet); the leg takes the place of its
decoder queue (``leg.InboundAudio``), so the thread aiortc starts finds nothing
to do and ends at once. In one process with an aiortc client, the only decoder
thread left mid-call is the client's own, and the edge still hears the caller.
"""

from __future__ import annotations

import threading

from aiortc import RTCSessionDescription

from telephony_edge.webrtc.leg import WebRtcLeg
from tests.conftest import Edge, wait_for
from tests.webrtc.test_offer import Client, edge, post_offer  # noqa: F401 (fixture)


def decoder_threads() -> int:
    return sum(t.name == "audio-decoder" and t.is_alive() for t in threading.enumerate())


async def test_a_call_has_no_decoder_thread_on_the_edge(edge: Edge) -> None:  # noqa: F811
    client = Client()
    try:
        status, answer = await post_offer(edge, {"agent_id": "echo", "offer": await client.offer()})
        assert status == 200, answer
        await client.pc.setRemoteDescription(
            RTCSessionDescription(**{k: answer[k] for k in ("sdp", "type")})
        )
        await wait_for(lambda: client.frames > 50, within=20)  # both ways up
        leg = getattr(edge.services.calls.get(answer["call_id"]), "leg", None)
        assert isinstance(leg, WebRtcLeg)
        await wait_for(lambda: leg.frames_in > 50, within=10)
        assert decoder_threads() == 1  # the client's
    finally:
        await client.close()
