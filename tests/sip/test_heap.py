"""A worker's SIP calls give their memory back once the last one is over (sip/heap.py):
garbage in reference cycles is collected and the allocator's free pages go back, measured
in the process's own RSS; never while a leg is live."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from telephony_edge.calls.leg import LegInfo
from telephony_edge.calls.pacing import Pacer
from telephony_edge.sip.heap import HEAP, HeapTrimmer, rss_kb
from telephony_edge.sip.leg import SipLeg
from telephony_edge.sip.rtp_socket import RtpProtocol


class Node:
    """A call's object in a cycle (as a leg and its socket's protocol are), holding a frame."""

    def __init__(self, n: int) -> None:
        self.frame = bytes(640) + n.to_bytes(4, "little")  # a frame's size: malloc, not pymalloc
        self.me = self


def calls_garbage(mb: int) -> None:
    """``mb`` MB of frames, reachable only through cycles once this returns."""
    nodes = [Node(n) for n in range(mb * 1024 * 1024 // 700)]
    assert nodes


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    for _ in range(int(within / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)


async def test_the_calls_memory_is_given_back_after_the_last_leg_closed() -> None:
    heap = HeapTrimmer(after_s=0.05)
    heap.opened()
    heap.opened()
    calls_garbage(80)
    peak = rss_kb()
    heap.closed()  # one leg is still live: nothing is given back
    await asyncio.sleep(0.2)
    assert heap.trims == 0
    assert rss_kb() > peak - 20_000
    heap.closed()
    await until(lambda: heap.trims == 1)
    assert heap.trims == 1
    assert rss_kb() < peak - 50_000  # most of the 80 MB


async def test_a_leg_that_opens_in_time_keeps_the_memory_for_its_call() -> None:
    heap = HeapTrimmer(after_s=0.1)
    heap.opened()
    heap.closed()
    heap.opened()  # the next call came before the trim
    await asyncio.sleep(0.3)
    assert heap.trims == 0


async def test_every_sip_leg_counts_as_live_until_it_closes() -> None:
    live = HEAP.live
    leg = SipLeg(
        LegInfo("sip", "inbound", "caller", "call_x"),
        "ref-1",
        RtpProtocol(),
        40000,
        _NoControl(),
        pacer=Pacer(),
    )
    assert HEAP.live == live + 1
    await leg.close()
    await leg.close()  # once
    assert HEAP.live == live


class _NoControl:
    def hangup(self, ref: str) -> None: ...

    def release(self, ref: str) -> None: ...
