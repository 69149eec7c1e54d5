"""Redis restarts EMPTY under two live ``telephony-edge serve`` workers: no call is lost.

Production Redis often runs without persistence, and a managed one can lose
its last writes on failover. Each worker still holds its calls in memory, so
an owner whose record vanished writes it again and takes its lease back, and
no worker reaps a call until its owner has had a full lease to do so. What
is asserted: every call keeps its audio for several leases after Redis came
back, and each gets exactly one end-of-call webhook when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from telephony_edge.calls.webhooks import IDEMPOTENCY_HEADER
from telephony_edge.twilio.simulator import parse_twiml
from tests.conftest import ServeProcess, free_port, stop_serve_process, wait_for
from tests.coord.redis_servers import RedisProcess, redis_server, sentinel_topology
from tests.test_redis_outage import (
    coordinator_up,
    edge_config,
    frames_over,
    hang_up,
    live_call,
    talker,
)

CALLS_PER_WORKER = 8
LEASE_S = 3.0


@pytest.fixture(name="private_redis")
def fixture_private_redis() -> Iterator[RedisProcess]:
    with redis_server() as server:
        yield server


@contextlib.asynccontextmanager
async def webhook_receiver() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []

    async def ended(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        received.append({**body, IDEMPOTENCY_HEADER: request.headers.get(IDEMPOTENCY_HEADER)})
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/ended", ended)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield str(server.make_url("/ended")), received
    finally:
        await server.close()


def worker_config(redis_url: str, core: str, prefix: str, hook: str) -> dict[str, Any]:
    config = edge_config(redis_url, core)
    config["coordination"]["key_prefix"] = prefix
    config["calls"].update(lease_s=LEASE_S, lease_renew_s=LEASE_S / 3)
    config["agents"]["demo"]["session_data_webhook"] = hook
    config["webhooks"] = {
        "signing_secret": "whsec_restart_0001",
        "allow_private_targets": True,
        "backoff_base_s": 0.05,
    }
    return config


async def keep_audio_then_end(calls: list[Any], received: list[dict[str, Any]]) -> None:
    """Every call has its audio for three leases and no webhook; then all hang up."""
    for _ in range(3):
        counts = await asyncio.gather(*(frames_over(c, LEASE_S) for c, _ in calls))
        assert all(n >= 40 * LEASE_S for n in counts), counts
    assert not received, [p.get("error_message") for p in received]
    for call, caller in calls:
        await hang_up(call, caller)
    await wait_for(lambda: len(received) >= len(calls), 20)
    await asyncio.sleep(2 * LEASE_S)  # time for a reaper to send a second one


def assert_one_webhook_each(
    calls: list[Any], received: list[dict[str, Any]], workers: list[ServeProcess]
) -> None:
    assert len(received) == len(calls), [p["call_status"] for p in received]
    assert len({p["call_id"] for p in received}) == len(calls)
    assert {p["call_status"] for p in received} == {"user-ended"}, received[0]
    for worker in workers:
        stop_serve_process(worker)
        at = worker.log.find("Traceback")
        assert at < 0, worker.log[at - 1500 : at + 2500]


async def test_redis_restarted_empty_loses_no_call_and_each_gets_one_webhook(
    private_redis: RedisProcess, serve_process: Any
) -> None:
    prefix = f"restart{free_port()}:"
    async with talker() as core, webhook_receiver() as (hook, received):
        workers: list[ServeProcess] = [
            serve_process(worker_config(private_redis.url, core, prefix, hook)) for _ in range(2)
        ]
        async with aiohttp.ClientSession() as session:
            calls = [
                await live_call(worker, session)
                for worker in workers
                for _ in range(CALLS_PER_WORKER)
            ]
            before = await asyncio.gather(*(frames_over(c, LEASE_S) for c, _ in calls))
            assert all(n >= 40 * LEASE_S for n in before), before
            private_redis.kill()
            await asyncio.sleep(0.5)
            private_redis.start()  # same port, EMPTY: no call records, leases or heartbeats
            for worker in workers:
                await wait_for(lambda w=worker: coordinator_up(w), 10)
            await asyncio.sleep(LEASE_S)  # the owners write their calls again
            # a replay of a live call's voice webhook finds that call (its CallSid's mapping
            # came back with its record), not a new call to stream
            for call, _ in (calls[0], calls[-1]):
                answer = parse_twiml(await call.post_webhook())
                assert answer.stream is None and answer.hangup, answer
            # several leases after the restart, every call still has its audio
            await keep_audio_then_end(calls, received)
        assert_one_webhook_each(calls, received, workers)


async def test_a_redis_stall_longer_than_the_lease_ends_no_call(
    private_redis: RedisProcess, serve_process: Any
) -> None:
    """Redis stops answering for two leases (a slow failover, a long fork, DEBUG SLEEP):
    every lease lapses meanwhile. No worker may then reap a call (least of all its own,
    which its renewal takes back), and each call still ends with exactly one webhook."""
    prefix = f"stall{free_port()}:"
    async with talker() as core, webhook_receiver() as (hook, received):
        workers: list[ServeProcess] = [
            serve_process(worker_config(private_redis.url, core, prefix, hook)) for _ in range(2)
        ]
        async with aiohttp.ClientSession() as session:
            calls = [
                await live_call(worker, session)
                for worker in workers
                for _ in range(CALLS_PER_WORKER // 2)
            ]
            redis = private_redis.process
            assert redis is not None
            redis.send_signal(signal.SIGSTOP)
            try:
                await asyncio.sleep(2 * LEASE_S)
            finally:
                redis.send_signal(signal.SIGCONT)
            await keep_audio_then_end(calls, received)
        assert_one_webhook_each(calls, received, workers)


async def test_a_sentinel_failover_slower_than_the_lease_ends_no_call(serve_process: Any) -> None:
    """Sentinel's ``down-after-milliseconds`` (its default is 30 s) is longer than the lease:
    every lease lapses before a replica is promoted. Audio goes on through the failover, no
    worker reaps a call once the new primary serves, and each call gets one webhook."""
    down_after_ms = int(2 * LEASE_S * 1000)
    with sentinel_topology("edge", down_after_ms=down_after_ms) as (primary, _, sentinels):
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in sentinels)
        url = f"redis+sentinel://{hosts}/edge"
        prefix = f"failover{free_port()}:"
        async with talker() as core, webhook_receiver() as (hook, received):
            workers: list[ServeProcess] = [
                serve_process(worker_config(url, core, prefix, hook)) for _ in range(2)
            ]
            async with aiohttp.ClientSession() as session:
                calls = [
                    await live_call(worker, session)
                    for worker in workers
                    for _ in range(CALLS_PER_WORKER // 2)
                ]
                primary.kill()
                during = await asyncio.gather(*(frames_over(c, 2 * LEASE_S) for c, _ in calls))
                assert all(n >= 80 * LEASE_S for n in during), during
                for worker in workers:
                    await wait_for(lambda w=worker: coordinator_up(w), 30)  # promoted
                await keep_audio_then_end(calls, received)
            assert_one_webhook_each(calls, received, workers)
