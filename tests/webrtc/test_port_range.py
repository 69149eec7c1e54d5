"""Media on a configured UDP port range (``webrtc.media_port_min``/``max``)."""

from __future__ import annotations

import random
import socket
from collections.abc import Callable
from typing import Any

from aiortc import RTCSessionDescription

from telephony_edge.webrtc.ice import connections
from telephony_edge.webrtc.leg import WebRtcLeg
from telephony_edge.webrtc.ports import PortRange, bind_in_range
from telephony_edge.webrtc.provider import WEBRTC_PEERS
from tests.conftest import Edge, Receiver, wait_for
from tests.webrtc.test_offer import Client, post_offer, settings_for


def free_range(size: int) -> tuple[int, int]:
    """``size`` consecutive UDP ports free on 127.0.0.1 right now."""
    for _ in range(200):
        low = random.randrange(30000, 60000 - size)
        socks: list[socket.socket] = []
        try:
            for port in range(low, low + size):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return low, low + size - 1
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise AssertionError("no free port range")


def candidate_ports(sdp: str) -> list[int]:
    return [int(x.split()[5]) for x in sdp.splitlines() if x.startswith("a=candidate:")]


def test_a_range_is_walked_from_a_random_port_and_a_full_one_gives_none() -> None:
    low, high = free_range(3)
    firsts = {PortRange(low, high).ports()[0] for _ in range(60)}
    assert firsts == {low, low + 1, low + 2}  # not handed out in sequence
    held = [bind_in_range("127.0.0.1", PortRange(low, high)) for _ in range(3)]
    assert all(s is not None for s in held)
    assert sorted(s.getsockname()[1] for s in held if s) == [low, low + 1, low + 2]
    assert bind_in_range("127.0.0.1", PortRange(low, high)) is None
    for sock in held:
        assert sock is not None
        sock.close()


async def test_the_edge_takes_media_on_the_configured_range(
    make_edge: Callable[..., Any], receiver: Receiver
) -> None:
    low, high = free_range(4)
    edge: Edge = await make_edge(
        settings_for(receiver, connect_timeout_s=10, media_port_min=low, media_port_max=high)
    )
    client = Client()
    try:
        status, answer = await post_offer(edge, {"agent_id": "echo", "offer": await client.offer()})
        assert status == 200, answer
        ports = candidate_ports(answer["sdp"])
        assert ports and all(low <= p <= high for p in ports), (ports, low, high)
        await client.pc.setRemoteDescription(
            RTCSessionDescription(sdp=answer["sdp"], type="answer")
        )
        await wait_for(lambda: client.pc.connectionState == "connected", within=10)
        await wait_for(lambda: edge.services.calls.get(answer["call_id"]) is not None)
        bridge = edge.services.calls.get(answer["call_id"])
        assert bridge is not None and isinstance(bridge.leg, WebRtcLeg)
        leg = bridge.leg
        await wait_for(lambda: leg.frames_in > 25 and client.frames > 25, within=10)
        bound = [
            p.transport.get_extra_info("sockname")[1]
            for c in connections(leg.pc)
            for p in c._protocols
        ]
        assert bound and all(low <= p <= high for p in bound), (bound, low, high)
    finally:
        await client.close()
    await wait_for(lambda: receiver.received, within=10)
    assert receiver.received[0]["call_status"] == "user-ended"


async def test_an_offer_with_no_free_port_in_the_range_is_503(
    make_edge: Callable[..., Any], receiver: Receiver
) -> None:
    low, _ = free_range(1)
    edge: Edge = await make_edge(settings_for(receiver, media_port_min=low, media_port_max=low))
    first, second = Client(), Client()
    try:
        status, answer = await post_offer(edge, {"agent_id": "echo", "offer": await first.offer()})
        assert status == 200 and candidate_ports(answer["sdp"]) == [low], answer
        status, body = await post_offer(edge, {"agent_id": "echo", "offer": await second.offer()})
        assert status == 503 and "no free UDP port" in body["error"], body
        assert edge.app[WEBRTC_PEERS].count == 1  # the refused offer left nothing behind
    finally:
        await first.close()
        await second.close()
