"""A WebRTC call outlives its worker (issue 24): the caller re-offers with its resume token.

Two real ``telephony-edge serve`` workers on the session's ``redis-server``;
the caller is an aiortc client in the test (the server-to-server flow), told
both workers' URLs. A call runs on worker A with the agent core of
``tests.calls.test_migration`` (it greets, hears a line, calls a function);
A is SIGKILLed. The client sees its audio stop for a second (the edge sends
a frame every 20 ms, silence included), re-offers to B with the call's
resume token, and the call goes on: same call id, the core gets ``resumed``
with the chat so far, one end-of-call webhook with the migration. The
caller-side gap (last frame from A to first frame from B) is printed, not
asserted (speed is measured, not asserted). A forged token, a replayed one
and one for a call that ended normally are refused.
"""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiortc import RTCSessionDescription

from telephony_edge.calls.record import CallState
from telephony_edge.config_loading import load_settings
from tests.calls.test_migration import TalkingCore
from tests.conftest import (
    AgentCoreServer,
    Edge,
    Receiver,
    ServeProcess,
    start_serve_process,
    stop_serve_process,
    wait_for,
)
from tests.coord import redis_servers
from tests.webrtc.test_offer import API_KEY, LOOPBACK, LOOPBACK_NETWORKS, Client

#: how long without a frame before the caller re-offers (the edge sends one every 20 ms)
SILENT_S = 1.0
RESUME_SOURCE = "webrtc-resume"
PUBLIC_KEY = "pk_webrtc_resume_public"
ORIGIN = "https://shop.example.com"
PAGES = 8  # widget calls behind one address: more than a client's burst of new calls


@pytest.fixture(name="core")
async def fixture_core() -> AsyncIterator[TalkingCore]:
    started = TalkingCore()
    await started.server.start_server()
    yield started
    await started.server.close()


def edge_config(core: str, hook: str) -> dict[str, Any]:
    return {
        "api": {"private_key": API_KEY},
        "agent_core": {"url": core},
        "calls": {"live_state_interval_s": 0.2, "inactivity_timeout_s": 30},
        "webrtc": {
            "enabled": True,
            "advertised_addresses": LOOPBACK,
            "allowed_peer_networks": LOOPBACK_NETWORKS,
        },
        "agents": {"echo": {"prompt": "You echo.", "session_data_webhook": hook}},
        "webhooks": {"signing_secret": "whsec_webrtc_resume_01", "allow_private_targets": True},
    }


def worker_config(name: str, redis_url: str, prefix: str, core: str, hook: str) -> dict[str, Any]:
    return {
        **edge_config(core, hook),
        "server": {"worker_id": f"worker-{name}"},
        "coordination": {"redis_url": redis_url, "key_prefix": prefix},
    }


@pytest.fixture(name="workers")
async def fixture_workers(
    redis_server: Any, core: TalkingCore, receiver: Receiver, tmp_path: Path
) -> AsyncIterator[tuple[ServeProcess, ServeProcess]]:
    prefix = f"te-wrs-{uuid.uuid4().hex[:12]}:"
    started = [
        await asyncio.to_thread(
            start_serve_process,
            worker_config(name, redis_server.url, prefix, core.url, receiver.url),
            tmp_path / name,
        )
        for name in ("a", "b")
    ]
    yield started[0], started[1]
    for worker in started:
        await asyncio.to_thread(stop_serve_process, worker)


