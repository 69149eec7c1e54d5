"""A recorded call over Vonage (its simulator on a real socket; L16 16 kHz both ways)."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from telephony_edge.vonage.simulator import split_frames
from tests.conftest import read_wav
from tests.recording.audio import RATE, locate, read_channels, rms
from tests.recording.test_call_recording import download, samples
from tests.twilio.harness import Crm
from tests.vonage.harness import VonageEdge


async def test_a_recorded_vonage_call(
    make_vonage_edge: Any, crm: Crm, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    agent = {"prompt": "You echo.", "first_message": "Hi", "session_data_webhook": crm.url}
    agent["recording"] = {"enabled": True, "channels": "stereo"}
    edge: VonageEdge = await make_vonage_edge(
        agents={"echo": agent}, recording={"directory": str(tmp_path)}
    )
    loop = asyncio.get_running_loop()
    speech = read_wav("speech_order.wav")
    call = edge.call(session)
    await call.post_answer()
    answer = call.result.answer
    assert answer is not None and answer.websocket is not None
    assert await call.post_event("answered") == 204
    await call.open_socket(answer.websocket)
    opened = loop.time()
    await call.stream_audio([], silence_after_s=2.0)  # the greeting (a 1.5 s chime) plays
    spoke_at = loop.time() - opened
    await call.stream_audio(split_frames(speech), silence_after_s=0.3)
    echo_s = len(speech) / 32000 * 0.6
    await call.silence_until(lambda _: call.result.frames_received * 0.02 > 1.5 + echo_s, 10)
    await call.hang_up()
    (payload,) = await crm.wait(1, within=15)

    meta = payload["recording"]
    status, body = await download(meta["url"])
    assert status == 200 and hashlib.sha256(body).hexdigest() == meta["sha256"]
    channels, (left, right) = read_channels(body)
    assert channels == 2 and len(left) / RATE == pytest.approx(meta["duration_s"], abs=0.001)
    assert meta["duration_s"] == pytest.approx(call.result.duration_s, abs=0.3)
    # left: the caller's speech, sample for sample (L16 needs no conversion), when spoken
    caller_at, score = locate(left, samples(speech[: 2 * 32000]))
    assert score > 0.99
    assert caller_at == pytest.approx(spoke_at, abs=0.1)
    # right: what Vonage played to the caller, where its playout put it
    heard = samples(call.result.heard_pcm)
    for after_s in (0.0, spoke_at + len(speech) / 32000):  # the greeting, the echo
        start = int(after_s * RATE)
        start += int(np.argmax(np.abs(heard[start:]) > 300))
        agent_at, score = locate(right, heard[start : start + RATE // 2])
        assert score > 0.99
        assert agent_at == pytest.approx(start / RATE, abs=0.1)
    assert rms(right[int(1.6 * RATE) : int(caller_at * RATE)]) < 50  # silence between
