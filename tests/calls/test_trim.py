"""The worker gives the memory of ended calls back to the system (issue 21)."""

from __future__ import annotations

import asyncio

from telephony_edge.calls import trim


def rss_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_heap_given_back_once_calls_stop_ending() -> None:
    """40 MB of frame-sized bytes freed with every 16th kept (what calls leave behind:
    glibc keeps such a heap), then calls end: a second after the last ending the heap's
    free pages are back with the system, once for the whole batch of endings."""
    trimmer = trim.MemoryTrimmer(trim._malloc_trim(), quiet_s=0.2)
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


async def test_endings_without_pause_still_trim() -> None:
    """Calls ending without a pause for longer than max_delay_s trim all the same."""
    trimmer = trim.MemoryTrimmer(trim._malloc_trim(), quiet_s=0.2, max_delay_s=0.5)
    for _ in range(10):
        trimmer.call_ended()
        await asyncio.sleep(0.1)
    assert trimmer.trims >= 1
