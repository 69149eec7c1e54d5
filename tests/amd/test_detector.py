"""The edge's answering-machine detector on the committed espeak-ng fixtures and made-up audio."""

from __future__ import annotations

import numpy as np
import pytest

from telephony_edge.amd.beep import BeepDetector, BeepParams
from telephony_edge.amd.detector import AmdDetector, DetectorParams, MessageEnd, Verdict
from telephony_edge.audio.frames import FRAME_BYTES, SAMPLE_RATE, SILENCE_FRAME
from tests.conftest import read_wav


def frames(pcm: bytes) -> list[bytes]:
    return [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES)]


def run(pcm: bytes, params: DetectorParams | None = None) -> list[Verdict | MessageEnd]:
    detector = AmdDetector(params or DetectorParams())
    found: list[Verdict | MessageEnd] = []
    for frame in frames(pcm):
        found += detector.feed(frame)
    return found


def tone(hz: float, seconds: float, amplitude: float = 8000.0) -> bytes:
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype("<i2").tobytes()


def test_a_person_saying_hello_is_human_soon_after_they_stop() -> None:
    found = run(read_wav("amd/human_hello.wav"))
    assert len(found) == 1
    verdict = found[0]
    assert isinstance(verdict, Verdict)
    assert (verdict.result, verdict.reason) == ("human", "after-greeting-silence")
    assert verdict.after_ms < 2000  # "Hello?" ends about 0.75 s in, plus 0.8 s of waiting


def test_a_voicemail_greeting_is_a_machine_and_its_beep_ends_it() -> None:
    pcm = read_wav("amd/voicemail_beep.wav")
    found = run(pcm)
    assert [type(f) for f in found] == [Verdict, MessageEnd]
    verdict, end = found
    assert isinstance(verdict, Verdict) and isinstance(end, MessageEnd)
    assert verdict.result == "machine"
    assert verdict.after_ms < 3000
    assert end.beep
    # the beep is 0.5 s long and followed by 1.5 s of silence: reported when it stops
    beep_end_ms = len(pcm) // 32 - 1500
    assert beep_end_ms - 100 <= end.after_ms <= beep_end_ms + 100


def test_silence_from_the_start_is_unknown_not_machine() -> None:
    found = run(SILENCE_FRAME * 200)
    assert found == [Verdict("unknown", "initial-silence", 2500)]


def test_a_greeting_without_a_beep_ends_after_its_closing_silence() -> None:
    greeting = read_wav("amd/voicemail_beep.wav")[: 16000 * 2 * 12]
    found = run(greeting + SILENCE_FRAME * 200)
    assert isinstance(found[0], Verdict) and found[0].result == "machine"
    assert found[1] == MessageEnd(False, 12_000 + 3000)


def test_a_machine_that_beeps_at_once_is_a_machine_with_its_message_due() -> None:
    found = run(SILENCE_FRAME * 10 + tone(1000, 0.4) + SILENCE_FRAME * 10)
    assert [f.result for f in found if isinstance(f, Verdict)] == ["machine"]
    assert any(isinstance(f, MessageEnd) and f.beep for f in found)


def test_the_heuristics_are_configurable() -> None:
    hello = read_wav("amd/human_hello.wav")
    # an impatient setting: half a second of voice already counts as a long greeting
    found = run(hello, DetectorParams(greeting_ms=400))
    assert isinstance(found[0], Verdict) and found[0].reason == "long-greeting"


@pytest.mark.parametrize("hz", [440.0, 850.0, 1000.0, 1412.5, 1980.0])
def test_the_beep_bank_finds_tones_anywhere_in_its_range(hz: float) -> None:
    detector = BeepDetector()
    beeps = [b for f in frames(tone(hz, 0.3) + SILENCE_FRAME) if (b := detector.feed(f))]
    assert len(beeps) == 1
    assert abs(beeps[0].hz - hz) <= 25
    assert beeps[0].duration_ms == 300


def test_speech_short_tones_and_out_of_band_tones_are_not_beeps() -> None:
    detector = BeepDetector()
    audio = (
        read_wav("amd/human_hello.wav")
        + read_wav("speech_table.wav")
        + tone(1000, 0.06)  # shorter than min_ms
        + SILENCE_FRAME
        + tone(3000, 0.5)  # above high_hz
        + SILENCE_FRAME
    )
    assert [b for f in frames(audio) if (b := detector.feed(f))] == []


def test_a_long_tone_is_reported_at_max_ms() -> None:
    detector = BeepDetector(BeepParams(max_ms=400))
    beeps = [b for f in frames(tone(1000, 2.0)) if (b := detector.feed(f))]
    assert beeps and beeps[0].duration_ms == 400 and beeps[0].frame == 20


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="low_hz"):
        BeepParams(low_hz=3000, high_hz=2000)
    with pytest.raises(ValueError, match="greeting_ms"):
        DetectorParams(greeting_ms=0)
    with pytest.raises(ValueError, match="640-byte"):
        BeepDetector().feed(b"\0" * 100)


def noisy(pcm: bytes, dbfs: float) -> bytes:
    clean = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    noise = np.random.default_rng(7).normal(0.0, 32767 * 10 ** (dbfs / 20), clean.size)
    return np.clip(clean + noise, -32768, 32767).astype("<i2").tobytes()


def test_on_a_noisy_line_the_threshold_follows_the_noise_floor() -> None:
    hello = noisy(read_wav("amd/human_hello.wav"), -35.0)  # louder than the fixed threshold
    assert [f.result for f in run(hello) if isinstance(f, Verdict)] == ["human"]
    fixed = DetectorParams(adaptive=False)
    assert [f.reason for f in run(hello, fixed) if isinstance(f, Verdict)] == ["long-greeting"]
    greeting = noisy(read_wav("amd/voicemail_beep.wav"), -35.0)
    found = run(greeting)
    assert [f.result for f in found if isinstance(f, Verdict)] == ["machine"]
    assert [f.beep for f in found if isinstance(f, MessageEnd)] == [True]
