"""The scorecard's short mode: every network runs under load and reports (issue 21).

``bench/scorecard.py --short`` places 10 calls of 10 s on each network (Twilio,
Vonage, SIP G.711, SIP G.722) against a real edge process. It exits non-zero when
a network drops frames, underruns or misses a figure; here its table must also be
well formed. No figure is asserted: speed is measured in bench/, not in the suite.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import require_binary

ROOT = Path(__file__).resolve().parents[1]


def test_the_short_scorecard_runs_every_network_without_loss(tmp_path: Path) -> None:
    require_binary("sipp", "apt-get install -y sip-tester")
    rows_path, table_path = tmp_path / "rows.json", tmp_path / "scorecard.md"
    done = subprocess.run(
        [
            sys.executable, str(ROOT / "bench" / "scorecard.py"), "--short",
            "--json", str(rows_path), "--out", str(table_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(rows_path.read_text())
    assert [r["network"] for r in rows] == ["Twilio", "Vonage", "SIP G.711", "SIP G.722"]
    for row in rows:
        assert row["calls"] == 10 and row["frames_dropped"] == 0
        assert row["cpu_s_per_call_minute"] > 0 and row["calls_per_core_at_80"] > 0
        assert all(v is not None for v in row["latency_ms_p50_p99"])
    table = table_path.read_text().splitlines()
    assert table[0] == "# Scorecard"
    assert sum(line.startswith("| ") for line in table) == 1 + len(rows)  # header + rows
