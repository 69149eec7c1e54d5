"""A whole call with both webhooks against a real local HTTP server, and call control."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from telephony_edge.calls.leg import Dtmf, LegEnded
from telephony_edge.calls.record import CallState, CallStatus
from telephony_edge.calls.refusals import CallRejected
from telephony_edge.calls.webhooks import verify_signature
from tests.calls.test_bridge import start_call
from tests.conftest import Edge, TestLeg, edge_settings, wait_for

SECRET = "whsec_test_secret_0123456789"


class CrmServer:
    """The customer's webhook receiver: prefetch answers, end-of-call posts recorded."""

    def __init__(self, *, prefetch_delay: float = 0.0, fail_first: int = 0) -> None:
        self.prefetch_queries: list[dict[str, str]] = []
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self.prefetch_delay = prefetch_delay
        self.fail_first = fail_first
        app = web.Application()
        app.router.add_get("/prefetch", self.prefetch)
        app.router.add_post("/ended", self.ended)
        self.server = TestServer(app, host="127.0.0.1", port=0)

    async def prefetch(self, request: web.Request) -> web.Response:
        self.prefetch_queries.append(dict(request.query))
        await asyncio.sleep(self.prefetch_delay)
        return web.json_response(
            {"metadata": {"userName": "Ada", "tier": "gold"}, "extra_prompt": "VIP caller."}
        )

    async def ended(self, request: web.Request) -> web.Response:
        self.posts.append((dict(request.headers), await request.read()))
        if len(self.posts) <= self.fail_first:
            return web.Response(status=503)
        return web.Response(status=204)

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))


def crm_settings(
    crm: CrmServer, *, agent_extra: dict[str, Any] | None = None, **overrides: Any
) -> Any:
    agent = {
        "prompt": "Help {userName} ({tier}) calling from {FromPhone}. Keep {unknown} as is.",
        "first_message": "Hi {userName}!",
        "extra_prompt_webhook": {"url": crm.url("/prefetch"), "timeout": 1.0},
        "session_data_webhook": crm.url("/ended"),
        **(agent_extra or {}),
    }
    return edge_settings(
        agents={"echo": agent},
        webhooks={
            "signing_secret": SECRET,
            "backoff_base_s": 0.05,
            "max_attempts": 4,
            "allow_private_targets": True,  # the CRM is local
        },
        costs={"platform_per_min": 0.02, "tts_per_1k_chars": 0.15},
        **overrides,
    )


async def test_prefetch_variables_and_signed_end_of_call_webhook(make_edge: Any) -> None:
    crm = CrmServer(fail_first=2)
    await crm.server.start_server()
    try:
        edge: Edge = await make_edge(crm_settings(crm))
        leg = TestLeg()
        record, task = await start_call(
            edge, leg, from_="+15555550100", to="+15555550199", metadata={"tier": "silver"}
        )
        await wait_for(lambda: record.state is CallState.ACTIVE)
        await asyncio.sleep(0.3)
        leg.events.put_nowait(LegEnded("completed"))
        final = await asyncio.wait_for(task, 5)
        assert final.call_status is CallStatus.USER_ENDED

        (query,) = crm.prefetch_queries
        assert query["session_id"] == record.session_id
        assert query["agent_id"] == "echo"
        assert (query["from"], query["to"], query["tier"]) == (
            "+15555550100",
            "+15555550199",
            "silver",
        )
        # prefetch metadata merged (updated and added), variables filled, extra prompt appended
        assert final.metadata["tier"] == "gold" and final.metadata["userName"] == "Ada"
        prompt = final.agent_config["prompt"]
        assert prompt.startswith("Help Ada (gold) calling from +15555550100. Keep {unknown} as is.")
        assert prompt.endswith("VIP caller.")

        # the end-of-call webhook: two 503s, then delivered on the third attempt
        await wait_for(lambda: len(crm.posts) >= 3, within=10)
        keys = {headers["Idempotency-Key"] for headers, _ in crm.posts}
        assert keys == {record.call_id}
        headers, body = crm.posts[-1]
        assert verify_signature(SECRET, headers["X-Telephony-Edge-Signature"], body)
        assert not verify_signature(
            "another-secret-of-some-length", headers["X-Telephony-Edge-Signature"], body
        )
        payload = json.loads(body)
        assert payload["call_id"] == record.call_id
        assert payload["session_id"] == record.session_id
        assert payload["call_status"] == "user-ended"
        assert payload["voip"] == {
            "provider": "test",
            "from": "+15555550100",
            "to": "+15555550199",
            "provider_call_id": "T1",
            "direction": "inbound",
        }
        assert payload["recording"] is None
        chat = json.loads(payload["chat"])
        assert any("Hi Ada!" in json.dumps(entry) for entry in chat), chat
        assert {item["type"] for item in payload["cost_breakdown"]} >= {"platform", "tts"}
        await asyncio.sleep(0.3)
        assert len(crm.posts) == 3  # acked: no further deliveries
    finally:
        await crm.server.close()


