"""The agent's keys on WebRTC: over the call's data channel, to a real aiortc peer.

aiortc has no ``RTCDTMFSender`` and negotiates no ``telephone-event``, so the
keys go as data-channel messages, one a key at its time. The agent core is
the test's own: it sends ``send_dtmf`` once the page pressed ``*`` (so the
page's channel is open by then).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiortc import RTCSessionDescription

from telephony_edge.config_loading import load_settings
from tests.conftest import Edge, Receiver, wait_for
from tests.dtmf_core import DtmfCore
from tests.webrtc.test_datachannel import connect
from tests.webrtc.test_offer import Client, post_offer, settings_for


async def edge_with(make_edge: Callable[..., Any], receiver: Receiver, core: DtmfCore) -> Edge:
    settings = settings_for(receiver, connect_timeout_s=10)
    data = settings.model_dump(mode="json", exclude_none=True)
    data["agent_core"] = {"url": core.url}
    edge: Edge = await make_edge(load_settings(None, **data))
    return edge


async def test_the_agents_keys_reach_the_page_over_the_data_channel(
    make_edge: Callable[..., Any], receiver: Receiver
) -> None:
    core = await DtmfCore([{"digits": "5w#", "duration_ms": 80}], trigger="*").start()
    edge = await edge_with(make_edge, receiver, core)
    client = Client(events=True)
    try:
        leg = await connect(edge, client)
        client.events.send(json.dumps({"type": "dtmf", "digit": "*"}))
        await wait_for(lambda: [m for m in client.messages if m["type"] == "dtmf"], 10)
        await wait_for(lambda: len([m for m in client.messages if m["type"] == "dtmf"]) == 2)
    finally:
        await client.close()
        await core.server.close()
    assert [m for m in client.messages if m["type"] == "dtmf"] == [
        {"type": "dtmf", "digit": "5", "duration_ms": 80},
        {"type": "dtmf", "digit": "#", "duration_ms": 80},
    ]
    assert core.errors == {} and core.keys[leg.call_id] == ["*"]


async def test_without_a_data_channel_the_core_is_told(
    make_edge: Callable[..., Any], receiver: Receiver
) -> None:
    core = await DtmfCore([{"digits": "1"}], delay_s=0.5).start()
    edge = await edge_with(make_edge, receiver, core)
    client = Client()  # audio only: no data channel
    try:
        status, answer = await post_offer(edge, {"agent_id": "echo", "offer": await client.offer()})
        assert status == 200, answer
        await client.pc.setRemoteDescription(
            RTCSessionDescription(**{k: answer[k] for k in ("sdp", "type")})
        )
        await wait_for(lambda: core.errors[answer["call_id"]], 15)
    finally:
        await client.close()
        await core.server.close()
    assert core.errors[answer["call_id"]] == [
        {
            "request": "send_dtmf",
            "message": "send_dtmf failed: the caller's page has no open data channel",
        }
    ]
