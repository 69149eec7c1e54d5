"""Session continuation: a call with ``session_id`` gets the earlier call's session in ``initiate``.

A tiny recording agent core stands in for a real one, so the test sees
exactly what a core receives.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import WSMsgType, web

from telephony_edge.calls.leg import LegEnded
from telephony_edge.calls.record import CallState, CallStatus
from tests.calls.test_bridge import start_call
from tests.conftest import AgentCoreServer, Edge, Receiver, TestLeg, edge_settings, wait_for


class RecordingCore(AgentCoreServer):
    """Answers ``onready``, says one line and hears one, and keeps every ``initiate``."""

    def __init__(self) -> None:
        self.initiates: list[dict[str, Any]] = []
        super().__init__()

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        first = await ws.receive_json(timeout=5)
        assert first["method"] == "initiate"
        self.initiates.append(first["data"])
        n = len(self.initiates)
        await ws.send_json({"method": "onready"})
        await ws.send_json({"method": "onresponsetext", "data": {"text": f"agent line {n}"}})
        await ws.send_json({"method": "ontranscript", "data": {"text": f"caller line {n}"}})
        async for msg in ws:  # until the edge closes the link
            if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                break
        return ws


async def one_call(edge: Edge, **kwargs: Any) -> Any:
    leg = TestLeg()
    record, task = await start_call(edge, leg, **kwargs)
    await wait_for(lambda: record.state is CallState.ACTIVE)
    await asyncio.sleep(0.2)  # the core's two lines arrive
    leg.events.put_nowait(LegEnded("completed"))
    final = await asyncio.wait_for(task, 5)
    assert final.call_status is CallStatus.USER_ENDED
    return final


def lines(chat: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(entry["role"], entry["content"]) for entry in chat]


async def test_a_second_call_of_the_session_gets_the_first_ones_chat_metadata_and_config(
    make_edge: Any,
) -> None:
    core = RecordingCore()
    await core.server.start_server()
    try:
        edge: Edge = await make_edge(
            edge_settings(agent_core={"url": core.url}, calls={"session_ttl_s": 60})
        )
        first = await one_call(edge, metadata={"userName": "Ada"}, agent_config={"language": "fr"})
        assert "session_continuation" not in core.initiates[0]  # a new session

        second = await one_call(edge, session_id=first.session_id, metadata={"attempt": 2})
        assert second.session_id == first.session_id  # the session goes on under its id
        continuation = core.initiates[1]["session_continuation"]
        assert continuation["session_id"] == first.session_id and continuation["found"]
        assert continuation["metadata"] == {"userName": "Ada"}
        assert continuation["agent_config"]["language"] == "fr"
        assert lines(continuation["chat"]) == [
            ("assistant", "agent line 1"),
            ("user", "caller line 1"),
        ]

        # a third call sees the whole session: both earlier calls, in order
        await one_call(edge, session_id=first.session_id)
        assert lines(core.initiates[2]["session_continuation"]["chat"]) == [
            ("assistant", "agent line 1"),
            ("user", "caller line 1"),
            ("assistant", "agent line 2"),
            ("user", "caller line 2"),
        ]

        # an unknown (or expired) session: the call goes on, told that nothing was found
        await one_call(edge, session_id="sess_unknown")
        assert core.initiates[3]["session_continuation"] == {
            "session_id": "sess_unknown",
            "found": False,
            "metadata": {},
            "chat": [],
            "agent_config": {},
        }
        stored = await edge.services.coordinator.get_session(first.session_id)
        assert stored is not None and json.dumps(stored)  # plain JSON
    finally:
        await core.server.close()


async def test_a_call_that_never_connected_keeps_the_sessions_history(make_edge: Any) -> None:
    core = RecordingCore()
    await core.server.start_server()
    try:
        edge: Edge = await make_edge(
            edge_settings(agent_core={"url": core.url}, calls={"setup_ttl_s": 0.2})
        )
        first = await one_call(edge)
        service = edge.services.call_service
        # the session's next call never gets media (no answer): ended by the setup reaper
        missed = await service.create(
            agent_id="echo", provider="test", direction="outbound", session_id=first.session_id
        )
        await wait_for(lambda: service.manager.get(missed.call_id) is None, within=2)
        await asyncio.sleep(0.6)
        ended = await service.get(missed.call_id)
        assert ended is not None and ended.state is CallState.ENDED
        await one_call(edge, session_id=first.session_id)
        assert lines(core.initiates[1]["session_continuation"]["chat"]) == [
            ("assistant", "agent line 1"),
            ("user", "caller line 1"),
        ]
    finally:
        await core.server.close()


async def test_a_call_with_its_own_agent_config_that_never_connected_still_reports(
    make_edge: Any, receiver: Receiver
) -> None:
    """Before media the record holds only the call's overrides; the stored agent's
    end-of-call webhook still applies (a per-call config changes keys, not the report)."""
    edge: Edge = await make_edge(
        edge_settings(
            calls={"setup_ttl_s": 0.2},
            webhooks={"signing_secret": "whsec_session_tests_01", "allow_private_targets": True},
            agents={"echo": {"prompt": "p", "session_data_webhook": receiver.url}},
        )
    )
    service = edge.services.call_service
    missed = await service.create(
        agent_id="echo",
        provider="test",
        direction="outbound",
        agent_config={"first_message": "Hello from this call"},
    )
    await wait_for(lambda: receiver.received, within=5)
    [payload] = receiver.received
    assert payload["call_id"] == missed.call_id and payload["call_status"] == "error"
