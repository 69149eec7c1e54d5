"""A call that outlives its worker, in one process: two edges on one real ``redis-server``.

A test network (``MovableLeg``, a provider marked resumable) stands for Twilio,
so these tests see the core of it: the live state written as the call talks,
the break, the takeover (exactly one worker wins), the agent core told the chat
so far with ``resumed``, one end-of-call webhook with the whole chat and the
move. The Twilio end to end (real workers, SIGKILL, the simulator following
``<Redirect>``) is ``tests/test_failover.py``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import WSMsgType, web

from telephony_edge.calls import migration
from telephony_edge.calls.bridge import CallOver
from telephony_edge.calls.leg import LegEnded
from telephony_edge.calls.record import CallRecord, CallState, CallStatus
from telephony_edge.calls.refusals import CallRejected
from tests.conftest import AgentCoreServer, Edge, Receiver, TestLeg, edge_settings, wait_for

LIVE_INTERVAL_S = 0.1


@dataclass
class MovableLeg(TestLeg):
    """A test leg whose network can take the call to another worker."""

    __test__ = False
    resumable = True
    handed_off: bool = False

    async def hand_off(self) -> None:
        self.handed_off = True

    def network_state(self) -> dict[str, Any]:
        return {"leg": "test"}


class ResumableNetwork:
    """The call service's view of the test network: it brings calls back to the edge."""

    network_amd = False
    resumable = True

    def final_status(self, provider_status: str) -> None:
        return None

    async def hangup(self, record: CallRecord) -> None:
        raise AssertionError("a live call is hung up by its leg")

    async def transfer(self, record: CallRecord, destination: str) -> None:
        raise AssertionError("not transferred here")


class TalkingCore(AgentCoreServer):
    """Answers ``onready``; on a new call says a line and hears one; keeps every initiate."""

    def __init__(self) -> None:
        self.initiates: list[dict[str, Any]] = []
        super().__init__()

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        first = await ws.receive_json(timeout=5)
        self.initiates.append(first["data"])
        await ws.send_json({"method": "onready"})
        if "resumed" not in first["data"].get("session_continuation", {}):
            await ws.send_json({"method": "onresponsetext", "data": {"text": "Hello, Ada."}})
            await ws.send_json({"method": "ontranscript", "data": {"text": "I lost my card."}})
            call = {"name": "block_card", "params": {"card": "visa"}}
            await ws.send_json({"method": "function_call", "data": call})
        else:
            await ws.send_json({"method": "onresponsetext", "data": {"text": "Where were we?"}})
        async for msg in ws:
            if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                break
        return ws


@pytest.fixture
async def core() -> Any:
    started = TalkingCore()
    await started.server.start_server()
    yield started
    await started.server.close()


async def two_edges(
    make_edge: Any, redis_server: Any, core: TalkingCore, hook: str, **calls: Any
) -> Any:
    prefix = f"te-mig-{uuid.uuid4().hex[:12]}:"
    edges = []
    for name in ("a", "b"):
        settings = edge_settings(
            server={"worker_id": f"worker-{name}"},
            agent_core={"url": core.url},
            coordination={"redis_url": redis_server.url, "key_prefix": prefix},
            calls={
                "live_state_interval_s": LIVE_INTERVAL_S,
                "inactivity_timeout_s": 30,
                **calls,
            },
            agents={"echo": {"prompt": "You echo.", "session_data_webhook": hook}},
            webhooks={"signing_secret": "whsec_migration_tests_1", "allow_private_targets": True},
        )
        edge: Edge = await make_edge(settings)
        edge.services.call_service.networks["test"] = ResumableNetwork()
        edges.append(edge)
    return edges


async def live_call(edge: Edge) -> tuple[CallRecord, MovableLeg, asyncio.Task[CallRecord]]:
    service = edge.services.call_service
    record = await service.create(agent_id="echo", provider="test", direction="inbound")
    leg = MovableLeg()
    task = asyncio.create_task(service.run(record, leg))
    await wait_for(lambda: record.state is CallState.ACTIVE)
    return record, leg, task


def lines(chat: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(entry["role"], entry["content"]) for entry in chat]


