"""Calls on a killed worker: how many go on, after how long a gap, at what Redis cost.

    python bench/failover.py --calls 20 --json
    python bench/failover.py --calls 20 --network vonage --json

Starts a private ``redis-server``, two ``telephony-edge serve`` workers behind Caddy
(``tests/failover_cluster.py``: the first takes every call while it is ready), places
``--calls`` simulated Twilio calls (``--network vonage``: Vonage calls; the cluster's
network adapters) on the first, lets the agent core talk in each, and
measures ``--window`` seconds of steady calls, with the default leases (15 s, renewed every
5 s): Redis commands per call-minute (``INFO commandstats``, every command the server ran,
those inside scripts too), the live state's share of them (its script, ``put_live``, runs
``HGET`` and ``SET`` per call written and ``RPUSH`` + ``PEXPIRE`` per list that grew; no
other steady-call step uses ``SET`` or ``RPUSH``), and the live-state writes per
call-minute (``telephony_edge_live_state_writes_total``). Then it SIGKILLs the
first worker while the agent talks in every call, and for each call reads from the
simulated network: when the stream broke, when Twilio's ``<Redirect>`` (Vonage's
``notify``) brought a new stream (detection and takeover), and the caller-side audio
gap (the last agent audio heard before the break to the first after). The callers
hang up; each call's end-of-call webhook must carry one ``migrations`` entry (the
edge's own gap: the break to the new agent's ``onready``).

A call *continued* when its audio came back and its one webhook names the move. The
last line is JSON: ``continued_share`` (0-1), ``gap_p50_ms``, ``gap_p95_ms``,
``gap_max_ms``, ``stream_back_p95_ms`` (the break to the new stream), ``edge_gap_p95_ms``
(the webhooks' ``gap_ms``), ``redis_commands_per_call_minute``,
``live_state_commands_per_call_minute``, ``live_state_writes_per_call_minute``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from redis.asyncio import Redis  # noqa: E402

from tests import failover_cluster  # noqa: E402
from tests.coord.redis_servers import redis_server  # noqa: E402
from tests.failover_cluster import Cluster, Live  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile (``q`` in 0-100) of ``values``; 0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


async def commands(redis: Redis) -> dict[str, int]:
    """Each command's count since the server's stats were reset (``cmdstat_set`` → ``set``)."""
    stats = await redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(entry["calls"]) for name, entry in stats.items()}


async def steady(c: Cluster, redis: Redis, calls: int, window_s: float) -> dict[str, Any]:
    """Redis commands (all, and the live state's) and live-state writes per call-minute."""
    worker = c.workers["worker-a"]
    writes = worker.metric("telephony_edge_live_state_writes_total")
    await redis.config_resetstat()
    await asyncio.sleep(window_s)
    ran = await commands(redis)
    written = worker.metric("telephony_edge_live_state_writes_total") - writes
    call_minutes = calls * window_s / 60
    # per call written: HGET + SET; per list grown: RPUSH + PEXPIRE; per flush (every second)
    # one EVALSHA per bucket written, at most 32 (the default index buckets) whatever the calls
    live = 2 * ran.get("set", 0) + 2 * ran.get("rpush", 0) + min(32, calls) * window_s
    top = sorted(ran.items(), key=lambda item: -item[1])[:8]
    return {
        "redis_commands_per_call_minute": round(sum(ran.values()) / call_minutes, 1),
        "live_state_commands_per_call_minute": round(live / call_minutes, 1),
        "live_state_writes_per_call_minute": round(written / call_minutes, 1),
        "redis_top_commands_per_call_minute": {
            name: round(count / call_minutes, 1) for name, count in top
        },
    }


async def run(calls: int, window_s: float, directory: Path, network: str) -> dict[str, Any]:
    with redis_server() as server:
        redis = Redis.from_url(server.url)
        try:
            started = failover_cluster.cluster(
                directory,
                server.url,
                network=network,
                calls={},  # the default leases
            )
            async with started as c:
                placed = await c.place(calls)
                await asyncio.sleep(3.0)  # every agent talks; the chat so far is written
                cost = await steady(c, redis, calls, window_s)
                c.workers["worker-a"].process.kill()
                await _until(lambda: all(c.net.back(live) for live in placed), 20.0)
                await c.hang_up(placed)
                await _until_reported(c, placed, 20.0)
                return {"network": network, **_figures(c, placed), **cost}
        finally:
            await redis.aclose()


async def _until(done: Callable[[], bool], within: float) -> None:
    """Until ``done()`` or ``within`` seconds; what did not happen shows in the figures."""
    for _ in range(round(within / 0.1)):
        if done():
            return
        await asyncio.sleep(0.1)


async def _until_reported(c: Cluster, calls: list[Live], within: float) -> None:
    await _until(lambda: all(c.webhooks_of(live.call_id) for live in calls), within)
    await asyncio.sleep(1.0)  # a second webhook, were one coming


def _figures(c: Cluster, calls: list[Live]) -> dict[str, Any]:
    gaps, back, edge_gaps = [], [], []
    continued = 0
    for live in calls:
        moved = c.net.back(live)
        hooks = c.webhooks_of(live.call_id)
        moves = hooks[0].get("migrations", []) if len(hooks) == 1 else []
        if moved is not None and len(moves) == 1:
            continued += 1
            gaps.append(moved.gap_s * 1000)
            if moved.socket_back_s is not None:
                back.append(moved.socket_back_s * 1000)
            edge_gaps.append(float(moves[0]["gap_ms"]))
    return {
        "calls": len(calls),
        "continued": continued,
        "continued_share": round(continued / len(calls), 3) if calls else 0.0,
        "gap_p50_ms": round(percentile(gaps, 50)),
        "gap_p95_ms": round(percentile(gaps, 95)),
        "gap_max_ms": round(max(gaps, default=0.0)),
        "stream_back_p50_ms": round(percentile(back, 50)),
        "stream_back_p95_ms": round(percentile(back, 95)),
        "edge_gap_p50_ms": round(percentile(edge_gaps, 50)),
        "edge_gap_p95_ms": round(percentile(edge_gaps, 95)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--window", type=float, default=10.0, help="steady seconds measured")
    parser.add_argument("--json", action="store_true", help="end with one line of JSON")
    parser.add_argument("--network", choices=("twilio", "vonage"), default="twilio")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="te-failover-") as tmp:
        figures = asyncio.run(run(args.calls, args.window, Path(tmp), args.network))
    print(f"calls on the killed worker: {figures['calls']}, went on: {figures['continued']}")
    print(
        f"caller's audio gap: p50 {figures['gap_p50_ms']} ms, p95 {figures['gap_p95_ms']} ms,"
        f" max {figures['gap_max_ms']} ms"
    )
    print(
        f"break to the new stream: p50 {figures['stream_back_p50_ms']} ms,"
        f" p95 {figures['stream_back_p95_ms']} ms; the edge's gap (to onready):"
        f" p50 {figures['edge_gap_p50_ms']} ms, p95 {figures['edge_gap_p95_ms']} ms"
    )
    print(
        f"Redis: {figures['redis_commands_per_call_minute']} commands per call-minute, of which"
        f" the live state {figures['live_state_commands_per_call_minute']}"
        f" ({figures['live_state_writes_per_call_minute']} writes per call-minute);"
        f" by command: {figures['redis_top_commands_per_call_minute']}"
    )
    if args.json:
        print(json.dumps(figures))
    return 0 if figures["continued"] == figures["calls"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
