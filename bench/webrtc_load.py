"""Load benchmark: N concurrent aiortc callers against one ``telephony-edge serve`` worker.

    python bench/webrtc_load.py [--calls 40] [--seconds 60] [--ramp 10] [--edge-cpu 0]
                                [--py-spy PATH] [--settle 10] [--json F]

Processes, as in ``bench/sip_load.py`` (helpers from ``bench/twilio_load.py``):
the edge, ``telephony-edge serve`` with WebRTC on (127.0.0.1 advertised),
pinned to one core (``sched_setaffinity``, as ``taskset -c``); the minimal
agent core (``--serve-light-core``: echoes each utterance); and this process,
kept off the edge's core, running the callers (and the end-of-call webhook
target) on uvloop.

Every caller is an aiortc peer connection that posts its offer to
``POST /webrtc/offer`` and sends the speech fixture then 4 s of silence, in a
loop, as Opus packets encoded once up front (aiortc's sender only packs
them), so the load generator spends its CPU on SRTP and decoding what it
hears, not on encoding. The calls start spread over ``--ramp`` seconds and
last ``--seconds``.

Reported: calls answered and connected; the edge's CPU seconds per call-minute
in the steady state (every call up) and overall; its RSS before the calls, at
their peak and ``--settle`` seconds after they ended (kB per call, the share
given back); frames the edge dropped; RTP loss both ways (edge → caller from
each caller's ``getStats()``, caller → edge from the end-of-call webhooks'
``voip.media``, which this process receives); jitter at the callers;
edge-added latency per frame both ways
(``telephony_edge_relay_latency_seconds``, p50/p99: the bridge's share, not
aiortc's jitter buffer or the 20 ms grid); the legs' own counters (frames each
way, outbound slots skipped because the edge's loop was late, frames actually
Opus-encoded); this process's own CPU (a saturated load generator shows up as
loss that is not the edge's).

``--py-spy PATH`` samples the edge with py-spy during the steady state (all
threads; the edge decodes and encodes Opus on its loop, ``webrtc/opus.py``)
and writes the collapsed stacks to PATH; the report sorts the samples into
Opus, SRTP, DTLS/crypto, ICE, the rest of aiortc, the edge's own code
(resampling, bridge, its RTP loop) and the event loop. Where the time went,
lever by lever: ``bench/profiles/webrtc.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import audioop
import fractions
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import twilio_load as tl  # bench/ helpers: pinning, CPU accounting, metrics
import yaml

FIXTURE = tl.ROOT / "tests" / "fixtures" / "speech_table.wav"
SILENCE_S = 4.0
PY_SPY = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
WEBHOOK_SECRET = "whsec_bench_webrtc_load_01"
RATE = 48_000
SAMPLES = 960


def webrtc_config(path: Path, http_port: int, core_port: int, webhook: str, calls: int) -> None:
    tl.write_config(path, http_port, core_port, use_uvloop=True)
    config = yaml.safe_load(path.read_text())
    config["webrtc"] = {
        "enabled": True,
        "advertised_addresses": ["127.0.0.1"],
        "allowed_peer_networks": ["127.0.0.0/8"],  # the callers are on loopback
        "max_peer_connections": max(100, calls + 10),
        "connect_timeout_s": 30,
    }
    config["webhooks"] = {"signing_secret": WEBHOOK_SECRET, "allow_private_targets": True}
    config["agents"]["echo"]["session_data_webhook"] = webhook
    path.write_text(yaml.safe_dump(config))


def opus_packets() -> list[bytes]:
    """The speech fixture then silence, as 20 ms Opus packets (48 kHz, encoded once)."""
    from aiortc.codecs.opus import OpusEncoder
    from av import AudioFrame

    with wave.open(str(FIXTURE)) as wav:
        pcm16k = wav.readframes(wav.getnframes())
        rate = wav.getframerate()
    pcm = audioop.ratecv(pcm16k, 2, 1, rate, RATE, None)[0]
    pcm += bytes(int(2 * RATE * SILENCE_S))
    encoder = OpusEncoder()
    packets: list[bytes] = []
    for i in range(0, len(pcm) - 2 * SAMPLES + 1, 2 * SAMPLES):
        frame = AudioFrame(format="s16", layout="mono", samples=SAMPLES)
        frame.planes[0].update(pcm[i : i + 2 * SAMPLES])
        frame.sample_rate, frame.pts = RATE, i // 2
        frame.time_base = fractions.Fraction(1, RATE)
        payloads, _ = encoder.encode(frame)
        packets += payloads
    return packets


class Caller:
    """One aiortc caller: pre-encoded Opus out on a 20 ms grid, the edge's audio counted."""

    def __init__(self, packets: list[bytes]) -> None:
        from aiortc import RTCConfiguration, RTCPeerConnection
        from aiortc.mediastreams import MediaStreamTrack

        from telephony_edge.webrtc.ice import gather_on

        caller = self

        class Packets(MediaStreamTrack):
            kind = "audio"

            def __init__(self) -> None:
                super().__init__()
                self.n = 0
                self.start: float | None = None

            async def recv(self) -> Any:
                from av.packet import Packet

                loop = asyncio.get_running_loop()
                if self.start is None:
                    self.start = loop.time()
                wait = self.start + self.n * 0.02 - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                packet = Packet(packets[self.n % len(packets)])
                packet.pts, packet.time_base = self.n * SAMPLES, fractions.Fraction(1, RATE)
                self.n += 1
                caller.sent += 1
                return packet

        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.addTrack(Packets())
        self.pc.on("track", self._on_track)
        self.gather_on = gather_on
        self.sent = self.heard = self.voiced = 0
        self.call_id = ""
        self.connected_at: float | None = None
        self.reader: asyncio.Task[None] | None = None

    def _on_track(self, track: Any) -> None:
        self.reader = asyncio.ensure_future(self._listen(track))

    async def _listen(self, track: Any) -> None:
        from aiortc.mediastreams import MediaStreamError

        try:
            while True:
                frame = await track.recv()
                self.heard += 1
                if audioop.rms(bytes(frame.planes[0])[:3840], 2) > 300:
                    self.voiced += 1
        except MediaStreamError:
            pass

    async def call(self, http: Any, base: str) -> None:
        from aiortc import RTCSessionDescription

        offer = await self.pc.createOffer()
        self.gather_on(self.pc, ["127.0.0.1"])
        await self.pc.setLocalDescription(offer)
        body = {
            "agent_id": "echo",
            "offer": {"sdp": self.pc.localDescription.sdp, "type": "offer"},
        }
        async with http.post(
            base + "/webrtc/offer", json=body, headers={"Authorization": f"Bearer {tl.API_KEY}"}
        ) as resp:
            answer = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"offer refused ({resp.status}): {answer}")
        self.call_id = answer["call_id"]
        await self.pc.setRemoteDescription(
            RTCSessionDescription(sdp=answer["sdp"], type=answer["type"])
        )
        for _ in range(300):
            if self.pc.connectionState == "connected":
                self.connected_at = time.monotonic()
                return
            await asyncio.sleep(0.05)

    async def stats(self) -> dict[str, float]:
        from aiortc.stats import RTCInboundRtpStreamStats

        out = {"received": 0.0, "lost": 0.0, "jitter_ms": 0.0}
        for s in (await self.pc.getStats()).values():
            if isinstance(s, RTCInboundRtpStreamStats):
                out = {
                    "received": s.packetsReceived,
                    "lost": s.packetsLost,
                    "jitter_ms": s.jitter / 48,
                }
        return out

    async def close(self) -> None:
        await self.pc.close()
        if self.reader is not None:
            self.reader.cancel()


