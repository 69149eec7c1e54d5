"""Energy-based voice activity detection on canonical frames, sans-I/O.

Theory of operation: each 20 ms frame's RMS level (dBFS) is compared with a
threshold. A frame is *voiced* when its level is at least the threshold. An
utterance starts after ``start_frames`` voiced frames in a row and ends after
``hangover_ms`` of unvoiced frames in a row, so the short gaps between words
do not split a sentence.

The threshold is ``threshold_dbfs`` when not adaptive. When adaptive, it is
``max(threshold_dbfs, noise_floor + margin_db)``, the noise floor being a low
percentile of the levels of the last ``noise_window_ms`` (nearest rank,
updated every ``_FLOOR_EVERY`` frames): speech has pauses, so the quietest
tenth of a few seconds is the line's own noise, and a steady hiss or hum stops
counting as speech once the window has seen it. Until half a
second has been heard the fixed threshold applies alone, so a caller who
talks from the first frame is not taken for noise.

Rules: no clocks, no sockets, no asyncio. The caller feeds frames and gets
events; time is counted in frames (``frame * FRAME_MS`` ms since the first).
That keeps the detector deterministic and testable on a WAV file.
"""

from __future__ import annotations

import collections
import math
import warnings
from dataclasses import dataclass

from telephony_edge.audio.frames import FRAME_BYTES, FRAME_MS

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

_MIN_DBFS = -100.0  # the level of digital silence, instead of -inf
_MIN_HISTORY = 25  # frames (0.5 s) of levels before the noise floor is trusted
_FLOOR_EVERY = 10  # frames between noise-floor updates: it moves slowly, sorting is not free


@dataclass(frozen=True, slots=True)
class VadConfig:
    """Knobs of :class:`EnergyVad`."""

    threshold_dbfs: float = -45.0
    """Absolute minimum level of a voiced frame."""
    adaptive: bool = True
    """Raise the threshold above the measured noise floor."""
    margin_db: float = 10.0
    """How far above the noise floor a voiced frame must be (adaptive only)."""
    noise_window_ms: int = 3000
    """How much history the noise floor is measured over (adaptive only)."""
    noise_percentile: float = 10.0
    """Which percentile of that history is taken as the noise floor."""
    start_frames: int = 3
    """Voiced frames in a row that start an utterance (clicks are shorter)."""
    hangover_ms: int = 600
    """Unvoiced time in a row that ends an utterance."""

    def __post_init__(self) -> None:
        if self.start_frames < 1:
            raise ValueError("start_frames must be >= 1")
        if self.hangover_ms < FRAME_MS:
            raise ValueError(f"hangover_ms must be >= {FRAME_MS}")
        if self.noise_window_ms < FRAME_MS:
            raise ValueError(f"noise_window_ms must be >= {FRAME_MS}")
        if not 0.0 <= self.noise_percentile <= 100.0:
            raise ValueError("noise_percentile must be within 0..100")

    @property
    def hangover_frames(self) -> int:
        return max(1, math.ceil(self.hangover_ms / FRAME_MS))


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """An utterance began at ``frame`` (its first voiced frame)."""

    frame: int

    @property
    def time(self) -> float:
        return self.frame * FRAME_MS / 1000


@dataclass(frozen=True, slots=True)
class SpeechEnded:
    """The utterance that began at ``start`` ended before ``frame``.

    ``frame`` is one past its last voiced frame, so the hangover is not part
    of it: frames ``start .. frame - 1`` are what the caller said.
    """

    start: int
    frame: int

    @property
    def time(self) -> float:
        return self.frame * FRAME_MS / 1000

    @property
    def duration(self) -> float:
        return (self.frame - self.start) * FRAME_MS / 1000


VadEvent = SpeechStarted | SpeechEnded


def frame_dbfs(frame: bytes) -> float:
    """RMS level of PCM16 little-endian audio in dB relative to full scale."""
    if not frame:
        return _MIN_DBFS
    rms = audioop.rms(frame, 2)
    if rms <= 0:
        return _MIN_DBFS
    return max(_MIN_DBFS, 20.0 * math.log10(rms / 32768.0))


class EnergyVad:
    """Feed canonical frames, get :data:`VadEvent` s. One instance per stream."""

    def __init__(self, config: VadConfig | None = None) -> None:
        self.config = config or VadConfig()
        window = max(1, self.config.noise_window_ms // FRAME_MS)
        self._levels: collections.deque[float] = collections.deque(maxlen=window)
        self._frame = 0  # index of the next frame fed
        self._run = 0  # voiced frames in a row (while silent) / unvoiced (while speaking)
        self._speech_start: int | None = None
        self._last_voiced = 0
        self.threshold_dbfs = self.config.threshold_dbfs
        """The threshold the last frame was judged against."""

    @property
    def speaking(self) -> bool:
        """True from :class:`SpeechStarted` until :class:`SpeechEnded`."""
        return self._speech_start is not None

    @property
    def frames_fed(self) -> int:
        return self._frame

    def feed(self, frame: bytes) -> VadEvent | None:
        """Judge one 20 ms frame; return the event it completes, if any."""
        if len(frame) != FRAME_BYTES:
            raise ValueError(f"expected a {FRAME_BYTES}-byte frame, got {len(frame)} bytes")
        index = self._frame
        self._frame += 1
        level = frame_dbfs(frame)
        voiced = level >= self._threshold(level)

        if self._speech_start is None:
            self._run = self._run + 1 if voiced else 0
            if self._run >= self.config.start_frames:
                self._speech_start = index - self._run + 1
                self._last_voiced = index
                self._run = 0
                return SpeechStarted(self._speech_start)
            return None

        if voiced:
            self._last_voiced = index
            self._run = 0
            return None
        self._run += 1
        if self._run >= self.config.hangover_frames:
            return self.end()
        return None

    def end(self) -> SpeechEnded | None:
        """End the current utterance now (e.g. it grew too long); None if silent."""
        start = self._speech_start
        if start is None:
            return None
        self._speech_start = None
        self._run = 0
        return SpeechEnded(start, self._last_voiced + 1)

    def _threshold(self, level: float) -> float:
        cfg = self.config
        if not cfg.adaptive:
            return cfg.threshold_dbfs
        self._levels.append(level)
        if len(self._levels) < _MIN_HISTORY:
            self.threshold_dbfs = cfg.threshold_dbfs
            return self.threshold_dbfs
        if self._frame % _FLOOR_EVERY == 0 or len(self._levels) == _MIN_HISTORY:
            levels = sorted(self._levels)
            floor = levels[round(cfg.noise_percentile / 100 * (len(levels) - 1))]
            self.threshold_dbfs = max(cfg.threshold_dbfs, floor + cfg.margin_db)
        return self.threshold_dbfs
