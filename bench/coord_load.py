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

With ``--live-calls N`` it measures instead what a worker pays for the calls
it does *not* handle: N live records, leased by ``--workers`` worker
processes (each the real application: API, ``/status``, the call service's
reapers), each renewing its leases and running ``reap_lost`` and
``reap_unconnected`` every 5 s while ``/status`` and every page of
``GET /calls`` are asked of each worker in turn, for ``--live-seconds``. It
reports worker CPU per pass, the event loop's lag (a 1 ms sleep's overshoot,
sampled throughout, p99 and max over all workers) and Redis commands per
live call per minute (``INFO commandstats``: over a quiet first quarter with
the workers' own loops alone, and over the whole run). ``BENCH_DEBUG_LAG=1``
prints each lag over 10 ms with what this worker was doing::

    python bench/coord_load.py --live-calls 10000 [--workers 4] [--live-seconds 40]
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


# -- part 3: the reapers, /status and GET /calls at N live calls ------------------------------

LIVE_KEY = "bench-private-key-0123456789"
LAG_TICK_S = 0.001


def _live_settings(url: str, prefix: str, worker_id: str) -> Any:
    from telephony_edge.config_loading import load_settings

    return load_settings(
        None,
        agents={"demo": {"prompt": "You are a bench."}},
        api={"private_key": LIVE_KEY},
        server={"worker_id": worker_id},
        coordination={"redis_url": url, "key_prefix": prefix},
    )


def _live_record(call_id: str, worker: str, i: int) -> dict[str, Any]:
    record = CallRecord(
        agent_id="demo",
        provider=("twilio", "vonage", "sip", "webrtc")[i % 4],
        direction="inbound",
        from_="+15555550100",
        to="+15555550199",
        region="us",
        provider_call_id=f"CA{uuid.uuid4().hex}",
        metadata={"customer": f"c{i}", "notes": "x" * 200},
    )
    record.call_id = call_id
    record.owner = worker
    record.state = CallState.ACTIVE
    record.answered_at = record.created_at
    return record.to_dict()


async def seed_live(url: str, prefix: str, workers: list[str], calls: int) -> dict[str, list[str]]:
    """``calls`` live records, owned (leased) in turn by ``workers``."""
    coord = RedisCoordinator.from_url(url, key_prefix=prefix)
    owned: dict[str, list[str]] = {w: [] for w in workers}
    sem = asyncio.Semaphore(64)

    async def one(i: int) -> None:
        worker = workers[i % len(workers)]
        call_id = f"call_{uuid.uuid4().hex}"
        async with sem:
            await coord.create_call(call_id, _live_record(call_id, worker, i))
            await coord.claim_owner(call_id, worker, ttl=60)
        owned[worker].append(call_id)

    await asyncio.gather(*(one(i) for i in range(calls)))
    await coord.close()
    return owned


async def live_worker(
    url: str, prefix: str, worker: str, call_ids: list[str], port: int, seconds: float
) -> dict[str, Any]:
    """One worker: its real app (API, /status) and reapers, its leases renewed, lag sampled."""
    from aiohttp import web

    from telephony_edge.app import create_app
    from telephony_edge.services import SERVICES

    app = create_app(_live_settings(url, prefix, worker))
    services = app[SERVICES]
    service = services.call_service
    coord = services.coordinator
    app.cleanup_ctx.clear()  # the service's own loops stay off: this bench drives the passes
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    lags: list[float] = []
    worst: list[tuple[float, float, float]] = []
    spans: list[tuple[str, float, float]] = []
    cpu: dict[str, list[float]] = defaultdict(list)
    stop = asyncio.Event()

    async def lag_monitor() -> None:
        # perf_counter, not loop.time(): uvloop's clock counts whole milliseconds
        clock = time.perf_counter
        while not stop.is_set():
            t0, c0 = clock(), time.thread_time()
            await asyncio.sleep(LAG_TICK_S)
            lags.append(max(0.0, clock() - t0 - LAG_TICK_S))
            if lags[-1] > 0.01:
                worst.append((clock(), lags[-1], time.thread_time() - c0))

    async def timed(name: str, coro: Any) -> Any:
        t0, w0 = time.process_time(), time.perf_counter()
        try:
            result = await coro
        except Exception as exc:  # as the service's supervisor would: count it, go on
            cpu[f"{name}: failed ({type(exc).__name__})"].append(time.process_time() - t0)
            return None
        cpu[name].append(time.process_time() - t0)
        spans.append((name, w0, time.perf_counter()))
        return result

    async def every(interval: float, *steps: tuple[str, Any]) -> None:
        # as the call service's own loops: each on its own clock, never behind another
        while not stop.is_set():
            for name, step in steps:
                await timed(name, step())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    held = dict.fromkeys(call_ids, "demo")
    info = {"active_calls": len(call_ids), "accepting": True}
    started = time.perf_counter()
    monitor = asyncio.create_task(lag_monitor())
    await asyncio.sleep(0.5)
    loops = [
        every(
            HEARTBEAT_S,
            ("heartbeat", lambda: coord.heartbeat(worker, info, ttl=HEARTBEAT_S * 3)),
            ("renew_leases", lambda: coord.renew_leases(worker, held, 15.0)),
        ),
        every(HEARTBEAT_S, ("reap_lost", service.reap_lost)),
        every(HEARTBEAT_S, ("reap_unconnected", service.reap_unconnected)),
    ]
    tasks = [asyncio.create_task(loop) for loop in loops]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks)
    await monitor
    await runner.cleanup()
    await coord.close()
    if os.environ.get("BENCH_DEBUG_LAG"):
        for at, lag, ran in worst:
            during = [n for n, a, b in spans if a - 0.001 <= at - lag and at - lag <= b + 0.001]
            print(
                f"{worker}: lag {lag * 1e3:.1f} ms (this thread ran {ran * 1e3:.1f} ms of it)"
                f" during {during or 'no pass'}, {at - started:.1f} s in",
                flush=True,
            )
    return {"lags": lags, "cpu": dict(cpu)}


