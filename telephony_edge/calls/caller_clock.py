"""The call's clock on the caller → agent path: one 20 ms frame per 20 ms, whatever arrives.

Theory of operation
-------------------
An agent core's turn detection counts time in the audio it is given. A
caller whose packets stop (silence suppression, RFC 3389 comfort noise,
Opus DTX, a meeting bot's ended track, a stalled WebSocket) gives it no
audio at all, so it never sees the end of the caller's speech and never
answers. The clock keeps the agent's stream at real time:

* It starts when the agent is ready (the frames buffered before that are
  sent at once; they are the call's head, not its clock) and counts the
  frames passed on since: ``sent``. Call time gives how many are due:
  ``due = elapsed // 20 ms``.
* ``fills(now)``: while ``sent`` lags ``due`` by more than ``slack`` frames
  (the network's own jitter), the gap is filled up to ``due - slack``: the
  first frames repeat the last one fading out (waveform repetition, what
  G.711 Appendix I does for a short loss), then silence.
* ``admit(frame)``: a frame from the network goes on unless the stream is
  already ahead of the clock: by more than ``soft_lead`` frames a quiet frame
  is dropped (drift and bursts absorbed in silence), by more than
  ``hard_lead`` any frame is (audio that arrives after its slot was filled
  must not keep the agent behind the caller for the rest of the call).

Sans-I/O: time is passed in; the bridge asks on the worker's 20 ms pacer
tick and sends what it is given.
"""

from __future__ import annotations

import audioop
from dataclasses import dataclass

from telephony_edge.audio.frames import FRAME_MS, SILENCE_FRAME

FRAME_S = FRAME_MS / 1000
#: Gains of the frames that repeat the last one before silence takes over.
CONCEALMENT_FADE = (0.5, 0.25)
#: Below this RMS a frame is quiet enough to drop to absorb drift.
QUIET_RMS = 200


@dataclass(slots=True)
class CallerClockStats:
    """What the clock did, for the end-of-call media report and metrics."""

    frames: int = 0
    concealed: int = 0
    silence: int = 0
    dropped: int = 0


class CallerClock:
    """Keeps caller audio toward the agent at one frame per 20 ms of call time."""

    def __init__(self, *, slack: int = 3, soft_lead: int = 5, hard_lead: int = 25) -> None:
        self.slack = slack
        self.soft_lead = soft_lead
        self.hard_lead = hard_lead
        self.stats = CallerClockStats()
        self._start: float | None = None
        self._sent = 0
        self._last = SILENCE_FRAME
        self._fade = 0  # how many concealment frames of the current gap are spent

    @property
    def started(self) -> bool:
        return self._start is not None

    def start(self, now: float) -> None:
        self._start = now
        self._sent = 0

    def _due(self, now: float) -> int:
        assert self._start is not None
        return int((now - self._start) / FRAME_S + 1e-6)  # 29 * 0.02 / 0.02 is 28.999…

    def admit(self, frame: bytes, now: float) -> bool:
        """Whether a frame from the network goes to the agent (False: dropped, counted)."""
        if self._start is not None:
            lead = self._sent - self._due(now)
            if lead >= self.hard_lead or (
                lead >= self.soft_lead and audioop.rms(frame, 2) < QUIET_RMS
            ):
                self.stats.dropped += 1
                return False
        self._sent += 1
        self._last = frame
        self._fade = 0
        self.stats.frames += 1
        return True

    def behind(self, now: float) -> bool:
        """Whether :meth:`fills` has frames to give (cheap: asked every tick)."""
        return self._start is not None and self._due(now) - self._sent > self.slack

    def fills(self, now: float) -> list[bytes]:
        """The frames that bring the stream back to ``slack`` behind the clock."""
        if self._start is None:
            return []
        missing = self._due(now) - self.slack - self._sent
        out: list[bytes] = []
        for _ in range(max(0, missing)):
            if self._fade < len(CONCEALMENT_FADE):
                out.append(audioop.mul(self._last, 2, CONCEALMENT_FADE[self._fade]))
                self._fade += 1
                self.stats.concealed += 1
            else:
                out.append(SILENCE_FRAME)
                self.stats.silence += 1
        self._sent += len(out)
        return out
