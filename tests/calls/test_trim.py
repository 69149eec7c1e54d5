"""The worker gives the memory of ended calls back to the system (issue 21)."""

from __future__ import annotations

import asyncio
import gc

from telephony_edge.calls import trim


def rss_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


class Frames:
    """A call's frames held in a cycle (as a task and its traceback hold each other)."""

    def __init__(self, count: int) -> None:
        self.frames = [bytes(640) + bytes([i % 256]) for i in range(count)]
        self.me = self


async def test_heap_given_back_once_calls_stop_ending() -> None:
    """40 MB of frame-sized bytes freed with every 16th kept (what calls leave behind:
    glibc keeps such a heap), then five calls end: a moment after the last ending the
    heap's free pages are back with the system, once for the whole batch of endings."""
    trimmer = trim.MemoryTrimmer(trim._malloc_trim(), quiet_s=0.2)
    for _ in range(5):
        trimmer.call_started()
    frames = [bytes(640) + bytes([i % 256]) for i in range(60_000)]
    kept = frames[::16]
    del frames
    before = rss_kb()
    for _ in range(5):
        trimmer.call_ended()
        await asyncio.sleep(0.05)
    assert trimmer.trims == 0  # endings still coming
    await asyncio.sleep(0.3)
    assert trimmer.trims == 1
    assert before - rss_kb() > 10_000, (before, rss_kb())
    assert len(kept) == 3750


async def test_cycles_collected_when_no_call_is_live() -> None:
    """An ended call's frames held in a cycle are collected and handed back once no call
    is live; while one still is, no full collection runs (its audio would wait for it)."""
    gc.collect()
    gc.disable()  # the interpreter's own young collection would free the cycle first
    try:
        trimmer = trim.MemoryTrimmer(trim._malloc_trim(), quiet_s=0.1)
        trimmer.call_started()
        trimmer.call_started()
        Frames(60_000)  # garbage, but in a cycle: only a collection frees it
        trimmer.call_ended()
        await asyncio.sleep(0.2)
        assert (trimmer.trims, trimmer.collections) == (1, 0)  # the other call is live
        before = rss_kb()
        trimmer.call_ended()
        await asyncio.sleep(0.2)
        assert (trimmer.trims, trimmer.collections) == (2, 1)
        assert before - rss_kb() > 20_000, (before, rss_kb())
    finally:
        gc.enable()


async def test_endings_without_pause_still_trim() -> None:
    """Calls ending without a pause for longer than max_delay_s trim all the same."""
    trimmer = trim.MemoryTrimmer(trim._malloc_trim(), quiet_s=0.2, max_delay_s=0.5)
    for _ in range(10):
        trimmer.call_started()
        trimmer.call_ended()
        await asyncio.sleep(0.1)
    assert trimmer.trims >= 1
