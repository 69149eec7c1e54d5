"""Durable end-of-call webhooks against a real ``telephony-edge serve`` on a private Redis.

The worker's queue is the Redis Stream of ``coord/redis.py``. The customer's
receiver runs on the test's loop: first not listening at all, then answering
503, then up; every webhook must arrive, none twice (by ``Idempotency-Key``,
the call id). A second agent's receiver always fails: its webhook ends in the
dead letters after ``webhooks.max_attempts``, is listed by the API, counted
in the metrics, and delivered once retried through the API after the
receiver is fixed. Calls end by Twilio's status callback while ringing (no
media needed: the webhook path is what is under test).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from telephony_edge.calls.webhooks import IDEMPOTENCY_HEADER, verify_signature
from telephony_edge.calls.webhooks import SIGNATURE_HEADER as EDGE_SIGNATURE
from telephony_edge.twilio.simulator import SimulatedCall, parse_twiml
from tests.conftest import ServeProcess, free_port, stop_serve_process, wait_for
from tests.test_lifecycle_serve import post_signed, status_fields
from tests.twilio.harness import (
    ACCOUNT_SID,
    API_KEY,
    AUTH_TOKEN,
    LOCAL_NUMBER,
    OUTBOUND_NUMBER,
    WEBHOOK_SECRET,
)

AUTH = {"Authorization": f"Bearer {API_KEY}"}
MAX_ATTEMPTS = 6
# backoff 0.3, 0.6, then 1 s: a job is given up on about 4 s after its first attempt
BACKOFF_BASE_S = 0.3
BACKOFF_MAX_S = 1.0


@dataclass
class Receiver:
    """The customer's end-of-call endpoint; ``healthy`` False answers 503."""

    port: int = field(default_factory=free_port)
    healthy: bool = True
    delivered: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    refused: int = 0
    server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not self.healthy:
            self.refused += 1
            return web.Response(status=503)
        self.delivered.append((dict(request.headers), body))
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/ended", self.handle)
        self.server = TestServer(app, host="127.0.0.1", port=self.port)
        await self.server.start_server()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ended"

    def keys(self) -> Counter[str]:
        """Deliveries per ``Idempotency-Key``; each must match the body's call id and signature."""
        for headers, body in self.delivered:
            assert headers[IDEMPOTENCY_HEADER] == json.loads(body)["call_id"]
            assert verify_signature(WEBHOOK_SECRET, headers[EDGE_SIGNATURE], body)
        return Counter(headers[IDEMPOTENCY_HEADER] for headers, _ in self.delivered)


def config(redis_url: str, main: Receiver, failing: Receiver) -> dict[str, Any]:
    def agent(receiver: Receiver) -> dict[str, Any]:
        return {"prompt": "p", "first_message": "Hi.", "session_data_webhook": receiver.url}

    return {
        "api": {"private_key": API_KEY},
        "coordination": {"redis_url": redis_url, "key_prefix": f"te-wh-{uuid.uuid4().hex[:8]}:"},
        "twilio": {
            "enabled": True,
            "account_sid": ACCOUNT_SID,
            "auth_token": AUTH_TOKEN,
            "api_base_url": f"http://127.0.0.1:{free_port()}",  # unused: calls end ringing
            "validate_signatures": True,
        },
        "webhooks": {
            "signing_secret": WEBHOOK_SECRET,
            "allow_private_targets": True,
            "max_attempts": MAX_ATTEMPTS,
            "backoff_base_s": BACKOFF_BASE_S,
            "backoff_max_s": BACKOFF_MAX_S,
        },
        "agents": {"main": agent(main), "failing": agent(failing)},
        "regions": {"local": {"public_url": "http://127.0.0.1"}},
        "numbers": {
            LOCAL_NUMBER: {"provider": "twilio", "agent_id": "main", "region": "local"},
            OUTBOUND_NUMBER: {"provider": "twilio", "agent_id": "failing", "region": "local"},
        },
    }


@pytest.fixture
def receivers() -> tuple[Receiver, Receiver]:
    return Receiver(), Receiver(healthy=False)


@pytest.fixture
def edge(
    redis_server: Any, serve_process: Any, receivers: tuple[Receiver, Receiver]
) -> Iterator[ServeProcess]:
    started: ServeProcess = serve_process(config(redis_server.url, *receivers))
    yield started
    stop_serve_process(started)


