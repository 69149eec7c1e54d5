"""Load benchmark: N concurrent sipp calls with RTP against one ``telephony-edge serve``.

    python bench/sip_load.py [--calls 100] [--seconds 45] [--rate 50] [--codec PCMA|G722]
                             [--core light|builtin] [--edge-cpu 0] [--settle 10]
                             [--target edge|reference] [--json F]

Processes, as in ``bench/twilio_load.py`` (whose helpers this imports: config,
spawning with CPU pinning, ``/proc`` CPU accounting, metrics scraping): the
edge, ``telephony-edge serve`` with SIP on, pinned to one core; an agent core
(the minimal ``--core light`` by default, or the built-in one); and one sipp,
kept with the rest off the edge's core.

Every call is registered first (``POST /register_sip_call``); sipp then places
them all (``-m N -r RATE -l N``, the call ids from an injection file) with a
scenario generated from ``sip/uac_load_pcap.xml``: INVITE, ACK, Debian
sip-tester's PCMA pcap (7.05 s, 30 ms packets) played over and over (40 ms apart) for about
``--seconds``, BYE. With ``--codec G722`` the offer is G.722 (PT 9) and the
pcap is written here first: the speech fixture, looped to 7 s, encoded with
the edge's own ``G722Encoder`` in 20 ms packets.

Reported: sipp's successful/failed calls; the edge's CPU seconds per
call-minute in the steady state (every call up) and overall; RTP at the
edge's receiver (each leg's counters from its ``SIP media closed`` log line:
received, lost, late, duplicates, against the packets sipp sent; interarrival
jitter, mean and max over the calls); edge-added
latency per frame both ways (``telephony_edge_relay_latency_seconds``,
p50/p99); frames the edge dropped; its RSS before the calls, at their peak
and ``--settle`` seconds after the last one ended (kB per call, the share
given back). Latency on the way to the caller and loss at sipp are not
measured (sipp does not count what it receives).

``--target reference`` places the same calls on the bare RTP echo relay in
``bench/reference/rtp_relay.py`` instead of the edge (G.711 only): no
registrations, no metrics; its RTP counters stand in for the edge's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import twilio_load as tl  # bench/ helpers: pinning, CPU accounting, metrics
import yaml

from telephony_edge.audio.g722 import G722Encoder
from telephony_edge.sip.rtp import build_rtp

SCENARIO = tl.ROOT / "sip" / "uac_load_pcap.xml"
PCAP = "/usr/share/sip-tester/g711a.pcap"
PCAP_SECONDS = 7.05
# The BYE waits this long past the last play: sipp paces a play in its own thread, which
# lags on a loaded machine, and a call whose BYE was answered at once (the bare relay's)
# cancels it before its last packet, which then counted as lost (1 frame, twice in CI)
TAIL_S = 0.25
# Each play's pause is this much longer than the pcap: a play that starts while the one
# before is still sending cancels it, and its last packet or two (sent 0.4 ms before the
# pause ends, later on a loaded machine) went missing without a sequence gap, the next
# play's numbers starting again (2 of 141,600 packets in one 45 s run)
PLAY_GAP_S = 0.04
PCAP_PACKETS = 236
RTP_LOW = 30000


def sip_config(path: Path, http_port: int, core_port: int, sip_port: int, calls: int) -> None:
    tl.write_config(path, http_port, core_port, use_uvloop=True)
    config = yaml.safe_load(path.read_text())
    config["sip"] = {
        "enabled": True,
        "bind_host": "127.0.0.1",
        "port": sip_port,
        "rtp_port_min": RTP_LOW,
        "rtp_port_max": RTP_LOW + 4 * calls + 100,
    }
    path.write_text(yaml.safe_dump(config))


G722_SECONDS = 7.0
G722_PACKETS = 350
PCMA_OFFER = "RTP/AVP 8 101\n      a=rtpmap:8 PCMA/8000"
G722_OFFER = "RTP/AVP 9 101\n      a=rtpmap:9 G722/8000"


def scenario(out: Path, plays: int, pcap: str, seconds: float, codec: str) -> None:
    """``uac_load_pcap.xml`` with ``pcap`` played ``plays`` times, ``PLAY_GAP_S`` apart,
    then ``TAIL_S`` more before the BYE."""
    text = SCENARIO.read_text()
    if codec == "G722":
        assert PCMA_OFFER in text
        text = text.replace(PCMA_OFFER, G722_OFFER)

    def play(pause_s: float) -> str:
        return (
            f'  <nop>\n    <action>\n      <exec play_pcap_audio="{pcap}"/>\n'
            f'    </action>\n  </nop>\n  <pause milliseconds="{int(pause_s * 1000)}"/>\n'
        )

    start = text.index("  <nop>")
    end = text.index("  <pause/>\n") + len("  <pause/>\n")
    plays_text = play(seconds + PLAY_GAP_S) * (plays - 1) + play(seconds + TAIL_S)
    out.write_text(text[:start] + plays_text + text[end:])


def write_g722_pcap(path: Path) -> None:
    """A pcap (Ethernet, IPv4, UDP) of G.722 RTP sipp can play: the speech fixture, looped."""
    import wave

    with wave.open(str(tl.ROOT / "tests" / "fixtures" / "speech_table.wav")) as wav:
        speech = wav.readframes(wav.getnframes())
    pcm = (speech * 4)[: G722_PACKETS * 640]
    encoder = G722Encoder()
    records = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for n in range(G722_PACKETS):
        rtp = build_rtp(9, n, 160 * n, 0x6722, n == 0, encoder.encode(pcm[n * 640 : (n + 1) * 640]))
        udp = struct.pack("!HHHH", 6000, 6000, 8 + len(rtp), 0) + rtp
        ip = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), n, 0, 64, 17, 0,
            bytes((127, 0, 0, 1)), bytes((127, 0, 0, 1)),
        )  # fmt: skip
        frame = bytes(12) + b"\x08\x00" + ip + udp
        sec, usec = divmod(n * 20_000, 1_000_000)
        records.append(struct.pack("<IIII", sec, usec, len(frame), len(frame)))
        records.append(frame)
    path.write_bytes(b"".join(records))


def wait_listening(proc: subprocess.Popen[bytes], log: Path, within: float = 20.0) -> None:
    """Until the bare relay says it listens (it has no HTTP to poll)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args!r} exited with {proc.returncode}")
        if "listening" in log.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise SystemExit(f"{proc.args!r} did not listen within {within:g}s")


