"""Many WebRTC calls outlive their worker (issue 24): 20 on a SIGKILLed worker, 10 on a drain.

Two real ``telephony-edge serve`` workers on the session's ``redis-server``, each
with its own WebRTC media port range. The callers follow the documented
server-to-server flow (:class:`~tests.webrtc.resuming_caller.ResumingCaller`, told
both workers' URLs), five to a process (:mod:`tests.webrtc.caller_farm`). The
agent core is the failover cluster's :class:`~tests.failover_cluster.TalkingCore`:
two lines, then a tone for the rest of the call, so a worker killed mid-call is
killed mid-speech; a resumed call gets ``Sorry, where were we?`` and two seconds of
tone.

Every call must go on on the other worker: the caller's gap (its last voice packet
from the first worker to its first from the second, read from a ``tcpdump`` of both
workers' media ports, kernel timestamps) at most 2 s, the core told the chat so far
with ``resumed``, one end-of-call webhook per call with the whole chat and one move.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import statistics
import sys
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Receiver, ServeProcess, start_serve_process, stop_serve_process, wait_for
from tests.failover_cluster import ASKED, GREETING, RESUMED, TalkingCore
from tests.sip.capture import Capture
from tests.webrtc.resuming_caller import HeardAudio
from tests.webrtc.test_resume import worker_config

CALLS = 20
DRAIN_CALLS = 10
PER_PROCESS = 5
MAX_GAP_S = 2.0  # what the issue asks of the caller's audio gap
PORTS = 200  # each worker's media port range
PUBLIC_URL = "https://edge.example.com"  # one load balancer in front of both (a drain needs it)


class Farm:
    """A :mod:`tests.webrtc.caller_farm` process: its calls, asked over stdin/stdout."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.call_ids: list[str] = []
        self.back = 0
        self.failed: list[str] = []

    @classmethod
    async def place(cls, calls: int, urls: list[str]) -> Farm:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.webrtc.caller_farm", "--calls", str(calls), *urls,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        farm = cls(process)
        farm.call_ids = (await farm.read(60))["placed"]
        return farm

    async def read(self, within: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), within)
        assert line, f"the caller process exited ({self.process.returncode})"
        message: dict[str, Any] = json.loads(line)
        return message

    async def ask(self, line: str, within: float = 30) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()
        return await self.read(within)

    async def status(self) -> None:
        answer = await self.ask("status")
        self.back, self.failed = answer["back"], answer["failed"]

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()


@dataclass
class Cluster:
    workers: dict[str, ServeProcess]
    low: int  # the first media port of worker A (B's follow A's)
    core: TalkingCore
    receiver: Receiver

    @property
    def urls(self) -> list[str]:
        return [self.workers[name].base_url for name in ("worker-a", "worker-b")]

    def webhooks(self) -> dict[str, list[dict[str, Any]]]:
        by_call: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for payload in self.receiver.received:
            by_call[payload["call_id"]].append(payload)
        return by_call


@pytest.fixture(name="cluster")
async def fixture_cluster(
    redis_server: Any, receiver: Receiver, tmp_path: Path
) -> AsyncIterator[Cluster]:
    core = TalkingCore()
    await core.server.start_server()
    prefix = f"te-wrm-{uuid.uuid4().hex[:12]}:"
    low = random.randrange(20_000, 30_000 - 2 * PORTS)  # below the ephemeral ports
    workers: dict[str, ServeProcess] = {}
    for index, name in enumerate(("a", "b")):
        config = worker_config(name, redis_server.url, prefix, core.url, receiver.url)
        config["server"]["public_url"] = PUBLIC_URL
        config["server"]["drain_move_after_s"] = 1.0
        first = low + index * PORTS
        config["webrtc"].update(media_port_min=first, media_port_max=first + PORTS - 1)
        workers[f"worker-{name}"] = await asyncio.to_thread(
            start_serve_process, config, tmp_path / name
        )
    try:
        yield Cluster(workers, low, core, receiver)
    finally:
        for worker in workers.values():
            await asyncio.to_thread(stop_serve_process, worker)
        await core.server.close()