def _run_live_worker(args: tuple[str, str, str, list[str], int, float]) -> dict[str, Any]:
    import logging

    import uvloop

    logging.getLogger("telephony_edge").setLevel(logging.ERROR)

    return uvloop.run(live_worker(*args))


async def http_load(
    url: str, ports: list[int], quiet: float, seconds: float
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Once the workers answer: ``quiet`` seconds of their own loops alone (the Redis
    commands they cost, returned), then ``/status`` and every page of ``GET /calls``
    from each worker in turn for ``seconds``."""
    import aiohttp

    took: dict[str, list[float]] = defaultdict(list)
    headers = {"Authorization": f"Bearer {LIVE_KEY}", "Accept": "application/json"}
    async with aiohttp.ClientSession(headers=headers) as http:
        for port in ports:  # the worker processes are starting
            for _ in range(2400):
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                        if resp.status == 200:
                            break
                await asyncio.sleep(0.05)
        async with Redis.from_url(url) as client:
            before = await client.info("commandstats")
            await asyncio.sleep(quiet)
            after = await client.info("commandstats")
        background = {
            k.removeprefix("cmdstat_"): int(v["calls"]) - int(before.get(k, {"calls": 0})["calls"])
            for k, v in after.items()
            if k != "cmdstat_info"
        }
        deadline = time.monotonic() + seconds

        async def status(base: str) -> None:
            async with http.get(f"{base}/status") as resp:
                assert resp.status == 200, await resp.text()
                await resp.read()

        async def all_pages(base: str) -> int:
            cursor, pages = None, 0
            while True:
                query = "?limit=100" + (f"&cursor={cursor}" if cursor else "")
                async with http.get(f"{base}/calls{query}") as resp:
                    assert resp.status == 200, await resp.text()
                    body = await resp.json()
                pages += 1
                cursor = body["next_cursor"]
                if cursor is None:
                    return pages

        while time.monotonic() < deadline:
            for port in ports:
                base = f"http://127.0.0.1:{port}"
                for name, ask in (("/status", status), ("GET /calls (all pages)", all_pages)):
                    t0 = time.perf_counter()
                    try:  # the workers stop at the end of the run: a slow answer may not come
                        pages = await asyncio.wait_for(ask(base), deadline - time.monotonic())
                    except (TimeoutError, aiohttp.ClientError):
                        took[f"{name}: cut off by the run's end"].append(time.perf_counter() - t0)
                        return took, background
                    took[name].append(time.perf_counter() - t0)
                    if pages:
                        took["GET /calls (one page)"].append((time.perf_counter() - t0) / pages)
    return took, background


def live_bench(url: str, calls: int, workers: int, seconds: float) -> None:
    prefix = f"bench-live-{uuid.uuid4().hex[:6]}:"
    names = [f"bench-w{i}" for i in range(workers)]
    started = time.monotonic()
    owned = asyncio.run(seed_live(url, prefix, names, calls))
    print(f"\n{calls} live calls of {workers} workers seeded in {time.monotonic() - started:.1f} s")
    ports = [free_port() for _ in names]
    jobs = [(url, prefix, n, owned[n], p, seconds) for n, p in zip(names, ports, strict=True)]
    before = commandstats(url)
    cpu_before = redis_cpu_s(url)
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pending = pool.map_async(_run_live_worker, jobs)
        try:
            took, background = asyncio.run(http_load(url, ports, seconds * 0.25, seconds * 0.45))
        finally:
            results = pending.get()  # a worker's failure, if any, first
    redis_cpu = redis_cpu_s(url) - cpu_before
    after = commandstats(url)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    delta.pop("info", None)
    minutes = seconds / 60
    lags = [lag for r in results for lag in r["lags"]]
    cpu: dict[str, list[float]] = defaultdict(list)
    for result in results:
        for name, values in result["cpu"].items():
            cpu[name].extend(values)
    print(
        f"{workers} worker processes (uvloop) for {seconds:g} s, each: its leases renewed, "
        f"reap_lost and reap_unconnected every {HEARTBEAT_S:g} s; /status and GET /calls "
        f"(limit=100, every page) asked of each in turn"
    )
    print(f"  {'worker CPU per pass':<26} {'mean ms':>8} {'max ms':>8} {'passes':>7}")
    for name in sorted(cpu):
        values = cpu[name]
        print(
            f"  {name:<26} {sum(values) / len(values) * 1e3:8.1f} {max(values) * 1e3:8.1f} "
            f"{len(values):7d}"
        )
    print(f"  {'HTTP (client wall time)':<26} {'p50 ms':>8} {'max ms':>8} {'asked':>7}")
    for name in sorted(took):
        values = took[name]
        print(
            f"  {name:<26} {pct(values, 0.5) * 1e3:8.1f} {max(values) * 1e3:8.1f} {len(values):7d}"
        )
    print(
        f"  event-loop lag ({LAG_TICK_S * 1e3:g} ms sleeps, all workers): "
        f"p50 {pct(lags, 0.5) * 1e3:.2f} ms, p99 {pct(lags, 0.99) * 1e3:.2f} ms, "
        f"max {max(lags) * 1e3:.1f} ms"
    )
    quiet_minutes = seconds * 0.25 / 60
    for title, counts, span in (
        ("the workers' own loops alone (heartbeats, renewals, reapers)", background, quiet_minutes),
        ("the whole run, with the HTTP load", delta, minutes),
    ):
        total = sum(counts.values())
        print(f"  Redis commands per call per minute, {title}: {total / calls / span:.1f}")
        for name, count in sorted(counts.items(), key=lambda kv: -kv[1])[:6]:
            if count > 0:
                print(f"    {name:<16} {count / calls / span:7.2f}")
    print(f"  redis-server busy {redis_cpu / seconds:.0%} of one core over the run")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight per worker")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--ops-calls", type=int, default=200, help="calls for the op count")
    parser.add_argument("--call-minutes", type=float, default=3.0)
    parser.add_argument("--max-calls-per-worker", type=int, default=500)
    parser.add_argument(
        "--live-calls",
        type=int,
        default=0,
        help="instead: the reapers, /status and GET /calls at this many live calls",
    )
    parser.add_argument("--live-seconds", type=float, default=40.0)
    args = parser.parse_args()
    server = None
    url = args.redis_url
    if url is None:
        server, url, directory = start_redis()
    try:
        if args.live_calls:
            live_bench(url, args.live_calls, args.workers, args.live_seconds)
            return
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