async def test_slow_prefetch_does_not_hold_the_call_beyond_its_timeout(make_edge: Any) -> None:
    crm = CrmServer(prefetch_delay=5.0)
    await crm.server.start_server()
    try:
        edge: Edge = await make_edge(crm_settings(crm))
        leg = TestLeg()
        record, task = await start_call(edge, leg, metadata={"tier": "silver"})
        loop = asyncio.get_running_loop()
        started = loop.time()
        await wait_for(lambda: record.state is CallState.ACTIVE, within=4)
        assert loop.time() - started < 1.0 + 1.0  # the 1 s prefetch timeout plus set-up
        assert record.metadata == {"tier": "silver"}
        assert "{userName}" in record.agent_config["prompt"]  # unknown stays as written
        leg.events.put_nowait(LegEnded("completed"))
        await asyncio.wait_for(task, 5)
    finally:
        await crm.server.close()


async def test_hangup_api_ends_a_live_call(make_edge: Any) -> None:
    edge: Edge = await make_edge()
    leg = TestLeg()
    record, task = await start_call(edge, leg)
    await wait_for(lambda: record.state is CallState.ACTIVE)
    assert await edge.services.call_service.hangup(record.call_id)
    final = await asyncio.wait_for(task, 5)
    assert final.call_status is CallStatus.API_ENDED
    assert leg.hung_up
    assert not await edge.services.call_service.hangup(record.call_id)  # over: nothing to do


async def test_dtmf_before_onready_is_delivered_after(make_edge: Any) -> None:
    edge: Edge = await make_edge()
    leg = TestLeg()
    leg.events.put_nowait(Dtmf("9"))  # pressed at pick-up, before the agent is ready
    _, task = await start_call(edge, leg)
    final = await asyncio.wait_for(task, 20)
    assert final.call_status is CallStatus.AGENT_ENDED


async def test_agent_concurrency_limit_refuses_the_extra_call(make_edge: Any) -> None:
    edge: Edge = await make_edge(
        edge_settings(agents={"echo": {"prompt": "x", "max_concurrent_calls": 1}})
    )
    first_leg, second_leg = TestLeg(), TestLeg()
    first, first_task = await start_call(edge, first_leg)
    await wait_for(lambda: first.state is CallState.ACTIVE)
    _, second_task = await start_call(edge, second_leg)
    second = await asyncio.wait_for(second_task, 5)
    assert second.call_status is CallStatus.ERROR
    assert "limit of 1 concurrent calls" in (second.error_message or "")
    assert second_leg.hung_up
    first_leg.events.put_nowait(LegEnded("completed"))
    await asyncio.wait_for(first_task, 5)


async def test_draining_worker_refuses_new_calls_and_ends_live_ones(make_edge: Any) -> None:
    edge: Edge = await make_edge()
    leg = TestLeg()
    record, task = await start_call(edge, leg)
    await wait_for(lambda: record.state is CallState.ACTIVE)
    forced = await edge.services.calls.drain(grace_s=0.2)
    assert forced == 1
    assert task.done()  # drain returns once the ended call is torn down
    assert task.result().call_status is CallStatus.API_ENDED
    assert leg.hung_up and leg.closed
    try:
        await edge.services.call_service.create(
            agent_id="echo", provider="test", direction="inbound"
        )
    except CallRejected as exc:
        assert exc.http_status == 503
    else:
        raise AssertionError("a draining worker took a new call")


async def test_a_call_whose_media_never_arrives_ends_with_its_webhook(make_edge: Any) -> None:
    crm = CrmServer()
    await crm.server.start_server()
    try:
        edge: Edge = await make_edge(crm_settings(crm, calls={"setup_ttl_s": 0.3}))
        service = edge.services.call_service
        record = await service.create(agent_id="echo", provider="test", direction="inbound")
        await asyncio.sleep(0.1)
        stored = await service.get(record.call_id)
        assert stored is not None and stored.state is CallState.CREATED
        await wait_for(lambda: len(crm.posts) == 1, within=5)
        ended = await service.get(record.call_id)
        assert ended is not None and ended.state is CallState.ENDED
        assert ended.call_status is CallStatus.ERROR
        assert "never arrived" in (ended.error_message or "")
        assert await edge.services.coordinator.list_active_calls() == []
        payload = json.loads(crm.posts[0][1])
        assert (payload["call_id"], payload["call_status"]) == (record.call_id, "error")
        await asyncio.sleep(0.5)  # the reaper runs again: still one webhook
        assert len(crm.posts) == 1
    finally:
        await crm.server.close()


async def test_shutdown_sends_the_webhooks_an_in_memory_queue_still_holds(make_edge: Any) -> None:
    crm = CrmServer()
    await crm.server.start_server()
    try:
        edge: Edge = await make_edge(crm_settings(crm))
        leg = TestLeg()
        record, task = await start_call(edge, leg)
        await wait_for(lambda: record.state is CallState.ACTIVE)
        leg.events.put_nowait(LegEnded("completed"))
        await asyncio.wait_for(task, 5)
        await edge.server.close()  # at once: the dispatcher has not polled yet
        assert [headers["Idempotency-Key"] for headers, _ in crm.posts] == [record.call_id]
    finally:
        await crm.server.close()
