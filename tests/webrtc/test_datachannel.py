"""The call's data channel with a real aiortc client: captions out, ``end`` and ``dtmf`` in.

The client opens a data channel (as the widget does) next to its audio;
the edge (in-process, real sockets, the built-in demo core) sends the
core's ``onresponsetext`` (the greeting) and ``ontranscript`` (once the
caller's speech ends) over it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from aiortc import RTCSessionDescription

from telephony_edge import metrics
from telephony_edge.calls.record import CallState
from telephony_edge.webrtc.channel import MAX_MESSAGE_BYTES
from telephony_edge.webrtc.leg import WebRtcLeg
from telephony_edge.webrtc.provider import WEBRTC_PEERS
from tests.conftest import Edge, Receiver, wait_for
from tests.webrtc.test_offer import Client, post_offer, settings_for


@pytest.fixture
async def edge(make_edge: Callable[..., Any], receiver: Receiver) -> Edge:
    result: Edge = await make_edge(settings_for(receiver, connect_timeout_s=10))
    return result


async def connect(edge: Edge, client: Client) -> WebRtcLeg:
    status, answer = await post_offer(edge, {"agent_id": "echo", "offer": await client.offer()})
    assert status == 200, answer
    await client.pc.setRemoteDescription(
        RTCSessionDescription(**{k: answer[k] for k in ("sdp", "type")})
    )
    await wait_for(lambda: client.events.readyState == "open", within=10)
    bridge = edge.services.calls.get(answer["call_id"])
    assert bridge is not None and isinstance(bridge.leg, WebRtcLeg)
    return bridge.leg


def bad_input() -> float:
    value: float = metrics.BAD_INPUT.labels(source="webrtc-datachannel")._value.get()
    return value


async def test_captions_arrive_garbage_is_skipped_and_end_hangs_up(
    edge: Edge, receiver: Receiver
) -> None:
    client = Client(events=True)
    try:
        leg = await connect(edge, client)
        # the greeting's text, then what the core heard once the speech ended
        await wait_for(lambda: any(m["type"] == "transcript" for m in client.messages), 20)
        assert {"type": "response_text", "text": "Hi", "final": True} in client.messages
        [heard] = [m for m in client.messages if m["type"] == "transcript"]
        assert heard["text"].startswith("[caller spoke ") and heard["final"] is True

        before = bad_input()
        garbage: list[str | bytes] = [
            "not json",
            b"\x00\x01binary",
            "[1, 2]",
            '{"type": "launch"}',
            '{"type": "dtmf", "digit": "55"}',
            json.dumps({"type": "end", "pad": "x" * MAX_MESSAGE_BYTES}),
        ]
        for message in garbage:
            client.events.send(message)
        await wait_for(lambda: leg.malformed == len(garbage), within=5)
        assert bad_input() - before == len(garbage)
        bridge = edge.services.calls.get(leg.call_id)
        assert bridge is not None and bridge.record.state is CallState.ACTIVE

        client.events.send(json.dumps({"type": "end"}))
        await wait_for(lambda: receiver.received, within=10)  # while the client stays
    finally:
        await client.close()
    [payload] = receiver.received
    assert payload["call_id"] == leg.call_id
    assert payload["call_status"] == "user-ended", payload
    await wait_for(lambda: edge.app[WEBRTC_PEERS].count == 0)


async def test_a_dtmf_key_from_the_page_reaches_the_agent(edge: Edge, receiver: Receiver) -> None:
    """The demo core ends the call on DTMF 9 (``end_call``, reason ``dtmf 9``)."""
    client = Client(events=True)
    try:
        leg = await connect(edge, client)
        client.events.send(json.dumps({"type": "dtmf", "digit": "9"}))
        await wait_for(lambda: receiver.received, within=25)
    finally:
        await client.close()
    [payload] = receiver.received
    assert payload["call_id"] == leg.call_id
    assert payload["call_status"] == "agent-ended", payload
    assert leg.malformed == 0
