"""Two real ``telephony-edge serve`` workers sharing one private Redis.

Each test starts workers A and B (``server.worker_id`` ``worker-a`` / ``worker-b``) on
the session's ``redis-server`` with a fresh ``coordination.key_prefix``, so the tests
share nothing. Twilio's REST API (the strict stand-in) and the end-of-call receiver
are the ones of ``test_lifecycle_serve`` (a thread with its own loop); Twilio itself
is played by the test. Leases are short (``calls.lease_s`` 1.5 s, renewed every
0.25 s) so a killed worker's calls are reaped in about three seconds (both its
leases and its heartbeat gone for ``lease_s``).
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from telephony_edge.calls.service_core import WORKER_LOST
from telephony_edge.coord.redis import RedisCoordinator
from telephony_edge.twilio.simulator import SimulatedCall, StreamInstruction
from tests import test_lifecycle_serve as lifecycle
from tests.conftest import ServeProcess, start_serve_process, stop_serve_process, wait_for
from tests.test_lifecycle_serve import AUTH, Outside, get_call
from tests.twilio.harness import CALLER, LOCAL_NUMBER, answered, serve_call

outside = lifecycle.outside  # the module-scoped Twilio REST stand-in and webhook receiver

LEASE_S = 1.5
LEASE_RENEW_S = 0.25


class Workers:
    """Workers A and B on one Redis under one key prefix; both stopped (or killed) at the end."""

    def __init__(self, redis_url: str, directory: Path, **agent: Any) -> None:
        self.redis_url = redis_url
        self.prefix = f"te-mw-{uuid.uuid4().hex[:12]}:"
        config = lifecycle.lifecycle_config()
        config["coordination"] = {"redis_url": redis_url, "key_prefix": self.prefix}
        config["calls"] = {**config["calls"], "lease_s": LEASE_S, "lease_renew_s": LEASE_RENEW_S}
        config["agents"]["demo"].update(agent)
        self.a = start_serve_process(
            {**config, "server": {**config["server"], "worker_id": "worker-a"}}, directory / "a"
        )
        self.b = start_serve_process(
            {**config, "server": {**config["server"], "worker_id": "worker-b"}}, directory / "b"
        )

    def stop(self) -> None:
        for edge in (self.a, self.b):
            stop_serve_process(edge)

    async def slots_in_use(self, agent_id: str = "demo") -> int:
        coord = RedisCoordinator.from_url(self.redis_url, key_prefix=self.prefix)
        try:
            return await coord.agent_slots_in_use(agent_id)
        finally:
            await coord.close()


@pytest.fixture
def workers(redis_server: Any, outside: Outside, tmp_path: Path) -> Iterator[Workers]:
    started = Workers(redis_server.url, tmp_path)
    yield started
    started.stop()


@pytest.fixture(name="session")
async def fixture_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def on(worker: ServeProcess, stream: StreamInstruction) -> StreamInstruction:
    """The same stream, opened on ``worker`` (as a load balancer may send it)."""
    parts = urlsplit(stream.url)
    return StreamInstruction(f"{worker.ws_url}{parts.path}?{parts.query}", stream.parameters)


async def call_streaming_on(
    webhook_on: ServeProcess,
    stream_on: ServeProcess,
    outside: Outside,
    session: aiohttp.ClientSession,
    *,
    expect_audio: bool = True,
) -> tuple[SimulatedCall, str, asyncio.Task[None]]:
    """A Twilio call whose voice webhook reaches one worker and whose stream reaches another."""
    call = serve_call(webhook_on.base_url, session)
    outside.fake.add_call(call.call_sid, to=LOCAL_NUMBER, from_=CALLER)
    stream = await answered(call)
    await call.open_stream(on(stream_on, stream))
    talking = asyncio.create_task(call.stream_until_quiet(until=lambda r: False, max_s=30))
    if expect_audio:
        await wait_for(lambda: call.result.frames_received > 0, 5)
    return call, stream.parameters["call_id"], talking


async def stop_talking(talking: asyncio.Task[None]) -> None:
    talking.cancel()
    await asyncio.gather(talking, return_exceptions=True)


async def test_hangup_on_a_ends_the_call_streaming_on_b(
    workers: Workers, outside: Outside, session: aiohttp.ClientSession
) -> None:
    a, b = workers.a, workers.b
    call, call_id, talking = await call_streaming_on(a, b, outside, session)
    view = await get_call(session, a, call_id)  # any worker reads any call
    assert (view["state"], view["owner"]) == ("active", "worker-b")

    # the owner's live calls, listed by either worker
    async with session.get(f"{a.base_url}/calls?state=active&worker=worker-b", headers=AUTH) as r:
        assert r.status == 200, await r.text()
        listing = await r.json()
    assert [c["call_id"] for c in listing["calls"]] == [call_id]
    assert listing["next_cursor"] is None
    async with session.get(f"{b.base_url}/calls?state=active&worker=worker-a", headers=AUTH) as r:
        assert (await r.json())["calls"] == []
    async with session.get(f"{a.base_url}/calls?limit=0", headers=AUTH) as r:
        assert r.status == 400

    started = time.monotonic()
    async with session.post(f"{a.base_url}/calls/{call_id}/hangup", headers=AUTH) as r:
        assert r.status == 200, await r.text()  # answered after B acknowledged
    assert time.monotonic() - started < 3
    assert await call.wait_closed(5)
    await stop_talking(talking)
    payload = await outside.exactly_one_webhook(call_id, settle=1.0)
    assert payload["call_status"] == "api-ended"
    fake_call = outside.fake.calls[call.call_sid]
    assert [u.get("Status") for u in fake_call.updates] == [["completed"]]  # B's REST hang-up
    async with session.post(f"{a.base_url}/calls/{call_id}/hangup", headers=AUTH) as r:
        assert r.status == 404  # over now
    async with session.post(f"{a.base_url}/calls/call_unknown/hangup", headers=AUTH) as r:
        assert r.status == 404
    assert await workers.slots_in_use() == 0
    a.assert_healthy()
    b.assert_healthy()


async def test_per_agent_limit_holds_across_workers(
    redis_server: Any, outside: Outside, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    workers = Workers(redis_server.url, tmp_path, max_concurrent_calls=1)
    try:
        a, b = workers.a, workers.b
        first, first_id, talking = await call_streaming_on(a, a, outside, session)
        assert await workers.slots_in_use() == 1

        second, second_id, second_talking = await call_streaming_on(
            b, b, outside, session, expect_audio=False
        )
        assert await second.wait_closed(5)  # refused on B: A holds the agent's one slot
        await stop_talking(second_talking)
        refused = await outside.exactly_one_webhook(second_id)
        assert refused["call_status"] == "error"
        assert "at its limit" in refused["error_message"]
        assert await workers.slots_in_use() == 1

        await stop_talking(talking)
        await first.stop()  # the first caller hangs up: the slot is free again
        assert (await outside.exactly_one_webhook(first_id))["call_status"] == "user-ended"
        assert await workers.slots_in_use() == 0
        third, third_id, third_talking = await call_streaming_on(b, b, outside, session)
        assert (await get_call(session, a, third_id))["state"] == "active"
        await stop_talking(third_talking)
        await third.stop()
        assert (await outside.exactly_one_webhook(third_id))["call_status"] == "user-ended"
        a.assert_healthy()
        b.assert_healthy()
    finally:
        workers.stop()


async def test_a_killed_worker_s_call_is_reaped_by_the_other(
    redis_server: Any, outside: Outside, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    workers = Workers(redis_server.url, tmp_path, max_concurrent_calls=1)
    try:
        a, b = workers.a, workers.b
        # every URL of the call names B, the <Redirect> after its stream too: once B is
        # dead Twilio cannot bring the call back (tests/test_failover.py: it can)
        _, call_id, talking = await call_streaming_on(b, b, outside, session)
        assert await workers.slots_in_use() == 1
        b.process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        b.process.wait(5)
        await stop_talking(talking)

        payload = await outside.exactly_one_webhook(call_id, within=30, settle=1.0)
        reaped_after = time.monotonic() - killed
        # only once both its lease and its worker's heartbeat have been gone for lease_s
        # (the lease was last renewed at most LEASE_RENEW_S before the kill)
        assert reaped_after >= 2 * LEASE_S - LEASE_RENEW_S, reaped_after
        assert reaped_after < 2 * LEASE_S + 3 * LEASE_RENEW_S + 2, reaped_after  # far within 30 s
        assert payload["call_status"] == "error"
        assert payload["error_message"] == WORKER_LOST
        view = await get_call(session, a, call_id)
        assert (view["state"], view["call_status"]) == ("ended", "error")
        assert view["error_message"] == WORKER_LOST
        assert await workers.slots_in_use() == 0
        # control of a call already reaped: nothing live to hang up
        async with session.post(f"{a.base_url}/calls/{call_id}/hangup", headers=AUTH) as r:
            assert r.status == 404
        a.assert_healthy()
    finally:
        workers.stop()
