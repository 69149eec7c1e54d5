"""A recorded WebRTC call: the aiortc client of ``tests/webrtc/test_offer.py`` speaks, listens."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import av
import numpy as np
import pytest
from aiortc import RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from tests.conftest import Edge, Receiver, read_wav, wait_for
from tests.recording.audio import RATE, locate, locate_in_pieces, read_channels
from tests.recording.test_call_recording import download
from tests.webrtc.test_offer import Client, Speech, post_offer


class LateSpeech(Speech):
    """The client's microphone: quiet while the greeting plays, then speech; when it began."""

    def __init__(self, pcm: bytes, after_s: float) -> None:
        super().__init__(pcm)
        self.quiet = round(after_s / 0.02)  # frames: the sender asks for one per 20 ms
        self.started: float | None = None

    def next_frame(self) -> bytes | None:
        if self.quiet > 0:
            self.quiet -= 1
            return None
        if self.started is None:
            self.started = asyncio.get_running_loop().time()
        return super().next_frame()


class ListeningClient(Client):
    """The client, keeping what it heard (16 kHz mono) and when each frame arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.mic.source = self.speech = LateSpeech(read_wav("speech_table.wav"), 2.0)
        self.heard: list[tuple[float, np.ndarray]] = []
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)

    async def _listen(self, track: MediaStreamTrack) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                frame = await track.recv()
                for out in self._resampler.resample(frame):  # type: ignore[arg-type]
                    self.heard.append((loop.time(), out.to_ndarray().reshape(-1)))
        except MediaStreamError:
            pass


async def test_a_recorded_webrtc_call(recording_dir: Path, edge: Edge, receiver: Receiver) -> None:
    client = ListeningClient()
    try:
        offer = await client.offer()
        body = {"agent_id": "echo", "offer": offer}
        body["agent_config"] = {"recording": {"enabled": True}}
        status, answer = await post_offer(edge, body)
        assert status == 200, answer
        await client.pc.setRemoteDescription(
            RTCSessionDescription(**{k: answer[k] for k in ("sdp", "type")})
        )
        # the greeting, the caller's speech (from 2 s on), its echo
        await wait_for(lambda: len(client.heard) * 0.02 > 10.5, within=20)
    finally:
        await client.close()
    await wait_for(lambda: receiver.received, within=10)
    meta = receiver.received[0]["recording"]
    status, data = await download(meta["url"])
    assert status == 200 and hashlib.sha256(data).hexdigest() == meta["sha256"]
    channels, (left, right) = read_channels(data)
    assert channels == 2 and len(left) / RATE == pytest.approx(meta["duration_s"], abs=0.001)
    speech = np.frombuffer(read_wav("speech_table.wav"), dtype="<i2").astype(np.float64)
    # the caller's speech, through Opus (close, not equal; on a busy machine a late
    # packet spoils the piece it falls in)
    caller_at, agree = locate_in_pieces(left, speech)
    assert agree > 0.6
    heard = np.concatenate([pcm for _, pcm in client.heard]).astype(np.float64)
    assert client.speech.started is not None
    for after in (0.0, client.speech.started + len(speech) / RATE + 0.3):  # greeting, echo
        first = next(i for i, (at, pcm) in enumerate(client.heard) if at > after and loud(pcm))
        start = sum(len(pcm) for _, pcm in client.heard[:first])
        agent_at, score = locate(right, heard[start : start + RATE // 2])
        assert score > 0.9
        # on the edge's clock: the caller's audio as it arrived, the agent's as it left.
        # The client heard the agent later by the two one-way delays (jitter buffers,
        # Opus), which the recording leaves out: never negative, a fraction of a second.
        heard_after = client.heard[first][0] - client.speech.started
        delays = heard_after - (agent_at - caller_at)
        assert -0.03 < delays < 0.4


def loud(pcm: np.ndarray) -> bool:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) > 300
