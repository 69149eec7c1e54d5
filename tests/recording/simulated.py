"""Recorded calls at the speed of the machine: the recorder's own path, on a simulated clock.

:func:`feed` does what a call's bridge and its flush task do, a second at a
time: both taps per 20 ms frame (the caller's speech, the agent's reply),
the clock moved on by the frame, then the recording's flush. Nothing waits
for real time, so an hour of call takes what the encoder needs for it.
"""

from __future__ import annotations

import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

from telephony_edge.audio.frames import FRAME_BYTES
from telephony_edge.config import RecordingSettings
from telephony_edge.recording.recorder import CallRecording

SPEECH = Path(__file__).resolve().parent.parent / "fixtures" / "speech_table.wav"


class Clock:
    """A call's clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def speech_frames() -> list[bytes]:
    """The fixture's speech (2.8 s) as 20 ms frames, to loop over."""
    with wave.open(str(SPEECH)) as wav:
        pcm = wav.readframes(wav.getnframes())
    return [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES)]


async def feed(
    recording: CallRecording,
    clock: Clock,
    seconds: int,
    *,
    every_second: Callable[[int], Any] | None = None,
) -> None:
    """``seconds`` of a call into ``recording``: the caller speaks, the agent answers a
    little later, each 20 ms frame at its time; flushed each second as the flush task does."""
    frames = speech_frames()
    tap = recording.writer
    for second in range(seconds):
        for tick in range(50):
            clock.now += 0.02
            i = second * 50 + tick
            tap.caller(frames[i % len(frames)])
            tap.agent(frames[(i + 37) % len(frames)])
        await recording.flush()
        if every_second is not None:
            every_second(second)


def s3_recording_settings(
    directory: Path, endpoint: str, *, timeout_s: float = 0.5, **overrides: Any
) -> RecordingSettings:
    """Recordings to the test bucket at ``endpoint``, with short timeouts and back-offs."""
    from tests.recording.s3 import ACCESS, BUCKET

    settings: dict[str, Any] = {
        "directory": str(directory),
        "storage": "s3",
        "s3": {
            "bucket": BUCKET,
            "endpoint_url": endpoint,
            "prefix": "calls/",
            "timeout_s": timeout_s,
            **ACCESS,
        },
        "flush_interval_s": 10,  # the test flushes, each simulated second
        "upload_backoff_s": 0.05,
        "upload_backoff_max_s": 0.2,
        "finish_timeout_s": 30,
    }
    settings.update(overrides)
    return RecordingSettings.model_validate(settings)