async def place(c: Cluster, count: int) -> list[Farm]:
    """``count`` calls on worker A, each hearing the agent, its chat in the live state."""
    farms = await asyncio.gather(
        *(Farm.place(PER_PROCESS, c.urls) for _ in range(count // PER_PROCESS))
    )
    await asyncio.sleep(1.0)  # the live state (written every 0.2 s) has the chat
    return list(farms)


async def all_back(farms: list[Farm], within: float) -> None:
    """Each call has heard the agent on a second connection (or gave up)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        await asyncio.gather(*(farm.status() for farm in farms))
        assert [failed for farm in farms for failed in farm.failed] == []
        if all(farm.back == PER_PROCESS for farm in farms):
            return
        assert loop.time() < deadline, [farm.back for farm in farms]
        await asyncio.sleep(0.2)


async def hang_up(farms: list[Farm]) -> list[dict[str, Any]]:
    """Every call says ``end``; each caller's report."""
    reports = await asyncio.gather(*(farm.ask("hangup") for farm in farms))
    return [caller for report in reports for caller in report["callers"]]


def chat_of(hook: dict[str, Any]) -> list[str]:
    return [entry["content"] for entry in json.loads(hook["chat"])]


async def one_webhook_each(c: Cluster, ids: set[str], cause: str) -> None:
    """Each call ended by its caller, once, with the whole chat and the one move."""
    await wait_for(lambda: ids <= set(c.webhooks()), within=30)
    await asyncio.sleep(1.0)  # time for a second one, were one coming
    hooks = c.webhooks()
    for call_id in ids:
        [hook] = hooks[call_id]
        assert hook["call_status"] == "user-ended", hook
        chat = chat_of(hook)
        assert chat.index(GREETING) < chat.index(ASKED) < chat.index(RESUMED), chat
        [move] = hook["migrations"]
        assert (move["from_worker"], move["to_worker"], move["cause"]) == (
            "worker-a",
            "worker-b",
            cause,
        )
        assert 0 <= move["gap_ms"] <= MAX_GAP_S * 1000


def moved(c: Cluster, callers: list[dict[str, Any]], reason: str, cause: str) -> None:
    """Each call re-offered once (for ``reason``) to B, and B's core got the chat so far."""
    for caller in callers:
        assert caller["reasons"] == [reason], caller
        assert caller["urls"][-1] == c.workers["worker-b"].base_url, caller
        continuation = c.core.resumed(caller["call_id"])
        assert continuation is not None, (caller, c.core.initiates.get(caller["call_id"]))
        said = [entry["content"] for entry in continuation["chat"]]
        assert said[:2] == [GREETING, ASKED], said
        assert continuation["resume"]["from_worker"] == "worker-a"
        assert continuation["resume"]["cause"] == cause


def gaps(capture: Capture, callers: list[dict[str, Any]]) -> list[float]:
    """Each caller's gap from the capture, printed with its distribution."""
    heard = HeardAudio(capture.datagrams())
    measured = [heard.gap_s(caller["ports"]) for caller in callers]
    ordered = sorted(gap for gap, _ in measured)
    answered = statistics.median(before for _, before in measured)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    print(
        f"caller-side gaps over {len(ordered)} calls (ms): min {ordered[0] * 1000:.0f},"
        f" p50 {statistics.median(ordered) * 1000:.0f}, p95 {p95 * 1000:.0f},"
        f" max {ordered[-1] * 1000:.0f}; all {[round(g * 1000) for g in ordered]};"
        f" the new worker's first ICE check at p50 {answered * 1000:.0f}"
    )
    return ordered


async def test_twenty_calls_on_a_killed_worker_go_on_on_the_other(
    cluster: Cluster, tmp_path: Path
) -> None:
    c = cluster
    farms: list[Farm] = []
    try:
        async with Capture(tmp_path / "media.pcap", c.low, c.low + 2 * PORTS - 1) as capture:
            farms = await place(c, CALLS)
            c.workers["worker-a"].process.send_signal(signal.SIGKILL)  # mid-speech in every call
            await all_back(farms, within=30)
            callers = await hang_up(farms)
    finally:
        await asyncio.gather(*(farm.stop() for farm in farms))
    moved(c, callers, "silence", "crash")
    measured = gaps(capture, callers)
    assert max(measured) <= MAX_GAP_S, measured
    await one_webhook_each(c, {caller["call_id"] for caller in callers}, "crash")
    survivor = c.workers["worker-b"]
    survivor.assert_healthy()
    assert survivor.metric("telephony_edge_call_migrations_total", cause="crash") == CALLS


async def test_a_drain_moves_ten_calls_and_cuts_none(cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    draining = c.workers["worker-a"]
    farms: list[Farm] = []
    try:
        async with Capture(tmp_path / "media.pcap", c.low, c.low + 2 * PORTS - 1) as capture:
            farms = await place(c, DRAIN_CALLS)
            draining.process.send_signal(signal.SIGTERM)
            await all_back(farms, within=30)
            await wait_for(lambda: draining.process.poll() is not None, within=20)
            callers = await hang_up(farms)
    finally:
        await asyncio.gather(*(farm.stop() for farm in farms))
    assert draining.process.returncode == 0  # moved its calls and left, no waiting
    assert "calls_moved" in draining.log
    moved(c, callers, "move", "drain")  # told to move, not left to notice
    measured = gaps(capture, callers)
    assert max(measured) <= MAX_GAP_S, measured
    await one_webhook_each(c, {caller["call_id"] for caller in callers}, "drain")
    c.workers["worker-b"].assert_healthy()
