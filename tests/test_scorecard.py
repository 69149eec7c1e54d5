"""The scorecard's short mode: every network and bare reference runs under load and reports.

``bench/scorecard.py --short`` places 10 calls of 10 s on each network (Twilio,
Vonage, SIP G.711, SIP G.722, WebRTC) against a real edge process, the same
Twilio and SIP calls on the bare references of ``bench/reference/``, and runs
the stall-recovery trace for a Twilio and a SIP call. It exits non-zero when a
network drops frames, underruns or misses a figure; here its JSON and Markdown
must also be well formed, and ``k8s/timings.py`` (which sizes pods from the
table) must read exactly the networks' rows. No figure is asserted: speed is
measured in bench/, not in the suite.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_binary
from tests.test_deploy import timings

ROOT = Path(__file__).resolve().parents[1]
NETWORKS = ["Twilio", "Vonage", "SIP G.711", "SIP G.722", "WebRTC"]


def tables(markdown: list[str]) -> list[list[list[str]]]:
    """Each Markdown table as rows of cells (header first, the |---| line left out)."""
    found: list[list[list[str]]] = []
    previous = ""
    for line in markdown:
        if line.startswith("|") and not line.startswith("|---"):
            if not previous.startswith("|"):
                found.append([])
            found[-1].append([c.strip() for c in line.strip().strip("|").split("|")])
        previous = line
    return found


@pytest.mark.timeout(300)  # about two minutes: seven 10 s runs, a 6 s stall trace, start-ups
def test_the_short_scorecard_runs_every_network_and_reference_without_loss(
    tmp_path: Path,
) -> None:
    require_binary("sipp", "apt-get install -y sip-tester")
    rows_path, table_path = tmp_path / "rows.json", tmp_path / "scorecard.md"
    done = subprocess.run(
        [
            sys.executable, str(ROOT / "bench" / "scorecard.py"), "--short",
            "--json", str(rows_path), "--out", str(table_path),
        ],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(rows_path.read_text())
    rows, references = result["rows"], result["references"]
    assert [r["network"] for r in rows] == NETWORKS
    assert [r["network"] for r in references] == ["Twilio", "SIP"]
    for row in rows + references:
        assert row["calls"] == 10 and row["frames_lost"] == 0, row
        assert row["cpu_s_per_call_minute"] > 0 and row["calls_per_core_at_80"] > 0, row
        memory = row["memory"]
        assert 0 < memory["rss_before_mb"] <= memory["rss_peak_mb"], row
        assert memory["rss_after_mb"] > 0 and memory["kb_per_call"] >= 0, row
    for row in rows:
        assert all(v is not None for v in row["latency_ms_p50_p99"]), row
    ratios = {r["network"]: r["capacity_vs_reference"] for r in rows}
    assert all(ratios[n] > 0 for n in ("Twilio", "SIP G.711", "SIP G.722")), ratios
    stall = result["stall"]["networks"]
    assert set(stall) == {"twilio", "sip"}
    for trace in stall.values():
        assert trace["p50_before_ms"] > 0 and trace["p50_from_1s_after_ms"] > 0
        assert len(trace["per_second"]) == 6 and sum(s["frames"] for s in trace["per_second"])

    markdown = table_path.read_text().splitlines()
    assert markdown[0] == "# Scorecard"
    networks, bare, stalls, aims = tables(markdown)
    for table in (networks, bare, stalls, aims):
        assert all(len(row) == len(table[0]) for row in table), table
    assert [row[0] for row in networks[1:]] == NETWORKS
    assert [row[0] for row in bare[1:]] == ["Twilio", "SIP"]
    assert [row[0] for row in stalls[1:]] == ["Twilio", "SIP"]
    assert len(aims) > 1 and all(row[2] in ("yes", "no", "-") for row in aims[1:])
    # the pods' sizing reads the networks' rows, and nothing of the other tables
    assert [cost.network for cost in timings.scorecard(table_path)] == NETWORKS
    plot = tmp_path / "scorecard.png"
    if plot.exists():  # drawn where matplotlib is installed (the bench extra has none)
        assert plot.read_bytes().startswith(b"\x89PNG")
        assert "![The scorecard's figures](scorecard.png)" in markdown
    else:
        assert "no plot (matplotlib is not installed)" in done.stderr
