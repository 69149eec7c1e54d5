"""A recorded call end to end (TestLeg), the payload's ``recording`` and its signed link."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from prometheus_client import REGISTRY

from telephony_edge.calls.leg import LegEnded
from telephony_edge.calls.refusals import CallRejected
from telephony_edge.config import Settings
from telephony_edge.recording import signing
from tests.calls.test_bridge import start_call, voiced
from tests.conftest import Edge, Receiver, TestLeg, edge_settings, wait_for
from tests.recording.audio import RATE, locate, probe, read_channels, rms

SECRET = "whsec_recording_tests_0001"


def recording_settings(receiver: Receiver, directory: Path, **recording: Any) -> Settings:
    return edge_settings(
        agents={
            "echo": {
                "prompt": "You echo.",
                "first_message": "Hi",
                "session_data_webhook": receiver.url,
                "recording": {"enabled": True, **recording},
            },
            "quiet": {"prompt": "Not recorded.", "session_data_webhook": receiver.url},
        },
        webhooks={"signing_secret": SECRET, "allow_private_targets": True},
        recording={"directory": str(directory)},
    )


def talkspurts(heard: list[tuple[float, bytes]]) -> list[tuple[float, bytes]]:
    """The agent's audio as the leg was handed it: (time of the first frame, audio) per spurt."""
    spurts: list[tuple[float, bytearray]] = []
    last = -1.0
    for at, frame in heard:
        if not spurts or at - last > 0.1:
            spurts.append((at, bytearray()))
        spurts[-1][1].extend(frame)
        last = at
    return [(at, bytes(pcm)) for at, pcm in spurts]


def samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


