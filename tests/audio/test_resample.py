"""Streaming resamplers: quality, delay and exactness, measured on generated signals."""

from __future__ import annotations

import numpy as np
import pytest

from telephony_edge.audio.resample import (
    DOWN_16K_TO_8K,
    DOWN_48K_TO_16K,
    UP_8K_TO_16K,
    FirSpec,
    StreamResampler,
    design_halfband,
    design_lowpass,
)
from tests.audio.signals import (
    chunks,
    db,
    fit_tone,
    level_db,
    measured_delay_s,
    multitone,
    pcm,
    reference_resample,
    rms,
    samples,
    stream,
    tone,
)

ALL = [UP_8K_TO_16K, DOWN_16K_TO_8K, DOWN_48K_TO_16K]
IDS = ["8k-16k", "16k-8k", "48k-16k"]


def frame_of(spec: FirSpec) -> int:
    return spec.rate_in // 50


def run(spec: FirSpec, data: bytes) -> np.ndarray:
    """Stream ``data`` through a fresh resampler in 20 ms frames."""
    frame = frame_of(spec)
    return stream(StreamResampler(spec, frame).process, data, 2 * frame)


def steady(y: np.ndarray, rate: int) -> np.ndarray:
    """Half a second of output, past the start-up transient."""
    return y[rate // 4 : rate // 4 + rate // 2]


# --------------------------------------------------------------------------- filter design


@pytest.mark.parametrize("spec", ALL, ids=IDS)
def test_taps_are_linear_phase(spec: FirSpec) -> None:
    taps = spec.taps
    assert len(taps) % 2 == 1
    np.testing.assert_allclose(taps, taps[::-1], atol=1e-12)


@pytest.mark.parametrize(
    ("spec", "pass_hz", "stop_hz"),
    [
        (UP_8K_TO_16K, 3400, 4600),  # images of 0-3.4 kHz land from 4.6 kHz up
        (DOWN_16K_TO_8K, 3400, 4000),  # everything from 4 kHz would alias
        (DOWN_48K_TO_16K, 7000, 8000),
    ],
    ids=IDS,
)
def test_frequency_response_meets_the_targets(spec: FirSpec, pass_hz: int, stop_hz: int) -> None:
    """Dense check of |H(f)|: flat within ±0.5 dB to the band edge, ≥ 40 dB down beyond."""
    rate = spec.rate_in * spec.up
    n = 1 << 16
    response = np.abs(np.fft.rfft(spec.taps, n))
    freqs = np.fft.rfftfreq(n, 1 / rate)
    passband = 20 * np.log10(response[freqs <= pass_hz])
    stopband = 20 * np.log10(response[freqs >= stop_hz])
    assert passband.min() >= -0.5 and passband.max() <= 0.5
    assert stopband.max() <= -40


def test_halfband_structure() -> None:
    taps = UP_8K_TO_16K.taps
    centre = len(taps) // 2
    assert taps[centre] == 0.5
    assert np.all(taps[centre + 2 :: 2] == 0) and np.all(taps[centre - 2 :: -2] == 0)
    # So one polyphase branch of the 2x upsampler is a pure delay: with the
    # centre tap at an odd index, every odd output copies one input sample.
    assert centre % 2 == 1
    odd_outputs = UP_8K_TO_16K.block_matrix(8)[:, 1::2]
    assert (np.count_nonzero(odd_outputs, axis=0) == 1).all()
    assert set(odd_outputs[odd_outputs != 0]) == {1.0}


def test_design_rejects_bad_lengths() -> None:
    with pytest.raises(ValueError):
        design_lowpass(48, 3400, 4000, 16000)
    with pytest.raises(ValueError):
        design_halfband(33, 3400, 16000)


def test_block_matrix_requires_whole_decimation_groups() -> None:
    with pytest.raises(ValueError):
        DOWN_48K_TO_16K.block_matrix(4)
    with pytest.raises(ValueError):
        StreamResampler(DOWN_16K_TO_8K, 320, block_in=30)


# --------------------------------------------------------------------------- 8 kHz <-> 16 kHz


@pytest.mark.parametrize("freq", [100, 300, 1000, 2000, 3000, 3400])
def test_8k_to_16k_passband_is_flat(freq: int) -> None:
    y = steady(run(UP_8K_TO_16K, tone(freq, 8000, 1.0, 10000)), 16000)
    assert abs(level_db(y, freq, 16000) - db(10000)) <= 0.5


@pytest.mark.parametrize(("freq", "image"), [(1000, 7000), (3400, 4600)])
def test_8k_to_16k_images_are_40db_down(freq: int, image: int) -> None:
    y = steady(run(UP_8K_TO_16K, tone(freq, 8000, 1.0, 10000)), 16000)
    assert level_db(y, image, 16000) - level_db(y, freq, 16000) <= -40


def test_linear_interpolation_would_fail_the_image_test() -> None:
    # The test above can fail: audioop.ratecv's image of 3.4 kHz is ~4 dB down.
    import audioop

    out, _ = audioop.ratecv(tone(3400, 8000, 1.0, 10000), 2, 1, 8000, 16000, None)
    y = steady(samples(out), 16000)
    assert level_db(y, 4600, 16000) - level_db(y, 3400, 16000) > -40


@pytest.mark.parametrize("freq", [100, 300, 1000, 2000, 3000, 3400])
def test_16k_to_8k_passband_is_flat(freq: int) -> None:
    y = steady(run(DOWN_16K_TO_8K, tone(freq, 16000, 1.0, 10000)), 8000)
    assert abs(level_db(y, freq, 8000) - db(10000)) <= 0.5


@pytest.mark.parametrize("freq", [4000, 4100, 4600, 5000, 6000, 7000, 7900])
def test_16k_to_8k_does_not_alias(freq: int) -> None:
    # Whatever comes out of a 4-8 kHz tone is alias: all of it must be 40 dB down.
    y = steady(run(DOWN_16K_TO_8K, tone(freq, 16000, 1.0, 10000, phase=0.7)), 8000)
    assert db(rms(y) / (10000 / np.sqrt(2))) <= -40


# --------------------------------------------------------------------------- 48 kHz -> 16 kHz


@pytest.mark.parametrize("freq", [100, 1000, 4000, 6000, 7000])
def test_48k_to_16k_passband_is_flat_to_7k(freq: int) -> None:
    y = steady(run(DOWN_48K_TO_16K, tone(freq, 48000, 1.0, 10000)), 16000)
    assert abs(level_db(y, freq, 16000) - db(10000)) <= 0.5


@pytest.mark.parametrize("freq", [8000, 9000, 12000, 16000, 20000, 23900])
def test_48k_to_16k_does_not_alias(freq: int) -> None:
    y = steady(run(DOWN_48K_TO_16K, tone(freq, 48000, 1.0, 10000, phase=0.7)), 16000)
    assert db(rms(y) / (10000 / np.sqrt(2))) <= -40


# --------------------------------------------------------------------------- latency


@pytest.mark.parametrize("spec", ALL, ids=IDS)
def test_added_delay_is_at_most_2ms(spec: FirSpec) -> None:
    hi = 3300 if min(spec.rate_in, spec.rate_out) == 8000 else 6500
    r = StreamResampler(spec, frame_of(spec))
    delay = measured_delay_s(r.process, spec.rate_in, spec.rate_out, hi)
    assert delay <= 0.002
    # The figure the code states is the one measured.
    assert delay == pytest.approx(r.delay_s, abs=2e-5)


@pytest.mark.parametrize("spec", ALL, ids=IDS)
def test_nothing_is_held_back(spec: FirSpec) -> None:
    r = StreamResampler(spec, frame_of(spec))
    frame = bytes(2 * frame_of(spec))
    assert len(r.process(frame)) == 2 * frame_of(spec) * spec.rate_out // spec.rate_in


# --------------------------------------------------------------------------- streaming exactness


def noise(rate: int, seconds: float, peak: float, seed: int = 3) -> bytes:
    """Broadband noise (the hardest case for boundaries), peaking at ``peak``."""
    x = np.random.default_rng(seed).standard_normal(round(rate * seconds))
    return pcm(x * (peak / np.abs(x).max()))


@pytest.mark.parametrize("spec", ALL, ids=IDS)
@pytest.mark.parametrize(("peak", "tolerance"), [(8000, 1), (20000, 2), (32767, 4)])
def test_framed_output_matches_one_shot_reference(
    spec: FirSpec, peak: float, tolerance: int
) -> None:
    """20 ms frames give the textbook one-shot result, to within int16 rounding.

    Covers every output scale (quiet, loud, near full scale with overshoot
    clipped, not wrapped) and every frame boundary.
    """
    data = noise(spec.rate_in, 0.5, peak)
    ideal = reference_resample(samples(data), spec.taps, spec.up, spec.down)
    framed = run(spec, data)
    assert framed.size == ideal.size
    # Truncation to int16 (at 1, 1/2 or 1/4 scale) plus float32 arithmetic.
    assert np.abs(framed - ideal).max() < tolerance + 0.01


@pytest.mark.parametrize("spec", ALL, ids=IDS)
@pytest.mark.parametrize("where", ["mid-frame", "from-history", "from-split-history"])
def test_worst_case_overshoot_saturates(spec: FirSpec, where: str) -> None:
    """Full-scale input signed to match the taps drives an output past 2x full scale.

    It must clip at the int16 limits; a wrap to the opposite sign would be a
    loud click. Built for one output sample per polyphase branch, either mid
    frame or at the start of a silent frame, all of its input in the history
    carried over from the frame before (delivered whole, or in two pieces,
    which takes the general path).
    """
    up, down, taps = spec.up, spec.down, spec.taps
    frame = frame_of(spec)
    start = 2 * frame * up // down  # first output of the third frame
    from_history = where != "mid-frame"
    for branch in range(up):
        k = start + branch + (0 if from_history else 30 * up)
        x = np.zeros(4 * frame)
        p = np.arange(x.size)
        j = k * down - up * p
        valid = (j >= 0) & (j < taps.size)
        if from_history:
            valid &= p < 2 * frame
        x[p[valid]] = 32767 * np.sign(taps[j[valid]])
        data = pcm(x)
        ideal = reference_resample(samples(data), taps, up, down)
        assert ideal[k] == 32767  # the reference overshoots and clips
        if where == "from-split-history":
            r = StreamResampler(spec, frame)
            pieces = list(chunks(data, 2 * frame))
            pieces[1:2] = [pieces[1][:100], pieces[1][100:]]
            framed = samples(b"".join(r.process(c) for c in pieces))
        else:
            framed = run(spec, data)
        assert framed[k] > 32767 - 4  # clipped (at 1/4 scale), not wrapped
        assert np.abs(framed - ideal).max() < 4.01


@pytest.mark.parametrize("spec", ALL, ids=IDS)
def test_any_chunking_gives_the_same_stream(spec: FirSpec) -> None:
    """Fast path (whole frames), general path (other sizes) and a mix agree."""
    data = noise(spec.rate_in, 0.3, 8000)
    frame = frame_of(spec)
    framed = run(spec, data)
    one_shot = samples(StreamResampler(spec, frame).process(data))
    odd = stream(StreamResampler(spec, frame).process, data, 2 * 37)  # 37-sample chunks
    mixed = StreamResampler(spec, frame)
    parts = []
    for i, chunk in enumerate(chunks(data, 2 * frame)):
        if i % 3 == 1:  # a frame split in two uneven halves, then whole frames again
            parts += [mixed.process(chunk[:202]), mixed.process(chunk[202:])]
        else:
            parts.append(mixed.process(chunk))
    mixed_out = samples(b"".join(parts))
    for other in (one_shot, odd, mixed_out):
        assert other.size == framed.size
        assert np.abs(framed - other).max() <= 1


@pytest.mark.parametrize("spec", ALL, ids=IDS)
def test_no_click_at_frame_boundaries(spec: FirSpec) -> None:
    """A 1 kHz tone streamed in 20 ms frames is a clean tone at every sample.

    Images are at least 40 dB down (1 %), so a sample further than that from
    the fitted tone, at a frame boundary or anywhere, is a glitch.
    """
    y = run(spec, tone(1000, spec.rate_in, 0.5, 12000))[spec.rate_out // 20 :]
    amp, residual = fit_tone(y, 1000, spec.rate_out)
    assert abs(db(amp / 12000)) <= 0.5
    assert np.abs(residual).max() <= 0.01 * amp


def test_boundary_check_catches_lost_state() -> None:
    """The check above fails for a resampler that forgets its history each frame."""
    spec = UP_8K_TO_16K
    data = tone(1000, 8000, 0.5, 12000)
    y = samples(b"".join(StreamResampler(spec, 160).process(c) for c in chunks(data, 320)))
    amp, residual = fit_tone(y[800:], 1000, 16000)
    assert np.abs(residual).max() > 0.01 * amp


def test_reset_restores_the_initial_state() -> None:
    data = noise(8000, 0.1, 8000)
    r = StreamResampler(UP_8K_TO_16K, 160)
    first = b"".join(r.process(c) for c in chunks(data, 320))
    r.reset()
    assert b"".join(r.process(c) for c in chunks(data, 320)) == first


def test_silence_stays_silent() -> None:
    for spec in ALL:
        r = StreamResampler(spec, frame_of(spec))
        out = r.process(bytes(2 * frame_of(spec)))
        assert set(out) == {0}


def test_multitone_reference_is_sane() -> None:
    # The delay test's ideal signal really is the same waveform at both rates.
    a, b = multitone(8000, 0.1, 100, 3300), multitone(16000, 0.1, 100, 3300)
    np.testing.assert_allclose(a, b[::2])


@pytest.mark.parametrize("spec", ALL, ids=IDS)
def test_calls_interleaved_give_each_its_own_stream_and_hold_only_their_state(
    spec: FirSpec,
) -> None:
    """A worker's calls resample frame by frame in turn, each with its own history: the
    streams match each call's alone, and a call's resampler holds its history and no
    frame-sized scratch of its own (shared on the thread: 3-7 kB a resampler before)."""
    import tracemalloc

    frame = frame_of(spec)
    inputs = [
        noise(spec.rate_in, 0.2, peak, seed) for seed, peak in enumerate((3000, 20000, 32767))
    ]
    alone = [run(spec, data) for data in inputs]
    together = [StreamResampler(spec, frame) for _ in inputs]
    outputs: list[list[bytes]] = [[] for _ in inputs]
    for start in range(0, len(inputs[0]), 2 * frame):
        for resampler, data, out in zip(together, inputs, outputs, strict=True):
            out.append(resampler.process(data[start : start + 2 * frame]))
    for out, expected in zip(outputs, alone, strict=True):
        assert np.array_equal(samples(b"".join(out)), expected)

    StreamResampler(spec, frame)  # the shape's shared parts made once, outside the count
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [StreamResampler(spec, frame) for _ in range(100)]
        per_resampler = (tracemalloc.get_traced_memory()[0] - before) / len(kept)
    finally:
        tracemalloc.stop()
    history_and_frame = 2 * (spec.history + frame)
    assert per_resampler < history_and_frame + 2500, per_resampler  # its buffer, views, slots
