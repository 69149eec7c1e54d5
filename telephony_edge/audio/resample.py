"""Streaming polyphase FIR resamplers between the wire rates and 16 kHz.

Theory of operation
-------------------
A leg converts 20 ms frames one at a time, so a resampler must carry state
from frame to frame (or every boundary clicks) and must hold back as little
audio as possible (every millisecond here is a millisecond of conversational
latency). Both needs are met by a linear-phase FIR run in polyphase form:

* Rate change by ``up``/``down`` (here 2/1, 1/2, 3/1 and 1/3). Conceptually the
  input is zero-stuffed to ``rate_in * up``, filtered by ``taps`` and every
  ``down``-th sample kept. Output sample ``k`` is therefore
  ``up * sum_p taps[k*down - up*p] * x[p]``.
* State is the last ``history`` input samples, ``ceil((len(taps) - 1) / up)``.
  Output is produced for every input sample as it arrives: nothing waits for
  future input, so the only delay is the filter's group delay,
  ``(len(taps) - 1) / 2`` samples at the intermediate rate. That is the whole
  latency cost; ``StreamResampler.delay_s`` states it and the tests measure it.
* Speed: numpy costs about a microsecond per call whatever the size, so a
  20 ms frame is done in a fixed handful of calls. The frame is cut into ``R``
  equal blocks; block ``r`` needs a window of ``block_in + history`` inputs and
  yields ``block_out`` outputs, and the map from window to outputs is the same
  small matrix for every block. A read-only strided view of the state buffer
  gives all ``R`` windows at once, so one BLAS ``dot`` of
  ``(R, width) @ (width, block_out)`` resamples the whole frame, and the
  output rows, laid end to end, are the frame in order. No per-sample Python,
  no per-frame allocation beyond the returned ``bytes``.
* Conversion back to int16: a plain cast truncates toward zero and wraps on
  overflow, and numpy's clip costs more than the filter. The filters
  overshoot (Gibbs) by at most ``gain_bound`` (about 2.2), so the input peak
  (``audioop.max``, C, cheap) tells which scale cannot overflow: unit scale
  for most frames, cast exactly; 1/2 or 1/4 scale for loud ones, restored by
  audioop's saturating ``add``/``mul``, so overshoot clips and never wraps.
* Speed, measured on the CI-class VM this was built on: about 3 µs per 20 ms
  frame either way between 8 and 16 kHz; ``bench/transcode.py`` has the
  figures and the alternatives (``audioop.ratecv``, soxr).

Filter design
-------------
Coefficients are computed once at import with numpy (no scipy at run time):
weighted least squares iterated to near-minimax (Lawson's algorithm) for a
linear-phase lowpass, and the half-band form of the same for 8 → 16 kHz, in
which every other tap is zero and one polyphase branch is a pure delay.

=====================  =====  ==========  ===============  ==============
resampler              taps   passband    stopband          group delay
=====================  =====  ==========  ===============  ==============
8 → 16 kHz half-band   31     3.4 kHz     ≥ 4.6 kHz, 45 dB  0.94 ms
16 → 8 kHz             49     3.4 kHz     ≥ 4.0 kHz, 46 dB  1.50 ms
48 → 16 kHz            89     7.0 kHz     ≥ 8.0 kHz, 45 dB  0.92 ms
=====================  =====  ==========  ===============  ==============

The 8 → 16 kHz stopband starts at 4.6 kHz because that is where the image of
the top of the telephone band (3.4 kHz) lands; 16 → 8 kHz must stop at 4 kHz
itself, or 4-4.6 kHz content would alias into 3.4-4 kHz.
"""

from __future__ import annotations

import math
import threading
import warnings
from dataclasses import dataclass, field
from functools import cache

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

__all__ = [
    "DOWN_16K_TO_8K",
    "DOWN_48K_TO_16K",
    "UP_8K_TO_16K",
    "FirSpec",
    "StreamResampler",
    "design_halfband",
    "design_lowpass",
]

FloatArray = NDArray[np.float64]

_INT16_MAX = 32767


# --------------------------------------------------------------------------- design


