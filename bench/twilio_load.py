"""Load benchmark: N concurrent simulated Twilio calls against one edge worker process.

Three kinds of process:

* the edge, ``telephony-edge serve`` with Twilio enabled and ``agent_core.url``
  pointing at
* the built-in agent core, ``telephony-edge agent-core``, in its own process;
* load generators: the Twilio simulator (``telephony_edge.twilio.simulator``),
  ``--procs`` processes sharing the N calls.

Every call: a signed voice webhook, the TwiML's stream, then for ``--seconds``
the caller says a sentence (a speech fixture) and listens for 4 s while the
agent echoes it, at real time, in 20 ms μ-law media messages; then ``stop``.
Calls start spread over ``--ramp`` seconds. On a machine with several cores,
the edge is pinned to one core (``--edge-cpu``) and everything else kept off it.

Reported:

* setup time: webhook POST → stream started (simulator side, p50/p99), and the
  edge's own first caller frame → agent ``onready`` (``call_setup_seconds``);
* per-frame edge-added latency, both ways, from the edge's
  ``telephony_edge_relay_latency_seconds`` histogram (bucket-interpolated);
  plus the agent audio's arrival jitter at the simulator (pacing + network +
  load-generator lag) and how often the caller's playout buffer ran dry;
* frames lost: the edge's ``frames_dropped_total`` by reason, Twilio sequence
  gaps, malformed input, and caller frames sent vs relayed to the agent;
* the edge process's CPU seconds per call-minute (steady state, from
  ``/proc/PID/stat``); its RSS before the calls, at their peak (``VmHWM``,
  reset at the start of each phase) and ``--settle`` seconds after the last
  one ended, hence kB per call and how much of it was given back.

``--target reference`` runs the same calls against the bare relay in
``bench/reference/twilio_relay.py`` instead of the edge (Twilio only): the
same CPU and memory figures, its frame counters instead of the edge's metrics.

``--core light`` swaps the built-in core for a minimal one (``serve_light_core``)
when the built-in core's CPU, not the edge's, is the limit (small machines).
Until ``create_app`` mounts the Twilio routes itself, the edge runs under this
script's ``--serve-edge`` runner (``serve`` plus the routes), which also lifts
the app's 100-connection limit on its shared client session (see
``_lift_connection_limit``). ``TWILIO_LOAD_PROFILE=path`` cProfiles that edge,
``TWILIO_LOAD_TRACEMALLOC=path`` writes what its Python heap holds, by line,
before the calls and once they all run (both runs use this runner),
``TWILIO_LOAD_LAG=path`` records its event-loop lag and GC pauses.

``--provider vonage`` places the same calls with the Vonage simulator
(``telephony_edge.vonage.simulator``: signed answer webhook, NCCO, the L16
16 kHz WebSocket, a bounded playout buffer whose overflows are counted, the
``completed`` event at the end); ``--provider both`` runs Twilio, then Vonage,
against the same edge process and prints the figures side by side.

    python bench/twilio_load.py [--calls 100] [--seconds 60] [--ramp 5] [--procs 2]
                                [--provider twilio|vonage|both]
                                [--core builtin|light] [--loop uvloop|asyncio]
                                [--target edge|reference] [--settle 10] [--json F]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

ACCOUNT_SID = "AC" + "b" * 32
AUTH_TOKEN = "bench-auth-token-0123456789"
API_KEY = "bench-private-api-key-0123"
NUMBER = "+15555550199"
VONAGE_NUMBER = "+15555550198"
VONAGE_SECRET = "bench-vonage-signature-secret-0123"
LISTEN_S = 4.0
FIXTURE = ROOT / "tests" / "fixtures" / "speech_order.wav"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- processes ---------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(
    path: Path,
    port: int,
    core_port: int,
    use_uvloop: bool,
    providers: tuple[str, ...] = ("twilio",),
) -> None:
    base = f"http://127.0.0.1:{port}"
    config = {
        "server": {
            "host": "127.0.0.1",
            "port": port,
            "public_url": base,
            "region": "local",
            "use_uvloop": use_uvloop,
        },
        "api": {"private_key": API_KEY},
        "agent_core": {"url": f"ws://127.0.0.1:{core_port}/agent"},
        # REST calls (hang-ups) go to a closed local port, never to the real api.twilio.com
        "twilio": {
            "enabled": True,
            "account_sid": ACCOUNT_SID,
            "auth_token": AUTH_TOKEN,
            "api_base_url": "http://127.0.0.1:9",
        },
        "agents": {"echo": {"prompt": "You echo.", "first_message": "Hi"}},
        "regions": {"local": {"public_url": base}},
        "numbers": {NUMBER: {"provider": "twilio", "agent_id": "echo", "region": "local"}},
        "calls": {"inactivity_timeout_s": 600, "max_duration_s": 3600},
    }
    if "vonage" in providers:
        # no Voice API (no application key): the calls end by the caller's hang-up
        config["vonage"] = {"enabled": True, "signature_secret": VONAGE_SECRET}
        config["numbers"][VONAGE_NUMBER] = {  # type: ignore[index]
            "provider": "vonage",
            "agent_id": "echo",
            "region": "local",
        }
    path.write_text(yaml.safe_dump(config))


def routes_wired() -> bool:
    """Whether ``create_app`` mounts the Twilio routes itself (``serve`` then has them)."""
    from telephony_edge.app import create_app
    from telephony_edge.config_loading import load_settings

    settings = load_settings(
        None,
        api={"private_key": API_KEY},
        twilio={"enabled": True, "account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN},
    )
    app = create_app(settings)
    return any(
        r.resource is not None and r.resource.canonical == "/twilio/voice"
        for r in app.router.routes()
    )


async def _loop_lag_probe() -> None:
    """Diagnostics (TWILIO_LOAD_LAG=path): how late a 5 ms sleep wakes up, and GC pauses."""
    import gc

    path = os.environ["TWILIO_LOAD_LAG"]
    if os.environ.get("TWILIO_LOAD_SLOW"):
        import logging

        logging.basicConfig(filename=os.environ["TWILIO_LOAD_SLOW"], level=logging.WARNING)
        asyncio.get_running_loop().set_debug(True)
        asyncio.get_running_loop().slow_callback_duration = 0.008
    lags: list[float] = []
    gcs: list[float] = []
    started: list[float] = []

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            gcs.append((time.perf_counter() - started.pop(), info["generation"]))

    gc.callbacks.append(on_gc)
    loop = asyncio.get_running_loop()

    try:
        while True:
            t = loop.time()
            await asyncio.sleep(0.005)
            lags.append(loop.time() - t - 0.005)
    finally:  # at shutdown: a blocking write is fine here
        Path(path).write_text(json.dumps({"lags": lags, "gcs": gcs}))  # noqa: ASYNC240


async def _heap_probe(path: str, calls_at_s: float = 25.0) -> None:
    """Diagnostics (TWILIO_LOAD_TRACEMALLOC=path): the Python heap by line, before the calls
    and ``calls_at_s`` later (every call running), and the difference: what each call holds."""
    import tracemalloc

    tracemalloc.start(1)
    idle = tracemalloc.take_snapshot()
    await asyncio.sleep(calls_at_s)
    busy = tracemalloc.take_snapshot()
    lines = [f"traced now {tracemalloc.get_traced_memory()[0] / 1024:.0f} kB; growth by line:"]
    for stat in busy.compare_to(idle, "lineno")[:40]:
        lines.append(f"{stat.size_diff / 1024:9.1f} kB {stat.count_diff:+8d}  {stat.traceback}")
    Path(path).write_text("\n".join(lines) + "\n")  # noqa: ASYNC240


async def _lift_connection_limit(app: Any) -> None:
    """Workaround: the app's shared client session has aiohttp's default limit of 100
    connections, and every call's agent link is one, so call 101 waits for a free
    connection and fails after agent_core.connect_timeout_s. Until app.py creates it
    with ``TCPConnector(limit=0)``, the bench runner swaps it (runs after the app's
    own start-up context). ``TWILIO_LOAD_CONNECTOR_LIMIT=100`` keeps the app's.
    """
    import aiohttp

    from telephony_edge.services import SERVICES

    services = app[SERVICES]
    old = services.http
    services.http = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=30)
    )
    if old is not None:
        await old.close()


def serve_edge(config: str) -> int:
    """``telephony-edge serve``, plus the bench's own knobs (connector limit, loop-lag probe)."""
    import signal

    from aiohttp import web

    from telephony_edge.app import create_app, set_local_address
    from telephony_edge.config_loading import load_settings
    from telephony_edge.logs import setup_logging

    settings = load_settings(config)
    setup_logging("WARNING")

    async def main() -> None:
        app = create_app(settings)
        if os.environ.get("TWILIO_LOAD_CONNECTOR_LIMIT", "0") != "100":
            app.on_startup.append(_lift_connection_limit)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, settings.server.host, settings.server.port)
        await site.start()
        set_local_address(app, settings.server.host, settings.server.port)
        probe = (
            asyncio.create_task(_loop_lag_probe()) if os.environ.get("TWILIO_LOAD_LAG") else None
        )
        heap = (
            asyncio.create_task(_heap_probe(os.environ["TWILIO_LOAD_TRACEMALLOC"]))
            if os.environ.get("TWILIO_LOAD_TRACEMALLOC")
            else None
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        for task in (probe, heap):
            if task is not None:
                task.cancel()
        await runner.cleanup()

    profile = os.environ.get("TWILIO_LOAD_PROFILE")  # a path: cProfile the edge into it
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    if settings.server.use_uvloop:
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile)
    return 0


