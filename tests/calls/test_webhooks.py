"""Prefetch and end-of-call webhooks against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from telephony_edge import metrics
from telephony_edge.calls.bridge_hooks import Conversation
from telephony_edge.calls.dispatcher import RetryPolicy, WebhookDispatcher
from telephony_edge.calls.prefetch import prefetch
from telephony_edge.calls.record import CallRecord, CallState, CallStatus
from telephony_edge.calls.webhooks import (
    IDEMPOTENCY_HEADER,
    SESSION_WEBHOOK_QUEUE,
    SIGNATURE_HEADER,
    CostRates,
    TargetRefused,
    build_session_payload,
    cost_breakdown,
    enqueue_session_webhook,
    parse_webhook_spec,
    resolve_target,
    sign,
    verify_signature,
)
from telephony_edge.coord import MemoryCoordinator
from tests.conftest import free_port

SECRET = "whsec_test"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Seen:
    method: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Server:
    base: str
    seen: list[Seen] = field(default_factory=list)
    routes: dict[str, Handler] = field(default_factory=dict)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    async def hang(self, seconds: float) -> None:
        """Sleep like a slow server, but let the fixture's teardown end it at once."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.released.wait(), seconds)

    def url(self, path: str) -> str:
        return f"{self.base}{path}"


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server(base="")

    async def dispatch(request: web.Request) -> web.StreamResponse:
        srv.seen.append(
            Seen(
                request.method,
                dict(request.query),
                dict(request.headers),
                await request.read(),
                time.monotonic(),
            )
        )
        return await srv.routes[request.path](request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", dispatch)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    srv.base = f"http://{host}:{port}"
    try:
        yield srv
    finally:
        srv.released.set()
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def json_reply(data: Any, status: int = 200) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response(data, status=status)

    return handler


def text_reply(text: str, status: int = 200) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(text=text, status=status)

    return handler


async def call_prefetch(session: aiohttp.ClientSession, spec: Any, **kw: Any) -> Any:
    args: dict[str, Any] = {
        "session_id": "sess_1",
        "agent_id": "agent-1",
        "from_": "+15555550100",
        "to": "+15555550199",
        "metadata": {},
        "allow_private_targets": True,  # the receiver is local
    }
    args.update(kw)
    return await prefetch(session, spec, **args)


# -- prefetch -----------------------------------------------------------------


async def test_prefetch_sends_fields_and_returns_metadata_and_prompt(
    server: Server, session: aiohttp.ClientSession
) -> None:
    server.routes["/pre"] = json_reply(
        {"metadata": {"tier": "gold", "userName": "Ada L."}, "extra_prompt": "Caller is VIP."}
    )
    outcomes: list[tuple[str, str]] = []
    result = await call_prefetch(
        session,
        server.url("/pre"),
        metadata={"userName": "Ada", "visits": 3, "vip": True, "tags": ["a", "b"]},
        on_result=lambda kind, outcome: outcomes.append((kind, outcome)),
    )
    assert result.ok and result.error is None
    assert result.extra_prompt == "Caller is VIP."
    assert result.metadata == {"tier": "gold", "userName": "Ada L."}
    assert result.merged_metadata({"userName": "Ada", "keep": 1}) == {
        "userName": "Ada L.",
        "keep": 1,
        "tier": "gold",
    }
    (req,) = server.seen
    assert req.method == "GET"
    assert req.query == {
        "session_id": "sess_1",
        "agent_id": "agent-1",
        "from": "+15555550100",
        "to": "+15555550199",
        "userName": "Ada",
        "visits": "3",
        "vip": "true",
        "tags": '["a","b"]',
    }
    assert outcomes == [("prefetch", "ok")]


async def test_prefetch_object_spec_headers_and_existing_query(
    server: Server, session: aiohttp.ClientSession
) -> None:
    server.routes["/pre"] = json_reply({"extra_prompt": "x"})
    spec = {"url": server.url("/pre?key=abc"), "headers": {"Authorization": "Bearer t0k"}}
    result = await call_prefetch(session, spec, metadata={"session_id": "spoofed"})
    assert result.extra_prompt == "x" and result.metadata == {}
    (req,) = server.seen
    assert req.headers["Authorization"] == "Bearer t0k"
    assert req.query["key"] == "abc"
    assert req.query["session_id"] == "sess_1"  # documented fields beat metadata keys


async def test_prefetch_post_sends_json_body(
    server: Server, session: aiohttp.ClientSession
) -> None:
    server.routes["/pre"] = json_reply({"metadata": {"a": 1}})
    result = await call_prefetch(
        session, {"url": server.url("/pre"), "method": "post"}, metadata={"m": "v"}
    )
    assert result.metadata == {"a": 1}
    (req,) = server.seen
    assert req.method == "POST"
    assert json.loads(req.body) == {
        "m": "v",
        "session_id": "sess_1",
        "agent_id": "agent-1",
        "from": "+15555550100",
        "to": "+15555550199",
    }


async def test_prefetch_slow_server_returns_within_timeout(
    server: Server, session: aiohttp.ClientSession
) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        await server.hang(5)
        return web.json_response({"extra_prompt": "too late"})

    server.routes["/slow"] = slow
    outcomes: list[str] = []
    started = time.monotonic()
    result = await call_prefetch(
        session,
        {"url": server.url("/slow"), "timeout": 0.3},
        on_result=lambda kind, outcome: outcomes.append(outcome),
    )
    elapsed = time.monotonic() - started
    assert elapsed < 0.3 + 1.0  # correctness bound (timeout + generous margin)
    assert not result.ok and "timed out" in (result.error or "")
    assert result.extra_prompt == "" and result.metadata == {}
    assert outcomes == ["timeout"]


@pytest.mark.parametrize(
    ("handler", "reason"),
    [
        (json_reply({"extra_prompt": "no"}, status=500), "http status 500"),
        (text_reply("not json {"), "not JSON"),
        (json_reply(["a", "list"]), "not an object"),
        (json_reply({"metadata": "str", "extra_prompt": "x"}), "metadata must be"),
        (text_reply("x" * (70 * 1024)), "larger than"),
    ],
)
async def test_prefetch_failures_give_empty_result(
    server: Server, session: aiohttp.ClientSession, handler: Handler, reason: str
) -> None:
    server.routes["/pre"] = handler
    result = await call_prefetch(session, server.url("/pre"))
    assert result.metadata == {} and result.extra_prompt == ""
    assert result.error is not None and reason in result.error


async def test_prefetch_unreachable_and_bad_config_do_not_raise(
    session: aiohttp.ClientSession,
) -> None:
    result = await call_prefetch(session, f"http://127.0.0.1:{free_port()}/x")
    assert result.error is not None and "request failed" in result.error
    for bad in ("ftp://host/x", {"method": "GET"}, 42, {"url": "http://h/", "timeout": "3"}):
        result = await call_prefetch(session, bad)
        assert result.error is not None and "bad webhook config" in result.error


def test_spec_timeout_is_bounded() -> None:
    assert parse_webhook_spec({"url": "http://h/", "timeout": 999}).timeout == 10.0
    assert parse_webhook_spec("http://h/").timeout == 3.0
    assert parse_webhook_spec("http://h/").method == "GET"


# -- end-of-call payload ---------------------------------------------------------


def ended_record() -> CallRecord:
    rec = CallRecord(
        agent_id="agent-1",
        provider="twilio",
        direction="inbound",
        from_="+15555550100",
        to="+15555550199",
        provider_call_id="CA123",
        agent_config={"prompt": "Be nice"},
        metadata={"userName": "Ada"},
    )
    rec.advance(CallState.CONNECTING)
    rec.advance(CallState.ACTIVE)
    rec.advance(CallState.ENDING)
    rec.set_status(CallStatus.USER_ENDED)
    rec.advance(CallState.ENDED)
    rec.answered_at = 1_700_000_000.4
    rec.ended_at = rec.answered_at + 90
    return rec


def test_session_payload_fields() -> None:
    rec = ended_record()
    transcript = [{"role": "agent", "text": "Hi"}, {"role": "user", "text": "Hello"}]
    rates = CostRates(
        platform_per_min=0.02, telephony_per_min=0.01, stt_per_min=0.004, tts_per_1k_chars=0.15
    )
    payload = build_session_payload(
        rec,
        transcript=transcript,
        function_calls=[{"name": "lookup", "params": {"q": 1}}],
        chars_used=2000,
        rates=rates,
    )
    assert payload["call_id"] == rec.call_id
    assert payload["session_id"] == rec.session_id
    assert payload["agent_id"] == "agent-1"
    assert payload["agent_config"] == {"prompt": "Be nice"}
    assert payload["ts"] == 1_700_000_000
    assert payload["duration"] == 90
    assert payload["call_status"] == "user-ended"
    assert payload["error_message"] is None
    assert payload["metadata"] == {"userName": "Ada"}
    assert payload["voip"] == {
        "provider": "twilio",
        "from": "+15555550100",
        "to": "+15555550199",
        "provider_call_id": "CA123",
        "direction": "inbound",
    }
    assert payload["recording"] is None
    assert payload["function_calls"] == [{"name": "lookup", "params": {"q": 1}}]
    assert isinstance(payload["chat"], str) and json.loads(payload["chat"]) == transcript
    assert payload["chars_used"] == 2000
    costs = {item["type"]: item for item in payload["cost_breakdown"]}
    assert costs["platform"] == {
        "type": "platform",
        "unit": "minute",
        "quantity": 1.5,
        "rate": 0.02,
        "cost": 0.03,
    }
    assert costs["telephony"]["cost"] == pytest.approx(0.015)
    assert costs["stt"]["cost"] == pytest.approx(0.006)
    assert costs["tts"] == {
        "type": "tts",
        "unit": "1k_chars",
        "quantity": 2.0,
        "rate": 0.15,
        "cost": 0.3,
    }
    json.dumps(payload)  # all JSON


def test_chat_is_bounded() -> None:
    transcript = [{"role": "user", "text": "x" * 100} for _ in range(100)]
    payload = build_session_payload(ended_record(), transcript=transcript, max_chat_chars=2000)
    assert len(payload["chat"]) <= 2000 + 100
    chat = json.loads(payload["chat"])
    assert 1 < len(chat) < 100 and "truncated" in chat[-1]["text"]


def test_cost_breakdown_zero_rates() -> None:
    assert all(item["cost"] == 0 for item in cost_breakdown(60, 500, CostRates()))


# -- signatures ---------------------------------------------------------------------


def test_signature_roundtrip_and_rejections() -> None:
    body = b'{"call_id":"c1"}'
    header = sign(SECRET, body, timestamp=1000)
    assert header.startswith("t=1000,v1=")
    assert verify_signature(SECRET, header, body, now=1000)
    assert verify_signature(SECRET, header, body.decode(), now=1100)
    assert not verify_signature(SECRET, header, body + b" ", now=1000)
    assert not verify_signature("other", header, body, now=1000)
    assert not verify_signature(SECRET, header, body, now=1000 + 301)
    assert not verify_signature(SECRET, "garbage", body, now=1000)
    assert not verify_signature(SECRET, "t=abc,v1=00", body, now=1000)
    rotated = f"t=1000,v1={'0' * 64},{header.split(',')[1]}"
    assert verify_signature(SECRET, rotated, body, now=1000)
    assert verify_signature(SECRET, sign(SECRET, body), body)  # real clock


# -- delivery -------------------------------------------------------------------------


def scripted(statuses: list[int]) -> Handler:
    """Reply with the given statuses in turn, then 200 forever."""
    it = iter(statuses)

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=next(it, 200), text="ok")

    return handler


