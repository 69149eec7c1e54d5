"""Offers that never connect give their memory back (issue 18).

A public page can post offers that never connect: each costs a peer connection, its
ICE agent, DTLS state, codecs and sockets until ``webrtc.connect_timeout_s``. After
many of them have timed out none of those objects may be alive, and what the media
stack (aiortc, aioice, PyAV, the edge's WebRTC code) allocated for them must be back.
The call records (ended, kept for their TTL) and the test's own webhook receiver are
not the media stack's and are left out of the count.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import Callable
from typing import Any

from aioice import Connection
from aiortc import RTCDtlsTransport, RTCPeerConnection

from telephony_edge.webrtc.leg import WebRtcLeg
from telephony_edge.webrtc.provider import WEBRTC_PEERS
from tests.conftest import Edge, Receiver, wait_for
from tests.webrtc.test_offer import Client, post_offer, settings_for

OFFERS = 40
KINDS = (RTCPeerConnection, RTCDtlsTransport, Connection, WebRtcLeg)
MEDIA_STACK = [
    tracemalloc.Filter(True, pattern)
    for pattern in ("*/aiortc/*", "*/aioice/*", "*/av/*", "*/pylibsrtp/*", "*/webrtc/*")
]


def alive() -> dict[str, int]:
    gc.collect()
    objects = gc.get_objects()
    return {kind.__name__: sum(isinstance(o, kind) for o in objects) for kind in KINDS}


def media_bytes() -> int:
    snapshot = tracemalloc.take_snapshot().filter_traces(MEDIA_STACK)
    return sum(stat.size for stat in snapshot.statistics("filename"))


async def test_many_offers_that_never_connect_leave_nothing_behind(
    make_edge: Callable[..., Any], receiver: Receiver
) -> None:
    edge: Edge = await make_edge(settings_for(receiver, connect_timeout_s=1))
    client = Client()  # one offer, posted many times: the edge answers each afresh
    offer = await client.offer()
    await client.close()
    before = alive()
    tracemalloc.start(8)
    try:
        baseline = media_bytes()
        for _ in range(OFFERS):
            status, answer = await post_offer(edge, {"agent_id": "echo", "offer": offer})
            assert status == 200, answer
        while_open = media_bytes() - baseline
        await wait_for(lambda: len(receiver.received) == OFFERS, within=30)
        await wait_for(lambda: edge.app[WEBRTC_PEERS].count == 0)
        await asyncio.sleep(0.5)  # the closed transports' last callbacks
        gc.collect()
        left = media_bytes() - baseline
    finally:
        tracemalloc.stop()
    assert alive() == before
    assert all(p["call_status"] == "error" for p in receiver.received)
    print(f"{OFFERS} unconnected offers: the media stack held {while_open / 1e6:.2f} MB, "
          f"{left / 1e3:.0f} kB after")  # fmt: skip
    assert while_open > 0 and left < 0.05 * while_open
