"""The scorecard: every network's cost on this machine, in one session, written to docs/.

    python bench/scorecard.py [--calls 100] [--seconds 45] [--out docs/scorecard.md]
    python bench/scorecard.py --short          # 10 calls for 10 s each: CI's check

Runs, one after the other on an otherwise idle machine (the edge pinned to one
core where there are several): ``bench/twilio_load.py --provider both`` (Twilio,
then Vonage, against one edge process) and ``bench/sip_load.py`` for G.711 (PCMA)
and G.722. From each it takes the edge's CPU per call-minute in steady state, the
calls one core carries at 80 % (``0.8 * 60 / CPU-s per call-minute``), the edge's
added latency per frame (p50/p99, both ways where the bench has it), the frames
the edge dropped, and its peak RSS; and writes them as a Markdown table with the
date, the commit and the machine.

``--short`` is the suite's check that every network runs and reports (tests/
test_scorecard.py): it fails when a network loses frames or a figure is missing.
Its figures are too short to quote; the README's are from a full run. Bare
references (a minimal relay per network, ``bench/reference/``) are not part of
it yet.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def run_bench(script: str, args: list[str]) -> Any:
    """One bench's JSON figures (the bench exits non-zero on a failed run: raised)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as out:
        path = out.name
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


def per_core(cpu_per_call_minute: float | None) -> int | None:
    """Calls one core carries at 80 % of it."""
    if not cpu_per_call_minute:
        return None
    return int(0.8 * 60 / cpu_per_call_minute)


def dropped(figures: dict[str, Any]) -> int:
    frames = figures.get("frames_dropped_by_edge") or {}
    return int(sum(frames.values())) if isinstance(frames, dict) else int(frames or 0)


def websocket_row(name: str, f: dict[str, Any]) -> dict[str, Any]:
    cpu = f.get("edge_cpu_s_per_call_minute_steady")
    c2a, a2c = f.get("relay_caller_to_agent_ms") or {}, f.get("relay_agent_to_caller_ms") or {}
    return {
        "network": name,
        "calls": f.get("calls"),
        "cpu_s_per_call_minute": cpu,
        "calls_per_core_at_80": per_core(cpu),
        "latency_ms_p50_p99": [c2a.get("p50"), c2a.get("p99"), a2c.get("p50"), a2c.get("p99")],
        "frames_dropped": dropped(f) + int(f.get("playout_overflow_frames") or 0),
        "underruns": f.get("playout_underruns"),
        "peak_rss_mb": f.get("edge_peak_rss_mb"),
    }


def sip_row(name: str, f: dict[str, Any]) -> dict[str, Any]:
    cpu = f.get("edge_cpu_s_per_call_minute_steady")
    relay = f.get("relay_latency") or {}
    latency = [
        relay.get(way, {}).get(q) for way in ("caller_to_agent", "agent_to_caller")
        for q in ("p50_ms", "p99_ms")
    ]  # fmt: skip
    return {
        "network": name,
        "calls": f.get("calls"),
        "cpu_s_per_call_minute": cpu,
        "calls_per_core_at_80": per_core(cpu),
        "latency_ms_p50_p99": latency,
        "frames_dropped": dropped(f) + int(f.get("rtp_lost_at_edge") or 0),
        "underruns": None,
        "peak_rss_mb": f.get("edge_peak_rss_mb"),
    }


def collect(calls: int, seconds: float) -> list[dict[str, Any]]:
    common = ["--calls", str(calls), "--seconds", str(seconds)]
    ws = run_bench(
        "twilio_load.py", [*common, "--provider", "both", "--core", "light", "--ramp", "2"]
    )
    rows = [websocket_row(r["provider"].title(), r) for r in ws]
    for codec, name in (("PCMA", "SIP G.711"), ("G722", "SIP G.722")):
        rows.append(sip_row(name, run_bench("sip_load.py", [*common, "--codec", codec])))
    return rows


def _cell(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(rows: list[dict[str, Any]], calls: int, seconds: float) -> str:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    lines = [
        "# Scorecard",
        "",
        f"{time.strftime('%Y-%m-%d')}, commit `{commit}`, {platform.machine()} with "
        f"{os.cpu_count()} cores, Python {platform.python_version()}: `python "
        f"bench/scorecard.py --calls {calls} --seconds {seconds:g}` (the edge on one core,"
        " the load generators and the agent core on the others).",
        "",
        "| network | calls | CPU-s per call-minute | calls per core at 80 % | added latency "
        "p50 / p99 ms (caller → agent, agent → caller) | frames dropped | playout underruns "
        "| peak RSS MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lat = r["latency_ms_p50_p99"]
        latency = (
            " / ".join(_cell(v, 2) for v in lat[:2])
            + ", "
            + " / ".join(_cell(v, 2) for v in lat[2:])
        )
        lines.append(
            f"| {r['network']} | {_cell(r['calls'])} | {_cell(r['cpu_s_per_call_minute'])} "
            f"| {_cell(r['calls_per_core_at_80'])} | {latency} | {_cell(r['frames_dropped'])} "
            f"| {_cell(r['underruns'])} | {_cell(r['peak_rss_mb'], 0)} |"
        )
    return "\n".join(lines) + "\n"


def check(rows: list[dict[str, Any]]) -> list[str]:
    """What makes a run unfit to publish: a network that lost frames or a missing figure."""
    problems = []
    for r in rows:
        if not r["cpu_s_per_call_minute"]:
            problems.append(f"{r['network']}: no CPU figure")
        if r["frames_dropped"]:
            problems.append(f"{r['network']}: {r['frames_dropped']} frames dropped")
        if r["underruns"]:
            problems.append(f"{r['network']}: {r['underruns']} playout underruns")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=45.0)
    parser.add_argument("--short", action="store_true", help="10 calls for 10 s: CI's check")
    parser.add_argument("--out", help="write the table here (default: print it)")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    calls, seconds = (10, 10.0) if args.short else (args.calls, args.seconds)
    rows = collect(calls, seconds)
    table = markdown(rows, calls, seconds)
    if args.out:
        Path(args.out).write_text(table)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    problems = check(rows)
    for problem in problems:
        print(f"scorecard: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
