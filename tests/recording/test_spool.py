"""The spool's bound, and recordings when ffmpeg is missing or dies: the call goes on."""

from __future__ import annotations

import asyncio
import os
import signal
import wave
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from telephony_edge.config import RecordingOptions, RecordingSettings
from telephony_edge.recording.recorder import Recordings
from tests.recording.simulated import Clock, feed
from tests.recording.test_call_recording import names

STEREO_WAV = RecordingOptions(enabled=True, channels="stereo", format="wav")
MONO_MP3 = RecordingOptions(enabled=True, channels="mono", format="mp3")
MiB = 1024 * 1024


def counted(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def local(directory: Path, clock: Clock, **settings: object) -> Recordings:
    recording = RecordingSettings.model_validate(
        {"directory": str(directory), "flush_interval_s": 10, **settings}
    )
    return Recordings(recording, public_url="http://edge.invalid", secret=None, clock=clock)


async def test_the_bound_stops_a_live_recording_and_refuses_new_ones_until_there_is_room(
    tmp_path: Path,
) -> None:
    truncated = counted("telephony_edge_recording_spool_full_total", action="truncated")
    refused = counted("telephony_edge_recording_spool_full_total", action="refused")
    clock = Clock()
    recordings = local(tmp_path, clock, spool_max_bytes=MiB)
    first = recordings.start("call_first", STEREO_WAV)
    assert first is not None
    await feed(first, clock, 30)  # 64 KB a second: 1 MiB is passed after 16 s
    assert counted("telephony_edge_recording_spool_full_total", action="truncated") == truncated + 1
    # the call is still on, its file stopped at the bound: another call finds no room
    assert recordings.start("call_second", STEREO_WAV) is None
    assert counted("telephony_edge_recording_spool_full_total", action="refused") == refused + 1
    assert not (tmp_path / "call_second.wav").exists()

    meta = await recordings.finish("call_first")
    assert meta is not None
    size = (tmp_path / "call_first.wav").stat().st_size
    assert MiB < size <= MiB + 64_000  # passed by one flush at most
    with wave.open(str(tmp_path / "call_first.wav")) as wav:  # a complete WAV of what it has
        assert wav.getnframes() * 4 + 44 == size
        assert wav.getnframes() / 16000 == pytest.approx(meta["duration_s"], abs=0.001)
    assert 16 < meta["duration_s"] < 17.1
    # local storage: a finished file is in its store, so the spool has room again
    assert recordings.spool.used_bytes == 0
    third = recordings.start("call_third", STEREO_WAV)
    assert third is not None
    await feed(third, clock, 2)
    assert await recordings.finish("call_third") is not None
    await recordings.close()


async def test_without_ffmpeg_a_compressed_recording_is_kept_as_wav(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("telephony_edge.recording.recorder.shutil.which", lambda name: None)
    clock = Clock()
    recordings = local(tmp_path, clock)
    recording = recordings.start("call_plain", MONO_MP3)
    assert recording is not None
    await feed(recording, clock, 2)
    meta = await recordings.finish("call_plain")
    assert meta is not None and (meta["format"], meta["channels"]) == ("wav", "mono")
    assert names(tmp_path) == ["call_plain.wav"]
    await recordings.close()


async def test_an_encoder_that_dies_stops_the_recording_not_the_call(tmp_path: Path) -> None:
    failed = counted("telephony_edge_recordings_total", outcome="failed")
    clock = Clock()
    recordings = local(tmp_path, clock)
    recording = recordings.start("call_broken", MONO_MP3)
    assert recording is not None and recording.encoder is not None
    await feed(recording, clock, 120)  # 360 KB of mp3: ffmpeg writes 256 KiB at a time
    assert recording.encoder.pid is not None
    os.kill(recording.encoder.pid, signal.SIGKILL)
    await asyncio.sleep(0.5)  # a call's flushes are a second apart: the loop sees it exit
    await feed(recording, clock, 3)  # the taps and flushes go on, and raise nothing
    assert recording.writer.closed
    assert await recordings.finish("call_broken") is None
    assert counted("telephony_edge_recordings_total", outcome="failed") == failed + 1
    # what was encoded before is kept (the edge serves it; with S3 the next sweep uploads it)
    assert (tmp_path / "call_broken.mp3").stat().st_size > 0
    assert recordings.spool.used_bytes == 0
    await recordings.close()
