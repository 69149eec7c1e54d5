"""Test signals and measurements for the audio tests, independent of the code under test."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from numpy.typing import NDArray

Floats = NDArray[np.float64]
Process = Callable[[bytes], bytes]


def tone(freq: float, rate: int, seconds: float, amp: float, phase: float = 0.0) -> bytes:
    """A sine as PCM16 bytes, rounded."""
    t = np.arange(round(rate * seconds)) / rate
    return pcm(amp * np.sin(2 * np.pi * freq * t + phase))


def pcm(x: Floats) -> bytes:
    return np.round(x).astype(np.int16).tobytes()


def samples(data: bytes) -> Floats:
    return np.frombuffer(data, dtype=np.int16).astype(np.float64)


def chunks(data: bytes, size: int) -> Iterable[bytes]:
    return (data[i : i + size] for i in range(0, len(data), size))


def stream(process: Process, data: bytes, chunk_bytes: int) -> Floats:
    """Feed ``data`` in chunks, as a leg would; the concatenated output."""
    return samples(b"".join(process(c) for c in chunks(data, chunk_bytes)))


def fit_tone(y: Floats, freq: float, rate: int) -> tuple[float, Floats]:
    """Least-squares fit of a sinusoid at ``freq``: (amplitude, residual)."""
    t = np.arange(y.size) / rate
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
    return float(np.hypot(*coef)), y - basis @ coef


def level_db(y: Floats, freq: float, rate: int) -> float:
    """Amplitude of the ``freq`` component of ``y``, in dB re 1."""
    amp, _ = fit_tone(y, freq, rate)
    return float(20 * np.log10(max(amp, 1e-12)))


def rms(y: Floats) -> float:
    return float(np.sqrt(np.mean(y**2)))


def db(ratio: float) -> float:
    return float(20 * np.log10(max(ratio, 1e-12)))


def multitone(rate: int, seconds: float, lo: float, hi: float, seed: int = 7) -> Floats:
    """Forty tones of random frequency in [lo, hi] Hz, evaluated exactly at ``rate``.

    The same call at two rates gives the same continuous signal sampled twice,
    which is the ideal output of a resampler with a flat passband and no delay.
    """
    rng = np.random.default_rng(seed)
    freqs = rng.uniform(lo, hi, 40)
    phases = rng.uniform(0, 2 * np.pi, 40)
    t = np.arange(round(rate * seconds)) / rate
    x = np.sin(2 * np.pi * freqs[:, None] * t[None, :] + phases[:, None]).sum(axis=0)
    return np.asarray(150.0 * x)  # fixed scale (not by the peak, which varies with rate)


def measured_delay_s(
    process: Process, rate_in: int, rate_out: int, hi: float, chunk_ms: int = 20
) -> float:
    """How much later a sample comes out than it went in.

    The streamed output is cross-correlated with the ideal (undelayed) output;
    the lag of the peak, refined by a parabola through its neighbours, is the
    signal delay. Any input the stream has taken but not yet answered for is
    added: a resampler that returns less than it was given holds it back.
    """
    x = multitone(rate_in, 1.0, 100, hi)
    ideal = multitone(rate_out, 1.0, 100, hi)
    y = stream(process, pcm(x), 2 * rate_in * chunk_ms // 1000)
    held_back = x.size / rate_in - y.size / rate_out
    n = min(y.size, ideal.size)
    size = 1 << (2 * n).bit_length()
    xc = np.fft.irfft(np.fft.rfft(y[:n], size) * np.conj(np.fft.rfft(ideal[:n], size)), size)
    span = rate_out // 50  # ±20 ms of lag
    lags = np.concatenate([np.arange(span), np.arange(-span, 0)])
    window = np.concatenate([xc[:span], xc[-span:]])
    i = int(np.argmax(window))
    a, b, c = window[i - 1], window[i], window[(i + 1) % window.size]
    lag = lags[i] + 0.5 * (a - c) / (a - 2 * b + c)
    return float(lag / rate_out + held_back)


def reference_resample(x: Floats, taps: Floats, up: int, down: int) -> Floats:
    """Textbook one-shot resampling in float64: zero-stuff, filter, decimate.

    Independent of the polyphase matrices under test; streaming output must
    match it to within the int16 rounding.
    """
    stuffed = np.zeros(x.size * up)
    stuffed[::up] = x
    y = np.convolve(stuffed, taps * up)[: stuffed.size : down]
    return np.asarray(np.clip(y, -32768, 32767))