def serve_light_core(port: int) -> int:
    """``--core light``: a minimal agent core for capacity runs on small machines.

    Same protocol as the built-in core (initiate → onready, a greeting, binary
    PCM both ways) but its "VAD" is one ``audioop.rms`` per frame: speech is a
    frame over -36 dBFS, an utterance ends after 0.5 s below it, and is then
    sent back at once in 100 ms chunks (the edge paces it). It exists because
    the built-in core's VAD costs more CPU per call than the edge itself, and a
    two-core machine cannot then host the core, the load generator and an edge
    with hundreds of calls.
    """
    import audioop
    import math as m

    import uvloop
    from aiohttp import WSMsgType, web

    tone = b"".join(
        int(8000 * m.sin(2 * m.pi * 440 * i / 16000)).to_bytes(2, "little", signed=True)
        for i in range(16000)
    )
    chunk = 3200  # 100 ms

    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=256 * 1024)
        await ws.prepare(request)
        await ws.receive()  # initiate
        await ws.send_str('{"method":"onready"}')
        for i in range(0, len(tone), chunk):
            await ws.send_bytes(tone[i : i + chunk])
        utterance = bytearray()
        speaking, quiet = False, 0
        async for msg in ws:
            if msg.type is not WSMsgType.BINARY:
                continue
            if audioop.rms(msg.data, 2) > 500:
                speaking, quiet = True, 0
            elif speaking:
                quiet += 1
            if speaking:
                utterance += msg.data
                if quiet >= 25:
                    reply = bytes(utterance)
                    utterance.clear()
                    speaking = False
                    for i in range(0, len(reply), chunk):
                        await ws.send_bytes(reply[i : i + chunk])
        return ws

    app = web.Application()
    app.router.add_get("/agent", handle)
    uvloop.run(web._run_app(app, host="127.0.0.1", port=port, print=None, access_log=None))
    return 0