async def wait_until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


class Harness:
    def __init__(self, session: aiohttp.ClientSession, retry: RetryPolicy, **kw: Any) -> None:
        self.coord = MemoryCoordinator()
        self.outcomes: list[str] = []
        self.dispatcher = WebhookDispatcher(
            self.coord,
            session,
            secret=SECRET,
            retry=retry,
            poll_interval=0.01,
            on_result=lambda kind, outcome: self.outcomes.append(outcome),
            **{"allow_private_targets": True, **kw},  # the receivers are local
        )
        self.task = asyncio.create_task(self.dispatcher.run())

    async def stop(self) -> None:
        await self.dispatcher.drain(grace=1.0)
        await asyncio.wait_for(self.task, 1.0)


FAST = RetryPolicy(base_delay=0.05, factor=2.0, jitter=0.0, max_attempts=5)


@pytest.fixture
async def harness(session: aiohttp.ClientSession) -> AsyncIterator[Harness]:
    h = Harness(session, FAST)
    yield h
    await h.stop()


async def test_delivery_retries_then_succeeds_with_backoff(
    server: Server, harness: Harness
) -> None:
    server.routes["/end"] = scripted([500, 500])
    rec = ended_record()
    payload = build_session_payload(rec, chars_used=10)
    spec = {"url": server.url("/end"), "headers": {"X-Api-Key": "k"}}
    assert await enqueue_session_webhook(harness.coord, spec, payload)
    assert not await enqueue_session_webhook(harness.coord, spec, payload)  # once per call

    await wait_until(lambda: harness.outcomes == ["retry", "retry", "delivered"])
    assert len(server.seen) == 3
    assert await harness.coord.queue_length(SESSION_WEBHOOK_QUEUE) == 0

    first, second, third = server.seen
    assert {r.headers[IDEMPOTENCY_HEADER] for r in server.seen} == {rec.call_id}
    assert {r.body for r in server.seen} == {first.body}
    for r in server.seen:
        assert r.method == "POST"
        assert r.headers["Content-Type"] == "application/json"
        assert r.headers["X-Api-Key"] == "k"
        assert verify_signature(SECRET, r.headers[SIGNATURE_HEADER], r.body)
    assert json.loads(third.body) == payload
    # backoff: 0.05 s after the first failure, 0.1 s after the second (no jitter)
    assert second.at - first.at >= 0.05 * 0.9
    assert third.at - second.at >= 0.1 * 0.9


