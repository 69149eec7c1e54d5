"""Packet loss concealment by pitch waveform repetition (after ITU-T G.711 Appendix I).

Theory of operation
-------------------
A lost 20 ms of voiced speech filled with zeros is a click and a hole; the
same stretch filled with the last pitch period, repeated and fading, is
barely heard. :class:`Concealer` keeps the last 40 ms it was given (two
references, no copy per frame) and, when asked to fill a gap:

* finds the pitch period of that history by normalised autocorrelation
  (lags of 5 to 15 ms, searched at 8 kHz on every other sample);
* repeats the last period from where the real audio ended, at full level
  for the first 10 ms, then fading linearly to silence at 60 ms (Appendix I
  attenuates 20 % per 10 ms after the first 10 ms);
* when real audio comes back, cross-fades the first 4 ms of it with the
  continued repetition, so the join does not click.

Canonical PCM16 16 kHz mono throughout. Costs nothing while no audio is
lost: the numpy work happens only at a gap.
"""

from __future__ import annotations

import numpy as np

RATE = 16000
HISTORY_SAMPLES = 640  # 40 ms
MIN_LAG, MAX_LAG = 40, 120  # pitch lags at 8 kHz: 66-200 Hz, Appendix I's range
FULL_LEVEL_SAMPLES = 160  # 10 ms at full level
FADE_END_SAMPLES = 960  # silent from 60 ms
JOIN_SAMPLES = 64  # 4 ms cross-fade into the audio that follows


# Built once: the gap's sample indices, its attenuation (1 for the first 10 ms, then falling
# to 0 at 60 ms) and the join's ramp; a gap's numpy work is then a few calls, not a dozen.
def _gain(index: np.ndarray) -> np.ndarray:
    return np.clip(
        1.0 - (index - FULL_LEVEL_SAMPLES) / (FADE_END_SAMPLES - FULL_LEVEL_SAMPLES), 0.0, 1.0
    )


_GAP = np.arange(FADE_END_SAMPLES + 2 * HISTORY_SAMPLES)
_GAIN = _gain(_GAP)
_RAMP = np.linspace(0.0, 1.0, JOIN_SAMPLES, endpoint=False)
_FALL = 1 - _RAMP


class Concealer:
    """Fills gaps in one stream of 16 kHz PCM16; see the module docstring."""

    __slots__ = ("_cycle", "_last", "_prev", "_run")

    def __init__(self) -> None:
        self._prev = b""
        self._last = b""
        self._cycle: np.ndarray | None = None  # the pitch period being repeated
        self._run = FADE_END_SAMPLES  # samples concealed in the current gap (none to repeat yet)

    @property
    def exhausted(self) -> bool:
        """The current gap is past what repetition can cover (now silence)."""
        return self._run >= FADE_END_SAMPLES

    def heard(self, pcm: bytes) -> bytes:
        """Real audio: remembered as history; after a gap, returned with its join smoothed."""
        if self._run:
            if not self.exhausted and len(pcm) >= 2 * JOIN_SAMPLES:
                pcm = self._join(pcm)
            self._run = 0
            self._cycle = None
        self._prev, self._last = self._last, pcm
        return pcm

    def conceal(self, samples: int) -> bytes:
        """The next ``samples`` of the gap: the repeated period, fading, then silence."""
        if self._run >= FADE_END_SAMPLES:
            self._run += samples
            return bytes(2 * samples)
        if self._cycle is None:
            self._cycle = self._pitch_cycle()
        out = self._continue(self._run, samples)
        self._run += samples
        return out.astype("<i2").tobytes()

    def _pitch_cycle(self) -> np.ndarray:
        history = np.frombuffer((self._prev + self._last)[-2 * HISTORY_SAMPLES :], "<i2")
        if len(history) < 2 * MAX_LAG + 2:
            return np.zeros(2, np.float64)
        low = history[::2].astype(np.float64)  # 8 kHz is enough to find the period
        window = min(len(low) - MAX_LAG, 160)
        tail = low[-window:]
        # entry k is the window MAX_LAG - k samples back: every lag in two C loops (the
        # correlation, and the windows' energy as a running sum), not a Python loop
        past = low[-window - MAX_LAG : len(low) - MIN_LAG]
        squares = np.cumsum(np.concatenate(((0.0,), past * past)))
        energy = (squares[window:] - squares[:-window])[::-1]
        products = np.correlate(past, tail)[::-1]
        scores = np.full(len(energy), -np.inf)  # silence: no score
        np.divide(products, np.sqrt(energy), out=scores, where=energy > 0)
        best = int(np.argmax(scores))  # the shortest lag of the best score
        best_lag = MIN_LAG + best if scores[best] > -1.0 else MIN_LAG
        period = 2 * best_lag
        return history[-period:].astype(np.float64)

    def _continue(self, start: int, samples: int) -> np.ndarray:
        """Samples ``start`` … ``start + samples`` of the gap, attenuation applied."""
        cycle = self._cycle
        assert cycle is not None
        end = start + samples
        wave: np.ndarray
        if end > len(_GAP):  # longer than the pacer asks for: computed, not prepared
            index = np.arange(start, end)
            wave = cycle[index % len(cycle)] * _gain(index)
        else:
            wave = cycle[_GAP[start:end] % len(cycle)] * _GAIN[start:end]
        return wave

    def _join(self, pcm: bytes) -> bytes:
        real = np.frombuffer(pcm, "<i2").astype(np.float64)
        tail = self._continue(self._run, JOIN_SAMPLES)
        real[:JOIN_SAMPLES] = tail * _FALL + real[:JOIN_SAMPLES] * _RAMP
        return np.clip(real, -32768, 32767).astype("<i2").tobytes()