def _lawson(
    basis: FloatArray, target: FloatArray, weight: FloatArray, iterations: int
) -> FloatArray:
    """Near-minimax weighted fit of ``basis @ a ≈ target`` (Lawson's algorithm).

    Each round is a weighted least-squares solve; grid points with a large
    error get more weight next round, which drives the fit toward equal
    ripple. For the filters here, fifteen rounds land within 0.05 dB of
    Parks-McClellan (checked against scipy.signal.remez, not needed at run time).
    """
    lw = np.full(target.shape[0], 1.0 / target.shape[0])
    coef = np.zeros(basis.shape[1])
    for _ in range(iterations):
        sw = np.sqrt(lw) * weight
        coef = np.linalg.lstsq(basis * sw[:, None], target * sw, rcond=None)[0]
        err = np.abs(basis @ coef - target) * weight
        lw = lw * err
        lw /= lw.sum()
    return coef


def _grid(lo_hz: float, hi_hz: float, rate: int, points: int) -> FloatArray:
    return np.linspace(lo_hz, hi_hz, max(points, 16)) * (2.0 * math.pi / rate)


def design_lowpass(
    num_taps: int,
    pass_hz: float,
    stop_hz: float,
    rate: int,
    *,
    pass_ripple: float = 0.03,
    stop_ripple: float = 0.005,
    iterations: int = 15,
) -> FloatArray:
    """Linear-phase lowpass FIR, near-minimax, unit passband gain.

    ``pass_ripple`` and ``stop_ripple`` are amplitude deviations whose ratio
    sets the trade-off (0.03 is about ±0.26 dB, 0.005 about -46 dB): telephony
    tolerates passband ripple far better than aliasing, so the stopband gets
    the weight and the filter stays short.
    """
    if num_taps % 2 != 1:
        raise ValueError("num_taps must be odd (type I linear phase)")
    m = (num_taps - 1) // 2
    density = 12 * m / (rate / 2)
    w_pass = _grid(0.0, pass_hz, rate, int(density * pass_hz))
    w_stop = _grid(stop_hz, rate / 2, rate, int(density * (rate / 2 - stop_hz)))
    w = np.concatenate([w_pass, w_stop])
    target = np.concatenate([np.ones(w_pass.size), np.zeros(w_stop.size)])
    weight = np.concatenate(
        [np.full(w_pass.size, 1.0 / pass_ripple), np.full(w_stop.size, 1.0 / stop_ripple)]
    )
    a = _lawson(np.cos(np.outer(w, np.arange(m + 1))), target, weight, iterations)
    return np.concatenate([a[:0:-1] / 2.0, a[:1], a[1:] / 2.0])


def design_halfband(
    num_taps: int, pass_hz: float, rate: int, *, iterations: int = 15
) -> FloatArray:
    """Half-band lowpass (cut-off ``rate/4``), near-minimax over ``[0, pass_hz]``.

    Every tap at an even distance from the centre is zero and the centre is
    0.5, so the response is symmetric about ``rate/4`` (ripple in the stopband
    from ``rate/2 - pass_hz`` mirrors the passband's) and, used to upsample by
    2, one polyphase branch is a pure delay. ``num_taps`` must be 4k+3.
    """
    if num_taps % 4 != 3:
        raise ValueError("a half-band filter has 4k+3 taps")
    m = (num_taps - 1) // 2
    odd = np.arange(1, m + 1, 2)
    w = _grid(0.0, pass_hz, rate, int(12 * m * pass_hz / (rate / 2)))
    a = _lawson(np.cos(np.outer(w, odd)), np.full(w.size, 0.5), np.ones(w.size), iterations)
    taps = np.zeros(num_taps)
    taps[m] = 0.5
    taps[m + odd] = a / 2.0
    taps[m - odd] = a / 2.0
    return taps