async def test_client_error_is_not_retried(server: Server, harness: Harness) -> None:
    server.routes["/end"] = scripted([400])
    payload = build_session_payload(ended_record())
    await enqueue_session_webhook(harness.coord, server.url("/end"), payload)
    await wait_until(lambda: harness.outcomes == ["rejected"])
    await asyncio.sleep(0.2)  # several backoff periods: nothing more may arrive
    assert len(server.seen) == 1
    assert await harness.coord.queue_length(SESSION_WEBHOOK_QUEUE) == 0
    [dead] = await harness.coord.dead_letters(SESSION_WEBHOOK_QUEUE)
    assert dead.job_id == payload["call_id"] and dead.reason == "rejected: http status 400"


async def test_429_and_408_are_retried(server: Server, harness: Harness) -> None:
    server.routes["/end"] = scripted([429, 408])
    await enqueue_session_webhook(
        harness.coord, server.url("/end"), build_session_payload(ended_record())
    )
    await wait_until(lambda: harness.outcomes == ["retry", "retry", "delivered"])
    assert len(server.seen) == 3


async def test_gives_up_after_max_attempts(server: Server, session: aiohttp.ClientSession) -> None:
    server.routes["/end"] = scripted([503] * 100)
    h = Harness(session, RetryPolicy(base_delay=0.01, jitter=0.0, max_attempts=3))
    try:
        await enqueue_session_webhook(
            h.coord, server.url("/end"), build_session_payload(ended_record())
        )
        dead_before = metrics.WEBHOOK_DEAD_LETTERS_TOTAL._value.get()
        await wait_until(lambda: h.outcomes == ["retry", "retry", "gave_up"])
        await asyncio.sleep(0.1)
        assert len(server.seen) == 3
        assert await h.coord.queue_length(SESSION_WEBHOOK_QUEUE) == 0
        [dead] = await h.coord.dead_letters(SESSION_WEBHOOK_QUEUE)
        assert (dead.attempts, dead.reason) == (3, "3 attempts, the last: http status 503")
        assert metrics.WEBHOOK_DEAD_LETTERS_TOTAL._value.get() == dead_before + 1
        assert metrics.WEBHOOK_DEAD_LETTERS._value.get() == 1
        # the receiver works again; an operator retries the dead letter: delivered, same key
        server.routes["/end"] = scripted([])
        assert await h.coord.retry_dead_letter(SESSION_WEBHOOK_QUEUE, dead.job_id)
        await wait_until(lambda: h.outcomes[-1:] == ["delivered"])
        assert server.seen[-1].headers[IDEMPOTENCY_HEADER] == dead.job_id
        assert await h.coord.dead_letter_count(SESSION_WEBHOOK_QUEUE) == 0
    finally:
        await h.stop()


