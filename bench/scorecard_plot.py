"""The scorecard's plot (``docs/scorecard.png``), drawn from ``bench/scorecard.py``'s figures.

Six panels: calls per core at 80 %, CPU-s per call-minute (the networks and, hatched,
the bare references), added latency p50/p99 both ways, kB per call, RSS before / at
the peak / after the settle time, and the stall-recovery trace. matplotlib is optional:
``draw`` returns False when it cannot be imported, and the scorecard goes on without
the plot (the suite's short run needs none).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def _value(v: Any) -> float:
    return math.nan if v is None else float(v)


def draw(result: dict[str, Any], meta: dict[str, Any], path: Path) -> bool:
    """Write the plot to ``path``; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows, refs = result["rows"], result["references"]
    both = rows + refs
    names = [r["network"] for r in rows] + [f"{r['network']}\nbare" for r in refs]
    hatch = [""] * len(rows) + ["//"] * len(refs)
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    fig.suptitle(
        f"telephony-edge scorecard: {meta['date']}, commit {meta['commit']}, "
        f"{meta['machine']} with {meta['cores']} cores, the edge on one core"
    )

    def bars(ax: Any, key: str, title: str, fmt: str) -> None:
        values = [_value(r.get(key) if key in r else r["memory"].get(key)) for r in both]
        drawn = ax.bar(names, values, color="#4878a8", edgecolor="black", hatch=hatch)
        ax.bar_label(drawn, [fmt.format(v) if not math.isnan(v) else "" for v in values])
        ax.set_title(title)
        ax.tick_params(axis="x", labelsize=8)

    bars(axes[0][0], "calls_per_core_at_80", "calls per core at 80 %", "{:.0f}")
    bars(axes[0][1], "cpu_s_per_call_minute", "CPU-s per call-minute", "{:.3f}")
    bars(axes[1][0], "kb_per_call", "memory per call (kB, peak over before)", "{:.0f}")

    ax = axes[0][2]
    width = 0.2
    labels = (
        "caller → agent p50",
        "caller → agent p99",
        "agent → caller p50",
        "agent → caller p99",
    )
    for i, label in enumerate(labels):
        xs = [n + (i - 1.5) * width for n in range(len(rows))]
        ax.bar(xs, [_value(r["latency_ms_p50_p99"][i]) for r in rows], width, label=label)
    ax.set_xticks(range(len(rows)), [r["network"] for r in rows], fontsize=8)
    ax.set_title("edge-added latency per frame (ms)")
    ax.margins(y=0.3)  # room for the legend above the bars
    ax.legend(fontsize=7, ncols=2, loc="upper left")

    ax = axes[1][1]
    width = 0.27
    for i, (key, label) in enumerate(
        (("rss_before_mb", "before"), ("rss_peak_mb", "peak"), ("rss_after_mb", "after settle"))
    ):
        xs = [n + (i - 1) * width for n in range(len(both))]
        ax.bar(xs, [_value(r["memory"].get(key)) for r in both], width, label=label)
    ax.set_xticks(range(len(both)), names, fontsize=8)
    ax.set_title("RSS (MB)")
    ax.legend(fontsize=7)

    ax = axes[1][2]
    stall = result["stall"]
    for name, network in stall["networks"].items():
        trace = network["per_second"]
        ax.plot(
            [row["second"] + 0.5 for row in trace],
            [_value(row["p50_ms"]) for row in trace],
            marker="o",
            label="SIP" if name == "sip" else name.title(),
        )
    at = stall["stall_at_s"]
    ax.axvspan(at, at + stall["stall_ms"] / 1000, color="red", alpha=0.3, label="edge stopped")
    ax.set_xlabel("second of the call")
    ax.set_title("stall recovery: mouth-to-ear p50 per second (ms)")
    ax.legend(fontsize=7)

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
