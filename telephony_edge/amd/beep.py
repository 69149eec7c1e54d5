"""The voicemail beep: a sustained single tone, found with a bank of Goertzel filters.

Theory of operation
-------------------
Each 20 ms canonical frame is measured at ``bank`` frequencies spread over
``low_hz``..``high_hz`` (every 25 Hz by default: half the frame's 50 Hz
resolution, so a tone between two bins still keeps about 80 % of its power
in the nearer one). A Goertzel filter run over N samples ends with the power
of one DFT bin; the bank's filters all see the same frame, so the edge
computes them in one matrix product (precomputed cosines and sines, one
``numpy`` call per frame) rather than N steps of a Python loop per filter.

A frame is *tonal* when it is loud enough (``min_rms``) and its strongest
bin holds at least ``purity`` of the frame's energy: a pure sine puts
almost all of it in one bin, speech spreads it over harmonics and noise.
A beep is ``min_ms`` or more of tonal frames in a row whose peak stays
within ``drift_hz``; it is reported when the tone stops (the recorder starts
after it) or once it has lasted ``max_ms``.

Rules: no clocks, no I/O; time is counted in frames fed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from telephony_edge.audio.frames import FRAME_BYTES, FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE


@dataclass(frozen=True, slots=True)
class BeepParams:
    """Knobs of :class:`BeepDetector` (the defaults find 400-2000 Hz beeps of 120 ms or more)."""

    low_hz: float = 400.0
    high_hz: float = 2000.0
    step_hz: float = 25.0
    purity: float = 0.7
    """Share of the frame's energy its strongest bin must hold."""
    min_rms: float = 300.0
    """Quieter frames are never tonal (about -40 dBFS)."""
    min_ms: int = 120
    max_ms: int = 1500
    drift_hz: float = 50.0
    """How far the peak may wander from frame to frame within one beep."""

    def __post_init__(self) -> None:
        if not 0 < self.low_hz < self.high_hz < SAMPLE_RATE / 2:
            raise ValueError("beep: need 0 < low_hz < high_hz < 8000")
        if self.step_hz <= 0 or (self.high_hz - self.low_hz) / self.step_hz > 400:
            raise ValueError("beep: step_hz must be > 0 and give at most 400 bins")
        if not 0 < self.purity <= 1:
            raise ValueError("beep: purity must be in (0, 1]")
        if not FRAME_MS <= self.min_ms <= self.max_ms:
            raise ValueError(f"beep: need {FRAME_MS} <= min_ms <= max_ms")


@dataclass(frozen=True, slots=True)
class Beep:
    """A beep ended (or lasted ``max_ms``) at frame ``frame``; ``hz`` is its mean frequency."""

    frame: int
    hz: float
    duration_ms: int


def _bank(params: BeepParams) -> tuple[NDArray[np.float64], NDArray[np.float32]]:
    freqs = np.arange(params.low_hz, params.high_hz + params.step_hz / 2, params.step_hz)
    n = np.arange(FRAME_SAMPLES)
    phase = 2 * np.pi * np.outer(freqs, n) / SAMPLE_RATE
    return freqs, np.vstack([np.cos(phase), np.sin(phase)]).astype(np.float32)


class BeepDetector:
    """Feed canonical frames; :meth:`feed` returns a :class:`Beep` when one has ended."""

    def __init__(self, params: BeepParams = BeepParams()) -> None:
        self.params = params
        self._freqs, self._basis = _bank(params)
        self._bins = len(self._freqs)
        self._frames = 0
        self._run = 0  # tonal frames in a row
        self._run_hz = 0.0  # their summed peak frequency
        self._last_hz = 0.0
        self._min_frames = params.min_ms // FRAME_MS
        self._max_frames = params.max_ms // FRAME_MS

    def peak(self, frame: bytes) -> float | None:
        """The frame's tone frequency if it is tonal, else None."""
        x = np.frombuffer(frame, dtype="<i2").astype(np.float32)
        energy = float(np.dot(x, x))
        params = self.params
        if energy < params.min_rms**2 * FRAME_SAMPLES:
            return None
        parts = self._basis @ x
        power = parts[: self._bins] ** 2 + parts[self._bins :] ** 2
        best = int(np.argmax(power))
        # a sine of amplitude A: bin power (A N / 2)^2, frame energy A^2 N / 2
        if float(power[best]) < params.purity * energy * FRAME_SAMPLES / 2:
            return None
        return float(self._freqs[best])

    def feed(self, frame: bytes) -> Beep | None:
        if len(frame) != FRAME_BYTES:
            raise ValueError(f"beep detector takes {FRAME_BYTES}-byte frames")
        self._frames += 1
        hz = self.peak(frame)
        if hz is not None and (self._run == 0 or abs(hz - self._last_hz) <= self.params.drift_hz):
            self._run += 1
            self._run_hz += hz
            self._last_hz = hz
            if self._run >= self._max_frames:
                return self._finish()
            return None
        beep = self._finish() if self._run >= self._min_frames else None
        self._run, self._run_hz = (1, hz) if hz is not None else (0, 0.0)
        self._last_hz = hz or 0.0
        return beep

    def _finish(self) -> Beep:
        run = self._run
        beep = Beep(self._frames, round(self._run_hz / run, 1), run * FRAME_MS)
        self._run, self._run_hz = 0, 0.0
        return beep
