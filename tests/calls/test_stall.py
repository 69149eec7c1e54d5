"""After a stall of the worker, the audio it could not play is dropped, not carried (issue 21).

A worker paused for 300 ms (SIGSTOP, a swap, CPU starvation) cannot play the
audio of that time. Carried, it would keep every caller that much late for the
rest of the call; the pacer restarts its schedule and says how many ticks it
lost (``Pacer.skipped``), and each player drops that much of what it holds.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import aiohttp

from telephony_edge.calls.pacing import Pacer
from telephony_edge.calls.playout import Playout
from tests.conftest import ServeProcess, wait_for
from tests.test_redis_outage import edge_config, frames_over, hang_up, live_call, talker


async def test_the_pacer_says_once_how_many_ticks_a_stall_took() -> None:
    pacer = Pacer()
    seen: list[int] = []

    def tick() -> None:
        seen.append(pacer.skipped)
        if len(seen) == 5:
            time.sleep(0.3)  # the worker stalls

    pacer.subscribe("x", tick)
    await wait_for(lambda: len(seen) >= 12, 5)
    await pacer.close()
    stalls = [n for n in seen if n]
    assert len(stalls) == 1 and 12 <= stalls[0] <= 16, seen  # about 300 ms of 20 ms ticks


async def test_a_stall_while_the_pacer_sleeps_costs_one_late_tick_and_no_burst() -> None:
    """The loop blocked by something else while the clock waits for its next tick: that
    tick is the one that says how many were lost, and the next comes a frame later (before:
    the late tick played, then the restarted schedule ticked at once: two frames together,
    which a caller's buffer keeps as 20 ms more delay for the rest of the call)."""
    loop = asyncio.get_running_loop()
    pacer = Pacer()
    ticks: list[tuple[float, int]] = []
    pacer.subscribe("x", lambda: ticks.append((loop.time(), pacer.skipped)))
    await wait_for(lambda: len(ticks) >= 5, 5)
    time.sleep(0.3)  # noqa: ASYNC251 -- the stall itself: the loop held while the pacer sleeps
    await wait_for(lambda: len(ticks) >= 15, 5)
    await pacer.close()
    [stall] = [i for i, (_, skipped) in enumerate(ticks) if skipped]
    assert 13 <= ticks[stall][1] <= 16, ticks  # about 300 ms of 20 ms ticks
    assert ticks[stall][0] - ticks[stall - 1][0] >= 0.29  # no tick between: it is the late one
    after = [b - a for (a, _), (b, _) in zip(ticks[stall:], ticks[stall + 1 :], strict=False)]
    assert min(after) >= 0.015, after  # then one frame per 20 ms, no two at once


def frames(first: int, count: int) -> bytes:
    return b"".join(bytes([n]) * 640 for n in range(first, first + count))


def test_playout_drops_a_stalls_audio_as_it_comes_for_a_second_then_no_more() -> None:
    playout = Playout()
    playout.push(frames(0, 4))
    playout.stalled(10)
    assert playout.drop_stale() == 4  # what was here
    playout.push(frames(4, 10))  # the rest of the stalled time, read after it
    assert playout.drop_stale() == 6
    item = playout.pop()
    assert item is not None and item[0][0] == 10 and not playout.stale
    playout.clear()
    playout.stalled(5)
    for _ in range(50):  # a second with nothing to drop: the debt lapses
        assert playout.drop_stale() == 0
    playout.push(frames(20, 3))  # an utterance after that is not cut
    assert not playout.stale and len(playout) == 3


async def test_a_stalled_worker_drops_the_agent_audio_it_could_not_play(
    serve_process: Any,
) -> None:
    """A serve process stopped for 300 ms under a call whose agent streams without pause:
    it comes back with that audio stale, and drops it (before: carried, the caller heard
    the agent 300 ms late for the rest of the call)."""
    async with talker() as core, aiohttp.ClientSession() as session:
        config = edge_config("", core)
        del config["coordination"]  # one worker: the in-memory coordinator
        edge: ServeProcess = serve_process(config)
        call, caller = await live_call(edge, session)
        assert await frames_over(call, 1.0) >= 40
        before = edge.metric("telephony_edge_frames_dropped_total", reason="stale_after_stall")
        edge.process.send_signal(signal.SIGSTOP)
        await asyncio.sleep(0.3)
        edge.process.send_signal(signal.SIGCONT)
        await asyncio.sleep(1.0)
        dropped = edge.metric("telephony_edge_frames_dropped_total", reason="stale_after_stall")
        assert dropped - before >= 10  # about 15 frames: the 300 ms the caller could not hear
        assert await frames_over(call, 1.0) >= 40  # and the call goes on
        await hang_up(call, caller)
        edge.assert_healthy()
