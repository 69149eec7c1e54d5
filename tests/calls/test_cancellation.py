"""Fault injection: cancel a call's task at many different await points; nothing leaks.

Each run starts a real call (test leg, built-in agent core over a real
WebSocket, prefetch and end-of-call webhooks to a real local server, an
agent concurrency slot) and cancels ``CallService.run`` after a seeded random
number of event-loop steps or a random real delay, so the cancellation lands
anywhere: before the record leaves ``created``, during the prefetch, the
agent link's connect or ``onready``, mid-relay, or during a teardown already
under way. After each run the invariants of a call's end must hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from typing import Any

from telephony_edge.audio.frames import SILENCE_FRAME
from telephony_edge.calls.bridge import CallBridge
from telephony_edge.calls.leg import LegEnded
from telephony_edge.calls.manager import LiveCall
from telephony_edge.calls.record import CallState
from tests.calls.test_bridge import start_call
from tests.calls.test_service import CrmServer, crm_settings
from tests.conftest import Edge, TestLeg, wait_for

RUNS = 200
SEED = 7


def call_tasks(call_id: str) -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if call_id in t.get_name() and not t.done()]


async def test_cancelling_a_call_at_any_point_leaks_nothing(make_edge: Any, speech: bytes) -> None:
    rng = random.Random(SEED)
    crm = CrmServer()
    await crm.server.start_server()
    try:
        limited = {"max_concurrent_calls": 3}
        edge: Edge = await make_edge(crm_settings(crm, agent_extra=limited))
        services = edge.services
        bridges: dict[str, CallBridge] = {}
        add = services.calls.add

        def observe(call: LiveCall) -> None:  # keep a handle on each bridge to inspect it
            if isinstance(call, CallBridge):
                bridges[call.call_id] = call
            add(call)

        services.calls.add = observe  # type: ignore[method-assign]
        call_ids = []
        states_cut = set()
        for run in range(RUNS):
            leg = TestLeg()
            for i in range(0, 640 * 20, 640):  # the caller's first 400 ms are already here
                leg.events.put_nowait(speech[i : i + 640] or SILENCE_FRAME)
            record, task = await start_call(edge, leg)
            call_ids.append(record.call_id)
            if rng.random() < 0.6:
                for _ in range(rng.randint(0, 250)):
                    await asyncio.sleep(0)
            else:
                await asyncio.sleep(rng.uniform(0, 0.15))
            if rng.random() < 0.1:  # sometimes the caller hangs up as the cancel lands
                leg.events.put_nowait(LegEnded("completed"))
            bridge = bridges.get(record.call_id)
            states_cut.add(bridge.state if bridge is not None else None)
            task.cancel()
            if rng.random() < 0.2:  # and sometimes the cancel is repeated mid-teardown
                await asyncio.sleep(0)
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await asyncio.sleep(0)

            where = f"run {run} ({record.call_id})"
            assert record.state is CallState.ENDED, where
            assert record.call_status is not None, where
            assert call_tasks(record.call_id) == [], where
            assert leg.closed, where
            bridge = bridges[record.call_id]
            assert bridge.link.closed, where
            assert services.calls.get(record.call_id) is None, where
            assert await services.coordinator.agent_slots_in_use("echo") == 0, where
            assert await services.coordinator.owner_of(record.call_id) is None, where
            stored = await services.coordinator.get_call(record.call_id)
            assert stored is not None and stored.data["state"] == "ended", where
            assert stored.data["call_status"] == record.call_status, where
        # the cancellations landed in every phase of a call
        assert {CallState.CONNECTING, CallState.ACTIVE} <= states_cut
        assert services.calls.active == 0
        # exactly one end-of-call webhook per call
        await wait_for(lambda: len(crm.posts) >= RUNS, within=30)
        await asyncio.sleep(0.5)
        posted = [json.loads(body)["call_id"] for _, body in crm.posts]
        assert sorted(posted) == sorted(call_ids)
    finally:
        await crm.server.close()
