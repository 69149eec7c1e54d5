"""The scorecard: every network's cost on this machine, in one session, written to docs/.

    python bench/scorecard.py [--calls 100] [--seconds 45] [--webrtc-calls 20] [--settle 10]
                              [--out docs/scorecard.md] [--plot docs/scorecard.png] [--json F]
    python bench/scorecard.py --short          # 10 calls for 10 s each: CI's check

Runs, one after the other on an otherwise idle machine (the edge, or a bare
reference, pinned to one core where there are several; the load generators and
the agent core on the others):

* ``bench/twilio_load.py --provider both``: Twilio, then Vonage, against one
  edge process; then ``--target reference``: the same Twilio calls against the
  bare relay ``bench/reference/twilio_relay.py``;
* ``bench/sip_load.py`` for G.711 (PCMA) and G.722 against the edge, then
  ``--target reference``: the PCMA calls against the bare RTP echo relay
  ``bench/reference/rtp_relay.py``;
* ``bench/webrtc_load.py`` with ``--webrtc-calls`` aiortc callers (fewer: a
  WebRTC call costs the edge, and the callers, several times a phone call);
* ``bench/stall_recovery.py --network both``: one Twilio and one SIP call
  through a 300 ms SIGSTOP of the edge, the agent's delay second by second.

From each load run it takes the CPU per call-minute in steady state, the calls
one core carries at 80 % (``0.8 * 60 / CPU-s per call-minute``), the capacity
ratio to the network's bare reference (its CPU per call-minute over the
edge's: above 1 the edge carries more calls per core than the bare relay), the
edge's added latency per frame (p50/p99 both ways), the frames lost, the
caller's playout underruns, and memory: RSS before the calls, at their peak,
and ``--settle`` seconds after they ended, hence kB per call and the share
given back. It writes ``--out`` (Markdown: the table, the references, the stall
trace, the aims of issue 21, what each column means) and, when matplotlib can
be imported, ``--plot`` (without it the plot is skipped and said so).

``--short`` is the suite's check that every network and reference runs and
reports (tests/test_scorecard.py): it exits 1 when a network loses frames,
underruns, or misses a figure. Its figures are too short to quote, and it
writes nothing under docs/ unless told to (``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EDGE_NETWORKS = ("Twilio", "Vonage", "SIP G.711", "SIP G.722", "WebRTC")
REFERENCES = {  # reference row -> what it relays, and the networks measured against it
    "Twilio": ("Twilio Media Streams ↔ agent (uvloop, aiohttp, json, audioop)", ("Twilio",)),
    "SIP": ("PCMA RTP echo, 8 → 16 → 8 kHz (uvloop, audioop)", ("SIP G.711", "SIP G.722")),
}


def run_bench(script: str, args: list[str]) -> Any:
    """One bench's JSON figures (the bench exits non-zero on a failed run: raised)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as out:
        path = out.name
    started = time.monotonic()
    try:
        subprocess.run(
            [sys.executable, str(ROOT / "bench" / script), *args, "--json", path],
            check=True,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        return json.loads(Path(path).read_text())
    finally:
        os.unlink(path)
        took = time.monotonic() - started
        print(f"scorecard: {script} {' '.join(args)}: {took:.0f} s", file=sys.stderr, flush=True)


def per_core(cpu_per_call_minute: float | None) -> int | None:
    """Calls one core carries at 80 % of it."""
    if not cpu_per_call_minute or math.isnan(cpu_per_call_minute):
        return None
    return int(0.8 * 60 / cpu_per_call_minute)


def dropped(figures: dict[str, Any]) -> int:
    frames = figures.get("frames_dropped_by_edge") or {}
    return int(sum(frames.values())) if isinstance(frames, dict) else int(frames or 0)


def _row(name: str, f: dict[str, Any], latency: list[Any], lost: int, underruns: Any) -> Any:
    cpu = f.get("edge_cpu_s_per_call_minute_steady")
    return {
        "network": name,
        "calls": f.get("calls"),
        "cpu_s_per_call_minute": cpu,
        "calls_per_core_at_80": per_core(cpu),
        "latency_ms_p50_p99": [None if v is None or math.isnan(v) else v for v in latency],
        "frames_lost": lost,
        "underruns": underruns,
        "memory": f.get("edge_memory") or {},
    }


def websocket_row(name: str, f: dict[str, Any]) -> dict[str, Any]:
    c2a, a2c = f.get("relay_caller_to_agent_ms") or {}, f.get("relay_agent_to_caller_ms") or {}
    latency = [c2a.get("p50"), c2a.get("p99"), a2c.get("p50"), a2c.get("p99")]
    lost = dropped(f) + int(f.get("playout_overflow_frames") or 0)
    lost += max(0, int(f["caller_frames_sent"]) - int(f["caller_frames_relayed_to_agent"]))
    return _row(name, f, latency, lost, f.get("playout_underruns"))


def sip_row(name: str, f: dict[str, Any]) -> dict[str, Any]:
    relay = f.get("relay_latency") or {}
    latency = [
        relay.get(way, {}).get(q) for way in ("caller_to_agent", "agent_to_caller")
        for q in ("p50_ms", "p99_ms")
    ]  # fmt: skip
    lost = dropped(f) + int(f.get("rtp_lost_at_edge") or 0)
    return _row(name, f, latency, lost, None)


def webrtc_row(f: dict[str, Any]) -> dict[str, Any]:
    relay = f.get("relay_latency") or {}
    latency = [
        relay.get(way, {}).get(q) for way in ("caller_to_agent", "agent_to_caller")
        for q in ("p50_ms", "p99_ms")
    ]  # fmt: skip
    lost = dropped(f) + int(f["edge_to_callers"]["lost"]) + int(f["callers_to_edge"]["lost"])
    lost += int(f["calls"]) - int(f["connected"])  # a call that never connected lost it all
    return _row("WebRTC", f, latency, lost, None)


def reference_row(name: str, f: dict[str, Any], missing: int) -> dict[str, Any]:
    """A bare reference: its cost and memory; lost = what the load generator sent that it
    did not relay (a reference that drops work would look cheap)."""
    return _row(name, f, [None] * 4, missing, None)


@dataclass(frozen=True, slots=True)
class Plan:
    """What one scorecard run places: the full run's, or ``--short``'s."""

    calls: int
    seconds: float
    webrtc_calls: int
    settle_s: float
    ramp_s: float  # Twilio and Vonage calls start over this long
    stall_s: float  # the stall-recovery call's length

    def command(self) -> str:
        if self == SHORT:
            return "python bench/scorecard.py --short"
        options = f"--calls {self.calls} --seconds {self.seconds:g}"
        if self.webrtc_calls != 20:
            options += f" --webrtc-calls {self.webrtc_calls}"
        if self.settle_s != 10:
            options += f" --settle {self.settle_s:g}"
        return f"python bench/scorecard.py {options}"


SHORT = Plan(calls=10, seconds=10, webrtc_calls=10, settle_s=1, ramp_s=1, stall_s=6)


def collect(plan: Plan) -> dict[str, Any]:
    """Run every bench, one after the other; the rows, the references, the stall trace."""
    calls, seconds, settle = plan.calls, plan.seconds, plan.settle_s
    common = ["--calls", str(calls), "--seconds", f"{seconds:g}", "--settle", f"{settle:g}"]
    twilio = [*common, "--core", "light", "--ramp", f"{plan.ramp_s:g}"]
    ws = run_bench("twilio_load.py", [*twilio, "--provider", "both"])
    rows = [websocket_row(r["provider"].title(), r) for r in ws]
    ref = run_bench("twilio_load.py", [*twilio, "--target", "reference"])
    missing = int(ref["caller_frames_sent"]) - int(ref["caller_frames_relayed_to_agent"])
    references = [reference_row("Twilio", ref, missing)]
    for codec, name in (("PCMA", "SIP G.711"), ("G722", "SIP G.722")):
        rows.append(sip_row(name, run_bench("sip_load.py", [*common, "--codec", codec])))
    ref = run_bench("sip_load.py", [*common, "--codec", "PCMA", "--target", "reference"])
    references.append(reference_row("SIP", ref, int(ref["rtp_missing_at_edge"])))
    ramp = max(1.0, min(10.0, seconds - 8))
    webrtc = ["--calls", str(plan.webrtc_calls), "--seconds", f"{seconds:g}", "--ramp", f"{ramp:g}"]
    rows.append(webrtc_row(run_bench("webrtc_load.py", [*webrtc, "--settle", f"{settle:g}"])))
    for row in rows:
        row["capacity_vs_reference"] = None
    for ref_row in references:
        for network in REFERENCES[ref_row["network"]][1]:
            row = next(r for r in rows if r["network"] == network)
            if ref_row["cpu_s_per_call_minute"] and row["cpu_s_per_call_minute"]:
                ratio = ref_row["cpu_s_per_call_minute"] / row["cpu_s_per_call_minute"]
                row["capacity_vs_reference"] = ratio
    stall_at = min(4.0, plan.stall_s / 2)
    stall = run_bench(
        "stall_recovery.py",
        ["--network", "both", "--seconds", f"{plan.stall_s:g}", "--stall-at", f"{stall_at:g}"],
    )
    return {"rows": rows, "references": references, "stall": stall}


def _cell(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _memory(m: dict[str, Any]) -> tuple[str, str, str]:
    rss = " / ".join(_cell(m.get(k), 0) for k in ("rss_before_mb", "rss_peak_mb", "rss_after_mb"))
    given = m.get("given_back_pct")
    return rss, _cell(m.get("kb_per_call"), 0), "-" if given is None else f"{given:.0f} %"


def table(result: dict[str, Any]) -> list[str]:
    """The networks' table (``k8s/timings.py`` reads its first four columns)."""
    settle = next((r["memory"].get("settle_s") for r in result["rows"] if r["memory"]), None)
    lines = [
        "| network | calls | CPU-s per call-minute | calls per core at 80 % | capacity vs "
        "bare reference | added latency p50 / p99 ms (caller → agent, agent → caller) | frames "
        f"lost | playout underruns | RSS MB before / peak / {_cell(settle, 0)} s after | kB "
        "per call | given back |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lat = r["latency_ms_p50_p99"]
        latency = (
            " / ".join(_cell(v, 2) for v in lat[:2])
            + ", "
            + " / ".join(_cell(v, 2) for v in lat[2:])
        )
        ratio = r["capacity_vs_reference"]
        rss, per_call, given = _memory(r["memory"])
        lines.append(
            f"| {r['network']} | {_cell(r['calls'])} | {_cell(r['cpu_s_per_call_minute'])} "
            f"| {_cell(r['calls_per_core_at_80'])} | {_cell(ratio, 2)} "
            f"| {latency} | {_cell(r['frames_lost'])} | {_cell(r['underruns'])} | {rss} "
            f"| {per_call} | {given} |"
        )
    return lines


def references_table(result: dict[str, Any]) -> list[str]:
    lines = [
        "| bare reference | relays | calls | CPU-s per call-minute | calls per core at 80 % "
        "| frames lost | RSS MB before / peak / after | kB per call |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["references"]:
        rss, per_call, _ = _memory(r["memory"])
        lines.append(
            f"| {r['network']} | {REFERENCES[r['network']][0]} | {_cell(r['calls'])} "
            f"| {_cell(r['cpu_s_per_call_minute'])} | {_cell(r['calls_per_core_at_80'])} "
            f"| {_cell(r['frames_lost'])} | {rss} | {per_call} |"
        )
    return lines


def stall_table(stall: dict[str, Any]) -> list[str]:
    """One row per network: the p50 delay before and after, then second by second."""
    networks = stall["networks"]
    seconds = max(len(n["per_second"]) for n in networks.values())
    lines = [
        "| network | p50 before ms | p50 from 1 s after ms | back within 1 s | "
        + " | ".join(f"{s} s" for s in range(seconds))
        + " |",
        "|---|---|---|---|" + "---|" * seconds,
    ]
    for name, n in networks.items():
        trace = [_cell(row["p50_ms"], 1) for row in n["per_second"]]
        lines.append(
            f"| {'SIP' if name == 'sip' else name.title()} | {_cell(n['p50_before_ms'], 1)} "
            f"| {_cell(n['p50_from_1s_after_ms'], 1)} | {'yes' if n['back_within_1s'] else 'no'} "
            f"| {' | '.join(trace)} |"
        )
    return lines


def aims_table(result: dict[str, Any]) -> list[str]:
    """Issue 21's aims against this run."""
    by = {r["network"]: r for r in result["rows"]}

    def figure(name: str, key: str) -> float:
        value = by.get(name, {}).get(key)
        return float(value) if value else math.nan

    def at_most(value: float, bound: float) -> bool | None:
        return None if math.isnan(value) else value <= bound

    g711, g722 = (
        figure("SIP G.711", "cpu_s_per_call_minute"),
        figure("SIP G.722", "cpu_s_per_call_minute"),
    )
    sip_ratio = figure("SIP G.711", "capacity_vs_reference")
    twilio_ratio = figure("Twilio", "capacity_vs_reference")
    vonage = figure("Vonage", "calls_per_core_at_80")
    webrtc = figure("WebRTC", "cpu_s_per_call_minute")
    p99 = max(
        (v for r in result["rows"] for v in r["latency_ms_p50_p99"][1::2] if v), default=math.nan
    )
    kb = max((r["memory"].get("kb_per_call") or 0 for r in result["rows"]), default=math.nan)
    underruns = sum(r["underruns"] or 0 for r in result["rows"])
    stall = result["stall"]["networks"]
    rows = [
        ("SIP G.711 ≤ 0.12 CPU-s per call-minute (500 calls per core)",
         _cell(g711), at_most(g711, 0.12)),
        ("SIP G.711 ≥ 1.0 times the bare RTP relay's capacity",
         _cell(sip_ratio, 2), at_most(1.0, sip_ratio)),
        ("SIP G.722 ≤ 1.2 times G.711's cost",
         _cell(g722 / g711, 2), at_most(g722 / g711, 1.2)),
        ("Twilio ≥ 1.2 times the bare relay's capacity",
         _cell(twilio_ratio, 2), at_most(1.2, twilio_ratio)),
        ("Vonage ≥ 800 calls per core at 80 %", _cell(vonage, 0), at_most(800, vonage)),
        ("WebRTC ≤ 0.6 CPU-s per call-minute (100 calls per core)",
         _cell(webrtc), at_most(webrtc, 0.6)),
        ("p99 added latency ≤ 5 ms each way", f"≤ {_cell(p99, 2)} ms", at_most(p99, 5)),
        ("0 playout underruns", str(underruns), underruns == 0),
        ("back to the pre-stall p50 within 1 s, every network",
         ", ".join(f"{n}: {'yes' if s['back_within_1s'] else 'no'}" for n, s in stall.items()),
         all(s["back_within_1s"] for s in stall.values())),
        ("≤ 100 kB per call", f"≤ {_cell(kb, 0)} kB", at_most(kb, 100)),
    ]  # fmt: skip

    def reached(ok: bool | None) -> str:
        return "-" if ok is None else ("yes" if ok else "no")

    return ["| aim | measured | reached |", "|---|---|---|"] + [
        f"| {aim} | {measured} | {reached(ok)} |" for aim, measured, ok in rows
    ]


ABOUT = """\
## Regenerating this page

One command, on an otherwise quiet machine (seven load runs of about a minute each at
100 calls of 45 s, then a 10 s stall trace):

    python bench/scorecard.py --calls 100 --seconds 45

It writes `docs/scorecard.md` (this page) and `docs/scorecard.png`, and exits 1 when
a run lost frames, underran, or missed a figure (a page not fit to publish). The plot
needs matplotlib, which the project does not install (`pip install matplotlib` in the
venv first); without it the page is written without the plot and the script says so.
`--webrtc-calls` (20), `--settle` (10 s), `--out`, `--plot` and `--json` change the
rest; `python bench/scorecard.py --short` (10 calls of 10 s per network, a 6 s stall
trace, nothing written under docs/) is what `tests/test_scorecard.py` runs.

It runs, one after the other, the edge (or a bare reference) pinned to one core and
the load generators and the agent core on the others:

1. `bench/twilio_load.py --provider both`: Twilio, then Vonage, against one edge
   process; then `--target reference`, the same Twilio calls against the bare relay;
2. `bench/sip_load.py` (sipp) for G.711 (PCMA) and G.722, then `--target reference`,
   the PCMA calls against the bare RTP relay;
3. `bench/webrtc_load.py` with `--webrtc-calls` aiortc callers (a WebRTC call costs
   the edge, and the callers, several times a phone call; the callers share one core);
4. `bench/stall_recovery.py --network both`: one Twilio and one SIP call through a
   300 ms SIGSTOP of the edge.

The page has four tables and the plot:

- **Networks**: one row per network: Twilio, Vonage, SIP G.711, SIP G.722, WebRTC.
  `k8s/timings.py` sizes the pods from this table's first four columns: every row,
  WebRTC included, so `server.max_calls` is then checked against the costliest one.
- **Bare references**: the two relays in `bench/reference/`, written for this project
  and driven by the same load generators. `twilio_relay.py` is uvloop, aiohttp, json
  and audioop: it answers the webhook and relays Media Streams to the agent and back
  (μ-law, `audioop.ratecv` 8 ↔ 16 kHz), with no resampling filter, no pacing, no marks,
  no metrics. `rtp_relay.py` echoes each PCMA RTP packet after an A-law/μ-law ↔ PCM
  and 8 → 16 → 8 kHz round trip in C (audioop), with no agent hop, no jitter buffer,
  no RTCP and just enough SIP for sipp. Their "frames lost" is what the load
  generator sent that the reference did not relay.
- **Stall recovery**: per network, the p50 of the agent's mouth-to-ear delay before
  the stall and from one second after it, whether it came back within one second
  (within 20 ms of the pre-stall p50), and the p50 second by second.
- **Against issue 21's aims**: each aim, this run's figure, reached or not.
- **The plot** (`docs/scorecard.png`): calls per core, CPU per call-minute (the
  references hatched), added latency p50/p99 both ways, kB per call, RSS before /
  peak / after, and the stall trace.

What the networks table's columns mean:

- **calls**: concurrent calls, each held for the run's length (WebRTC: `--webrtc-calls`).
- **CPU-s per call-minute**: the edge process's CPU time (user + system, from
  `/proc/PID/stat`) over the steady state, when every call is up, divided by the
  call-minutes in it.
- **calls per core at 80 %**: `0.8 * 60 / CPU-s per call-minute`.
- **capacity vs bare reference**: the bare reference's CPU-s per call-minute over the
  edge's, measured in the same session with the same load generator: above 1 the edge
  carries more calls per core than the bare relay. Twilio against the Media Streams
  relay; both SIP rows against the one RTP echo relay (G.711 calls).
- **added latency**: the edge's own processing per 20 ms frame
  (`telephony_edge_relay_latency_seconds`), not the wait for a frame's real-time slot.
- **frames lost**: frames the edge dropped (`telephony_edge_frames_dropped_total`),
  plus Vonage's playout overflows, caller frames not relayed to the agent (Twilio,
  Vonage), RTP lost on the way to the edge (SIP, WebRTC), RTP lost on the way to the
  callers (WebRTC, from their `getStats()`), and every frame of a WebRTC call that
  never connected.
- **playout underruns**: how often a Twilio or Vonage caller's playout buffer ran dry
  (SIP and WebRTC: not measured, `-`).
- **RSS before / peak / after**: the edge's resident memory before the calls, at their
  peak (`VmHWM`, reset at the start of each run), and the settle time after the last
  call ended. Vonage runs on the same process as Twilio, right after it.
- **kB per call**: (peak - before) / calls. **given back**: (peak - after) /
  (peak - before): 100 % is all of it returned to the system.
"""


def markdown(result: dict[str, Any], meta: dict[str, Any], plot: str | None) -> str:
    lines = [
        "# Scorecard",
        "",
        f"{meta['date']}, commit `{meta['commit']}`, {meta['machine']} with {meta['cores']} "
        f"cores, Python {meta['python']}: `{meta['command']}` (the edge, or a bare reference, "
        "on one core; the load generators and the agent core on the others).",
        "",
        *table(result),
        "",
        f"WebRTC: {meta['webrtc_calls']} calls. What each column means, and how the page "
        "is made: [Regenerating this page](#regenerating-this-page).",
        "",
        "## Bare references",
        "",
        "Written for this project (`bench/reference/`), driven by the same load generators "
        "(`--target reference`), pinned to the same core.",
        "",
        *references_table(result),
        "",
        "## Stall recovery",
        "",
        f"`bench/stall_recovery.py --network both`: one Twilio and one SIP call, the agent "
        f"streaming {result['stall']['agent_lead_ms']:g} ms ahead of real time; the edge "
        f"stopped for {result['stall']['stall_ms']:g} ms at {result['stall']['stall_at_s']:g} s."
        " The p50 of the agent's mouth-to-ear delay as the caller hears it, per second (ms):",
        "",
        *stall_table(result["stall"]),
        "",
        "## Against issue 21's aims",
        "",
        *aims_table(result),
        "",
    ]
    if plot:
        lines += [f"![The scorecard's figures]({plot})", ""]
    return "\n".join([*lines, ABOUT])


def check(result: dict[str, Any]) -> list[str]:
    """What makes a run unfit to publish: lost frames, underruns, a missing figure."""
    problems = []
    named = [(r["network"], r) for r in result["rows"]]
    named += [(f"{r['network']} reference", r) for r in result["references"]]
    for name, r in named:
        if not r["cpu_s_per_call_minute"]:
            problems.append(f"{name}: no CPU figure")
        if r["frames_lost"]:
            problems.append(f"{name}: {r['frames_lost']} frames lost")
        if r["underruns"]:
            problems.append(f"{name}: {r['underruns']} playout underruns")
        if r["memory"].get("kb_per_call") is None:
            problems.append(f"{name}: no memory figure")
    for name, n in result["stall"]["networks"].items():
        if n["p50_before_ms"] is None or n["p50_from_1s_after_ms"] is None:
            problems.append(f"stall recovery, {name}: no delay heard before or after the stall")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=45.0)
    parser.add_argument("--webrtc-calls", type=int, default=20)
    parser.add_argument("--settle", type=float, default=10.0, help="seconds before RSS 'after'")
    parser.add_argument("--short", action="store_true", help="10 calls for 10 s: CI's check")
    parser.add_argument("--out", help="the Markdown (default: docs/scorecard.md; --short: none)")
    parser.add_argument("--plot", help="the PNG (default: beside --out, scorecard.png)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    plan = SHORT
    if not args.short:
        plan = Plan(args.calls, args.seconds, args.webrtc_calls, args.settle, ramp_s=2, stall_s=10)
    out = Path(args.out) if args.out else (None if args.short else DOCS / "scorecard.md")
    plot = Path(args.plot) if args.plot else (out.with_suffix(".png") if out else None)
    for path in (out, plot, Path(args.json) if args.json else None):
        if path is not None and not path.parent.is_dir():  # known before minutes of runs
            parser.error(f"{path}: no such directory")
    result = collect(plan)
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip()
        or "unknown",
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "command": plan.command(),
        "webrtc_calls": plan.webrtc_calls,
    }
    drawn = None
    if plot is not None:
        from scorecard_plot import draw

        if draw(result, meta, plot):
            drawn = plot.name if out is not None and plot.parent == out.parent else str(plot)
        else:
            print("scorecard: no plot (matplotlib is not installed)", file=sys.stderr)
    text = markdown(result, meta, drawn)
    if out is not None:
        out.write_text(text)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, **result}, indent=2))
    problems = check(result)
    for problem in problems:
        print(f"scorecard: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
