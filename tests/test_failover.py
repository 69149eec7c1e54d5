"""Twilio calls outlive their worker: SIGKILL and SIGTERM under live calls, end to end.

Two real workers behind Caddy on a real ``redis-server`` (``tests/failover_cluster.py``);
the simulated Twilio reaches them only through Caddy and, as Twilio documents for
``<Connect><Stream>``, goes on with the TwiML after it when a stream ends: the
edge's ``<Redirect>``, which whichever worker is alive answers with a new stream.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from xml.etree import ElementTree

from telephony_edge.twilio import twiml
from telephony_edge.twilio.signature import SIGNATURE_HEADER, compute_signature
from tests.conftest import wait_for
from tests.failover_cluster import (
    API_KEY,
    ASKED,
    AUTH_TOKEN,
    GREETING,
    RESUMED,
    Cluster,
    Live,
    cluster,
)

CALLS = 20
MAX_GAP_S = 2.0  # what the issue asks of the caller's audio gap


def lines(chat: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(entry["role"], entry["content"]) for entry in chat]


async def talking(c: Cluster, calls: list[Live], on: str) -> None:
    """Every call runs on worker ``on``, the agent talks, and the chat so far is written."""
    await wait_for(lambda: all(live.call.result.frames_received > 0 for live in calls), 10)
    for live in calls:
        assert (await c.record(live.call_id, "worker-b"))["owner"] == on
    await asyncio.sleep(2.0)  # the live state is written every second


async def all_resumed(calls: list[Live], within: float) -> None:
    def resumed(live: Live) -> bool:
        resumes = live.call.result.resumes
        return bool(resumes) and resumes[-1].gap_s is not None

    await wait_for(lambda: all(resumed(live) for live in calls), within)


async def one_webhook_each(c: Cluster, calls: list[Live]) -> list[dict[str, Any]]:
    await wait_for(lambda: all(c.webhooks_of(live.call_id) for live in calls), 20)
    await asyncio.sleep(1.0)  # time for a second one, were one coming
    hooks = []
    for live in calls:
        [hook] = c.webhooks_of(live.call_id)
        hooks.append(hook)
    return hooks


async def test_calls_on_a_killed_worker_go_on_on_the_other_with_their_conversation(
    redis_server: Any, tmp_path: Path
) -> None:
    async with cluster(tmp_path, redis_server.url) as c:
        calls = await c.place(CALLS)
        await talking(c, calls, "worker-a")
        c.workers["worker-a"].process.kill()  # mid-speech: the agent talks in every call

        await all_resumed(calls, within=20)
        for live in calls:
            [resume] = live.call.result.resumes
            assert resume.gap_s is not None and resume.gap_s <= MAX_GAP_S, resume
            continuation = c.core.resumed(live.call_id)
            assert continuation is not None, "the agent core was not told the call resumed"
            assert lines(continuation["chat"]) == [("assistant", GREETING), ("user", ASKED)]
            assert continuation["resume"]["from_worker"] == "worker-a"
            assert continuation["resume"]["cause"] == "crash"
            assert (await c.record(live.call_id, "worker-b"))["owner"] == "worker-b"

        await c.hang_up(calls)
        for hook in await one_webhook_each(c, calls):
            assert hook["call_status"] == "user-ended"
            assert lines(json.loads(hook["chat"])) == [
                ("assistant", GREETING),
                ("user", ASKED),
                ("assistant", RESUMED),
            ]
            [move] = hook["migrations"]
            assert (move["from_worker"], move["to_worker"], move["cause"]) == (
                "worker-a",
                "worker-b",
                "crash",
            )
            assert 0 <= move["gap_ms"] <= MAX_GAP_S * 1000
        survivor = c.workers["worker-b"]
        survivor.assert_healthy()
        assert survivor.metric("telephony_edge_call_migrations_total", cause="crash") == CALLS


async def test_a_normal_end_is_never_resumed(redis_server: Any, tmp_path: Path) -> None:
    async with cluster(tmp_path, redis_server.url) as c:
        by_caller, by_api = await c.place(2)
        await talking(c, [by_caller, by_api], "worker-a")
        await c.hang_up([by_caller])  # the caller hangs up: Twilio's stop
        headers = {"Authorization": f"Bearer {API_KEY}"}
        url = f"{c.url}/calls/{by_api.call_id}/hangup"
        async with c.session.post(url, headers=headers) as resp:  # through the REST stand-in
            assert resp.status == 200, await resp.text()
        assert await by_api.call.wait_closed(5)
        by_api.talking.cancel()
        hooks = await one_webhook_each(c, [by_caller, by_api])
        assert [hook["call_status"] for hook in hooks] == ["user-ended", "api-ended"]
        for live, hook in zip((by_caller, by_api), hooks, strict=True):
            assert "migrations" not in hook
            assert live.call.result.resumes == []
            assert len(c.core.initiates[live.call_id]) == 1

        # Twilio asking what next for a call that is over (its stream closed after the
        # end was written) is told to hang up: no new stream
        fields = {**by_caller.call.webhook_fields(), "CallStatus": "in-progress"}
        resume_url = f"{twiml.resume_url(c.url, by_caller.call_id)}&{urlencode(fields)}"
        signed = {SIGNATURE_HEADER: compute_signature(AUTH_TOKEN, resume_url, {})}
        async with c.session.get(resume_url, headers=signed) as resp:
            assert resp.status == 200
            answer = ElementTree.fromstring(await resp.text())
        assert [verb.tag for verb in answer] == ["Hangup"]
        async with c.session.get(resume_url, headers=signed) as resp:
            assert resp.status == 403  # each <Redirect> once: a replay is refused
        assert c.workers["worker-a"].metric("telephony_edge_call_migrations_total") == 0
        c.workers["worker-a"].assert_healthy()


async def test_a_rolling_restart_moves_the_calls_and_cuts_none(
    redis_server: Any, tmp_path: Path
) -> None:
    async with cluster(tmp_path, redis_server.url) as c:
        calls = await c.place(CALLS // 2)
        await talking(c, calls, "worker-a")
        draining = c.workers["worker-a"]
        draining.process.send_signal(signal.SIGTERM)

        await all_resumed(calls, within=20)
        await wait_for(lambda: draining.process.poll() is not None, 15)
        assert draining.process.returncode == 0  # moved its calls and left, no waiting
        assert "calls_moved" in draining.log
        for live in calls:
            [resume] = live.call.result.resumes
            assert resume.gap_s is not None and resume.gap_s <= MAX_GAP_S, resume
            continuation = c.core.resumed(live.call_id)
            assert continuation is not None and continuation["resume"]["cause"] == "drain"

        await c.hang_up(calls)
        for hook in await one_webhook_each(c, calls):
            assert hook["call_status"] == "user-ended"  # none cut: each ended by its caller
            [move] = hook["migrations"]
            assert (move["from_worker"], move["to_worker"], move["cause"]) == (
                "worker-a",
                "worker-b",
                "drain",
            )
        c.workers["worker-b"].assert_healthy()
