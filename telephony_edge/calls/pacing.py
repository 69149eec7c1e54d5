"""One real-time clock per worker that plays every call's agent audio.

Agent cores send audio faster than real time; callers must hear it at real
time. Rather than a sleeping task per call (300 calls = 15,000 wake-ups a
second), one task ticks every 20 ms on an absolute schedule and asks each
registered playout for its next frame. A late tick (the loop was busy) is
caught up by ticking again as soon as pending I/O has run, up to
``MAX_CATCH_UP`` frames, so the played duration stays equal to wall time;
beyond that (a stall: the worker paused, swapped, starved of CPU) the
schedule restarts from now rather than bursting, and in that one tick
:attr:`Pacer.skipped` says how many ticks were lost. A subscriber that holds
audio for real time drops that much of it: what should have been heard
during the stall is stale, and carrying it would keep every caller that late
for the rest of the call.

Ticks are synchronous (a leg's send never waits on its network), and each
runs on its own: one that raises is logged and dropped from the clock, and
the calls after it in the same tick are served as usual.

Subscribers ``after_playout`` run in each tick after every other subscriber:
a leg that owes its network a packet every 20 ms (RTP) fills the slot the
bridge's playout left empty in that same tick, whatever order the two
subscribed in.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Callable

from telephony_edge.audio.frames import FRAME_MS

log = logging.getLogger(__name__)

FRAME_S = FRAME_MS / 1000
MAX_CATCH_UP = 5

Tick = Callable[[], None]


class Pacer:
    """Calls every subscriber's ``tick`` once per 20 ms of wall time."""

    def __init__(self, frame_s: float = FRAME_S) -> None:
        self._frame_s = frame_s
        self._subscribers: dict[object, Tick] = {}
        self._after: dict[object, Tick] = {}
        self._task: asyncio.Task[None] | None = None
        self.skipped = 0  # ticks lost to a stall, during the tick that follows it; else 0

    def subscribe(self, key: object, tick: Tick, *, after_playout: bool = False) -> None:
        """``tick`` every 20 ms; ``after_playout``: after the other subscribers of that tick."""
        (self._after if after_playout else self._subscribers)[key] = tick
        if self._task is None or self._task.done():
            # a fresh context: the clock belongs to no call (no call id in its logs)
            self._task = asyncio.create_task(
                self._run(), name="pacer", context=contextvars.Context()
            )

    def unsubscribe(self, key: object) -> None:
        self._subscribers.pop(key, None)
        self._after.pop(key, None)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        ticks = 0
        while self._subscribers or self._after:
            ticks += 1
            due = start + ticks * self._frame_s
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            elif loop.time() - due <= MAX_CATCH_UP * self._frame_s:
                await asyncio.sleep(0)  # catching up: let pending I/O in between the extra ticks
            late = loop.time() - due  # a stall during the sleep shows here too
            if late > MAX_CATCH_UP * self._frame_s:
                # this tick is the stall's first: the slots it spanned are lost, and the
                # schedule restarts here (a late tick and then a restarted one would be two
                # frames at once, a burst the caller's buffer keeps for the rest of the call)
                self.skipped = int(late / self._frame_s)
                start, ticks = loop.time(), 0
            for subscribers in (self._subscribers, self._after):
                for key, tick in list(subscribers.items()):
                    try:
                        tick()
                    except Exception:
                        log.exception("playout tick failed; dropping it from the clock")
                        subscribers.pop(key, None)
            self.skipped = 0
        self._task = None

    async def close(self) -> None:
        self._subscribers.clear()
        self._after.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
