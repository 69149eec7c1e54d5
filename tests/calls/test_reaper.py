"""The reapers read what changed (calls created, leases lapsed), never every live call.

Issue 20, item 3: before, each pass of each worker read every live record
(one ``HGETALL`` per call, all decoded on the event loop). Here a pass's
Redis commands are counted (``INFO commandstats`` of the session's private
redis-server) at 10 and at 400 live calls and must be the same; and a lapsed
lease is reaped only once its worker's heartbeat has been absent for
``lease_s`` too. Speed is measured in ``bench/coord_load.py --live-calls``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from telephony_edge.app import create_app
from telephony_edge.calls.record import CallRecord, CallState
from telephony_edge.calls.service import CallService
from telephony_edge.calls.service_core import WORKER_LOST
from telephony_edge.coord.redis import RedisCoordinator
from telephony_edge.services import SERVICES
from tests.conftest import edge_settings

LEASE_S = 0.4


@pytest.fixture
async def service(redis_server: Any) -> AsyncIterator[CallService]:
    """A worker's call service on the session's Redis, its background loops not started."""
    settings = edge_settings(
        coordination={"redis_url": redis_server.url, "key_prefix": f"te-reap-{uuid.uuid4().hex}:"},
        calls={"lease_s": LEASE_S, "lease_renew_s": LEASE_S / 4, "setup_ttl_s": 60},
    )
    services = create_app(settings)[SERVICES]
    yield services.call_service
    await services.coordinator.close()


async def commands(url: str) -> int:
    async with Redis.from_url(url) as client:
        stats = await client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")


async def add_calls(
    coord: Any, n: int, worker: str, *, state: CallState = CallState.ACTIVE, lease: float = 60
) -> list[str]:
    ids = []
    for _ in range(n):
        record = CallRecord(agent_id="echo", provider="twilio", direction="inbound")
        record.state, record.owner = state, worker
        await coord.create_call(record.call_id, record.to_dict())
        if state is not CallState.CREATED:
            assert await coord.claim_owner(record.call_id, worker, ttl=lease)
        ids.append(record.call_id)
    return ids


async def pass_cost(service: CallService, url: str) -> int:
    before = await commands(url)
    assert await service.reap_lost() == 0
    assert await service.reap_unconnected() == 0
    return await commands(url) - before


async def test_a_reaper_pass_costs_the_same_at_10_and_at_400_live_calls(
    service: CallService, redis_server: Any
) -> None:
    coord = service.coordinator
    assert isinstance(coord, RedisCoordinator)
    await coord.heartbeat("w-alive", {}, ttl=60)
    await add_calls(coord, 8, "w-alive")
    await add_calls(coord, 2, "w-alive", state=CallState.CREATED)  # setting up, not old
    await pass_cost(service, redis_server.url)  # scripts loaded
    at_10 = await pass_cost(service, redis_server.url)
    await add_calls(coord, 350, "w-alive")
    await add_calls(coord, 40, "w-alive", state=CallState.CREATED)
    at_400 = await pass_cost(service, redis_server.url)
    assert at_400 == at_10, (at_10, at_400)


async def test_a_dead_worker_s_calls_are_reaped_once_its_heartbeat_is_gone_for_lease_s(
    service: CallService,
) -> None:
    coord = service.coordinator
    await coord.heartbeat("w-alive", {}, ttl=60)
    await coord.heartbeat("w-dead", {}, ttl=60)
    alive = await add_calls(coord, 5, "w-alive")
    dead = await add_calls(coord, 7, "w-dead", lease=0.05)
    await asyncio.sleep(LEASE_S + 0.2)  # the leases lapsed lease_s ago
    assert await service.reap_lost() == 0  # but w-dead still heartbeats: it may re-claim
    await coord.forget_worker("w-dead")
    assert await service.reap_lost() == 0  # absent, but not yet for lease_s
    await asyncio.sleep(LEASE_S + 0.1)
    assert await service.reap_lost() == len(dead)
    for call_id in dead:
        doc = await coord.get_call(call_id)
        assert doc is not None and doc.data["state"] == "ended"
        assert doc.data["error_message"] == WORKER_LOST
    for call_id in alive:
        doc = await coord.get_call(call_id)
        assert doc is not None and doc.data["state"] == "active"
    assert await coord.lapsed_leases(0.0) == ([], None)  # the reaped ones left the index
    assert await service.reap_lost() == 0


async def test_no_reaping_while_the_coordinator_was_away_lately(service: CallService) -> None:
    coord = service.coordinator
    await add_calls(coord, 3, "w-dead", lease=0.05)
    assert await service.reap_lost() == 0  # first sight of w-dead's absence
    service.health.failed("test", OSError("gone"))
    service.health.ok()  # back: live owners get lease_s + lease_renew_s to re-claim
    await asyncio.sleep(LEASE_S + 0.1)
    assert await service.reap_lost() == 0
    await asyncio.sleep(LEASE_S / 4 + 0.05)  # the grace is over; absence counted anew
    assert await service.reap_lost() == 0
    await asyncio.sleep(LEASE_S + 0.1)
    assert await service.reap_lost() == 3
