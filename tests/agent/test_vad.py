"""The energy VAD on real speech (espeak-ng fixtures), silence and noise."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from telephony_edge.agent.vad import (
    EnergyVad,
    SpeechEnded,
    SpeechStarted,
    VadConfig,
    VadEvent,
    frame_dbfs,
)
from telephony_edge.audio.frames import FRAME_BYTES, FRAME_SAMPLES, SILENCE_FRAME, FrameSplitter

FIXTURES = Path(__file__).parent.parent / "fixtures"
LEAD_S = 0.25  # make_fixtures.sh pads each sentence with 0.25 s of silence


def load_frames(name: str) -> list[bytes]:
    with wave.open(str(FIXTURES / name)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        pcm = w.readframes(w.getnframes())
    splitter = FrameSplitter()
    frames = splitter.push(pcm)
    tail = splitter.flush()
    return frames + ([tail] if tail else [])


def noise_frames(dbfs: float, seconds: float, seed: int = 1) -> list[bytes]:
    rng = np.random.default_rng(seed)
    n = round(seconds * 50)
    rms = 32768 * 10 ** (dbfs / 20)
    samples = np.clip(rng.normal(0, rms, n * FRAME_SAMPLES), -32768, 32767).astype("<i2")
    data = samples.tobytes()
    return [data[i * FRAME_BYTES : (i + 1) * FRAME_BYTES] for i in range(n)]


def mix(a: list[bytes], b: list[bytes]) -> list[bytes]:
    out = []
    for x, y in zip(a, b, strict=True):
        s = np.frombuffer(x, "<i2").astype(np.int32) + np.frombuffer(y, "<i2")
        out.append(np.clip(s, -32768, 32767).astype("<i2").tobytes())
    return out


def run(vad: EnergyVad, frames: list[bytes]) -> list[VadEvent]:
    return [e for f in frames if (e := vad.feed(f)) is not None]


@pytest.mark.parametrize(
    ("name", "speech_s"),
    [("speech_table.wav", 2.315), ("speech_order.wav", 1.397)],
)
def test_one_utterance_spanning_the_sentence(name: str, speech_s: float) -> None:
    frames = load_frames(name) + [SILENCE_FRAME] * 40
    events = run(EnergyVad(), frames)

    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    start, end = events
    assert isinstance(end, SpeechEnded)
    assert start.time == pytest.approx(LEAD_S, abs=0.06)
    assert end.start == start.frame
    assert end.time == pytest.approx(LEAD_S + speech_s, abs=0.1)
    assert end.duration == pytest.approx(speech_s, abs=0.12)


def test_speech_ends_after_the_hangover() -> None:
    frames = load_frames("speech_order.wav") + [SILENCE_FRAME] * 60
    for hangover_ms in (200, 600):
        vad = EnergyVad(VadConfig(hangover_ms=hangover_ms))
        ended_at = None
        for i, frame in enumerate(frames):
            if isinstance(vad.feed(frame), SpeechEnded):
                ended_at = i
        assert ended_at is not None
        speech_end = round((LEAD_S + 1.397) * 50)
        assert ended_at - speech_end == pytest.approx(hangover_ms / 20, abs=3)


def test_silence_and_low_noise_are_not_speech() -> None:
    assert run(EnergyVad(), [SILENCE_FRAME] * 200) == []
    assert run(EnergyVad(), noise_frames(-60, 4.0)) == []
    assert run(EnergyVad(VadConfig(adaptive=False)), noise_frames(-55, 4.0)) == []


def test_adaptive_threshold_learns_steady_noise() -> None:
    noise = noise_frames(-35, 6.0)  # louder than the fixed -45 dBFS threshold
    assert [type(e) for e in run(EnergyVad(VadConfig(adaptive=False)), noise)] == [SpeechStarted]

    vad = EnergyVad()
    events = run(vad, noise)
    # At most one spurious utterance while the floor is unknown, over within ~1.5 s.
    assert len(events) <= 2
    assert all(e.time < 1.5 for e in events)
    assert not vad.speaking
    assert vad.threshold_dbfs == pytest.approx(-25, abs=2)

    # Speech over that noise is still found once the floor is known.
    speech = load_frames("speech_table.wav")
    more_noise = noise_frames(-35, len(speech) / 50 + 1, seed=2)
    noisy = mix(speech + [SILENCE_FRAME] * 50, more_noise)
    later = run(vad, noisy)
    assert [type(e) for e in later] == [SpeechStarted, SpeechEnded]
    # The quiet onset of "Hello" drowns in the noise; the sentence is found.
    assert LEAD_S - 0.05 <= later[0].time - 6.0 <= LEAD_S + 0.2
    assert isinstance(later[1], SpeechEnded) and later[1].duration > 1.8


def test_a_click_does_not_start_speech() -> None:
    click = (np.full(FRAME_SAMPLES, 20000, "<i2")).tobytes()
    frames = [SILENCE_FRAME] * 10 + [click, click] + [SILENCE_FRAME] * 40
    assert run(EnergyVad(VadConfig(start_frames=3)), frames) == []
    assert [type(e) for e in run(EnergyVad(VadConfig(start_frames=2)), frames)] == [
        SpeechStarted,
        SpeechEnded,
    ]


def test_end_forces_the_utterance_closed() -> None:
    vad = EnergyVad()
    assert vad.end() is None
    events = run(vad, load_frames("speech_order.wav")[:40])
    assert vad.speaking and len(events) == 1
    ended = vad.end()
    assert isinstance(ended, SpeechEnded) and ended.start == events[0].frame
    assert not vad.speaking


def test_rejects_non_canonical_frames_and_bad_config() -> None:
    with pytest.raises(ValueError, match="640-byte"):
        EnergyVad().feed(bytes(320))
    with pytest.raises(ValueError):
        VadConfig(start_frames=0)
    with pytest.raises(ValueError):
        VadConfig(hangover_ms=0)


def test_frame_dbfs() -> None:
    assert frame_dbfs(SILENCE_FRAME) == -100.0
    full = np.full(FRAME_SAMPLES, -32768, "<i2").tobytes()
    assert frame_dbfs(full) == pytest.approx(0.0, abs=0.01)
    half = np.full(FRAME_SAMPLES, 16384, "<i2").tobytes()
    assert frame_dbfs(half) == pytest.approx(-6.02, abs=0.01)
