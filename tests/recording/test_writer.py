"""The writer: each side on its channel at the time it was sent, a valid WAV after every flush."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from telephony_edge.audio.frames import FRAME_BYTES, SILENCE_FRAME
from telephony_edge.recording.writer import TrackWriter, WavFile, WriterLimits
from tests.recording.audio import RATE, locate, read_channels, rms


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def noise_frames(seconds: float, seed: int) -> list[bytes]:
    pcm = np.random.default_rng(seed).integers(-8000, 8000, int(seconds * RATE), dtype="<i2")
    data = pcm.tobytes()
    return [data[i : i + FRAME_BYTES] for i in range(0, len(data), FRAME_BYTES)]


def as_samples(frames: list[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(frames), dtype="<i2").astype(np.float64)


def check_header(path: Path, writer: TrackWriter, channels: int) -> None:
    """What a player reads: the header's sizes match the bytes in the file."""
    with wave.open(str(path)) as wav:
        assert wav.getnchannels() == channels
        assert wav.getnframes() == writer.frames_written * 320
        size = path.stat().st_size
        assert size == 44 + wav.getnframes() * 2 * channels


def test_stereo_alignment_with_silences_and_a_valid_header_after_every_flush(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    path = tmp_path / "call.wav"
    writer = TrackWriter(WavFile(path, "stereo"), "stereo", clock=clock)
    check_header(path, writer, 2)
    caller = noise_frames(6.0, 1)  # the caller's leg: a frame every 20 ms from the start
    greeting, reply = noise_frames(1.0, 2), noise_frames(0.6, 3)
    # the agent: a greeting at 0.5 s (a lead of 3 frames pushed at once, then one per
    # tick), silence, a reply at 3.0 s; nothing else is sent toward the caller
    agent_at: dict[int, list[bytes]] = {25: greeting[:4], 150: reply[:4]}
    for i, frame in enumerate(greeting[4:]):
        agent_at[26 + i] = [frame]
    for i, frame in enumerate(reply[4:]):
        agent_at[151 + i] = [frame]
    for tick, frame in enumerate(caller):
        clock.now = 100.0 + tick * 0.02
        writer.caller(frame)
        for sent in agent_at.get(tick, []):
            writer.agent(sent)
        if tick % 50 == 49:
            writer.flush()
            check_header(path, writer, 2)
    clock.now += 0.02
    writer.close()
    check_header(path, writer, 2)

    channels, (left, right) = read_channels(path.read_bytes())
    assert channels == 2
    assert len(left) == pytest.approx(6.0 * RATE, abs=320)
    assert np.array_equal(left[: len(caller) * 320], as_samples(caller))
    # the agent's audio where it was handed to the leg, silence everywhere else
    at, score = locate(right, as_samples(greeting))
    assert (at, score) == (pytest.approx(0.5, abs=1e-9), pytest.approx(1.0))
    at, score = locate(right, as_samples(reply))
    assert (at, score) == (pytest.approx(3.0, abs=1e-9), pytest.approx(1.0))
    assert rms(right[: int(0.5 * RATE)]) == 0
    assert rms(right[int(1.5 * RATE) : int(3.0 * RATE)]) == 0
    assert rms(right[int(3.6 * RATE) :]) == 0


def test_mono_mixes_both_sides(tmp_path: Path) -> None:
    clock = FakeClock()
    writer = TrackWriter(WavFile(tmp_path / "m.wav", "mono"), "mono", clock=clock)
    a, b = noise_frames(0.2, 4), noise_frames(0.2, 5)
    for tick in range(10):
        clock.now = 100.0 + tick * 0.02
        writer.caller(a[tick])
        writer.agent(b[tick])
    writer.close()
    channels, (mono,) = read_channels((tmp_path / "m.wav").read_bytes())
    assert channels == 1
    assert np.array_equal(mono[:3200], as_samples(a) + as_samples(b))


def test_a_quiet_call_is_silence_of_its_length(tmp_path: Path) -> None:
    """No frame at all (a leg that sends nothing): the flushes alone write the call's time."""
    clock = FakeClock()
    writer = TrackWriter(WavFile(tmp_path / "q.wav", "stereo"), "stereo", clock=clock)
    for second in range(1, 4):
        clock.now = 100.0 + second
        writer.flush()
    writer.close()
    _, (left, right) = read_channels((tmp_path / "q.wav").read_bytes())
    assert len(left) == 3 * RATE
    assert rms(left) == rms(right) == 0


def test_the_recording_ends_with_the_call_not_with_audio_sent_ahead(tmp_path: Path) -> None:
    """A caller hangs up while the network still holds the agent's playout lead (Vonage's
    200 ms) or a burst after a stall: the recording is the call's length, the frame under
    way at the end kept, and what was never heard left out."""
    clock = FakeClock()
    writer = TrackWriter(WavFile(tmp_path / "h.wav", "stereo"), "stereo", clock=clock)
    caller, agent = noise_frames(2.0, 8), noise_frames(2.0, 9)
    for tick in range(100):
        clock.now = 100.0 + tick * 0.02
        writer.caller(caller[tick])
        for frame in agent[: 11 if tick == 50 else 0]:  # a talkspurt's start: a lead of 10
            writer.agent(frame)
        if tick > 50:
            writer.agent(agent[tick - 40])
    writer.close()  # at the last caller frame's tick: the call is 2.0 s long
    _, (left, right) = read_channels((tmp_path / "h.wav").read_bytes())
    assert len(left) == len(right) == 2 * RATE
    assert np.array_equal(left, as_samples(caller))
    assert np.array_equal(right[50 * 320 :], as_samples(agent[:50]))


def test_memory_is_bounded_whatever_the_tracks_do(tmp_path: Path) -> None:
    clock = FakeClock()
    limits = WriterLimits(max_gap_s=2.0, max_pending_s=1.0)
    writer = TrackWriter(
        WavFile(tmp_path / "b.wav", "stereo"), "stereo", clock=clock, limits=limits
    )
    # an agent that floods frames at one instant: only max_pending_s of them are held
    for _ in range(10_000):
        writer.agent(SILENCE_FRAME)
    assert writer.pending_bytes <= 50 * FRAME_BYTES + FRAME_BYTES
    assert writer.dropped == 10_000 - 50
    # a clock that jumps an hour: the silence put in is max_gap_s, not an hour of zeros
    clock.now += 3600
    writer.caller(SILENCE_FRAME)
    assert writer.pending_bytes <= (50 + 100 + 1) * FRAME_BYTES
    # a ten-minute call, flushed every second, holds about a second of audio
    writer.flush()
    peak = 0
    for tick in range(30_000):
        clock.now += 0.02
        writer.caller(SILENCE_FRAME)
        if tick % 50 == 0:
            writer.flush()
            peak = max(peak, writer.pending_bytes)
    assert peak <= 2 * 60 * FRAME_BYTES
    writer.close()


def test_first_frames_late_bursts_and_short_pauses(tmp_path: Path) -> None:
    """The caller's first frame at 0.3 s is at 0.3 s; a burst after a 100 ms stall is not
    spread out; a 100 ms pause between two agent talkspurts is kept."""
    clock = FakeClock()
    writer = TrackWriter(WavFile(tmp_path / "t.wav", "stereo"), "stereo", clock=clock)
    caller, agent = noise_frames(2.0, 6), noise_frames(0.4, 7)
    sent = iter(caller)
    for tick in range(15, 100):
        clock.now = 100.0 + tick * 0.02
        if not 40 <= tick < 45:  # a 100 ms stall, then the five late frames at once
            for _ in range(6 if tick == 45 else 1):
                writer.caller(next(sent))
        if 50 <= tick < 60 or 65 <= tick < 75:  # two talkspurts, 100 ms apart
            writer.agent(agent[tick - 50 if tick < 60 else tick - 55])
    writer.close()
    _, (left, right) = read_channels((tmp_path / "t.wav").read_bytes())
    assert rms(left[: 15 * 320]) == 0
    assert np.array_equal(left[15 * 320 : 100 * 320], as_samples(caller[:85]))
    assert rms(right[: 50 * 320]) == rms(right[60 * 320 : 65 * 320]) == 0
    assert np.array_equal(right[50 * 320 : 60 * 320], as_samples(agent[:10]))
    assert np.array_equal(right[65 * 320 : 75 * 320], as_samples(agent[10:20]))
