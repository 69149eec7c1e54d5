"""The memory a worker's SIP calls took, given back to the system once they are over.

Why: a call leaves objects in reference cycles (its tasks and futures, the leg, its
sockets' protocols) that only CPython's cyclic collector frees, and a full collection
comes rarely (when the long-lived objects have grown by a quarter); and glibc keeps
the pages of freed memory mapped. So a worker's RSS stayed at its peak after its calls
ended. Measured with ``bench/sip_load.py`` (100 G.711 calls): 131 MB at the end of the
calls and 10 s later; a full collection and ``malloc_trim(0)`` then brought it to
110 MB, two thirds of what the calls took (the trim alone: a third).

When: :data:`TRIM_AFTER_S` after the worker's last SIP leg closed, if none opened
meanwhile. A full collection stops the loop for tens of milliseconds on a busy worker,
so never while SIP calls are live; calls of other networks in the same worker (rare:
a deployment runs one network per worker) take that one pause.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

TRIM_AFTER_S = 2.0


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (None elsewhere: musl, macOS)."""
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
        return trim
    except (AttributeError, OSError):
        return None


def rss_kb() -> int:
    """The process's resident set (kB; 0 where /proc is not)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class HeapTrimmer:
    """Counts the worker's live SIP legs; gives memory back once none is left."""

    def __init__(self, after_s: float = TRIM_AFTER_S) -> None:
        self.after_s = after_s
        self.live = 0
        self.trims = 0
        self._timer: asyncio.TimerHandle | None = None
        self._trim = _malloc_trim()

    def opened(self) -> None:
        self.live += 1
        self._cancel()

    def closed(self) -> None:
        self.live -= 1
        if self.live == 0:
            self._cancel()
            self._timer = asyncio.get_running_loop().call_later(self.after_s, self.give_back)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def give_back(self) -> None:
        """A full collection, then the allocator's free pages back to the system."""
        self._timer = None
        if self.live:
            return
        before, began = rss_kb(), time.perf_counter()
        gc.collect()
        if self._trim is not None:
            self._trim(0)
        self.trims += 1
        log.info(
            "SIP calls over: memory given back",
            extra={
                "rss_before_kb": before,
                "rss_after_kb": rss_kb(),
                "took_ms": round((time.perf_counter() - began) * 1000, 1),
            },
        )


HEAP = HeapTrimmer()  # the worker's: every SipLeg opens and closes on it
