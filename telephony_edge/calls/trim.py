"""Giving the memory of ended calls back to the system.

A call's audio passes through the worker as many short-lived ``bytes`` of
640 bytes or so: past CPython's small-object limit (512), so each is one
``malloc``. When calls end, glibc keeps the freed chunks in its heap for
later (only a free run at the heap's top goes back by itself), so the
worker's RSS stayed at its peak after the calls ended (the scorecard's
"given back" column read 0 %). ``malloc_trim(0)`` hands every free page of
the heap back (``MADV_DONTNEED``), interior ones too.

It walks the heap's free lists (about a millisecond for a busy worker's
heap), so it runs once calls have stopped ending for ``quiet_s`` (a batch of
hang-ups is one trim), and at most ``max_delay_s`` after the first ending
that asked for it when calls end without pause. Where there is no glibc
(musl, macOS) it does nothing.

A call's objects that refer to each other (its tasks, a caught exception's
traceback and frames) live past the call until a full collection, which the
interpreter runs rarely: when no call is live any more the trim first runs
``gc.collect()`` (a few milliseconds that no call's audio waits for), so their
memory is free for the trim to hand back.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
from collections.abc import Callable

QUIET_S = 1.0
MAX_DELAY_S = 30.0


def _malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``, or None where the C library has none."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # the process's own C library
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


class MemoryTrimmer:
    """Trims the C heap a little after calls end (one per worker)."""

    def __init__(
        self,
        trim: Callable[[], object] | None = None,
        *,
        quiet_s: float = QUIET_S,
        max_delay_s: float = MAX_DELAY_S,
    ) -> None:
        self._trim = trim
        self._quiet_s = quiet_s
        self._max_delay_s = max_delay_s
        self._handle: asyncio.TimerHandle | None = None
        self._first: float | None = None  # when the earliest untrimmed ending came
        self.live = 0  # calls running on this worker
        self.trims = 0
        self.collections = 0

    def call_started(self) -> None:
        self.live += 1

    def call_ended(self) -> None:
        """A call ended: trim once endings pause (or the wait has gone on too long)."""
        self.live -= 1
        if self._trim is None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._first is None:
            self._first = now
        if self._handle is not None:
            self._handle.cancel()
        at = min(now + self._quiet_s, self._first + self._max_delay_s)
        self._handle = loop.call_at(at, self._run)

    def _run(self) -> None:
        self._handle = self._first = None
        if self.live <= 0:  # nobody's audio waits for the collection
            gc.collect()
            self.collections += 1
        if self._trim is not None:
            self._trim()
            self.trims += 1


#: the worker's trimmer (every call of the process ends through a bridge)
TRIMMER = MemoryTrimmer(_malloc_trim())