async def test_unreachable_endpoint_is_retried(harness: Harness) -> None:
    await enqueue_session_webhook(
        harness.coord, f"http://127.0.0.1:{free_port()}/x", build_session_payload(ended_record())
    )
    await wait_until(lambda: harness.outcomes[:2] == ["retry", "retry"])
    assert await harness.coord.queue_length(SESSION_WEBHOOK_QUEUE) == 1


async def test_drain_leaves_unfinished_job_queued(
    server: Server, session: aiohttp.ClientSession
) -> None:
    started = asyncio.Event()

    async def hang(request: web.Request) -> web.StreamResponse:
        started.set()
        await server.hang(5)
        return web.Response(status=200)

    server.routes["/end"] = hang
    h = Harness(session, FAST)
    await enqueue_session_webhook(
        h.coord, server.url("/end"), build_session_payload(ended_record())
    )
    await asyncio.wait_for(started.wait(), 2.0)
    t0 = time.monotonic()
    await h.dispatcher.drain(grace=0.1)
    await asyncio.wait_for(h.task, 1.0)  # run() returns once drained
    assert time.monotonic() - t0 < 1.0
    assert h.outcomes == []
    # not acked: another worker gets it after the visibility timeout
    assert await h.coord.queue_length(SESSION_WEBHOOK_QUEUE) == 1


