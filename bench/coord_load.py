"""How many calls one Redis primary coordinates: operations per call, calls/s, p99 latency.

Drives :class:`RedisCoordinator` directly (no HTTP, no audio) with the steps
one Twilio call costs the coordinator, in the order the edge takes them:

  setup     register_pending (CallSid → call), create_call, register_pending
            (stream token), claim_pending (stream start), update_call
            created→connecting (CAS), claim_owner, acquire_agent_slot,
            update_call connecting→active (CAS)
  teardown  release_agent_slot, release_owner, update_call →ended (CAS),
            enqueue (end-of-call webhook), peek_pending + update_call
            (Twilio's ``completed`` status callback)
  delivery  reserve + ack (the webhook dispatcher)

Mid-call a call costs the coordinator nothing; each *worker* heartbeats
(heartbeat + live_workers every 5 s) and blocks on its control inbox
(one XREAD per second). Part 1 runs calls one by one and counts the server's
commands per call from ``INFO commandstats`` deltas (commands run inside Lua
scripts are counted there too; EVALSHA is the round trip). Part 2 runs
``--workers`` processes (default 4), each with ``--concurrency`` calls in
flight, for ``--seconds``, and reports calls/s and p50/p99 latency per
operation, then the concurrent calls one primary serves at that rate for
calls of ``--call-minutes`` average length.

    python bench/coord_load.py [--workers 4] [--concurrency 32] [--seconds 10]
                               [--redis-url redis://…]   # default: a private redis-server
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from redis.asyncio import Redis  # noqa: E402

from telephony_edge.calls.record import CallRecord, CallState  # noqa: E402
from telephony_edge.coord.redis import RedisCoordinator  # noqa: E402

HEARTBEAT_S = 5.0
WEBHOOK_QUEUE = "bench-webhooks"
WEBHOOK_BODY = "x" * 2000  # about an end-of-call payload with a short transcript
LIVE = [str(CallState.CONNECTING), str(CallState.ACTIVE)]


async def one_call(coord: RedisCoordinator, worker: str, lat: dict[str, list[float]]) -> None:
    """The coordinator steps of one call, each timed."""
    call_id = f"call_{uuid.uuid4().hex}"
    sid = f"CA{uuid.uuid4().hex}"
    record = CallRecord(
        agent_id="demo",
        provider="twilio",
        direction="inbound",
        from_="+15555550100",
        to="+15555550199",
        region="us",
        provider_call_id=sid,
    )
    record.call_id = call_id
    data = record.to_dict()
    clock = time.perf_counter

    async def step(name: str, coro: Any) -> Any:
        t0 = clock()
        result = await coro
        lat[name].append(clock() - t0)
        return result

    await step("register_pending", coord.register_pending(f"pc:{sid}", {"call_id": call_id}, 1200))
    await step("create_call", coord.create_call(call_id, data, ttl=1200))
    await step("register_pending", coord.register_pending(f"tok:{call_id}", {"sid": sid}, 60))
    await step("claim_pending", coord.claim_pending(f"tok:{call_id}"))
    await step(
        "update_call",
        coord.update_call(call_id, {"state": "connecting", "owner": worker}, if_state=["created"]),
    )
    await step("claim_owner", coord.claim_owner(call_id, worker))
    await step("acquire_agent_slot", coord.acquire_agent_slot("demo", call_id, 1_000_000))
    await step("update_call", coord.update_call(call_id, {"state": "active"}, if_state=LIVE[:1]))
    await step("release_agent_slot", coord.release_agent_slot("demo", call_id))
    await step("release_owner", coord.release_owner(call_id, worker))
    await step(
        "update_call",
        coord.update_call(
            call_id, {"state": "ended", "call_status": "user-ended"}, if_state=["created", *LIVE]
        ),
    )
    await step(
        "enqueue", coord.enqueue(WEBHOOK_QUEUE, call_id, {"call_id": call_id, "body": WEBHOOK_BODY})
    )
    await step("peek_pending", coord.peek_pending(f"pc:{sid}"))
    await step("update_call", coord.update_call(call_id, {"provider_status": "completed"}))
    job = await step("reserve", coord.reserve(WEBHOOK_QUEUE, 30))
    if job is not None:
        await step("ack", coord.ack(WEBHOOK_QUEUE, job.job_id))


async def background(coord: RedisCoordinator, worker: str, stop: asyncio.Event) -> None:
    """What a worker does whatever its calls: heartbeat every 5 s, listen to its inbox."""

    async def heartbeats() -> None:
        while not stop.is_set():
            await coord.heartbeat(worker, {"active_calls": 0, "accepting": True}, ttl=15)
            await coord.live_workers()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), HEARTBEAT_S)

    async def inbox() -> None:
        async for _ in coord.control_messages(worker):
            pass

    listener = asyncio.create_task(inbox())
    await heartbeats()
    listener.cancel()


async def worker_main(url: str, prefix: str, concurrency: int, seconds: float) -> dict[str, Any]:
    coord = RedisCoordinator.from_url(url, key_prefix=prefix)
    worker = f"bench-{os.getpid()}"
    lat: dict[str, list[float]] = defaultdict(list)
    calls = 0
    stop = asyncio.Event()
    deadline = time.monotonic() + seconds

    async def loop() -> None:
        nonlocal calls
        while time.monotonic() < deadline:
            await one_call(coord, worker, lat)
            calls += 1

    bg = asyncio.create_task(background(coord, worker, stop))
    started = time.monotonic()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    elapsed = time.monotonic() - started
    stop.set()
    await bg
    await coord.close()
    return {"calls": calls, "elapsed": elapsed, "lat": dict(lat)}


async def _one_probe(url: str, lat: dict[str, list[float]]) -> None:
    coord = RedisCoordinator.from_url(url, key_prefix=f"bench-probe-{uuid.uuid4().hex[:6]}:")
    await one_call(coord, "w", lat)
    await coord.close()


def _run_worker(args: tuple[str, str, int, float]) -> dict[str, Any]:
    return asyncio.run(worker_main(*args))


def redis_cpu_s(url: str) -> float:
    """CPU seconds the server has used (user + sys), to tell a busy Redis from busy clients."""

    async def read() -> float:
        client = Redis.from_url(url)
        info = await client.info("cpu")
        await client.aclose()
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    return asyncio.run(read())


def commandstats(url: str) -> dict[str, int]:
    async def read() -> dict[str, int]:
        client = Redis.from_url(url)
        info = await client.info("commandstats")
        await client.aclose()
        return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in info.items()}

    return asyncio.run(read())


def ops_per_call(url: str, calls: int) -> tuple[float, dict[str, float]]:
    """Server commands per call (setup + teardown + delivery) from INFO commandstats deltas."""

    async def run() -> None:
        coord = RedisCoordinator.from_url(url, key_prefix=f"bench-ops-{uuid.uuid4().hex[:6]}:")
        lat: dict[str, list[float]] = defaultdict(list)
        await one_call(coord, "w", lat)  # load the scripts first
        await coord.close()

    async def measured() -> None:
        coord = RedisCoordinator.from_url(url, key_prefix=f"bench-ops-{uuid.uuid4().hex[:6]}:")
        lat: dict[str, list[float]] = defaultdict(list)
        for _ in range(calls):
            await one_call(coord, "w", lat)
        await coord.close()

    asyncio.run(run())
    before = commandstats(url)
    asyncio.run(measured())
    after = commandstats(url)
    delta = {k: (after.get(k, 0) - before.get(k, 0)) / calls for k in after}
    delta.pop("info", None)
    delta = {k: v for k, v in delta.items() if v > 0}
    return sum(delta.values()), delta


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis() -> tuple[subprocess.Popen[bytes], str, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found (apt-get install redis-server); or --redis-url")
    port, directory = free_port(), tempfile.mkdtemp(prefix="te-bench-")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=directory,
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(200):
        try:
            commandstats(url)
            break
        except Exception:
            time.sleep(0.05)
    return process, url, directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight per worker")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--ops-calls", type=int, default=200, help="calls for the op count")
    parser.add_argument("--call-minutes", type=float, default=3.0)
    parser.add_argument("--max-calls-per-worker", type=int, default=500)
    args = parser.parse_args()
    server = None
    url = args.redis_url
    if url is None:
        server, url, directory = start_redis()
    try:
        per_call, breakdown = ops_per_call(url, args.ops_calls)
        print(f"Redis commands per call (setup + teardown + webhook delivery): {per_call:.1f}")
        for name, count in sorted(breakdown.items(), key=lambda kv: -kv[1]):
            print(f"  {name:<14} {count:5.1f}")
        # client round trips: one per coordinator step (a MULTI block is one pipeline)
        probe: dict[str, list[float]] = defaultdict(list)
        asyncio.run(_one_probe(url, probe))
        round_trips = sum(len(v) for v in probe.values())
        print(f"Client round trips per call: {round_trips}")
        prefix = f"bench-{uuid.uuid4().hex[:6]}:"
        jobs = [(url, prefix, args.concurrency, args.seconds)] * args.workers
        cpu_before = redis_cpu_s(url)
        with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
            results = pool.map(_run_worker, jobs)
        cpu = redis_cpu_s(url) - cpu_before
        calls = sum(r["calls"] for r in results)
        elapsed = max(r["elapsed"] for r in results)
        rate = calls / elapsed
        lat: dict[str, list[float]] = defaultdict(list)
        for result in results:
            for name, values in result["lat"].items():
                lat[name].extend(values)
        every = [v for values in lat.values() for v in values]
        print(
            f"\n{args.workers} worker processes x {args.concurrency} calls in flight, "
            f"{elapsed:.1f} s: {calls} calls, {rate:.0f} calls/s, "
            f"{rate * per_call:.0f} Redis commands/s; redis-server busy {cpu / elapsed:.0%} "
            f"of one core"
        )
        print(f"  {'operation':<20} {'p50 ms':>8} {'p99 ms':>8}")
        for name in sorted(lat):
            p50, p99 = pct(lat[name], 0.5) * 1e3, pct(lat[name], 0.99) * 1e3
            print(f"  {name:<20} {p50:8.2f} {p99:8.2f}")
        print(f"  {'all':<20} {pct(every, 0.5) * 1e3:8.2f} {pct(every, 0.99) * 1e3:8.2f}")
        duration_s = args.call_minutes * 60
        ceiling = calls / cpu if cpu > 0 else float("inf")
        print(
            f"redis-server CPU per call {cpu / calls * 1e6:.0f} µs: one busy core would sustain "
            f"about {ceiling:,.0f} calls/s (these clients, on this machine, reach {rate:.0f}), "
            f"i.e. about {ceiling * duration_s:,.0f} concurrent calls of "
            f"{args.call_minutes:g} min"
        )
        concurrent = rate * duration_s
        workers_needed = concurrent / args.max_calls_per_worker
        background = workers_needed * (2 / HEARTBEAT_S + 1.0)  # heartbeat + live_workers, XREAD
        share = (rate * per_call) / (rate * per_call + background)
        print(
            f"\nImplied: at {rate:.0f} call setups+teardowns/s and calls of "
            f"{args.call_minutes:g} min on average, one Redis primary coordinates about "
            f"{concurrent:,.0f} concurrent calls ({round_trips:.0f} round trips per call; "
            f"per-worker heartbeats and inbox reads for {workers_needed:,.0f} workers of "
            f"{args.max_calls_per_worker} calls take {1 - share:.1%} of the commands, "
            f"so about {concurrent * share:,.0f} with them)."
        )
    finally:
        if server is not None:
            server.kill()
            server.wait()
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
