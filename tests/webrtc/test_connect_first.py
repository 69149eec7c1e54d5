"""The agent session starts only once ICE and DTLS are connected.

The edge talks to a demo agent core of its own (``agent_core.url``) that
counts the WebSocket connections it receives: an answered offer whose caller
never connects must leave that count at zero, and end ``error``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiortc import RTCSessionDescription

from telephony_edge.agent.demo import add_agent_core_routes
from telephony_edge.calls.record import CallState
from telephony_edge.config_loading import load_settings
from telephony_edge.webrtc.provider import WEBRTC_PEERS
from tests.conftest import Edge, Receiver, wait_for
from tests.webrtc.test_offer import API_KEY, LOOPBACK, LOOPBACK_NETWORKS, Client, post_offer

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class CountingCore:
    """The demo agent core on its own socket, counting the sessions the edge opens."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: TestServer | None = None

    @web.middleware
    async def count(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.connections += 1
        return await handler(request)

    async def start(self) -> str:
        app = web.Application(middlewares=[self.count])
        add_agent_core_routes(app, "/core")
        self.server = TestServer(app, host="127.0.0.1", port=0)
        await self.server.start_server()
        return f"ws://127.0.0.1:{self.server.port}/core"


@pytest.fixture
async def core() -> AsyncIterator[CountingCore]:
    counting = CountingCore()
    yield counting
    if counting.server is not None:
        await counting.server.close()


async def edge_with(make_edge: Any, receiver: Receiver, core: CountingCore) -> Edge:
    settings = load_settings(
        None,
        api={"private_key": API_KEY},
        agent_core={"url": await core.start()},
        webhooks={
            "signing_secret": "whsec_webrtc_tests_01",
            "allow_private_targets": True,
            "backoff_base_s": 0.05,
        },
        webrtc={
            "enabled": True,
            "advertised_addresses": LOOPBACK,
            "allowed_peer_networks": LOOPBACK_NETWORKS,
            "connect_timeout_s": 1.5,
        },
        agents={"echo": {"prompt": "You echo.", "session_data_webhook": receiver.url}},
    )
    edge: Edge = await make_edge(settings)
    return edge


async def test_an_offer_that_never_connects_costs_no_agent_session(
    make_edge: Callable[..., Any], receiver: Receiver, core: CountingCore
) -> None:
    edge = await edge_with(make_edge, receiver, core)
    client = Client()
    try:
        status, answer = await post_offer(edge, {"agent_id": "echo", "offer": await client.offer()})
        assert status == 200, answer
        # the caller never takes the answer: no ICE, no DTLS
        await wait_for(lambda: receiver.received, within=10)
    finally:
        await client.close()
    [payload] = receiver.received
    assert payload["call_id"] == answer["call_id"]
    assert payload["call_status"] == "error", payload
    assert "did not connect within 1.5 s" in payload["error_message"], payload
    assert core.connections == 0, "the agent core was reached for a call that never connected"
    assert not edge.services.calls.active
    await wait_for(lambda: edge.app[WEBRTC_PEERS].count == 0)


async def test_a_call_that_connects_reaches_the_agent_core_once_connected(
    make_edge: Callable[..., Any], receiver: Receiver, core: CountingCore
) -> None:
    edge = await edge_with(make_edge, receiver, core)
    client = Client()
    try:
        status, answer = await post_offer(edge, {"agent_id": "echo", "offer": await client.offer()})
        assert status == 200, answer
        await asyncio.sleep(0.5)
        assert core.connections == 0  # answered, not yet connected: no session yet
        await client.pc.setRemoteDescription(
            RTCSessionDescription(sdp=answer["sdp"], type="answer")
        )
        await wait_for(lambda: client.pc.connectionState == "connected", within=10)
        await wait_for(lambda: core.connections == 1, within=5)
        bridge = edge.services.calls.get(answer["call_id"])
        await wait_for(lambda: bridge is not None and bridge.state is CallState.ACTIVE)
    finally:
        await client.close()
    await wait_for(lambda: receiver.received, within=10)
    assert receiver.received[0]["call_status"] == "user-ended"