async def register_all(base: str, n: int) -> list[str]:
    import aiohttp

    async with aiohttp.ClientSession() as http:

        async def one() -> str:
            async with http.post(
                base + "/register_sip_call",
                json={"agent_id": "echo"},
                headers={"Authorization": f"Bearer {tl.API_KEY}"},
            ) as resp:
                assert resp.status == 200, await resp.text()
                return str((await resp.json())["call_id"])

        return list(await asyncio.gather(*(one() for _ in range(n))))


def sipp_stats(path: Path) -> dict[str, int]:
    rows = [r.split(";") for r in path.read_text().splitlines() if r.strip()]
    header, last = rows[0], rows[-1]
    return {k: int(last[header.index(k)]) for k in ("SuccessfulCall(C)", "FailedCall(C)")}


def rtp_at_edge(log: Path) -> dict[str, float]:
    """Every leg's RTP counters summed; interarrival jitter (RFC 3550) as mean and max."""
    totals: dict[str, float] = {"legs": 0}
    jitters: list[float] = []
    for line in log.read_text(errors="replace").splitlines():
        if "SIP media closed" not in line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        totals["legs"] += 1
        for key, value in rec.items():
            if key.startswith("rtp_") and isinstance(value, int):
                totals[key] = totals.get(key, 0) + value
        if isinstance(rec.get("rtp_jitter_ms"), int | float):
            jitters.append(float(rec["rtp_jitter_ms"]))
    if jitters:
        totals["rtp_jitter_ms_mean"] = round(sum(jitters) / len(jitters), 2)
        totals["rtp_jitter_ms_max"] = max(jitters)
    return totals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=45.0, help="about this long each")
    parser.add_argument("--rate", type=float, default=50.0, help="new calls per second")
    parser.add_argument("--edge-cpu", type=int, default=0)
    parser.add_argument("--core", choices=("builtin", "light"), default="light")
    parser.add_argument("--codec", choices=("PCMA", "G722"), default="PCMA")
    parser.add_argument(
        "--settle", type=float, default=10.0, help="seconds after the calls before the RSS 'after'"
    )
    parser.add_argument(
        "--target",
        choices=("edge", "reference"),
        default="edge",
        help="what answers the calls: the edge, or the bare relay in bench/reference/ (G.711)",
    )
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.target == "reference" and args.codec != "PCMA":
        parser.error("--target reference: the bare relay speaks G.711 only")
    sipp = shutil.which("sipp")
    if sipp is None or not Path(PCAP).exists():
        raise SystemExit("needs sipp and its pcaps (Debian sip-tester)")

    cores = sorted(os.sched_getaffinity(0))
    edge_cpus = {args.edge_cpu} if len(cores) > 1 else None
    other_cpus = set(cores) - {args.edge_cpu} if len(cores) > 1 else None
    http_port, core_port, sip_port = tl.free_port(), tl.free_port(), tl.free_port()
    tmp = Path(tempfile.mkdtemp(prefix="sip-load-"))
    config = tmp / "edge.yaml"
    sip_config(config, http_port, core_port, sip_port, args.calls)
    pcap, pcap_s, pcap_packets = PCAP, PCAP_SECONDS, PCAP_PACKETS
    if args.codec == "G722":
        pcap, pcap_s, pcap_packets = str(tmp / "g722.pcap"), G722_SECONDS, G722_PACKETS
        write_g722_pcap(Path(pcap))
    plays = max(1, round(args.seconds / pcap_s))
    call_s = plays * pcap_s + (plays - 1) * PLAY_GAP_S + TAIL_S
    scenario(tmp / "uac_load.xml", plays, pcap, pcap_s, args.codec)
    base = f"http://127.0.0.1:{http_port}"
    py = sys.executable
    core_cmd = (
        [py, "-m", "telephony_edge", "agent-core", "--port", str(core_port), "--path", "/agent",
         "--log-level", "WARNING"]
        if args.core == "builtin"
        else [py, str(Path(tl.__file__).resolve()), "--serve-light-core", str(core_port)]
    )  # fmt: skip
    reference = args.target == "reference"  # which has no agent hop
    core = None if reference else tl.spawn(core_cmd, other_cpus, tmp / "agent-core.log")
    # INFO: each leg logs its RTP counters when it closes (one line per call)
    edge_cmd = [py, "-m", "telephony_edge", "serve", "--config", str(config), "--log-level", "INFO"]
    if reference:
        edge_cmd = [
            py,
            str(tl.ROOT / "bench" / "reference" / "rtp_relay.py"),
            "--port",
            str(sip_port),
        ]
    edge = tl.spawn(edge_cmd, edge_cpus, tmp / "edge.log")
    if other_cpus:
        os.sched_setaffinity(0, other_cpus)
    sipp_proc: subprocess.Popen[bytes] | None = None
    try:
        if reference:
            wait_listening(edge, tmp / "edge.log")
            call_ids = [f"bare{n}" for n in range(args.calls)]
        else:
            tl.wait_port(core_port)
            tl.wait_http(base + "/healthz", edge, tmp / "edge.log")
            call_ids = asyncio.run(register_all(base, args.calls))
        (tmp / "calls.csv").write_text("SEQUENTIAL\n" + "".join(f"{c};\n" for c in call_ids))
        before = {} if reference else tl.scrape(base)
        rss_before_kb = tl.reset_peak_rss(edge.pid)
        cpu0 = tl.cpu_seconds(edge.pid)
        t0 = time.time()
        sipp_cmd = [
            sipp, f"127.0.0.1:{sip_port}", "-sf", str(tmp / "uac_load.xml"),
            "-inf", str(tmp / "calls.csv"), "-i", "127.0.0.1", "-mi", "127.0.0.1",
            "-p", str(tl.free_port()), "-mp", str(tl.free_port() // 2 * 2),
            "-m", str(args.calls), "-r", str(args.rate), "-l", str(args.calls),
            "-nostdin", "-timeout", str(int(call_s + 120)), "-timeout_error",
            "-trace_stat", "-stf", str(tmp / "stats.csv"), "-fd", "1",
            "-trace_err", "-error_file", str(tmp / "sipp_errors.log"),
        ]  # fmt: skip
        sipp_proc = tl.spawn(sipp_cmd, other_cpus, tmp / "sipp.log")
        ramp = args.calls / args.rate
        steady_from, steady_to = t0 + ramp + 2.0, t0 + call_s - 1.0
        cpu_a = cpu_b = None
        ta = tb = 0.0
        if steady_to - steady_from >= 3:
            time.sleep(max(0.0, steady_from - time.time()))
            cpu_a, ta = tl.cpu_seconds(edge.pid), time.monotonic()
            time.sleep(max(0.0, steady_to - time.time()))
            cpu_b, tb = tl.cpu_seconds(edge.pid), time.monotonic()
        sipp_rc = sipp_proc.wait(call_s + 180)
        ended = time.monotonic()
        time.sleep(2.0)  # the edge tears the calls down
        after = {} if reference else tl.scrape(base)
        cpu1 = tl.cpu_seconds(edge.pid)
        hwm_kb = tl.status_kb(edge.pid, "VmHWM")
        time.sleep(max(0.0, ended + args.settle - time.monotonic()))
        rss_after_kb = tl.status_kb(edge.pid, "VmRSS")
    finally:
        tl.stop(sipp_proc, edge, core)

    stats = sipp_stats(tmp / "stats.csv")
    ok = stats["SuccessfulCall(C)"]
    relay = {}
    for direction in ("caller_to_agent", "agent_to_caller"):
        n, (p50, p99) = tl.histogram_quantiles(
            after, before, "telephony_edge_relay_latency_seconds", (0.5, 0.99),
            direction=direction,
        )  # fmt: skip
        relay[direction] = {"frames": n, "p50_ms": p50 * 1000, "p99_ms": p99 * 1000}
    dropped = {
        dict(k).get("reason", ""): v
        for k, v in tl.delta(after, before, "telephony_edge_frames_dropped_total").items()
        if v
    }
    if reference:
        counters = tl.reference_counters(tmp / "edge.log")
        rtp = {"legs": counters.get("calls", 0), "rtp_received": counters.get("rtp_in", 0)}
    else:
        rtp = rtp_at_edge(tmp / "edge.log")
    sent = ok * plays * pcap_packets
    figures: dict[str, Any] = {
        "calls": args.calls,
        "target": args.target,
        "codec": args.codec,
        "call_seconds": call_s,
        "rate_per_s": args.rate,
        "core": args.core,
        "cores": len(cores),
        "edge_pinned": sorted(edge_cpus or []),
        "sipp_exit": sipp_rc,
        "sipp": stats,
        "edge_cpu_s_per_call_minute_steady": (
            (cpu_b - cpu_a) / (args.calls * (tb - ta) / 60)
            if cpu_a is not None and cpu_b is not None
            else None
        ),
        "edge_cpu_utilisation_steady": (
            (cpu_b - cpu_a) / (tb - ta) if cpu_a is not None and cpu_b is not None else None
        ),
        "edge_cpu_s_per_call_minute_overall": (cpu1 - cpu0) / (ok * call_s / 60) if ok else None,
        "rtp_packets_sent_by_sipp": sent,
        "rtp_at_edge": rtp,
        "rtp_lost_at_edge": rtp.get("rtp_lost", 0),
        "rtp_missing_at_edge": sent - rtp.get("rtp_received", 0),
        "relay_latency": relay,
        "frames_dropped_by_edge": dropped,
        "edge_peak_rss_mb": hwm_kb / 1024,
        "edge_memory": tl.memory_figures(rss_before_kb, hwm_kb, rss_after_kb, ok, args.settle),
        "logs": str(tmp),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0 if sipp_rc == 0 and ok == args.calls and not math.isnan(ok) else 1


if __name__ == "__main__":
    raise SystemExit(main())