@pytest.fixture(name="session")
async def fixture_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def call_that_ends_ringing(
    edge: ServeProcess, session: aiohttp.ClientSession, to: str = LOCAL_NUMBER
) -> str:
    """An inbound call (signed voice webhook) the caller abandons while ringing: its call id."""
    call = SimulatedCall(
        session, edge.base_url, to=to, auth_token=AUTH_TOKEN, account_sid=ACCOUNT_SID
    )
    stream = parse_twiml(await call.post_webhook()).stream
    assert stream is not None
    fields = {**status_fields(call.call_sid, "completed"), "To": to}
    assert await post_signed(session, edge, "/twilio/status", fields) == 204
    return stream.parameters["call_id"]


async def api(session: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> tuple[int, Any]:
    async with session.request(method, url, **kw) as resp:
        return resp.status, await resp.json()


async def test_receiver_down_then_up_gets_every_webhook_once_and_dead_letters_are_retried(
    edge: ServeProcess, session: aiohttp.ClientSession, receivers: tuple[Receiver, Receiver]
) -> None:
    main, failing = receivers
    await failing.start()  # up, but answering 503 until fixed
    try:
        # 1. the receiver is not listening: three calls end, their webhooks wait
        calls = [await call_that_ends_ringing(edge, session) for _ in range(3)]
        doomed = await call_that_ends_ringing(edge, session, to=OUTBOUND_NUMBER)
        await asyncio.sleep(0.8)
        # 2. it listens but answers 503: two more calls
        main.healthy = False
        await main.start()
        calls += [await call_that_ends_ringing(edge, session) for _ in range(2)]
        await wait_for(lambda: main.refused >= 2, within=5)
        assert main.delivered == []
        # 3. up: every webhook arrives, once
        main.healthy = True
        await wait_for(lambda: set(main.keys()) == set(calls), within=10)

        # the failing receiver's job is dead-lettered after max_attempts
        await wait_for(lambda: failing.refused >= MAX_ATTEMPTS, within=10)
        await asyncio.sleep(0.3)
        assert failing.refused == MAX_ATTEMPTS
        status, body = await api(
            session, "GET", edge.base_url + "/webhooks/dead-letters?limit=10", headers=AUTH
        )
        assert status == 200, body
        assert body["count"] == 1
        [dead] = body["dead_letters"]
        assert (dead["call_id"], dead["url"], dead["attempts"]) == (
            doomed,
            failing.url,
            MAX_ATTEMPTS,
        )
        assert "http status 503" in dead["reason"]
        assert edge.metric("telephony_edge_webhook_dead_letters_total") == 1
        await wait_for(
            lambda: edge.metric("telephony_edge_webhook_dead_letter_size") == 1, within=20
        )
        # the API: key required, sane limits, 404 for what is not dead
        status, _ = await api(session, "GET", edge.base_url + "/webhooks/dead-letters")
        assert status == 401
        status, _ = await api(
            session, "GET", edge.base_url + "/webhooks/dead-letters?limit=0", headers=AUTH
        )
        assert status == 400
        retry = edge.base_url + "/webhooks/dead-letters/{}/retry"
        status, _ = await api(session, "POST", retry.format(calls[0]), headers=AUTH)
        assert status == 404

        # fixed, retried through the API: delivered once, same key
        failing.healthy = True
        status, body = await api(session, "POST", retry.format(doomed), headers=AUTH)
        assert (status, body) == (200, {"call_id": doomed, "result": "queued"})
        await wait_for(lambda: failing.keys() == {doomed: 1}, within=5)
        status, body = await api(
            session, "GET", edge.base_url + "/webhooks/dead-letters", headers=AUTH
        )
        assert (status, body) == (200, {"count": 0, "dead_letters": []})

        await asyncio.sleep(BACKOFF_MAX_S + 0.5)  # long enough for any duplicate to show
        assert main.keys() == {call_id: 1 for call_id in calls}
        assert failing.keys() == {doomed: 1}
        assert edge.process.poll() is None
        log = edge.log
        assert "Traceback" not in log, log[-3000:]
        errors = [line for line in log.splitlines() if '"level": "error"' in line]
        assert errors and all("dead-lettered" in line for line in errors), errors
    finally:
        await main.stop()
        await failing.stop()