def spawn(cmd: list[str], cpus: set[int] | None, log: Path) -> subprocess.Popen[bytes]:
    # logs to a file: a pipe nobody reads would block the process once full
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    if cpus:
        os.sched_setaffinity(proc.pid, cpus)
    return proc


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = log.read_text(errors="replace")
            raise SystemExit(f"{proc.args!r} exited with {proc.returncode}:\n{err[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up within {within:g}s")


def wait_port(port: int, within: float = 20.0) -> None:
    import socket

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"port {port} did not open within {within:g}s")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def stop(*procs: subprocess.Popen[Any] | None) -> None:
    """Terminate the processes a run started (None: never started), then kill what lingers."""
    running = [p for p in procs if p is not None and p.poll() is None]
    for proc in running:
        proc.terminate()
    for proc in running:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def reset_peak_rss(pid: int) -> int:
    """Start a new ``VmHWM`` (peak RSS) from the present RSS (Linux's clear_refs 5); that RSS."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return status_kb(pid, "VmRSS")


def memory_figures(
    before_kb: int, peak_kb: int, after_kb: int, calls: int, settle_s: float
) -> dict[str, float | None]:
    """RSS before the calls, at their peak and after they ended and ``settle_s`` passed:
    kB per call (peak over before) and the share of that given back."""
    grown = peak_kb - before_kb
    return {
        "rss_before_mb": before_kb / 1024,
        "rss_peak_mb": peak_kb / 1024,
        "rss_after_mb": after_kb / 1024,
        "settle_s": settle_s,
        "kb_per_call": grown / calls if calls else None,
        "given_back_pct": 100 * (peak_kb - after_kb) / grown if grown > 0 else None,
    }


def reference_counters(log: Path) -> dict[str, int]:
    """The bare reference's counters: the JSON line it prints when it stops."""
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if line.startswith("{"):
            return {k: int(v) for k, v in json.loads(line).items()}
    return {}


# -- load generator ------------------------------------------------------------


def load_worker(args: dict[str, Any], out: Any) -> None:
    """One load-generator process: ``args["calls"]`` simulated calls."""
    import uvloop

    out.put(uvloop.run(_load(**args)))


async def _load(provider: str, **kwargs: Any) -> list[dict[str, Any]]:
    load = _load_vonage if provider == "vonage" else _load_twilio
    return await load(**kwargs)


