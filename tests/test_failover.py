"""Calls outlive their worker: SIGKILL and SIGTERM under live calls, end to end, per network.

Two real workers behind Caddy on a real ``redis-server`` (``tests/failover_cluster.py``);
the simulated carrier reaches them only through Caddy and goes on, as the carrier
documents, when a call's media socket ends without the call: Twilio with the TwiML after
``<Connect><Stream>`` (the edge's ``<Redirect>``), Vonage with the NCCO's action after
the websocket ``connect`` (the edge's ``notify``). Whichever worker is alive answers with
a new socket. Each test runs for each network (``network`` parameter); what differs
between them is in the cluster's :class:`~tests.failover_cluster.Network` adapters.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.failover_cluster import (
    API_KEY,
    ASKED,
    GREETING,
    NETWORKS,
    RESUMED,
    Cluster,
    Live,
    cluster,
)

CALLS = 20  # on a killed worker, per network (the figure)
ROLLING_CALLS = 40  # through a rolling restart, per network (the figure)
MAX_GAP_S = 2.0  # what the issue asks of the caller's audio gap

pytestmark = pytest.mark.parametrize("network", sorted(NETWORKS))


def lines(chat: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(entry["role"], entry["content"]) for entry in chat]


async def talking(c: Cluster, calls: list[Live], on: str) -> None:
    """Every call runs on worker ``on``, the agent talks, and the chat so far is written."""
    await wait_for(lambda: all(live.call.result.frames_received > 0 for live in calls), 10)
    owners = await asyncio.gather(*(c.record(live.call_id, "worker-b") for live in calls))
    assert {record["owner"] for record in owners} == {on}
    await asyncio.sleep(2.0)  # the live state is written every second


async def all_back(c: Cluster, calls: list[Live], within: float, moves: int = 1) -> list[float]:
    """Each call came back from its ``moves``-th break (agent audio on a new socket); the
    caller's gaps at that break."""

    def back(live: Live) -> bool:
        return len(c.net.backs(live)) == moves

    with contextlib.suppress(AssertionError):
        await wait_for(lambda: all(back(live) for live in calls), within)
    behind = [live for live in calls if not back(live)]
    assert not behind, [(live.call_id, c.net.state(live)) for live in behind[:3]]
    gaps = []
    for live in calls:
        last = c.net.backs(live)[-1]
        assert c.net.breaks(live) == moves
        assert 0 < last.gap_s <= MAX_GAP_S, last
        gaps.append(last.gap_s)
    return gaps


async def one_webhook_each(c: Cluster, calls: list[Live]) -> list[dict[str, Any]]:
    await wait_for(lambda: all(c.webhooks_of(live.call_id) for live in calls), 20)
    await asyncio.sleep(1.0)  # time for a second one, were one coming
    hooks = []
    for live in calls:
        [hook] = c.webhooks_of(live.call_id)
        hooks.append(hook)
    return hooks


async def test_calls_on_a_killed_worker_go_on_on_the_other_with_their_conversation(
    network: str, redis_server: Any, tmp_path: Path
) -> None:
    async with cluster(tmp_path, redis_server.url, network=network) as c:
        calls = await c.place(CALLS)
        await talking(c, calls, "worker-a")
        c.workers["worker-a"].process.kill()  # mid-speech: the agent talks in every call

        gaps = await all_back(c, calls, within=20)
        print(f"{network} caller-side gaps (s): max {max(gaps):.3f}")
        for live in calls:
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


async def test_a_normal_end_is_never_resumed(
    network: str, redis_server: Any, tmp_path: Path
) -> None:
    async with cluster(tmp_path, redis_server.url, network=network) as c:
        by_caller, by_api = await c.place(2)
        await talking(c, [by_caller, by_api], "worker-a")
        await c.hang_up([by_caller])  # the caller hangs up: the call ends, and goes no further
        headers = {"Authorization": f"Bearer {API_KEY}"}
        url = f"{c.url}/calls/{by_api.call_id}/hangup"
        async with c.session.post(url, headers=headers) as resp:  # through the network's API
            assert resp.status == 200, await resp.text()
        assert await c.net.over(by_api, 5)
        by_api.talking.cancel()
        hooks = await one_webhook_each(c, [by_caller, by_api])
        assert [hook["call_status"] for hook in hooks] == ["user-ended", "api-ended"]
        for live, hook in zip((by_caller, by_api), hooks, strict=True):
            assert "migrations" not in hook
            assert c.net.breaks(live) == 0
            assert len(c.core.initiates[live.call_id]) == 1

        # the network asking what next for a call that is over gets no media again (Twilio:
        # <Hangup>; Vonage: no NCCO), and each of its requests is taken once (a replay: 4xx)
        first, replay = await c.net.ask_resume(c, by_caller)
        assert first[0] in (200, 204) and not first[1]
        assert replay[0] in (401, 403)
        assert c.workers["worker-a"].metric("telephony_edge_call_migrations_total") == 0
        c.workers["worker-a"].assert_healthy()


async def test_a_rolling_restart_moves_the_calls_and_cuts_none(
    network: str, redis_server: Any, tmp_path: Path
) -> None:
    """Both workers restarted in turn under the calls: worker-a drains (its calls move to
    worker-b) and is replaced by worker-c; then worker-b drains (they move to worker-c)."""
    async with cluster(tmp_path, redis_server.url, network=network) as c:
        c.core.talk_on_resume = True  # mid-speech at the second move too
        calls = await c.place(ROLLING_CALLS)
        await talking(c, calls, "worker-a")
        steps = [("worker-a", "worker-b"), ("worker-b", "worker-c")]
        for moves, (old, new) in enumerate(steps, 1):
            draining = c.workers[old]
            draining.process.send_signal(signal.SIGTERM)
            gaps = await all_back(c, calls, within=20, moves=moves)
            print(f"{network} drain {moves} gaps (s): max {max(gaps):.3f}")
            await wait_for(lambda d=draining: d.process.poll() is not None, 15)  # type: ignore[misc]
            assert draining.process.returncode == 0  # moved its calls and left, no waiting
            assert "calls_moved" in draining.log
            owners = await asyncio.gather(*(c.record(live.call_id, new) for live in calls))
            assert {record["owner"] for record in owners} == {new}
            if moves == 1:
                await c.replace("worker-c")  # the restarted pod
        for live in calls:
            continuation = c.core.resumed(live.call_id)
            assert continuation is not None and continuation["resume"]["cause"] == "drain"

        await c.hang_up(calls)
        for hook in await one_webhook_each(c, calls):
            assert hook["call_status"] == "user-ended"  # none cut: each ended by its caller
            moved = [(m["from_worker"], m["to_worker"], m["cause"]) for m in hook["migrations"]]
            assert moved == [("worker-a", "worker-b", "drain"), ("worker-b", "worker-c", "drain")]
        c.workers["worker-c"].assert_healthy()
