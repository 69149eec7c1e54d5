"""One call's agent audio on its way to the caller, at real time.

The bridge (:mod:`telephony_edge.calls.bridge`) pushes what the agent core
sends into a :class:`~telephony_edge.calls.playout.Playout`; this takes it out
one 20 ms frame at a time: pushed by the worker's
:class:`~telephony_edge.calls.pacing.Pacer` into a PUSHED leg (after a lead of
``leg.playout_lead_frames`` at the start of each talkspurt, so the network's
own jitter buffer is primed), or pulled by a PULLED leg's own sender through
:meth:`AgentPlayout.next_frame`. Both take frames from the same place, so
the agent side has one code path.

After a stall of the worker the audio of the stalled time is dropped
(:meth:`~telephony_edge.calls.playout.Playout.stalled`), if the agent was
talking just before it. What the call's machine must hear (the caller heard
the agent: activity; the playout ran dry while the call ends after it; the
network's send failed) goes back through the callbacks.

The pacer ticks every call every 20 ms, talking or not: a tick with nothing
to play returns after a few attribute reads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from telephony_edge import metrics
from telephony_edge.audio.frames import FRAME_MS
from telephony_edge.calls import relay_latency
from telephony_edge.calls.bridge_hooks import AudioTap
from telephony_edge.calls.leg import Clock, Leg
from telephony_edge.calls.machine import CallMachine
from telephony_edge.calls.pacing import Pacer
from telephony_edge.calls.playout import Playout

log = logging.getLogger(__name__)

_A2C = relay_latency.AGENT_TO_CALLER
_STALE = metrics.FRAMES_DROPPED.labels(reason="stale_after_stall")
#: a frame relayed slower than this carries its call's trace id as an exemplar (tracing on)
SLOW_RELAY_S = 0.001
STALL_TALKING_TICKS = 5  # agent audio went out this recently before a stall: it was talking


#: A network's own jitter buffer (a carrier's, a phone's): it plays what arrives this much
#: later (tens of ms), so a hang-up waits it out after the agent's last words too.
NETWORK_JITTER_S = 0.06


class AgentPlayout:
    """Plays one call's agent audio to its leg, a frame per 20 ms."""

    def __init__(
        self,
        leg: Leg,
        pacer: Pacer,
        playout: Playout,
        machine: CallMachine,
        *,
        recorder: AudioTap | None,
        exemplar: Any,
        drained: Callable[[], None],
        failed: Callable[[Exception], None],
    ) -> None:
        """``machine``: the call's, told of the agent's activity; ``drained``: the playout
        ran dry while the call ends after it; ``failed``: the leg's send raised.
        ``exemplar``: the call's trace id for slow frames' relay latency."""
        self.leg = leg
        self.playout = playout
        self._pacer = pacer
        self._machine = machine
        self._recorder = recorder
        self._exemplar = exemplar
        self._drained = drained
        self._failed = failed
        self._talkspurt = False
        self._quiet_ticks = STALL_TALKING_TICKS + 1  # ticks since agent audio last went out
        self.frames = 0  # agent frames handed to the leg, for the live state
        self._last_sent = 0.0  # when a PUSHED leg was last handed agent audio (monotonic)

    def start(self) -> None:
        """Playing starts: the pacer pushes a PUSHED leg, a PULLED one pulls."""
        if self.leg.clock is Clock.PULLED:
            self.leg.attach(self)
        else:
            self._pacer.subscribe(self, self.tick)

    def stop(self) -> None:
        self._pacer.unsubscribe(self)

    def next_frame(self) -> bytes | None:
        """The next agent frame to play (None: silence). PULLED legs call this."""
        item = self.playout.pop()
        if item is None:
            self._talkspurt = False
            if self._machine.ending_after_playout:
                self._drained()
            return None
        self._talkspurt = True
        self.frames += 1
        self._machine.note_activity(time.monotonic())
        frame, cost = item
        _A2C.observe(cost, self._exemplar if cost > SLOW_RELAY_S else None)
        if self._recorder is not None:
            self._recorder.agent(frame)
        return frame

    def tick(self) -> None:
        """The pacer's 20 ms: push this tick's frames (a lead at a talkspurt's start)."""
        playout = self.playout
        skipped = self._pacer.skipped
        if skipped and self._quiet_ticks <= STALL_TALKING_TICKS:
            playout.stalled(skipped)  # the agent was talking: that audio is stale
        if playout.stale:
            _STALE.inc(playout.drop_stale())
        self._quiet_ticks += 1
        if not self._talkspurt and (playout.paused or not playout.frames):  # silence
            if self._machine.ending_after_playout:
                self._drained()
            return
        starting = not self._talkspurt
        leg = self.leg
        for i in range(1 + leg.playout_lead_frames if starting else 1):
            item = playout.pop()
            if item is None:
                self._talkspurt = False
                if self._machine.ending_after_playout:
                    self._drained()
                return
            frame, cost = item
            t0 = time.perf_counter()
            try:
                leg.send_frame(frame, starting and i == 0)
            except Exception as exc:  # the clock serves every call: never let one break it
                log.exception("sending to the network failed")
                self._failed(exc)
                return
            cost += time.perf_counter() - t0
            _A2C.observe(cost, self._exemplar if cost > SLOW_RELAY_S else None)
            if self._recorder is not None:
                self._recorder.agent(frame)
            self.frames += 1
            self._talkspurt = True
            self._quiet_ticks = 0
        self._last_sent = now = time.monotonic()
        self._machine.note_activity(now)

    def network_holds_s(self, now: float) -> float:
        """How long the network still plays agent audio already sent (a PUSHED leg's
        playout lead, the frame under way, the network's own jitter buffer): what a
        hang-up now would cut off."""
        lead_s = (self.leg.playout_lead_frames + 1) * FRAME_MS / 1000
        return max(0.0, self._last_sent + lead_s + NETWORK_JITTER_S - now)

    def clear(self) -> int:
        """Barge-in: drop what is buffered here and at the network; how many frames."""
        dropped = self.playout.clear()
        self._talkspurt = False
        if self.leg.capabilities.clear:
            try:
                self.leg.clear()
            except Exception:
                log.exception("clearing the network's buffer failed")
        return dropped
