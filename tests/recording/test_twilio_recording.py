"""A recorded call over Twilio (the simulator on a real socket), and a worker killed mid-call."""

from __future__ import annotations

import asyncio
import audioop
import hashlib
import os
import signal
import subprocess
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from telephony_edge.twilio.simulator import encode_payloads
from tests.conftest import ServeProcess, free_port, require_binary, wait_for
from tests.recording.audio import RATE, locate, read_channels, rms
from tests.recording.test_call_recording import download
from tests.twilio.harness import (
    ACCOUNT_SID,
    API_KEY,
    AUTH_TOKEN,
    LOCAL_NUMBER,
    WEBHOOK_SECRET,
    Crm,
    TwilioEdge,
    answered,
    pcm16_to_ulaw8k,
    serve_call,
)


def ulaw8k_as_pcm16k(ulaw: bytes) -> np.ndarray:
    pcm, _ = audioop.ratecv(audioop.ulaw2lin(ulaw, 2), 2, 1, 8000, 16000, None)
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


async def test_a_recorded_twilio_call(
    make_twilio_edge: Any,
    crm: Crm,
    session: aiohttp.ClientSession,
    speech: bytes,
    tmp_path: Path,
) -> None:
    agent = {"prompt": "You echo.", "first_message": "Hi", "session_data_webhook": crm.url}
    agent["recording"] = {"enabled": True}
    edge: TwilioEdge = await make_twilio_edge(
        agents={"echo": agent}, recording={"directory": str(tmp_path)}
    )
    call = edge.call(session)
    await call.open_stream(await answered(call))
    await call.wait_for_greeting()
    await call.stream_audio(encode_payloads(pcm16_to_ulaw8k(speech)), silence_after_s=0.3)
    await call.stream_until_quiet()
    await call.stop()
    (payload,) = await crm.wait(1, within=15)

    meta = payload["recording"]
    assert (meta["format"], meta["channels"]) == ("wav", "stereo")
    status, body = await download(meta["url"])
    assert status == 200 and hashlib.sha256(body).hexdigest() == meta["sha256"]
    channels, (left, right) = read_channels(body)
    assert channels == 2
    assert meta["duration_s"] == pytest.approx(call.result.duration_s, abs=0.5)
    # left: the caller's speech (through μ-law and 8 kHz), where it was spoken
    caller_at, score = locate(left, np.frombuffer(speech, dtype="<i2").astype(np.float64))
    assert score > 0.9
    assert caller_at == pytest.approx(call.result.spoke_at_s, abs=0.3)
    # right: what the simulated phone played: the greeting (1.5 s chime) from the start,
    # silence while the caller spoke, then the echo
    heard = ulaw8k_as_pcm16k(call.result.heard_ulaw)
    greeting = heard[np.argmax(np.abs(heard) > 300) :][: RATE // 2]
    agent_at, score = locate(right, greeting)
    assert score > 0.9
    assert agent_at < 0.2
    assert rms(right[int((agent_at + 1.6) * RATE) : int(caller_at * RATE)]) < 50
    echo = heard[int((caller_at + 1.0) * RATE) :]
    echo = echo[np.argmax(np.abs(echo) > 300) :][:RATE]
    echo_at, score = locate(right, echo)
    assert score > 0.9 and echo_at > caller_at + len(speech) / 32000
    # the caller was quiet while the greeting played: the agent is not on the left
    assert rms(left[: int(caller_at * RATE) - 1600]) < 50


def killed_config(directory: Path) -> dict[str, Any]:
    return {
        "api": {"private_key": API_KEY},
        "twilio": {
            "enabled": True,
            "account_sid": ACCOUNT_SID,
            "auth_token": AUTH_TOKEN,
            "api_base_url": f"http://127.0.0.1:{free_port()}",  # never reached here
        },
        "webhooks": {"signing_secret": WEBHOOK_SECRET},
        "agents": {"demo": {"prompt": "Demo.", "recording": {"enabled": True}}},
        "regions": {"local": {"public_url": "http://127.0.0.1"}},
        "numbers": {LOCAL_NUMBER: {"provider": "twilio", "agent_id": "demo", "region": "local"}},
        "recording": {"directory": str(directory)},
    }


def header_frames(path: Path) -> int:
    """Frames the header announces (0 in the instant between creating the file and its header)."""
    try:
        with wave.open(str(path)) as wav:
            return wav.getnframes()
    except (EOFError, wave.Error):
        return 0


async def test_a_worker_killed_mid_call_leaves_a_playable_partial_recording(
    serve_process: Callable[[dict[str, Any]], ServeProcess],
    session: aiohttp.ClientSession,
    speech: bytes,
    tmp_path: Path,
) -> None:
    ffmpeg = require_binary("ffmpeg", "apt-get install ffmpeg")
    edge = serve_process(killed_config(tmp_path))
    call = serve_call(edge.base_url, session)
    await call.open_stream(await answered(call))
    talking = asyncio.create_task(call.stream_audio(encode_payloads(pcm16_to_ulaw8k(speech))))
    found: list[Path] = []
    await wait_for(lambda: found.extend(tmp_path.glob("*.wav")) or found, 10)
    (path,) = found
    await wait_for(lambda: header_frames(path) >= 2 * RATE, 10)  # flushed while it runs
    os.kill(edge.process.pid, signal.SIGKILL)
    edge.process.wait(5)
    talking.cancel()
    await asyncio.gather(talking, return_exceptions=True)
    await call.finish()

    body = path.read_bytes()
    channels, (left, _) = read_channels(body)
    assert channels == 2 and len(left) >= 2 * RATE
    assert len(body) >= 44 + len(left) * 4  # the header never claims more than is there
    decoded = await asyncio.to_thread(
        subprocess.run,
        [ffmpeg, "-v", "error", "-i", str(path), "-f", "null", "-"],
        capture_output=True,
        text=True,
    )
    assert decoded.returncode == 0 and not decoded.stderr, decoded.stderr
    # what was recorded before the kill is the caller's speech from where it started
    spoken = np.frombuffer(speech, dtype="<i2").astype(np.float64)
    at, score = locate(left, spoken[: len(left) - RATE // 2])
    assert score > 0.9 and at < 0.5
