"""A call's two audio tracks, time-aligned on the call's clock, streamed to a sink.

Theory of operation
-------------------
Two tracks, the caller's (left) and the agent's as the caller heard it
(right), each a list of canonical 20 ms frames (640 bytes, the legs'
contract), held by reference: no copy per frame, and silence is one shared
frame. A frame is placed by arrival time: a track's first frame, and a frame
that finds its track more than its slack behind the call's clock (no frames
for a while: the agent said nothing, the caller's leg was cut off), is
placed at the clock, the gap filled with silence; a frame only a little late
is appended as it is, not pushed later still. The caller's slack is large
(``caller_slack_frames``: its frames come over a network, a late burst must
not be spread out), the agent's small (its frames leave on the edge's own
clock, so a short pause between two talkspurts is kept). Frames that arrive
faster than real time (a playout lead at a talkspurt's start) are appended
as they come: the network plays them in order. The recording ends with the
call, at the clock: what a lead had sent ahead when the caller hung up was
never heard, and a recording's length is the call's.

The per-frame cost is one clock read, a compare and a list append: no copy,
no syscall. :meth:`TrackWriter.flush` (about once a second) pads both tracks
to the clock and hands the part both have (interleaved for stereo with numpy,
some 14 times faster than ``audioop.tostereo``; mixed for mono) to its sink:
a :class:`WavFile`, which the ``wave`` module keeps a complete WAV after
every write (a worker killed mid-call leaves a playable file up to the last
flush), or an encoder's pipe (``encoder.py``). Bounded: a silence gap is at
most ``max_gap_s`` (a stalled clock does not allocate hours of zeros) and a
track that runs far ahead of the other, or that a slow sink keeps from being
flushed, drops frames (counted) past ``max_pending_s``.
"""

from __future__ import annotations

import audioop
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, Protocol

import numpy as np

from telephony_edge.audio.frames import (
    FRAME_BYTES,
    FRAME_MS,
    FRAME_SAMPLES,
    SAMPLE_RATE,
    SAMPLE_WIDTH,
    SILENCE_FRAME,
)

Channels = Literal["stereo", "mono"]
_FRAMES_PER_S = 1000 // FRAME_MS


@dataclass(frozen=True, slots=True)
class WriterLimits:
    caller_slack_frames: int = 10  # 200 ms: a late burst (a stalled loop, TCP) stays whole
    agent_slack_frames: int = 2
    max_gap_s: float = 10.0
    max_pending_s: float = 10.0


class _Track:
    """One side's frames not yet written; ``position`` counts frames since the start."""

    __slots__ = ("dropped", "frames", "slack", "steady_slack", "written")

    def __init__(self, slack: int) -> None:
        self.frames: list[bytes] = []
        self.written = 0  # frames already handed to the sink
        self.dropped = 0
        self.slack = -1  # the first frame is placed at the clock, whenever it comes
        self.steady_slack = slack

    @property
    def position(self) -> int:
        return self.written + len(self.frames)

    def pad_to(self, frame: int, max_gap: int) -> None:
        gap = frame - self.position
        if gap > 0:
            self.frames += [SILENCE_FRAME] * min(gap, max_gap)

    def take(self, frames: int) -> bytes:
        chunk = b"".join(self.frames[:frames])
        del self.frames[:frames]
        self.written += frames
        return chunk


class PcmSink(Protocol):
    """Where a writer's interleaved (stereo) or mixed (mono) PCM16 at 16 kHz goes."""

    def write(self, pcm: bytes) -> None: ...

    def close(self) -> None: ...


class WavFile:
    """A 16 kHz PCM16 WAV at ``path``, a complete file (header sizes right) after every write."""

    def __init__(self, path: Path, channels: Channels) -> None:
        self._file: BinaryIO = path.open("wb")
        try:
            self._wav = wave.open(self._file, "wb")  # noqa: SIM115 (closed in close())
            self._wav.setnchannels(2 if channels == "stereo" else 1)
            self._wav.setsampwidth(SAMPLE_WIDTH)
            self._wav.setframerate(SAMPLE_RATE)
            self._wav.writeframes(b"")  # the header, so even an empty file is a WAV
            self._file.flush()
        except BaseException:
            self._file.close()
            raise

    def write(self, pcm: bytes) -> None:
        self._wav.writeframes(pcm)  # the wave module rewrites the header's sizes
        self._file.flush()

    def close(self) -> None:
        try:
            self._wav.close()
        finally:
            self._file.close()