async def post_offer(
    http: aiohttp.ClientSession, worker: ServeProcess | Edge, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    base = worker.base_url if isinstance(worker, ServeProcess) else worker.url("")
    async with http.post(
        base.rstrip("/") + "/webrtc/offer",
        json=body,
        headers={"Authorization": f"Bearer {API_KEY}"},
    ) as resp:
        return resp.status, await resp.json()


async def connect(client: Client, answer: dict[str, Any]) -> None:
    await client.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
    await wait_for(lambda: client.frames > 0, within=10)


async def silent_for(client: Client, seconds: float) -> float:
    """Wait until no frame came for ``seconds``; the loop time of the last one heard."""
    loop = asyncio.get_running_loop()
    while True:
        last = client.arrivals[-1][0]
        if loop.time() - last >= seconds:
            return last
        await asyncio.sleep(0.02)


def said(chat: list[dict[str, Any]]) -> list[str]:
    return [str(entry.get("content")) for entry in chat]


async def test_a_killed_worker_s_webrtc_call_goes_on_on_the_other_with_its_token(
    workers: tuple[ServeProcess, ServeProcess], core: TalkingCore, receiver: Receiver
) -> None:
    a, b = workers
    first = Client(events=True)
    second: Client | None = None
    async with aiohttp.ClientSession() as http:
        try:
            status, answer = await post_offer(
                http, a, {"agent_id": "echo", "offer": await first.offer()}
            )
            assert status == 200, answer
            call_id, token = answer["call_id"], answer["resume_token"]
            await connect(first, answer)
            await wait_for(lambda: len(first.messages) >= 2, within=10)  # the chat so far
            await asyncio.sleep(0.6)  # the live state's batched write (every 0.2 s) has it
            for bad in (token.rsplit(".", 1)[0] + ".AAAA", token):
                if bad == token:  # the call's own token, for another call: foreign
                    resume = {"call_id": "not-this-call", "token": bad}
                else:
                    resume = {"call_id": call_id, "token": bad}
                forged = Client()
                status, refused = await post_offer(
                    http, b, {"agent_id": "echo", "offer": await forged.offer(), "resume": resume}
                )
                await forged.close()
                assert status == 403, refused

            a.process.send_signal(signal.SIGKILL)
            last_heard = await silent_for(first, SILENT_S)
            second = Client(events=True)
            status, resumed = await post_offer(
                http,
                b,
                {
                    "agent_id": "echo",
                    "offer": await second.offer(),
                    "resume": {"call_id": call_id, "token": token},
                },
            )
            assert status == 200, resumed
            assert resumed["call_id"] == call_id
            assert resumed["resume_token"] != token  # the next generation's
            await connect(second, resumed)
            gap_ms = (second.arrivals[0][0] - last_heard) * 1000
            print(f"caller-side audio gap: {gap_ms:.0f} ms (of which {SILENT_S:g} s to notice)")

            await wait_for(lambda: len(core.initiates) == 2, within=10)
            continuation = core.initiates[1]["session_continuation"]
            assert continuation["resumed"] is True
            assert "Hello, Ada." in said(continuation["chat"])
            assert "I lost my card." in said(continuation["chat"])
            await wait_for(lambda: any(m.get("text") == "Where were we?" for m in second.messages))

            replay = Client()
            again = {"call_id": call_id, "token": token}
            status, refused = await post_offer(
                http, b, {"agent_id": "echo", "offer": await replay.offer(), "resume": again}
            )
            await replay.close()
            assert status == 403, refused  # used once: the call is at the next generation
            assert b.metric("telephony_edge_bad_input_total", source=RESUME_SOURCE) == 3

            second.events.send(json.dumps({"type": "end"}))  # the page hangs up: a normal end
            await wait_for(lambda: receiver.received, within=10)
            ended = Client()
            later = {"call_id": call_id, "token": resumed["resume_token"]}
            status, refused = await post_offer(
                http, b, {"agent_id": "echo", "offer": await ended.offer(), "resume": later}
            )
            await ended.close()
            assert status == 409, refused  # a call that ended is never resumed
        finally:
            await first.close()
            if second is not None:
                await second.close()
    await asyncio.sleep(1.0)  # a second webhook would come by now
    [payload] = receiver.received
    assert payload["call_id"] == call_id
    assert payload["call_status"] == "user-ended", payload
    [move] = payload["migrations"]
    assert move["from_worker"] == "worker-a" and move["to_worker"] == "worker-b"
    assert move["cause"] == "crash"
    chat = said(json.loads(payload["chat"]))  # the whole conversation, across both workers
    assert chat.index("Hello, Ada.") < chat.index("Where were we?")
    assert [fc["name"] for fc in payload["function_calls"]] == ["block_card"]
    b.assert_healthy()


class HangingUpCore(AgentCoreServer):
    """Answers ``onready``, says a line, then ends the call (``onsessionended``)."""

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive_json(timeout=5)
        await ws.send_json({"method": "onready"})
        await ws.send_json({"method": "onresponsetext", "data": {"text": "Goodbye."}})
        await asyncio.sleep(0.5)
        await ws.send_json({"method": "onsessionended", "data": {"reason": "done"}})
        async for msg in ws:
            if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                break
        return ws


async def test_an_agent_hang_up_is_told_to_the_page_and_never_resumed(
    make_edge: Callable[..., Any], receiver: Receiver
) -> None:
    core = HangingUpCore()
    await core.server.start_server()
    edge: Edge = await make_edge(load_settings(None, **edge_config(core.url, receiver.url)))
    client = Client(events=True)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(
                edge.url("/webrtc/offer"),
                json={"agent_id": "echo", "offer": await client.offer()},
                headers={"Authorization": f"Bearer {API_KEY}"},
            ) as resp:
                answer = await resp.json()
            await connect(client, answer)
            await wait_for(lambda: {"type": "hangup"} in client.messages, within=10)
            await wait_for(lambda: receiver.received, within=10)
            assert receiver.received[0]["call_status"] == "agent-ended"
            again = Client()
            resume = {"call_id": answer["call_id"], "token": answer["resume_token"]}
            async with http.post(
                edge.url("/webrtc/offer"),
                json={"agent_id": "echo", "offer": await again.offer(), "resume": resume},
                headers={"Authorization": f"Bearer {API_KEY}"},
            ) as resp:
                assert resp.status == 409, await resp.text()  # over: never resumed
            await again.close()
    finally:
        await client.close()
        await core.server.close()


async def test_two_re_offers_with_one_token_one_wins_and_the_old_worker_lets_go(
    make_edge: Callable[..., Any], redis_server: Any, core: TalkingCore, receiver: Receiver
) -> None:
    """Both workers alive (the caller's path failed, not the worker): the caller's token sent
    to both at once wins on exactly one; the first worker's call, fenced, ends without a
    webhook of its own when its old connection closes, and the call goes on."""
    prefix = f"te-wrs-{uuid.uuid4().hex[:12]}:"
    a, b = [
        await make_edge(
            load_settings(
                None, **worker_config(name, redis_server.url, prefix, core.url, receiver.url)
            )
        )
        for name in ("a", "b")
    ]
    first = Client(events=True)
    offers = [Client(events=True), Client(events=True)]
    try:
        async with aiohttp.ClientSession() as http:
            status, answer = await post_offer(
                http, a, {"agent_id": "echo", "offer": await first.offer()}
            )
            assert status == 200, answer
            await connect(first, answer)
            await wait_for(lambda: len(first.messages) >= 2, within=10)
            await asyncio.sleep(0.6)  # the live state's batched write
            resume = {"call_id": answer["call_id"], "token": answer["resume_token"]}
            bodies = [
                {"agent_id": "echo", "offer": await client.offer(), "resume": resume}
                for client in offers
            ]
            results = await asyncio.gather(
                post_offer(http, a, bodies[0]), post_offer(http, b, bodies[1])
            )
            assert sorted(status for status, _ in results) == [200, 403], results
            winner = next(i for i, (status, _) in enumerate(results) if status == 200)
            await connect(offers[winner], results[winner][1])
            print(f"the re-offer to worker {'ab'[winner]} won")
            await first.close()  # the old connection goes: the old bridge lets go
            old = a.services.calls.get(answer["call_id"]) if winner == 1 else None
            await wait_for(lambda: old is None or old.state is CallState.ENDED, within=10)
            await asyncio.sleep(1.0)
            assert receiver.received == []  # the call is not over: it runs on the winner
            offers[winner].events.send(json.dumps({"type": "end"}))
            await wait_for(lambda: receiver.received, within=10)
    finally:
        for client in (first, *offers):
            await client.close()
    await asyncio.sleep(1.0)
    [payload] = receiver.received
    assert payload["call_status"] == "user-ended", payload
    assert len(payload["migrations"]) == 1, payload["migrations"]


async def test_a_re_offer_with_the_coordinator_away_is_told_to_try_again(
    make_edge: Callable[..., Any], core: TalkingCore, receiver: Receiver
) -> None:
    """Redis gone between the call and its re-offer: 503 (try again), never a 500."""
    with redis_servers.redis_server() as redis:
        config = worker_config("a", redis.url, "te-wrs-away:", core.url, receiver.url)
        edge: Edge = await make_edge(load_settings(None, **config))
        first = Client(events=True)
        try:
            async with aiohttp.ClientSession() as http:
                body = {"agent_id": "echo", "offer": await first.offer()}
                status, answer = await post_offer(http, edge, body)
                assert status == 200, answer
                await connect(first, answer)
                redis.kill()
                again = Client()
                resume = {"call_id": answer["call_id"], "token": answer["resume_token"]}
                body = {"agent_id": "echo", "offer": await again.offer(), "resume": resume}
                status, refused = await post_offer(http, edge, body)
                await again.close()
                assert status == 503, refused
        finally:
            await first.close()


async def test_a_resumed_call_reopens_its_agent_session_while_ice_and_dtls_connect(
    make_edge: Callable[..., Any], redis_server: Any, core: TalkingCore, receiver: Receiver
) -> None:
    """The agent link is not on the caller's gap: a re-offer's answer held back by its
    caller (no ICE, no DTLS yet) already has the core told the call resumed."""
    prefix = f"te-wrs-{uuid.uuid4().hex[:12]}:"
    a, b = [
        await make_edge(
            load_settings(
                None, **worker_config(name, redis_server.url, prefix, core.url, receiver.url)
            )
        )
        for name in ("a", "b")
    ]
    first, second = Client(events=True), Client(events=True)
    try:
        async with aiohttp.ClientSession() as http:
            status, answer = await post_offer(
                http, a, {"agent_id": "echo", "offer": await first.offer()}
            )
            assert status == 200, answer
            await connect(first, answer)
            await wait_for(lambda: len(first.messages) >= 2, within=10)
            await asyncio.sleep(0.6)  # the live state's batched write
            resume = {"call_id": answer["call_id"], "token": answer["resume_token"]}
            body = {"agent_id": "echo", "offer": await second.offer(), "resume": resume}
            status, resumed = await post_offer(http, b, body)
            assert status == 200, resumed
            await wait_for(lambda: len(core.initiates) == 2, within=5)  # the answer not yet set
            assert core.initiates[1]["session_continuation"]["resumed"] is True
            assert second.pc.connectionState == "new"
            await connect(second, resumed)
            await first.close()
            await wait_for(lambda: any(m.get("text") == "Where were we?" for m in second.messages))
    finally:
        await first.close()
        await second.close()


async def test_pages_behind_one_address_all_come_back_past_the_new_call_rate_limit(
    make_edge: Callable[..., Any], redis_server: Any, core: TalkingCore, receiver: Receiver
) -> None:
    """Eight widget calls from one address (an office NAT) re-offer to B at once with the
    public key: B's limit of five new calls at once per client does not apply to re-offers
    whose token checks out (counted per call), so every call comes back."""
    prefix = f"te-wrs-{uuid.uuid4().hex[:12]}:"
    edges = []
    for name, burst in (("a", 50), ("b", 5)):  # B keeps the default burst
        config = worker_config(name, redis_server.url, prefix, core.url, receiver.url)
        config["api"]["public_key"] = PUBLIC_KEY
        config["agents"]["echo"]["allow_public_key"] = True
        config["webrtc"].update(allowed_origins=[ORIGIN], public_burst=burst)
        edges.append(await make_edge(load_settings(None, **config)))
    a, b = edges
    headers = {"Authorization": f"Bearer {PUBLIC_KEY}", "Origin": ORIGIN}
    first = [Client() for _ in range(PAGES)]
    again = [Client() for _ in range(PAGES)]
    try:
        async with aiohttp.ClientSession(headers=headers) as http:

            async def offer(edge: Edge, client: Client, **extra: Any) -> tuple[int, Any]:
                body = {"agent_id": "echo", "offer": await client.offer(), **extra}
                async with http.post(edge.url("/webrtc/offer"), json=body) as resp:
                    return resp.status, await resp.json()

            answers = [answer for _, answer in [await offer(a, client) for client in first]]
            assert all("resume_token" in answer for answer in answers), answers
            await asyncio.gather(*(connect(c, ans) for c, ans in zip(first, answers, strict=True)))
            await asyncio.sleep(0.6)  # the live state's batched write
            tokens = [{"call_id": ans["call_id"], "token": ans["resume_token"]} for ans in answers]
            resumed = await asyncio.gather(
                *(offer(b, c, resume=token) for c, token in zip(again, tokens, strict=True))
            )
            assert [status for status, _ in resumed] == [200] * PAGES, resumed
    finally:
        for client in (*first, *again):
            await client.close()