async def test_a_drained_call_goes_on_on_the_other_worker_with_its_conversation(
    make_edge: Any, redis_server: Any, core: TalkingCore, receiver: Receiver
) -> None:
    a, b = await two_edges(make_edge, redis_server, core, receiver.url)
    record, leg, task = await live_call(a)
    coordinator = b.services.coordinator
    # the live state is written as the call talks (in a beat of live_state_interval_s)
    await wait_for(lambda: len(core.initiates) == 1)
    await asyncio.sleep(5 * LIVE_INTERVAL_S)
    live = await coordinator.get_live(record.call_id)
    assert live is not None and lines(live.chat) == [
        ("assistant", "Hello, Ada."),
        ("user", "I lost my card."),
    ]
    assert live.doc["network"] == {"leg": "test"} and len(live.function_calls) == 1

    # A drains: the call is handed off (live state saved with its marker), nothing ends
    a.services.calls.accepting = False
    assert await a.services.call_service.move_calls() == 1
    moved = await asyncio.wait_for(task, 5)
    assert leg.handed_off and not leg.hung_up and moved.call_status is None
    stored = await coordinator.get_call(record.call_id)
    assert stored is not None and stored.data["state"] == "active"

    # the network's word reaches B: a drain from A, then B takes it over (once)
    brk = await migration.announce_break(coordinator, record.call_id)
    assert brk is not None and (brk.cause, brk.from_worker, brk.generation) == (
        "drain",
        "worker-a",
        0,
    )
    service_b = b.services.call_service
    taken, resumed = await service_b.take_over(record.call_id, brk.generation)
    with pytest.raises(CallOver):  # a second stream for the same break loses
        await service_b.take_over(record.call_id, brk.generation)
    with pytest.raises(CallRejected):  # a draining worker takes nothing over
        await a.services.call_service.take_over(record.call_id, brk.generation + 1)
    new_leg = MovableLeg()
    run = asyncio.create_task(service_b.run(taken, new_leg, resumed))
    await wait_for(lambda: len(core.initiates) == 2)
    continuation = core.initiates[1]["session_continuation"]
    assert continuation["resumed"] is True
    assert lines(continuation["chat"]) == [
        ("assistant", "Hello, Ada."),
        ("user", "I lost my card."),
    ]
    assert continuation["resume"]["cause"] == "drain"
    assert core.initiates[1]["call"]["call_id"] == record.call_id
    assert core.initiates[1]["agent"]["agent_config"] == core.initiates[0]["agent"]["agent_config"]

    await wait_for(lambda: taken.state is CallState.ACTIVE)
    await asyncio.sleep(0.2)
    new_leg.events.put_nowait(LegEnded("completed"))
    final = await asyncio.wait_for(run, 5)
    assert final.call_status is CallStatus.USER_ENDED
    await wait_for(lambda: receiver.received, within=5)
    await asyncio.sleep(0.5)
    [payload] = receiver.received  # one webhook, from the worker that ended the call
    assert lines(json.loads(payload["chat"])) == [
        ("assistant", "Hello, Ada."),
        ("user", "I lost my card."),
        ("assistant", "Where were we?"),
    ]
    assert [fc["name"] for fc in payload["function_calls"]] == ["block_card"]
    [move] = payload["migrations"]
    assert (move["from_worker"], move["to_worker"], move["cause"]) == (
        "worker-a",
        "worker-b",
        "drain",
    )
    assert 0 <= move["gap_ms"] < 5000
    assert await coordinator.get_live(record.call_id) is None  # over: nothing to resume
    assert await migration.announce_break(coordinator, record.call_id) is None


async def test_a_call_that_ended_is_not_resumed_and_a_lost_one_keeps_its_chat(
    make_edge: Any, redis_server: Any, core: TalkingCore, receiver: Receiver
) -> None:
    a, b = await two_edges(
        make_edge, redis_server, core, receiver.url, lease_s=1.0, lease_renew_s=0.25
    )
    record, leg, task = await live_call(a)
    await wait_for(lambda: len(core.initiates) == 1)
    await asyncio.sleep(5 * LIVE_INTERVAL_S)
    leg.events.put_nowait(LegEnded("completed"))  # the caller hung up: a normal end
    await asyncio.wait_for(task, 5)
    coordinator = b.services.coordinator
    assert await migration.announce_break(coordinator, record.call_id) is None
    with pytest.raises(CallOver):
        await b.services.call_service.take_over(record.call_id, 0)
    await wait_for(lambda: receiver.received, within=5)
    assert "migrations" not in receiver.received[0]

    # the stream left A for good and A stops: nobody takes the call over, so the lease
    # reaper ends it, and its webhook carries the chat the live state kept
    lost, leg, task = await live_call(a)
    await wait_for(lambda: len(core.initiates) == 2)
    await asyncio.sleep(5 * LIVE_INTERVAL_S)
    leg.events.put_nowait(LegEnded("completed", moved=True))
    moved = await asyncio.wait_for(task, 5)
    assert moved.call_status is None and not leg.hung_up  # handed off, not ended
    await a.server.close()
    await wait_for(lambda: len(receiver.received) == 2, within=8)
    reaped = receiver.received[1]
    assert reaped["call_id"] == lost.call_id and reaped["call_status"] == "error"
    assert lines(json.loads(reaped["chat"])) == [
        ("assistant", "Hello, Ada."),
        ("user", "I lost my card."),
    ]
