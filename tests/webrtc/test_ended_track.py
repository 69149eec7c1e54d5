"""A WebRTC caller whose audio track ends after one sentence still gets its answer.

A meeting bot or a browser that stops its microphone ends its track: aiortc then
sends no more RTP at all. The agent core's turn detection counts time in the audio
it is given, so the edge must go on giving it a frame per 20 ms (the call's clock,
``calls/caller_clock.py``) for the agent to hear the end of the sentence and answer.
Here a real aiortc caller says the speech fixture and ends its track; the demo core's
answer (its echo of what it heard) must come back, and its transcript must say how
long the caller spoke.
"""

from __future__ import annotations

import asyncio
import fractions
from collections.abc import Callable
from typing import Any

from aiortc import RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

from telephony_edge.audio.frames import FRAME_BYTES
from tests.conftest import Edge, Receiver, read_wav, wait_for
from tests.sip.test_rtp_hijack import spoke
from tests.webrtc.test_offer import Client, post_offer, settings_for

SENTENCE_S = 1.2


class OneSentence(MediaStreamTrack):
    """An audio track that says ``pcm`` (16 kHz) in real time, then ends."""

    kind = "audio"

    def __init__(self, pcm: bytes) -> None:
        super().__init__()
        self.frames = [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)]
        self.sent = 0
        self.start: float | None = None
        self.ended_at: float | None = None

    async def recv(self) -> AudioFrame:
        loop = asyncio.get_running_loop()
        if self.sent >= len(self.frames):
            self.ended_at = self.ended_at or loop.time()
            self.stop()
            raise MediaStreamError
        if self.start is None:
            self.start = loop.time()
        await asyncio.sleep(max(0.0, self.start + self.sent * 0.02 - loop.time()))
        frame = AudioFrame(format="s16", layout="mono", samples=FRAME_BYTES // 2)
        frame.planes[0].update(self.frames[self.sent])
        frame.sample_rate = 16000
        frame.pts = self.sent * (FRAME_BYTES // 2)
        frame.time_base = fractions.Fraction(1, 16000)
        self.sent += 1
        return frame


async def test_a_caller_whose_track_ends_after_one_sentence_gets_the_agents_answer(
    make_edge: Callable[..., Any], receiver: Receiver
) -> None:
    edge: Edge = await make_edge(settings_for(receiver, connect_timeout_s=10))
    client = Client(audio=False)
    track = OneSentence(read_wav("speech_table.wav")[: int(SENTENCE_S * 32000)])
    client.pc.addTrack(track)
    try:
        status, answer = await post_offer(edge, {"agent_id": "echo", "offer": await client.offer()})
        assert status == 200, answer
        await client.pc.setRemoteDescription(
            RTCSessionDescription(**{k: answer[k] for k in ("sdp", "type")})
        )
        await wait_for(lambda: track.ended_at is not None, within=15)
        voiced_at_end = client.voiced
        # not one packet more from the caller: the agent must still hear the sentence end
        await wait_for(lambda: client.voiced - voiced_at_end > 30, within=8)
    finally:
        await client.close()
    await wait_for(lambda: receiver.received, within=10)
    [payload] = receiver.received
    assert payload["call_status"] == "user-ended", payload
    assert abs(spoke(payload) - SENTENCE_S) < 0.5