def test_retry_policy_delays() -> None:
    policy = RetryPolicy(base_delay=1.0, factor=2.0, max_delay=5.0, jitter=0.0)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]
    jittered = RetryPolicy(base_delay=1.0, jitter=0.5)
    assert all(0.5 <= jittered.delay(1) <= 1.5 for _ in range(50))


def test_session_payload_leaves_out_webhook_credentials() -> None:
    rec = ended_record()
    rec.agent_config = {
        "prompt": "Be nice",
        "extra_prompt_webhook": {"url": "https://crm.example.com/p", "headers": {"X-Key": "s3"}},
        "session_data_webhook": "https://crm.example.com/ended",
    }
    payload = build_session_payload(rec)
    assert payload["agent_config"] == {
        "prompt": "Be nice",
        "extra_prompt_webhook": {"url": "https://crm.example.com/p"},
        "session_data_webhook": "https://crm.example.com/ended",
    }
    assert "s3" not in json.dumps(payload)
    assert rec.agent_config["extra_prompt_webhook"]["headers"] == {"X-Key": "s3"}  # not mutated


async def test_slow_endpoint_times_out_and_is_retried(server: Server, harness: Harness) -> None:
    calls = 0

    async def slow_once(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        if calls == 1:
            await server.hang(5)  # longer than the job's timeout
        return web.Response(status=200)

    server.routes["/end"] = slow_once
    spec = {"url": server.url("/end"), "timeout": 0.5}
    await enqueue_session_webhook(harness.coord, spec, build_session_payload(ended_record()))
    started = time.monotonic()
    await wait_until(lambda: harness.outcomes == ["retry", "delivered"], within=4.0)
    assert time.monotonic() - started < 0.5 + 2.0  # bounded by the timeout, not the server
    assert len(server.seen) == 2


# -- targets -------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost/x",
        "http://127.0.0.1:9/x",
        "http://[::1]/x",
        "http://[::ffff:127.0.0.1]/x",
        "http://169.254.169.254/latest/meta-data",
        "http://10.1.2.3/x",
        "http://100.64.0.1/x",
        "https://0.0.0.0/x",
        "http://224.0.0.1/x",
    ],
)
async def test_non_global_targets_are_refused_unless_allowed(url: str) -> None:
    with pytest.raises(TargetRefused):
        await resolve_target(URL(url), allow_private=False)
    allowed = await resolve_target(URL(url), allow_private=True)
    assert allowed.url == URL(url) and not allowed.headers and allowed.server_hostname is None


