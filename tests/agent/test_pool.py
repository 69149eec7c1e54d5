"""Agent-core pools: the circuit breaker on an injected clock, ordering, and real failover."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import REGISTRY

from telephony_edge.agent.demo import add_agent_core_routes
from telephony_edge.agent.link import AgentLink
from telephony_edge.agent.pool import AgentCorePool, Breaker, PoolChoice
from telephony_edge.calls.leg import LegEnded
from telephony_edge.calls.record import CallState, CallStatus
from tests.calls.test_bridge import start_call
from tests.conftest import Edge, TestLeg, edge_settings, free_port, wait_for


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_n_failures_then_half_open_allows_one_try() -> None:
    breaker = Breaker(max_failures=3, bench_s=10)
    for _ in range(2):
        breaker.failed(0.0)
    assert breaker.state(0.0) == "closed" and breaker.available(0.0)
    breaker.failed(1.0)
    assert breaker.state(1.0) == "open" and not breaker.available(10.9)
    assert breaker.state(11.0) == "half-open" and breaker.available(11.0)
    breaker.attempt(11.0)
    assert not breaker.available(11.0)  # one probe at a time
    breaker.failed(11.5)  # the probe failed: benched again at once
    assert breaker.state(12.0) == "open" and breaker.state(21.5) == "half-open"
    breaker.attempt(21.5)
    breaker.succeeded()
    assert breaker.state(21.6) == "closed" and breaker.failures == 0


def test_a_success_resets_the_count_of_consecutive_failures() -> None:
    breaker = Breaker(max_failures=2, bench_s=5)
    breaker.failed(0.0)
    breaker.succeeded()
    breaker.failed(1.0)
    assert breaker.state(1.0) == "closed"


def test_least_loaded_first_benched_last_and_back_after_the_bench() -> None:
    clock = Clock()
    pool = AgentCorePool.from_regions(
        {"us": ["ws://a", "ws://b", "ws://c"]}, max_failures=2, bench_s=30, clock=clock
    )
    pool.attempt("ws://a")
    pool.succeeded("ws://a")  # one call on a
    assert pool.candidates("us")[:2] == ["ws://b", "ws://c"]
    for _ in range(2):
        pool.attempt("ws://b")
        pool.failed("ws://b")
    assert pool.state("ws://b") == "open"
    assert pool.candidates("us") == ["ws://c", "ws://a", "ws://b"]  # benched: last resort
    clock.now += 30
    assert pool.state("ws://b") == "half-open"
    assert pool.candidates("us")[0] == "ws://b"  # unloaded and allowed one try
    pool.attempt("ws://b")
    assert pool.candidates("us")[-1] == "ws://b"  # its probe is under way
    pool.released("ws://a")
    pool.succeeded("ws://b")
    assert pool.state("ws://b") == "closed"


def test_self_registered_cores_join_with_their_reported_load_and_leave() -> None:
    pool = AgentCorePool.from_regions({"us": ["ws://conf"]})
    pool.attempt("ws://conf")  # one local call
    pool.update_registered(
        {
            "agent-core:ws://idle": {"url": "ws://idle", "region": "us", "load": 0},
            "agent-core:ws://busy": {"url": "ws://busy", "region": "us", "load": 5},
            "agent-core:ws://full": {"url": "ws://full", "region": "us", "load": 2, "capacity": 2},
            "worker-1": {"public_url": "http://w1"},
        }
    )
    assert pool.candidates("us") == ["ws://idle", "ws://conf", "ws://busy", "ws://full"]
    pool.update_registered({})
    assert pool.candidates("us") == ["ws://conf"]


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_refusing_core_is_skipped_every_call_connects_and_it_is_benched(
    make_edge: Any,
) -> None:
    core = web.Application()
    add_agent_core_routes(core, path="/core")
    server = TestServer(core, host="127.0.0.1", port=0)
    await server.start_server()
    bad = f"ws://127.0.0.1:{free_port()}/core"  # nothing listens there: refused at once
    good = str(server.make_url("/core")).replace("http://", "ws://")
    try:
        settings = edge_settings(
            regions={"r1": {"public_url": "http://127.0.0.1", "agent_core_urls": [bad, good]}},
            agent_core={"connect_timeout_s": 1, "max_failures": 2, "bench_s": 60},
        )
        edge: Edge = await make_edge(settings)
        failures_before = _metric("telephony_edge_agent_core_endpoint_failures_total", url=bad)
        calls = []
        for _ in range(4):  # one at a time: each starts with equal load on both
            leg = TestLeg()
            record, task = await start_call(edge, leg, region="r1")
            await wait_for(lambda r=record: r.state is CallState.ACTIVE, 5)
            calls.append((leg, task))
        pool = edge.services.call_service.pool
        assert pool.state(bad) == "open"
        assert _metric("telephony_edge_agent_core_endpoint_up", url=bad) == 0
        assert _metric("telephony_edge_agent_core_endpoint_up", url=good) == 1
        # two failures benched it; the calls after that went straight to the good one
        assert _metric("telephony_edge_agent_core_endpoint_failures_total", url=bad) == (
            failures_before + 2
        )
        for leg, task in calls:
            leg.events.put_nowait(LegEnded("completed"))
            final = await asyncio.wait_for(task, 5)
            assert final.call_status is CallStatus.USER_ENDED
        assert pool.candidates("r1") == [good, bad]
    finally:
        await server.close()


async def test_a_self_registered_core_serves_its_region(make_edge: Any) -> None:
    core = web.Application()
    add_agent_core_routes(core, path="/core")
    server = TestServer(core, host="127.0.0.1", port=0)
    await server.start_server()
    url = str(server.make_url("/core")).replace("http://", "ws://")
    key = "private-api-key-for-pool-tests"
    try:
        settings = edge_settings(
            api={"private_key": key},
            regions={"r2": {"public_url": "http://127.0.0.1"}},
            agent_core={"url": f"ws://127.0.0.1:{free_port()}/nothing"},  # never used for r2
        )
        edge: Edge = await make_edge(settings)
        auth = {"Authorization": f"Bearer {key}"}
        body = {"url": url, "region": "r2", "load": 1, "capacity": 10}
        async with aiohttp.ClientSession() as session:
            endpoint = edge.url("/agent-cores/heartbeat")
            async with session.post(endpoint, json=body) as resp:
                assert resp.status == 401
            async with session.post(endpoint, json={**body, "region": "mars"}, headers=auth) as r:
                assert r.status == 400
            async with session.post(endpoint, json=body, headers=auth) as resp:
                assert resp.status == 200
        service = edge.services.call_service
        # what each worker's heartbeat loop does every few seconds
        service.pool.update_registered(await service.coordinator.live_workers())
        assert service.pool.candidates("r2") == [url]
        leg = TestLeg()
        record, task = await start_call(edge, leg, region="r2")
        await wait_for(lambda: record.state is CallState.ACTIVE, 5)
        leg.events.put_nowait(LegEnded("completed"))
        assert (await asyncio.wait_for(task, 5)).call_status is CallStatus.USER_ENDED
    finally:
        await server.close()


async def test_a_connect_cancelled_by_the_calls_end_leaves_no_load_and_no_stuck_probe() -> None:
    """A call that ends while its link is connecting (a core that accepts TCP and never
    answers the handshake) must give back the load it counted, and a half-open probe must
    not stay taken (before: the endpoint looked busy for ever and was never probed again,
    and the endpoint-down alert fired for a core that was fine)."""
    hung: list[asyncio.StreamWriter] = []

    async def accept_and_hang(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hung.append(writer)

    server = await asyncio.start_server(accept_and_hang, "127.0.0.1", 0)
    url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/core"
    clock = Clock()
    pool = AgentCorePool.from_regions({"r": [url]}, max_failures=1, bench_s=10, clock=clock)
    [endpoint] = pool._regions["r"].values()
    pool.failed(url)  # benched …
    clock.now += 11  # … and now half-open: one probe may try
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(2):  # the second finds the probe free again
                assert endpoint.breaker.available(clock())  # the probe is free
                link = AgentLink(session, url, endpoints=PoolChoice(pool, [url]))
                task = asyncio.create_task(link.open({}))
                await wait_for(lambda: endpoint.calls == 1, 5)
                assert not endpoint.breaker.available(clock())  # this call's probe
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                assert endpoint.calls == 0 and pool.state(url) == "half-open"
    finally:
        for writer in hung:
            writer.close()
        server.close()