async def run_callers(
    args: argparse.Namespace, base: str, steady: Any, webhooks: list[dict[str, Any]]
) -> dict[str, Any]:
    """Place the calls, hold them, sample the steady state (``steady``), hang up, and wait
    for the end-of-call webhooks."""
    import aiohttp

    packets = opus_packets()
    callers = [Caller(packets) for _ in range(args.calls)]
    failures: list[str] = []
    async with aiohttp.ClientSession() as http:

        async def start(i: int, caller: Caller) -> None:
            await asyncio.sleep(i * args.ramp / max(1, args.calls))
            try:
                await caller.call(http, base)
            except Exception as exc:
                failures.append(repr(exc))

        t0 = time.monotonic()
        await asyncio.gather(*(start(i, c) for i, c in enumerate(callers)))
        steady_from = t0 + args.ramp + 2.0
        steady_to = t0 + args.seconds - 1.0
        await asyncio.sleep(max(0.0, steady_from - time.monotonic()))
        cpu_self0 = time.process_time()
        sample = await steady(steady_to - time.monotonic())
        cpu_self = (time.process_time() - cpu_self0) / (steady_to - steady_from)
        await asyncio.sleep(max(0.0, t0 + args.seconds - time.monotonic()))
        at_callers = await asyncio.gather(*(c.stats() for c in callers))
        await asyncio.gather(*(c.close() for c in callers))
        for _ in range(100):  # up to 20 s for the end-of-call webhooks
            if len({w["call_id"] for w in webhooks}) >= args.calls - len(failures):
                break
            await asyncio.sleep(0.2)
    return {
        "callers": callers,
        "failures": failures,
        "at_callers": at_callers,
        "webhooks": webhooks,
        "sample": sample,
        "loadgen_cpu_utilisation_steady": cpu_self,
    }