def names(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


async def download(url: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.read()


async def test_a_recorded_call_has_each_side_on_its_channel_at_its_time(
    make_edge: Any, receiver: Receiver, speech: bytes, tmp_path: Path
) -> None:
    stored = REGISTRY.get_sample_value("telephony_edge_recordings_total", {"outcome": "stored"})
    edge: Edge = await make_edge(recording_settings(receiver, tmp_path))
    loop = asyncio.get_running_loop()
    leg = TestLeg()
    started = loop.time()
    _, task = await start_call(edge, leg)
    # silence while the greeting (a 1.5 s chime) plays, then speech
    spoke_at = loop.time() + 2.0
    await leg.speak(bytes(640 * 100) + speech, silence_after_s=1.0)
    # the greeting (chime) plays, then the echo of what the caller said
    echo_frames = len(speech) / 640 * 0.6
    await wait_for(lambda: sum(voiced(f) for at, f in leg.heard if at > spoke_at + 1) > echo_frames)
    await asyncio.sleep(0.5)
    leg.events.put_nowait(LegEnded("completed"))
    await asyncio.wait_for(task, 10)
    ended = loop.time()
    await wait_for(lambda: receiver.received, 10)

    meta = receiver.received[0]["recording"]
    assert set(meta) == {"url", "format", "channels", "duration_s", "size_bytes", "sha256"}
    assert (meta["format"], meta["channels"]) == ("wav", "stereo")
    assert meta["duration_s"] == pytest.approx(ended - started, abs=0.3)
    status, body = await download(meta["url"])  # the webhook's link works when it arrives
    assert status == 200
    assert (len(body), hashlib.sha256(body).hexdigest()) == (meta["size_bytes"], meta["sha256"])
    channels, (left, right) = read_channels(body)
    assert channels == 2
    assert len(left) / RATE == pytest.approx(meta["duration_s"], abs=0.001)
    counted = REGISTRY.get_sample_value("telephony_edge_recordings_total", {"outcome": "stored"})
    assert counted == (stored or 0.0) + 1

    # left: the caller's speech, where it was spoken
    # (the first seconds of each: on a busy machine a late frame shifts what follows it)
    caller_at, score = locate(left, samples(speech[: 2 * 32000]))
    assert score > 0.99
    assert caller_at == pytest.approx(spoke_at - started, abs=0.1)
    # right: each stretch the leg played, at its time relative to the caller's speech
    spurts = [(at, pcm) for at, pcm in talkspurts(leg.heard) if len(pcm) >= 0.3 * 32000]
    assert len(spurts) >= 2  # the greeting and the echo
    for at, pcm in spurts:
        agent_at, score = locate(right, samples(pcm[:32000]))
        assert score > 0.99
        assert agent_at - caller_at == pytest.approx(at - spoke_at, abs=0.08)
    # silences included: nothing on the right between the greeting and the echo
    (first_at, first), (second_at, _) = spurts[0], spurts[1]
    gap_from = round((first_at - spoke_at + caller_at) * RATE + len(first) / 2 + 0.1 * RATE)
    gap_to = round((second_at - spoke_at + caller_at - 0.1) * RATE)
    assert gap_to - gap_from > 0.2 * RATE
    assert rms(right[gap_from:gap_to]) < 50


async def test_per_call_override_mono_mp3(
    make_edge: Any, receiver: Receiver, speech: bytes, tmp_path: Path
) -> None:
    edge: Edge = await make_edge(recording_settings(receiver, tmp_path))
    leg = TestLeg()
    override = {"recording": {"channels": "mono", "format": "mp3"}}
    _, task = await start_call(edge, leg, agent_config=override)
    await leg.speak(speech[: 2 * 32000], silence_after_s=0.5)
    leg.events.put_nowait(LegEnded("completed"))
    await asyncio.wait_for(task, 20)
    await wait_for(lambda: receiver.received, 20)
    meta = receiver.received[0]["recording"]
    assert (meta["format"], meta["channels"]) == ("mp3", "mono")
    status, body = await download(meta["url"])
    assert status == 200 and hashlib.sha256(body).hexdigest() == meta["sha256"]
    assert probe(body) == (1, pytest.approx(meta["duration_s"], abs=0.1))
    assert meta["duration_s"] >= 2.5
    assert [Path(name).suffix for name in names(tmp_path)] == [".mp3"]  # the WAV is gone


async def test_unrecorded_and_badly_configured_calls(
    make_edge: Any, receiver: Receiver, tmp_path: Path
) -> None:
    edge: Edge = await make_edge(recording_settings(receiver, tmp_path))
    leg = TestLeg()
    _, task = await start_call(edge, leg, agent_id="quiet")
    await leg.speak(b"\0" * 32000)
    leg.events.put_nowait(LegEnded("completed"))
    await asyncio.wait_for(task, 10)
    await wait_for(lambda: receiver.received, 10)
    assert receiver.received[0]["recording"] is None
    assert names(tmp_path) == []
    with pytest.raises(CallRejected) as refused:
        await start_call(edge, TestLeg(), agent_config={"recording": {"format": "flac"}})
    assert refused.value.http_status == 400
    assert "agent_config.recording: format" in refused.value.reason


async def test_the_link_refuses_a_wrong_or_expired_signature(
    make_edge: Any, receiver: Receiver, tmp_path: Path
) -> None:
    edge: Edge = await make_edge(recording_settings(receiver, tmp_path))
    (tmp_path / "call_abc.wav").write_bytes(b"RIFF....WAVE")
    ok = signing.signed_query(SECRET, "call_abc", 60)
    assert await download(edge.url(f"/recordings/call_abc?{ok}")) == (200, b"RIFF....WAVE")
    refused = [
        "",
        ok.replace("sig=", "sig=0"),
        signing.signed_query("another-secret-0123456789", "call_abc", 60),
        signing.signed_query(SECRET, "call_abc", -1),  # expired
        signing.signed_query(SECRET, "call_other", 60),  # another call's link
        ok.replace("expires=", "expires=9"),  # a longer life than signed
        "expires=soon&sig=x",
    ]
    for query in refused:
        status, _ = await download(edge.url(f"/recordings/call_abc?{query}"))
        assert status == 403, query
    unknown = signing.signed_query(SECRET, "call_unknown", 60)
    assert (await download(edge.url(f"/recordings/call_unknown?{unknown}")))[0] == 404
    dotted = signing.signed_query(SECRET, "..", 60)
    assert (await download(edge.url(f"/recordings/..?{dotted}")))[0] in (403, 404)