async def _load_twilio(
    base: str, calls: int, first: int, total: int, ramp: float, seconds: float, t0: float
) -> list[dict[str, Any]]:
    import aiohttp

    from telephony_edge.twilio.simulator import SimulatedCall, encode_payloads, load_wav_ulaw

    speech = encode_payloads(load_wav_ulaw(FIXTURE))
    cycle = speech + encode_payloads(b"\xff" * int(LISTEN_S * 8000))
    frames = int(seconds / 0.02)
    payloads = (cycle * (frames // len(cycle) + 1))[:frames]
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        loop = asyncio.get_running_loop()
        wall_to_loop = loop.time() - time.time()

        async def one(index: int) -> dict[str, Any]:
            start_at = t0 + ramp * index / max(total, 1) + wall_to_loop
            await asyncio.sleep(max(0.0, start_at - loop.time()))
            call = SimulatedCall(
                session, base, to=NUMBER, auth_token=AUTH_TOKEN, account_sid=ACCOUNT_SID
            )
            result = call.result
            try:
                await call.post_webhook()
                assert result.answer is not None and result.answer.stream is not None
                await call.open_stream(result.answer.stream)
                result.outcome = "streamed"
                await call.stream_audio(payloads)
                if call.ws is not None and call.ws.closed:
                    result.outcome = "ended-by-edge"
                    await call.finish()
                else:
                    await call.stop()
            except Exception as exc:  # a failed call is a figure, not a crash
                result.outcome = "failed"
                result.error = repr(exc)[:200]
                await call.finish()
            return {
                "outcome": result.outcome,
                "error": result.error,
                "webhook_s": result.webhook_s,
                "setup_s": result.setup_s,
                "first_audio_s": result.first_audio_s,
                "frames_sent": result.frames_sent,
                "frames_received": result.frames_received,
                "late_frames": result.late_frames,
                "send_late": result.send_late,
                "clears": result.clears,
                "marks": result.marks_received,
                "jitter_ms": result.jitter_ms,
            }

        return await asyncio.gather(*(one(first + i) for i in range(calls)))


async def _load_vonage(
    base: str, calls: int, first: int, total: int, ramp: float, seconds: float, t0: float
) -> list[dict[str, Any]]:
    """The same calls as ``_load_twilio``, placed by the Vonage simulator (L16 16 kHz)."""
    import aiohttp

    from telephony_edge.vonage.simulator import SimulatedVonageCall, load_wav_l16, split_frames

    cycle = split_frames(load_wav_l16(FIXTURE)) + split_frames(b"\x00" * int(LISTEN_S * 32000))
    count = int(seconds / 0.02)
    frames = (cycle * (count // len(cycle) + 1))[:count]
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        loop = asyncio.get_running_loop()
        wall_to_loop = loop.time() - time.time()

        async def one(index: int) -> dict[str, Any]:
            start_at = t0 + ramp * index / max(total, 1) + wall_to_loop
            await asyncio.sleep(max(0.0, start_at - loop.time()))
            call = SimulatedVonageCall(
                session, base, to=VONAGE_NUMBER, signature_secret=VONAGE_SECRET
            )
            result = call.result
            setup_s = None
            try:
                t_setup = loop.time()
                await call.post_answer()
                assert result.answer is not None and result.answer.websocket is not None
                await call.open_socket(result.answer.websocket)
                setup_s = loop.time() - t_setup
                result.outcome = "streamed"
                await call.stream_audio(frames)
                if call.ws is not None and call.ws.closed:
                    result.outcome = "ended-by-edge"
                    await call.finish()
                else:
                    await call.hang_up()  # closes the socket, then the ``completed`` event
            except Exception as exc:  # a failed call is a figure, not a crash
                result.outcome = "failed"
                result.error = repr(exc)[:200]
                await call.finish()
            return {
                "outcome": result.outcome,
                "error": result.error,
                "webhook_s": result.webhook_s,
                "setup_s": setup_s,
                "first_audio_s": result.first_audio_s,
                "frames_sent": result.frames_sent,
                "frames_received": result.frames_received,
                "late_frames": result.late_frames,
                "send_late": 0,  # the Vonage simulator does not count its own lag
                "clears": result.clears,
                "overflow": result.overflow_frames,
                "peak_buffered_s": result.max_buffered_s,
                "jitter_ms": result.jitter_ms,
            }

        return await asyncio.gather(*(one(first + i) for i in range(calls)))


# -- figures -------------------------------------------------------------------


def scrape(base: str) -> dict[str, Any]:
    with urllib.request.urlopen(base + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def delta(
    after: dict[Any, float], before: dict[Any, float], name: str, **labels: str
) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for (n, lab), value in after.items():
        if n != name:
            continue
        d = dict(lab)
        if any(d.get(k) != v for k, v in labels.items()):
            continue
        out[lab] = value - before.get((n, lab), 0.0)
    return out


def histogram_quantiles(
    after: dict[Any, float],
    before: dict[Any, float],
    name: str,
    qs: tuple[float, ...],
    **labels: str,
) -> tuple[int, list[float]]:
    buckets = []
    for lab, value in delta(after, before, name + "_bucket", **labels).items():
        le = dict(lab)["le"]
        buckets.append((math.inf if le == "+Inf" else float(le), value))
    buckets.sort()
    if not buckets or buckets[-1][1] <= 0:
        return 0, [math.nan for _ in qs]
    total = buckets[-1][1]
    out = []
    for q in qs:
        target = q * total
        prev_le, prev_count = 0.0, 0.0
        for le, count in buckets:
            if count >= target:
                if math.isinf(le):
                    out.append(prev_le)
                else:
                    frac = (target - prev_count) / max(count - prev_count, 1e-9)
                    out.append(prev_le + (le - prev_le) * frac)
                break
            prev_le, prev_count = le, count
    return int(total), out


def pct(values: list[float], q: float) -> float:
    values = sorted(v for v in values if v is not None)
    if not values:
        return math.nan
    return values[min(len(values) - 1, int(q * len(values)))]


def hist_pct(hist: list[int], q: float) -> float:
    total = sum(hist)
    if not total:
        return math.nan
    acc = 0
    for ms, count in enumerate(hist):
        acc += count
        if acc >= q * total:
            return float(ms)
    return float(len(hist) - 1)


def leg_costs() -> tuple[float, float]:
    """Microseconds per frame the Twilio leg spends decoding a media message / encoding one."""
    import base64
    import timeit

    from telephony_edge.calls.leg import LegInfo
    from telephony_edge.twilio.media import StreamStart, TwilioMediaLeg

    class _Req:
        transport = None
        remote = "127.0.0.1"

    leg = TwilioMediaLeg(
        None,  # type: ignore[arg-type]
        _Req(),  # type: ignore[arg-type]
        StreamStart("MZ" + "a" * 32, "CA" + "a" * 32, ACCOUNT_SID, {}),
        LegInfo("twilio", "inbound", "+1", "+2"),
        call_id="bench",
    )
    payload = base64.b64encode(bytes(range(160))).decode()
    message = json.dumps(
        {
            "event": "media",
            "sequenceNumber": "2",
            "streamSid": "MZ" + "a" * 32,
            "media": {"track": "inbound", "chunk": "1", "timestamp": "20", "payload": payload},
        }
    )

    def decode() -> None:
        leg._next_seq = 0
        leg._on_text(message)

    frame = bytes(640)
    n = 20000
    d = timeit.timeit(decode, number=n) / n * 1e6
    e = (
        timeit.timeit(
            lambda: (
                leg._media_prefix + base64.b64encode(leg._encoder.encode(frame)) + leg._media_suffix
            ),
            number=n,
        )
        / n
        * 1e6
    )
    return d, e


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each call")
    parser.add_argument("--ramp", type=float, default=5.0, help="calls start over this long")
    parser.add_argument("--procs", type=int, default=0, help="load generator processes (auto)")
    parser.add_argument("--edge-cpu", type=int, default=0, help="core to pin the edge to")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument(
        "--provider",
        choices=("twilio", "vonage", "both"),
        default="twilio",
        help="which network's simulator places the calls; both: Twilio, then Vonage, "
        "against the same edge process",
    )
    parser.add_argument(
        "--core",
        choices=("builtin", "light"),
        default="builtin",
        help="agent core: telephony-edge agent-core, or a minimal one (see serve_light_core)",
    )
    parser.add_argument(
        "--target",
        choices=("edge", "reference"),
        default="edge",
        help="what answers the calls: the edge, or the bare relay in bench/reference/ (Twilio)",
    )
    parser.add_argument(
        "--settle", type=float, default=10.0, help="seconds after the calls before the RSS 'after'"
    )
    parser.add_argument("--serve-edge", help=argparse.SUPPRESS)
    parser.add_argument("--serve-light-core", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.target == "reference" and args.provider != "twilio":
        parser.error("--target reference: the bare relay speaks Twilio's Media Streams only")
    if args.serve_edge:
        return serve_edge(args.serve_edge)
    if args.serve_light_core:
        return serve_light_core(args.serve_light_core)

    providers = ("twilio", "vonage") if args.provider == "both" else (args.provider,)
    cores = sorted(os.sched_getaffinity(0))
    edge_cpus = {args.edge_cpu} if len(cores) > 1 else None
    other_cpus = set(cores) - {args.edge_cpu} if len(cores) > 1 else None
    procs = args.procs or max(1, min(len(cores) * 2, math.ceil(args.calls / 100)))
    port, core_port = free_port(), free_port()
    tmp = Path(tempfile.mkdtemp(prefix="twilio-load-"))
    config = tmp / "edge.yaml"
    write_config(config, port, core_port, args.loop == "uvloop", providers)
    base = f"http://127.0.0.1:{port}"
    py = sys.executable
    core_cmd = (
        [
            py,
            "-m",
            "telephony_edge",
            "agent-core",
            "--port",
            str(core_port),
            "--path",
            "/agent",
            "--log-level",
            "WARNING",
        ]
        if args.core == "builtin"
        else [py, str(Path(__file__).resolve()), "--serve-light-core", str(core_port)]
    )
    core = spawn(core_cmd, other_cpus, tmp / "agent-core.log")
    wired = routes_wired() and not os.environ.get("TWILIO_LOAD_TRACEMALLOC")
    edge_cmd = (
        [py, "-m", "telephony_edge", "serve", "--config", str(config), "--log-level", "WARNING"]
        if wired
        else [py, str(Path(__file__).resolve()), "--serve-edge", str(config)]
    )
    if args.target == "reference":
        edge_cmd = [
            py, str(ROOT / "bench" / "reference" / "twilio_relay.py"), "--port", str(port),
            "--agent", f"ws://127.0.0.1:{core_port}/agent",
        ]  # fmt: skip
    edge = spawn(edge_cmd, edge_cpus, tmp / "edge.log")
    if other_cpus:
        os.sched_setaffinity(0, other_cpus)
    runs: list[dict[str, Any]] = []
    try:
        wait_port(core_port)
        wait_http(base + "/healthz", edge, tmp / "edge.log")
        rss_idle_kb = status_kb(edge.pid, "VmRSS")
        for provider in providers:
            figures = run_phase(provider, args, base, edge.pid, core.pid, other_cpus, procs)
            figures.update(
                cores=len(cores),
                edge_pinned=sorted(edge_cpus or []),
                edge_cmd="telephony-edge serve" if wired else "bench --serve-edge (routes added)",
                edge_idle_rss_mb=rss_idle_kb / 1024,
            )
            if args.target == "reference":
                figures["edge_cmd"] = "bench/reference/twilio_relay.py"
            else:
                print(report(figures), flush=True)
            runs.append(figures)
    finally:
        stop(edge, core)
    if args.target == "reference":
        counters = reference_counters(tmp / "edge.log")
        runs[0].update(
            target="reference",
            reference_counters=counters,
            caller_frames_relayed_to_agent=counters.get("frames_to_agent", 0),
        )
        print(json.dumps(runs[0], indent=2))
    if len(runs) > 1:
        print(side_by_side(runs))
    print(f"  logs: {tmp}")
    if args.json:
        Path(args.json).write_text(json.dumps(runs[0] if len(runs) == 1 else runs, indent=2))
    return 0 if all(f["outcomes"].get("failed", 0) == 0 for f in runs) else 1


def run_phase(
    provider: str,
    args: argparse.Namespace,
    base: str,
    edge_pid: int,
    core_pid: int,
    other_cpus: set[int] | None,
    procs: int,
) -> dict[str, Any]:
    """``args.calls`` calls of ``provider`` against the running edge; their figures."""
    metrics = args.target == "edge"  # the bare reference has none
    before = scrape(base) if metrics else {}
    rss_before_kb = reset_peak_rss(edge_pid)
    cpu0 = cpu_seconds(edge_pid)
    t0 = time.time() + 1.0
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    workers = []
    share = [args.calls // procs + (1 if i < args.calls % procs else 0) for i in range(procs)]
    first = 0
    for n in share:
        w = ctx.Process(
            target=load_worker,
            args=(
                dict(
                    provider=provider,
                    base=base,
                    calls=n,
                    first=first,
                    total=args.calls,
                    ramp=args.ramp,
                    seconds=args.seconds,
                    t0=t0,
                ),
                out,
            ),
        )
        w.start()
        if other_cpus:
            os.sched_setaffinity(w.pid, other_cpus)
        workers.append(w)
        first += n
    # steady state: every call started (+2 s), until the first one ends (-1 s)
    steady_from = t0 + args.ramp + 2.0
    steady_to = t0 + args.seconds - 1.0
    cpu_a = cpu_b = None
    ta = tb = 0.0
    others_util: list[float] = []
    if steady_to - steady_from >= 3:
        time.sleep(max(0.0, steady_from - time.time()))
        cpu_a, ta = cpu_seconds(edge_pid), time.monotonic()
        others_a = [cpu_seconds(p) for p in [core_pid] + [w.pid for w in workers]]
        time.sleep(max(0.0, steady_to - time.time()))
        cpu_b, tb = cpu_seconds(edge_pid), time.monotonic()
        others_b = [cpu_seconds(p) for p in [core_pid] + [w.pid for w in workers]]
        others_util = [(b - a) / (tb - ta) for a, b in zip(others_a, others_b, strict=True)]
    results: list[dict[str, Any]] = []
    for _ in workers:
        results.extend(out.get(timeout=args.seconds + args.ramp + 120))
    for w in workers:
        w.join()
    ended = time.monotonic()
    time.sleep(1.0)  # let the edge finish tearing the calls down
    after = scrape(base) if metrics else {}
    cpu1 = cpu_seconds(edge_pid)
    hwm_kb = status_kb(edge_pid, "VmHWM")
    time.sleep(max(0.0, ended + args.settle - time.monotonic()))
    rss_after_kb = status_kb(edge_pid, "VmRSS")

    outcomes: dict[str, int] = defaultdict(int)
    for r in results:
        outcomes[r["outcome"]] += 1
    ok = [r for r in results if r["outcome"] in ("streamed", "ended-by-edge")]
    jitter = [0] * 100
    for r in ok:
        for i, c in enumerate(r["jitter_ms"] or []):
            jitter[i] += c
    c2a_n, c2a = histogram_quantiles(
        after,
        before,
        "telephony_edge_relay_latency_seconds",
        (0.5, 0.99),
        direction="caller_to_agent",
    )
    a2c_n, a2c = histogram_quantiles(
        after,
        before,
        "telephony_edge_relay_latency_seconds",
        (0.5, 0.99),
        direction="agent_to_caller",
    )
    _, setup_edge = histogram_quantiles(
        after, before, "telephony_edge_call_setup_seconds", (0.5, 0.99)
    )
    dropped = {
        dict(k).get("reason", ""): v
        for k, v in delta(after, before, "telephony_edge_frames_dropped_total").items()
        if v
    }
    gaps = sum(delta(after, before, f"telephony_edge_{provider}_sequence_gaps_total").values())
    late_sends = sum(delta(after, before, f"telephony_edge_{provider}_late_sends_total").values())
    bad = sum(
        delta(after, before, "telephony_edge_bad_input_total", source=f"{provider}-media").values()
    )
    statuses = {
        dict(k).get("status", ""): v
        for k, v in delta(after, before, "telephony_edge_calls_total").items()
        if v
    }
    prebuffered = int(sum(delta(after, before, "telephony_edge_frames_prebuffered_total").values()))
    sent = sum(r["frames_sent"] for r in ok)
    received = sum(r["frames_received"] for r in ok)
    call_minutes = sum(args.seconds for _ in ok) / 60
    steady = None
    if cpu_a is not None and cpu_b is not None:
        steady = (cpu_b - cpu_a) / (len(ok) * (tb - ta) / 60) if ok else math.nan
    d_us, e_us = leg_costs() if provider == "twilio" and metrics else (math.nan, math.nan)
    return {
        "provider": provider,
        "calls": args.calls,
        "seconds": args.seconds,
        "loop": args.loop,
        "core": args.core,
        "load_procs": procs,
        "outcomes": dict(outcomes),
        "errors": sorted({r["error"] for r in results if r["error"]})[:5],
        "setup_webhook_to_stream_ms": [
            pct([r["setup_s"] for r in ok], q) * 1000 for q in (0.5, 0.99)
        ],
        "setup_edge_first_frame_to_onready_ms": [v * 1000 for v in setup_edge],
        "first_agent_audio_ms": [
            pct([r["first_audio_s"] for r in ok], q) * 1000 for q in (0.5, 0.99)
        ],
        "relay_caller_to_agent_ms": {"frames": c2a_n, "p50": c2a[0] * 1000, "p99": c2a[1] * 1000},
        "relay_agent_to_caller_ms": {"frames": a2c_n, "p50": a2c[0] * 1000, "p99": a2c[1] * 1000},
        "leg_decode_us_per_frame": d_us,
        "leg_encode_us_per_frame": e_us,
        "agent_audio_arrival_jitter_ms": {
            "p50": hist_pct(jitter, 0.5),
            "p99": hist_pct(jitter, 0.99),
            "p999": hist_pct(jitter, 0.999),
        },
        "caller_frames_sent": sent,
        "caller_frames_relayed_to_agent": c2a_n + prebuffered,
        "agent_frames_received": received,
        "playout_underruns": sum(r["late_frames"] for r in ok),
        "edge_late_sends": late_sends,
        "frames_dropped_by_edge": dropped,
        "sequence_gaps": gaps,
        "malformed": bad,
        "simulator_send_late_frames": sum(r["send_late"] for r in ok),
        "clears": sum(r["clears"] for r in ok),
        "playout_overflow_frames": sum(r.get("overflow", 0) for r in ok),
        "playout_peak_buffered_ms": max((r.get("peak_buffered_s", 0.0) for r in ok), default=0.0)
        * 1000,
        "calls_total_by_status": statuses,
        "edge_cpu_s_per_call_minute_steady": steady,
        "edge_cpu_s_per_call_minute_overall": (cpu1 - cpu0) / call_minutes if ok else None,
        "edge_cpu_utilisation_steady": (
            (cpu_b - cpu_a) / (tb - ta) if cpu_a is not None and cpu_b is not None else None
        ),
        "agent_core_cpu_utilisation_steady": others_util[0] if others_util else None,
        "load_generator_cpu_utilisation_steady": others_util[1:],
        "edge_peak_rss_mb": hwm_kb / 1024,
        "edge_memory": memory_figures(rss_before_kb, hwm_kb, rss_after_kb, len(ok), args.settle),
    }


def report(f: dict[str, Any]) -> str:
    def ms(pair: list[float]) -> str:
        return f"p50 {pair[0]:.1f} ms, p99 {pair[1]:.1f} ms"

    c2a, a2c = f["relay_caller_to_agent_ms"], f["relay_agent_to_caller_ms"]
    jit = f["agent_audio_arrival_jitter_ms"]
    mem = f["edge_memory"]
    steady = f["edge_cpu_s_per_call_minute_steady"]
    util = f["edge_cpu_utilisation_steady"]
    lines = [
        f"{f['provider']}: {f['calls']} calls x {f['seconds']:g} s, {f['core']} agent core, "
        f"edge on {f['loop']} "
        f"({f['edge_cmd']}), {f['cores']} cores, edge pinned to {f['edge_pinned'] or 'none'}, "
        f"{f['load_procs']} load processes",
        f"  outcomes: {f['outcomes']}  edge call statuses: {f['calls_total_by_status']}",
        f"  setup, webhook -> stream started: {ms(f['setup_webhook_to_stream_ms'])}",
        "  setup, edge first frame -> agent onready: "
        + ms(f["setup_edge_first_frame_to_onready_ms"]),
        f"  first agent audio after start: {ms(f['first_agent_audio_ms'])}",
        f"  edge relay latency caller->agent: p50 {c2a['p50']:.3f} ms, p99 {c2a['p99']:.3f} ms "
        f"({c2a['frames']} frames)",
        f"  edge relay latency agent->caller: p50 {a2c['p50']:.3f} ms, p99 {a2c['p99']:.3f} ms "
        f"({a2c['frames']} frames)",
        f"  Twilio leg codec per frame: decode {f['leg_decode_us_per_frame']:.1f} us, "
        f"encode {f['leg_encode_us_per_frame']:.1f} us"
        if f["provider"] == "twilio"
        else f"  Vonage playout buffer (bounded): {f['playout_overflow_frames']} frames over "
        f"the bound (dropped), peak {f['playout_peak_buffered_ms']:.0f} ms ahead",
        f"  agent audio arrival jitter at the caller: p50 {jit['p50']:.0f} ms, "
        f"p99 {jit['p99']:.0f} ms, p99.9 {jit['p999']:.0f} ms; "
        f"playout underruns {f['playout_underruns']}"
        + (
            f" (edge-side late sends {f['edge_late_sends']:.0f})"
            if f["provider"] == "twilio"
            else ""
        ),
        f"  frames: caller sent {f['caller_frames_sent']}, relayed to agent "
        f"{f['caller_frames_relayed_to_agent']}; agent->caller received "
        f"{f['agent_frames_received']}",
        f"  frames lost: dropped by edge {f['frames_dropped_by_edge'] or 0}, "
        + (f"sequence gaps {f['sequence_gaps']:.0f}, " if f["provider"] == "twilio" else "")
        + f"malformed {f['malformed']:.0f}"
        + (
            f"; load generator late sends {f['simulator_send_late_frames']}"
            if f["provider"] == "twilio"
            else ""
        ),
        "  edge CPU: "
        + (
            f"{steady:.3f} s per call-minute steady ({util * 100:.0f}% of a core), "
            if steady is not None
            else ""
        )
        + f"{f['edge_cpu_s_per_call_minute_overall']:.3f} s per call-minute overall",
        f"  edge memory: peak RSS {f['edge_peak_rss_mb']:.0f} MB "
        f"(idle {f['edge_idle_rss_mb']:.0f} MB), {_num(mem['kb_per_call'], 0)} kB per call, "
        f"{mem['rss_after_mb']:.0f} MB {mem['settle_s']:g} s after the calls "
        f"({_num(mem['given_back_pct'], 0)} % given back)",
    ]
    if f["agent_core_cpu_utilisation_steady"] is not None:
        gens = ", ".join(f"{u * 100:.0f}%" for u in f["load_generator_cpu_utilisation_steady"])
        lines.append(
            f"  other processes (steady, share of a core): agent core "
            f"{f['agent_core_cpu_utilisation_steady'] * 100:.0f}%, load generators {gens}"
        )
    if f["errors"]:
        lines.append(f"  errors: {f['errors']}")
    return "\n".join(lines)


def side_by_side(runs: list[dict[str, Any]]) -> str:
    """The headline figures of each provider's run, one column each."""
    rows = [
        (
            "calls ok / failed",
            lambda f: (
                f"{sum(f['outcomes'].values()) - f['outcomes'].get('failed', 0)}"
                f" / {f['outcomes'].get('failed', 0)}"
            ),
        ),
        (
            "edge CPU s per call-minute (steady)",
            lambda f: _num(f["edge_cpu_s_per_call_minute_steady"], 3),
        ),
        (
            "edge CPU s per call-minute (overall)",
            lambda f: _num(f["edge_cpu_s_per_call_minute_overall"], 3),
        ),
        (
            "edge CPU share of its core (steady)",
            lambda f: _num((f["edge_cpu_utilisation_steady"] or math.nan) * 100, 0) + "%",
        ),
        (
            "relay caller->agent p50 / p99 ms",
            lambda f: _pair(f["relay_caller_to_agent_ms"]),
        ),
        (
            "relay agent->caller p50 / p99 ms",
            lambda f: _pair(f["relay_agent_to_caller_ms"]),
        ),
        (
            "frames lost (dropped by edge)",
            lambda f: str(
                int(sum(f["frames_dropped_by_edge"].values())) if f["frames_dropped_by_edge"] else 0
            ),
        ),
        (
            "caller frames sent / relayed",
            lambda f: f"{f['caller_frames_sent']} / {f['caller_frames_relayed_to_agent']}",
        ),
        ("malformed", lambda f: f"{f['malformed']:.0f}"),
        ("playout underruns", lambda f: str(f["playout_underruns"])),
        (
            "playout overflows (Vonage bound)",
            lambda f: str(f["playout_overflow_frames"]) if f["provider"] == "vonage" else "n/a",
        ),
        ("agent audio jitter p99 ms", lambda f: f"{f['agent_audio_arrival_jitter_ms']['p99']:.0f}"),
    ]
    width = max(len(name) for name, _ in rows) + 2
    lines = [
        "same run, same edge process:",
        " " * width + "".join(f"{f['provider']:>16}" for f in runs),
    ]
    lines += [name.ljust(width) + "".join(f"{get(f):>16}" for f in runs) for name, get in rows]
    return "\n".join(lines)


def _pair(relay: dict[str, float]) -> str:
    return f"{relay['p50']:.3f} / {relay['p99']:.3f}"


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


if __name__ == "__main__":
    raise SystemExit(main())
