"""A call that ends while Redis is away is recorded and reported once Redis is back."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError

from telephony_edge.calls.leg import LegEnded
from telephony_edge.calls.record import CallState, CallStatus
from telephony_edge.coord import Document
from tests.calls.test_bridge import start_call
from tests.calls.test_service import CrmServer, crm_settings
from tests.conftest import Edge, TestLeg, free_port, wait_for
from tests.coord.redis_servers import redis_server


async def read_after_restart(edge: Edge, call_id: str) -> Document | None:
    """The stored record; a pooled connection the restart closed fails once, then reconnects."""
    for _ in range(3):
        try:
            return await edge.services.coordinator.get_call(call_id)
        except RedisConnectionError:
            continue
    raise AssertionError("Redis did not answer after its restart")


async def test_a_call_ending_during_an_outage_is_reported_once_it_is_over(
    make_edge: Any,
) -> None:
    # persisted, so the restarted server still has the live call's record
    with redis_server("--appendonly", "yes", "--appendfsync", "always") as redis:
        crm = CrmServer()
        await crm.server.start_server()
        try:
            coordination = {"redis_url": redis.url, "key_prefix": f"defer{free_port()}:"}
            edge: Edge = await make_edge(crm_settings(crm, coordination=coordination))
            leg = TestLeg()
            record, task = await start_call(edge, leg)
            await wait_for(lambda: record.state is CallState.ACTIVE)

            redis.kill()
            leg.events.put_nowait(LegEnded("completed"))  # the caller hangs up meanwhile
            final = await asyncio.wait_for(task, 10)
            assert final.call_status is CallStatus.USER_ENDED and leg.closed
            await asyncio.sleep(1.0)
            assert crm.posts == []  # nowhere to queue it yet

            redis.start()
            await wait_for(lambda: len(crm.posts) == 1, within=15)
            payload = json.loads(crm.posts[0][1])
            assert (payload["call_id"], payload["call_status"]) == (record.call_id, "user-ended")
            stored = await read_after_restart(edge, record.call_id)
            assert stored is not None
            assert (stored.data["state"], stored.data["call_status"]) == ("ended", "user-ended")
            await asyncio.sleep(2.0)  # no second report, not even from the lost-worker reaper
            assert len(crm.posts) == 1
        finally:
            await crm.server.close()
