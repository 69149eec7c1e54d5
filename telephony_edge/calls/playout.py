"""The edge's buffer of agent audio waiting to be played to the caller.

It holds whole canonical frames. ``pause`` keeps filling it without playing,
``clear`` empties it (barge-in). It is bounded: an agent core that sends far
more than a caller could hear loses the newest audio, counted, rather than
growing the worker's memory without end.

After a stall of the worker (:attr:`~telephony_edge.calls.pacing.Pacer.skipped`)
the audio of the stalled time is stale: held here, or still in the socket and
read in the ticks that follow. :meth:`Playout.stalled` owes that many frames,
and :meth:`Playout.drop_stale` drops them, from the head, as they are here,
for at most ``STALE_WINDOW_TICKS``: so the caller is not kept late for the rest
of the call, and an utterance that starts later is not cut.
"""

from __future__ import annotations

import time
from collections import deque

from telephony_edge.audio.frames import FRAME_MS, FrameSplitter
from telephony_edge.metrics import FRAMES_DROPPED

_OVERFLOW = FRAMES_DROPPED.labels(reason="playout_overflow")
STALE_WINDOW_TICKS = 50  # a stall's audio still arriving after it is dropped for 1 s


class Playout:
    """Agent frames (with the edge's processing cost of each) in play order."""

    __slots__ = ("_max_frames", "_splitter", "_stale", "_stale_ticks", "frames", "paused")

    def __init__(self, max_seconds: float = 120.0) -> None:
        #: the frames in play order, each with its cost (read here; the pacer's tick
        #: looks at it directly, every call every 20 ms)
        self.frames: deque[tuple[bytes, float]] = deque()
        self._max_frames = int(max_seconds * 1000 / FRAME_MS)
        self._splitter = FrameSplitter()
        self.paused = False
        self._stale = 0  # frames owed to a stall
        self._stale_ticks = 0

    def push(self, chunk: bytes, received_at: float | None = None) -> int:
        """Queue agent audio of any chunk size; return how many whole frames it added.

        ``received_at`` (``time.perf_counter()`` when the chunk arrived) lets
        each frame carry the edge's own processing cost, for the relay-latency
        metric that leaves out the wait for its real-time slot.
        """
        frames = self._splitter.push(chunk)
        room = self._max_frames - len(self.frames)
        if len(frames) > room:
            _OVERFLOW.inc(len(frames) - max(room, 0))
            frames = frames[: max(room, 0)]
        if frames:
            cost = 0.0 if received_at is None else time.perf_counter() - received_at
            per_frame = cost / len(frames)
            self.frames.extend((f, per_frame) for f in frames)
        return len(frames)

    def pop(self) -> tuple[bytes, float] | None:
        """The next frame to play, or None while paused or empty."""
        if self.paused or not self.frames:
            return None
        return self.frames.popleft()

    def stalled(self, frames: int) -> None:
        """The worker stalled ``frames`` ticks while this audio played: that much is stale."""
        self._stale = frames
        self._stale_ticks = STALE_WINDOW_TICKS

    @property
    def stale(self) -> bool:
        return self._stale > 0

    def drop_stale(self) -> int:
        """Drop what a stall made stale and is here now (once a tick); how many went."""
        dropped = min(self._stale, len(self.frames))
        for _ in range(dropped):
            self.frames.popleft()
        self._stale -= dropped
        self._stale_ticks -= 1
        if self._stale_ticks <= 0:
            self._stale = 0
        return dropped

    def clear(self) -> int:
        """Drop everything buffered; return how many frames were dropped."""
        dropped = len(self.frames)
        self.frames.clear()
        self._splitter.clear()
        self._stale = 0
        return dropped

    def __len__(self) -> int:
        return len(self.frames)