class TrackWriter:
    """Streams one call's audio to ``sink`` while the call runs."""

    def __init__(
        self,
        sink: PcmSink,
        channels: Channels,
        *,
        clock: Callable[[], float] = time.monotonic,
        limits: WriterLimits = WriterLimits(),
    ) -> None:
        self.sink = sink
        self.channels = channels
        self._clock = clock
        self._start = clock()
        self._lag = 2 * max(limits.caller_slack_frames, limits.agent_slack_frames)
        self._max_gap = round(limits.max_gap_s * 1000 / FRAME_MS)
        self._max_pending = round(limits.max_pending_s * 1000 / FRAME_MS)
        self._caller = _Track(limits.caller_slack_frames)
        self._agent = _Track(limits.agent_slack_frames)
        self.closed = False

    # -- the taps (per frame: no I/O) -----------------------------------------

    def caller(self, frame: bytes) -> None:
        """A frame the caller's leg delivered, now."""
        self._add(self._caller, frame)

    def agent(self, frame: bytes) -> None:
        """A frame handed to the caller's leg to play, now."""
        self._add(self._agent, frame)

    def _add(self, track: _Track, frame: bytes) -> None:
        # per frame: kept to a few operations (frames after close() are never written;
        # max_pending bounds them like any others)
        frames = track.frames
        if len(frames) >= self._max_pending:
            track.dropped += 1
            return
        now = int((self._clock() - self._start) * _FRAMES_PER_S + 0.5)
        if track.written + len(frames) < now - track.slack:
            track.pad_to(now, self._max_gap)
            track.slack = track.steady_slack
        frames.append(frame)

    def _now_frame(self) -> int:
        return int((self._clock() - self._start) * _FRAMES_PER_S + 0.5)

    # -- batches ------------------------------------------------------------

    @property
    def frames_written(self) -> int:
        """20 ms frames handed to the sink."""
        return self._caller.written

    @property
    def dropped(self) -> int:
        """Frames left out because their track ran ``max_pending_s`` ahead of the other."""
        return self._caller.dropped + self._agent.dropped

    @property
    def pending_bytes(self) -> int:
        """Audio held in memory, not yet handed to the sink."""
        return (len(self._caller.frames) + len(self._agent.frames)) * FRAME_BYTES

    def flush(self) -> None:
        """Hand the sink what both tracks have up to the clock."""
        if self.closed:
            return
        # twice the slack behind the clock: a frame that then finds its track behind
        # pads it to the clock at once
        self._write(self._now_frame() - self._lag)

    def close(self) -> None:
        """Hand the sink both tracks up to the clock (the call's end), close it.

        The frame under way at the end is kept; frames beyond it are agent audio
        sent ahead (a network's playout lead, a burst after a stall) that nobody
        heard: the call ended first.
        """
        if self.closed:
            return
        self.closed = True
        try:
            now = self._now_frame()
            self._write(min(max(self._caller.position, self._agent.position, now), now + 1))
        finally:
            self.sink.close()

    def _write(self, target: int) -> None:
        left, right = self._caller, self._agent
        left.pad_to(target, self._max_gap)
        right.pad_to(target, self._max_gap)
        frames = min(left.position, right.position) - left.written
        if frames <= 0:
            return
        a, b = left.take(frames), right.take(frames)
        if self.channels == "stereo":
            both = np.empty((frames * FRAME_SAMPLES, 2), dtype="<i2")
            both[:, 0] = np.frombuffer(a, dtype="<i2")
            both[:, 1] = np.frombuffer(b, dtype="<i2")
            pcm = both.tobytes()
        else:
            pcm = audioop.add(a, b, SAMPLE_WIDTH)  # saturating
        self.sink.write(pcm)