async def test_a_public_target_is_pinned_to_the_address_that_was_checked() -> None:
    target = await resolve_target(URL("https://8.8.8.8:8443/hook?a=1"), allow_private=False)
    assert str(target.url) == "https://8.8.8.8:8443/hook?a=1"
    assert target.headers == {"Host": "8.8.8.8:8443"}
    assert target.server_hostname == "8.8.8.8"


def test_conversation_is_bounded_and_the_payload_says_what_was_left_out() -> None:
    conversation = Conversation()
    for i in range(5):
        conversation.add(conversation.chat, "chat", 3, {"role": "user", "content": str(i)})
    assert [e["content"] for e in conversation.chat] == ["0", "1", "2"]
    assert conversation.truncated == {"chat": 2}
    record = CallRecord(agent_id="a", provider="test", direction="inbound")
    payload = build_session_payload(
        record, transcript=conversation.chat, truncated=conversation.truncated
    )
    assert payload["truncated"] == {"chat": 2}
    assert "truncated" not in build_session_payload(record, transcript=conversation.chat)


def test_network_details_other_writers_stored_reach_the_payloads_voip() -> None:
    record = CallRecord(agent_id="a", provider="vonage", direction="inbound")
    assert "details" not in build_session_payload(record)["voip"]
    details = {"network": "23410", "rate": "0.1"}
    stored = {"provider_status": "completed", "provider_details": details}
    record.merge_foreign(stored)
    record.merge_foreign({"provider_status": None, "provider_details": {}})  # nothing new: kept
    voip = build_session_payload(record)["voip"]
    assert voip["details"] == details
    assert record.provider_status == "completed"


def test_media_statistics_reach_the_payloads_voip_only_when_measured() -> None:
    record = CallRecord(agent_id="a", provider="sip", direction="inbound")
    assert "media" not in build_session_payload(record)["voip"]
    record.media_stats = {"packets_lost": 2, "jitter_ms": 3.0, "rtt_ms": 41.0}
    assert build_session_payload(record)["voip"]["media"] == record.media_stats


@pytest.mark.parametrize(
    "spec",
    [
        {"url": "/end", "headers": {"X-Tenant": "a\r\nX-Injected: 1"}},  # CR/LF in a value
        {"url": "http://" + "a" * 64 + ".example.com/end"},  # a host label past 63
    ],
)
async def test_a_webhook_that_can_never_be_sent_is_dead_lettered_at_once(
    server: Server, harness: Harness, spec: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Not retried every minute for ever: the request itself is invalid, so no retry helps."""
    if spec["url"].startswith("/"):
        spec = {**spec, "url": server.url(spec["url"])}
    payload = build_session_payload(ended_record())
    assert await enqueue_session_webhook(harness.coord, spec, payload)
    await wait_until(lambda: harness.outcomes == ["invalid"])
    await asyncio.sleep(0.2)
    assert harness.outcomes == ["invalid"] and server.seen == []
    [dead] = await harness.coord.dead_letters(SESSION_WEBHOOK_QUEUE)
    assert dead.job_id == payload["call_id"] and dead.reason.startswith("invalid request: ")
    assert not [r for r in caplog.records if r.exc_info], "no traceback"