@dataclass(frozen=True, slots=True, eq=False)
class FirSpec:
    """A rate change and its filter; immutable, shared by every resampler using it.

    ``taps`` run at the intermediate rate ``rate_in * up == rate_out * down``.
    """

    rate_in: int
    rate_out: int
    taps: FloatArray = field(repr=False)

    @property
    def up(self) -> int:
        return self.rate_out // math.gcd(self.rate_in, self.rate_out)

    @property
    def down(self) -> int:
        return self.rate_in // math.gcd(self.rate_in, self.rate_out)

    @property
    def history(self) -> int:
        """Input samples carried from one call to the next."""
        return -(-(len(self.taps) - 1) // self.up)

    @property
    def delay_s(self) -> float:
        """How much later a sample comes out than it went in (group delay)."""
        return (len(self.taps) - 1) / 2.0 / (self.rate_in * self.up)

    @property
    def gain_bound(self) -> float:
        """Largest possible |output| per unit |input| (worst polyphase branch)."""
        up = self.up
        return float(max(up * np.abs(self.taps[p::up]).sum() for p in range(up)))

    def block_matrix(self, block_in: int) -> NDArray[np.float32]:
        """Matrix mapping one window of ``block_in + history`` inputs to its outputs.

        Row ``b`` is input ``b - history`` relative to the block start, column
        ``a`` is the block's output ``a``; entry = ``up * taps[a*down - up*(b - history)]``.
        """
        up, down, hist = self.up, self.down, self.history
        if block_in % down:
            raise ValueError(f"block of {block_in} inputs is not a multiple of {down}")
        n = len(self.taps)
        b = np.arange(block_in + hist)[:, None]
        a = np.arange(block_in * up // down)[None, :]
        j = a * down - up * (b - hist)
        valid = (j >= 0) & (j < n)
        m = np.where(valid, self.taps[np.clip(j, 0, n - 1)], 0.0) * up
        return m.astype(np.float32)


UP_8K_TO_16K = FirSpec(8_000, 16_000, design_halfband(31, 3_400, 16_000))
"""Telephone band to canonical: half-band, images of 0-3.4 kHz ≥ 45 dB down."""

DOWN_16K_TO_8K = FirSpec(16_000, 8_000, design_lowpass(49, 3_400, 4_000, 16_000))
"""Canonical to telephone band: everything from 4 kHz up ≥ 46 dB down."""

DOWN_48K_TO_16K = FirSpec(48_000, 16_000, design_lowpass(89, 7_000, 8_000, 48_000))
"""WebRTC to canonical: flat to 7 kHz, 8-24 kHz ≥ 45 dB down before decimation."""


# --------------------------------------------------------------------------- streaming


class StreamResampler:
    """Stateful PCM16 resampler for one direction of one call.

    ``process`` takes native-endian PCM16 bytes at ``spec.rate_in`` and returns
    PCM16 at ``spec.rate_out``. A chunk of exactly ``frame_in`` samples (the
    leg's 20 ms frame) takes the fast path; any other size also works
    (chunked and one-shot output agree) and returns every output sample that
    is ready, holding back at most ``down - 1`` input samples for the next call.
    """

    __slots__ = (
        "_buf",
        "_frame_bytes",
        "_hist_bytes",
        "_loud",
        "_m1",
        "_m2",
        "_m4",
        "_out",
        "_pending",
        "_prev_peak",
        "_quiet",
        "_small",
        "_windows",
        "_xf",
        "_y",
        "block_in",
        "frame_in",
        "spec",
    )

    def __init__(self, spec: FirSpec, frame_in: int, block_in: int | None = None) -> None:
        """``frame_in``: samples per fast-path chunk; ``block_in``: samples per BLAS row.

        The default block gives about twenty rows per frame, around the fastest
        shape measured for all four rate pairs; it must divide ``frame_in``.
        """
        if block_in is None:
            block_in = _default_block(frame_in, spec.down)
        if frame_in % block_in or block_in % spec.down:
            raise ValueError(
                f"block {block_in} must divide frame {frame_in} and be a multiple of {spec.down}"
            )
        gain = spec.gain_bound
        if gain >= 3.99:
            raise ValueError("filter overshoot too large for the int16 output stage")
        self.spec = spec
        self.frame_in = frame_in
        self.block_in = block_in
        hist = spec.history
        self._hist_bytes = 2 * hist
        self._frame_bytes = 2 * frame_in
        # State buffer: [history | current frame]. The numpy views below alias
        # it, so taking in a frame is a bytearray slice assignment.
        self._buf = bytearray(2 * (hist + frame_in))
        x = np.frombuffer(self._buf, dtype=np.int16)
        self._windows = sliding_window_view(x, block_in + hist)[::block_in]
        # The same matrix at 1, 1/2 and 1/4 scale (see process), shared by every resampler
        # of this spec and block: read-only, and a copy per call was 2-7 kB of each call's memory
        self._m1, self._m2, self._m4 = _matrices(spec, block_in)
        matrix = self._m1
        self._small = _matrices(spec, spec.down)[0]
        # Scratch for one frame's work, shared by every resampler of this shape on this thread:
        # process() fills and empties it without yielding (about 10 kB of each call's memory)
        self._xf, self._y, self._out = _scratch(
            frame_in // block_in, block_in + hist, matrix.shape[1], threading.get_ident()
        )
        self._quiet = int(_INT16_MAX / gain)
        self._loud = int(2 * _INT16_MAX / gain)
        self._prev_peak = 0
        self._pending = b""

    @property
    def delay_s(self) -> float:
        """Added latency in seconds: the filter's group delay, nothing held back."""
        return self.spec.delay_s

    def reset(self) -> None:
        """Forget all state, as at the start of a call (e.g. after a long gap)."""
        self._buf[:] = bytes(len(self._buf))
        self._prev_peak = 0
        self._pending = b""

    def process(self, pcm: bytes) -> bytes:
        """Resample the next chunk of the stream; returns PCM16 at ``rate_out``.

        Fast path, one whole frame: a handful of C calls. Casting float32 to
        int16 wraps on overflow, so the peak of the samples in play (this
        frame and the history from the last) picks the scale: quiet frames
        (the most) are computed at unit scale and cast exactly; louder ones at
        1/2 or 1/4 scale, which cannot overflow, then brought back up by
        audioop's saturating ``add``/``mul``. Those lose their lowest bit or
        two, 77 dB or more below their own peak.
        """
        if len(pcm) != self._frame_bytes or self._pending:
            return self._process_any(pcm)
        buf = self._buf
        buf[self._hist_bytes :] = pcm
        peak = audioop.max(pcm, 2)
        level = peak if peak > self._prev_peak else self._prev_peak
        self._prev_peak = peak
        xf = self._xf
        xf[...] = self._windows
        buf[: self._hist_bytes] = buf[self._frame_bytes :]
        y = self._y
        out = self._out
        if level <= self._quiet:
            _dot(xf, self._m1, y)
            out[...] = y
            return out.tobytes()
        if level <= self._loud:
            _dot(xf, self._m2, y)
            out[...] = y
            half = out.tobytes()
            return audioop.add(half, half, 2)
        _dot(xf, self._m4, y)
        out[...] = y
        return audioop.mul(out.tobytes(), 2, 4.0)

    def _process_any(self, pcm: bytes) -> bytes:
        """Any chunk size: whole groups of ``down`` inputs, the rest kept for later."""
        down = self.spec.down
        data = self._pending + pcm
        usable = len(data) - len(data) % (2 * down)
        self._pending = data[usable:]
        if not usable:
            return b""
        hist = self._hist_bytes
        x = np.frombuffer(bytes(self._buf[:hist]) + data[:usable], dtype=np.int16)
        windows = sliding_window_view(x, down + hist // 2)[::down]
        y: NDArray[np.float32] = np.dot(windows.astype(np.float32), self._small)
        np.minimum(y, float(_INT16_MAX), out=y)
        np.maximum(y, -32768.0, out=y)
        self._buf[:hist] = x[x.size - hist // 2 :].tobytes()
        # The fast path's loudness check looks one frame back, to the history.
        self._prev_peak = audioop.max(self._buf[:hist], 2) if hist else 0
        return y.astype(np.int16).tobytes()


_dot = np.dot


@cache
def _matrices(spec: FirSpec, block_in: int) -> tuple[NDArray[np.float32], ...]:
    """``spec``'s block matrix for ``block_in`` at scale 1, 1/2 and 1/4, read-only, built once."""
    matrix = spec.block_matrix(block_in)
    scaled = (matrix, matrix * np.float32(0.5), matrix * np.float32(0.25))
    for m in scaled:
        m.setflags(write=False)
    return scaled


@cache
def _scratch(
    rows: int, width: int, outputs: int, thread: int
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.int16]]:
    """The fast path's windows as float, its products and their int16 cast, for one thread."""
    return (
        np.empty((rows, width), dtype=np.float32),
        np.empty((rows, outputs), dtype=np.float32),
        np.empty((rows, outputs), dtype=np.int16),
    )


def _default_block(frame_in: int, down: int) -> int:
    """Smallest multiple of ``down`` dividing ``frame_in`` that gives ≤ 20 rows."""
    block = down
    while frame_in // block > 20 or frame_in % block:
        block += down
        if block > frame_in:
            return frame_in
    return block