IDLE = (
    "Runner.run",  # uvloop's own loop, in C: py-spy cannot see inside (waiting, mostly)
    "concurrent/futures/thread.py:81",  # an executor thread waiting for work
    "Condition.wait",  # an aiortc decoder thread waiting for packets
)


def media_at_edge(log: Path) -> dict[str, int]:
    """Each leg's ``WebRTC media closed`` counters, summed (frames, slots skipped, …)."""
    totals: dict[str, int] = {"legs": 0}
    for line in log.read_text(errors="replace").splitlines():
        if "WebRTC media closed" not in line:
            continue
        record = json.loads(line)
        totals["legs"] += 1
        for key in ("frames_in", "frames_out", "slots_skipped", "opus_encoded"):
            totals[key] = totals.get(key, 0) + int(record.get(key, 0))
    return totals


def categorize(collapsed: Path) -> dict[str, float]:
    """Share of the edge's sampled stacks, by where the leaf-most known frame is.

    Stacks whose leaf is a wait (``IDLE``) are left out; so is uvloop's C work
    (reading and writing sockets), which py-spy shows as ``Runner.run`` too."""
    rules = [
        ("opus", ("codecs/opus.py", "webrtc/opus.py")),
        ("srtp", ("pylibsrtp", "srtp")),
        ("dtls/crypto", ("cryptography", "OpenSSL", "rtcdtlstransport.py:_handle_data")),
        ("ice", ("aioice",)),
        ("resample (edge)", ("telephony_edge/audio",)),
        ("aiortc (Python)", ("aiortc/",)),
        ("edge (bridge, leg, agent link)", ("telephony_edge/",)),
        ("aiohttp", ("aiohttp/",)),
    ]
    counts: Counter[str] = Counter()
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = stack.split(";")
        if any(idle in frames[-1] for idle in IDLE):
            continue
        where = "event loop, other"
        for frame in reversed(frames):
            hit = next((name for name, keys in rules if any(k in frame for k in keys)), None)
            if hit is not None:
                where = hit
                break
        counts[where] += int(n)
    total = sum(counts.values()) or 1
    return {k: round(100 * v / total, 1) for k, v in counts.most_common()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long each call lasts")
    parser.add_argument("--ramp", type=float, default=10.0, help="calls start over this long")
    parser.add_argument("--edge-cpu", type=int, default=0)
    parser.add_argument("--py-spy", help="write the edge's collapsed stacks here")
    parser.add_argument(
        "--settle", type=float, default=10.0, help="seconds after the calls before the RSS 'after'"
    )
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.seconds < args.ramp + 8:
        raise SystemExit("--seconds must exceed --ramp by 8 s at least (the steady state)")

    cores = sorted(os.sched_getaffinity(0))
    edge_cpus = {args.edge_cpu} if len(cores) > 1 else None
    other_cpus = set(cores) - {args.edge_cpu} if len(cores) > 1 else None
    http_port, core_port, hook_port = tl.free_port(), tl.free_port(), tl.free_port()
    tmp = Path(tempfile.mkdtemp(prefix="webrtc-load-"))
    config = tmp / "edge.yaml"
    webrtc_config(config, http_port, core_port, f"http://127.0.0.1:{hook_port}/ended", args.calls)
    base = f"http://127.0.0.1:{http_port}"
    py = sys.executable
    core = tl.spawn(
        [py, str(Path(tl.__file__).resolve()), "--serve-light-core", str(core_port)],
        other_cpus,
        tmp / "agent-core.log",
    )
    edge_cmd = [py, "-m", "telephony_edge", "serve", "--config", str(config)]
    # INFO: each leg logs its counters when it closes (one line per call)
    edge = tl.spawn([*edge_cmd, "--log-level", "INFO"], edge_cpus, tmp / "edge.log")
    if other_cpus:
        os.sched_setaffinity(0, other_cpus)
    spy: subprocess.Popen[bytes] | None = None
    try:
        tl.wait_port(core_port)
        tl.wait_http(base + "/healthz", edge, tmp / "edge.log")
        before = tl.scrape(base)
        rss_before_kb = tl.reset_peak_rss(edge.pid)
        cpu0 = tl.cpu_seconds(edge.pid)

        async def steady(seconds: float) -> dict[str, float]:
            nonlocal spy
            if args.py_spy:
                spy = subprocess.Popen(  # noqa: ASYNC220 (started, not waited for)
                    [PY_SPY, "record", "--pid", str(edge.pid), "--threads", "--nonblocking",
                     "--rate", "200", "--duration", str(int(seconds)), "--format", "raw",
                     "--output", args.py_spy],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
            cpu_a, ta = tl.cpu_seconds(edge.pid), time.monotonic()
            await asyncio.sleep(seconds)
            cpu_b, tb = tl.cpu_seconds(edge.pid), time.monotonic()
            return {"cpu": cpu_b - cpu_a, "seconds": tb - ta}

        import uvloop

        result = uvloop.run(with_webhooks(hook_port, args, base, steady))
        ended = time.monotonic()
        time.sleep(2.0)
        after = tl.scrape(base)
        cpu1 = tl.cpu_seconds(edge.pid)
        hwm_kb = tl.status_kb(edge.pid, "VmHWM")
        if spy is not None:
            spy.wait(30)
        time.sleep(max(0.0, ended + args.settle - time.monotonic()))
        rss_after_kb = tl.status_kb(edge.pid, "VmRSS")
    finally:
        tl.stop(spy, edge, core)

    callers: list[Caller] = result["callers"]
    connected = sum(c.connected_at is not None for c in callers)
    at_callers = result["at_callers"]
    webhooks = list({w["call_id"]: w for w in result["webhooks"]}.values())  # retries once
    media = [w["voip"].get("media", {}) for w in webhooks]
    inbound = [m.get("inbound", {}) for m in media]
    sample = result["sample"]
    relay = {}
    for direction in ("caller_to_agent", "agent_to_caller"):
        n, (p50, p99) = tl.histogram_quantiles(
            after, before, "telephony_edge_relay_latency_seconds", (0.5, 0.99),
            direction=direction,
        )  # fmt: skip
        relay[direction] = {"frames": n, "p50_ms": p50 * 1000, "p99_ms": p99 * 1000}
    heard, sent = sum(c.heard for c in callers), sum(c.sent for c in callers)
    lost_to_callers = sum(s["lost"] for s in at_callers)
    got_at_callers = sum(s["received"] for s in at_callers)
    lost_at_edge = sum(i.get("lost", 0) for i in inbound)
    got_at_edge = sum(i.get("packets", 0) for i in inbound)
    call_minutes = args.calls * sample["seconds"] / 60
    figures: dict[str, Any] = {
        "calls": args.calls,
        "call_seconds": args.seconds,
        "cores": len(cores),
        "edge_pinned": sorted(edge_cpus or []),
        "answered": args.calls - len(result["failures"]),
        "connected": connected,
        "failures": result["failures"][:5],
        "end_of_call_webhooks": len(webhooks),
        "call_statuses": dict(Counter(w["call_status"] for w in webhooks)),
        "edge_cpu_s_per_call_minute_steady": sample["cpu"] / call_minutes,
        "edge_cpu_utilisation_steady": sample["cpu"] / sample["seconds"],
        "edge_cpu_s_per_call_minute_overall": (cpu1 - cpu0) / (args.calls * args.seconds / 60),
        "calls_per_core_at_this_cost": 60 / (sample["cpu"] / call_minutes),
        "loadgen_cpu_utilisation_steady": result["loadgen_cpu_utilisation_steady"],
        "edge_to_callers": {
            "packets_received": got_at_callers,
            "lost": lost_to_callers,
            "loss_pct": 100 * lost_to_callers / max(1, got_at_callers + lost_to_callers),
            "jitter_ms_p50": statistics.median(s["jitter_ms"] for s in at_callers),
            "jitter_ms_max": max(s["jitter_ms"] for s in at_callers),
            "frames_heard": heard,
            "voiced_frames": sum(c.voiced for c in callers),
        },
        "callers_to_edge": {
            "packets_sent": sent,
            "packets_at_edge": got_at_edge,
            "lost": lost_at_edge,
            "loss_pct": 100 * lost_at_edge / max(1, got_at_edge + lost_at_edge),
        },
        "media_at_edge": media_at_edge(tmp / "edge.log"),
        "relay_latency": relay,
        "frames_dropped_by_edge": {
            dict(k).get("reason", ""): v
            for k, v in tl.delta(after, before, "telephony_edge_frames_dropped_total").items()
            if v
        },
        "edge_peak_rss_mb": hwm_kb / 1024,
        "edge_memory": tl.memory_figures(
            rss_before_kb, hwm_kb, rss_after_kb, connected, args.settle
        ),
        "logs": str(tmp),
    }
    if args.py_spy and Path(args.py_spy).exists():
        figures["edge_time_by_part_pct"] = categorize(Path(args.py_spy))
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0 if connected == args.calls else 1


async def with_webhooks(
    port: int, args: argparse.Namespace, base: str, steady: Any
) -> dict[str, Any]:
    """The callers, with this process's end-of-call webhook target up meanwhile."""
    from aiohttp import web

    received: list[dict[str, Any]] = []

    async def ended(request: web.Request) -> web.Response:
        received.append(json.loads(await request.read()))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/ended", ended)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        return await run_callers(args, base, steady, received)
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
