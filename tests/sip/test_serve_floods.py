"""Issue 19's floods against what ships (``telephony-edge serve``, uvloop, JSON logs): with
10 000 transactions open, OPTIONS and REGISTER at 1000/s each; 1000 idle TCP connections.
Each time a genuine sipp call from another address completes, and no ERROR line appears.
(How fast it is answered is measured in ``bench/sip_flood.py``, not asserted here.)"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import ServeProcess, free_port
from tests.sip.conftest import API_KEY, SCENARIOS, finished, register, sipp_binary
from tests.sip.flood import flood

ROOT = Path(__file__).resolve().parents[2]
OPEN, PER_SOURCE = 10_000, 200  # under the per-source burst (400)
FLOOD_RATE, FLOOD_SECONDS = 1000, 6.0


def edge_config(sip_port: int, **sip: Any) -> dict[str, Any]:
    rtp_low = free_port() // 2 * 2
    section = {"enabled": True, "port": sip_port, "rtp_port_min": rtp_low}
    return {
        "api": {"private_key": API_KEY},
        "sip": {**section, "rtp_port_max": rtp_low + 20, **sip},
        "agents": {"echo": {"prompt": "You echo.", "first_message": "Hi"}},
    }


async def sipp_call(
    sip_port: int, scenario: str, call_id: str, cwd: Path, *extra: str
) -> asyncio.subprocess.Process:
    """sipp from 127.0.0.2: another source than the floods."""
    return await asyncio.create_subprocess_exec(
        sipp_binary(), f"127.0.0.1:{sip_port}",
        "-sf", str(SCENARIOS / scenario), "-s", call_id,
        "-i", "127.0.0.2", "-mi", "127.0.0.2",
        "-p", str(free_port()), "-mp", str(free_port() // 2 * 2),
        "-m", "1", "-nostdin", "-timeout", "20", "-timeout_error",
        "-trace_err", "-error_file", str(cwd / "sipp_errors.log"), *extra,
        cwd=cwd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def start_flood(sip_port: int, method: str, source: str) -> asyncio.subprocess.Process:
    """``tests/sip/flood.py`` in a process of its own: FLOOD_RATE/s for FLOOD_SECONDS."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.sip.flood", f"127.0.0.1:{sip_port}",
        "--method", method, "--rate", str(FLOOD_RATE), "--seconds", str(FLOOD_SECONDS),
        "--source", source,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def test_serve_with_10k_transactions_and_options_and_register_floods_takes_a_call(
    serve_process: Callable[[dict[str, Any]], ServeProcess], tmp_path: Path
) -> None:
    sip_port = free_port()
    edge = serve_process(edge_config(sip_port))
    target = ("127.0.0.1", sip_port)
    opened = 0
    for n in range(OPEN // PER_SOURCE):  # 50 sources, each under its burst
        got = await asyncio.to_thread(
            flood, target, "OPTIONS", 5000, 0, f"127.0.1.{n + 1}", PER_SOURCE, 0.05
        )
        opened += int(str(got["answered"]))
    assert opened > OPEN * 0.9  # answered: open in Timer J for 32 s
    floods = [
        await start_flood(sip_port, method, source)
        for method, source in (("OPTIONS", "127.0.0.1"), ("REGISTER", "127.0.0.4"))
    ]
    await asyncio.sleep(1.0)  # both floods are on
    call = await sipp_call(
        sip_port, "uac_pcma_pcap.xml", (await register(edge))["call_id"], tmp_path
    )
    await finished(call, tmp_path)  # answered during the floods, media, BYE
    for method, process in zip(("OPTIONS", "REGISTER"), floods, strict=True):
        out, _ = await asyncio.wait_for(process.communicate(), FLOOD_SECONDS + 10)
        result = json.loads(out)
        assert result["answered"] < result["sent"] / 2, result  # the rest dropped
        limited = edge.metric(
            "telephony_edge_sip_rate_limited_total", method=method, transport="udp"
        )
        assert limited >= result["sent"] - result["answered"]
    edge.assert_healthy()  # no ERROR line, no traceback


async def test_serve_with_1000_idle_tcp_connections_takes_a_sipp_call_over_tcp(
    serve_process: Callable[[dict[str, Any]], ServeProcess], tmp_path: Path
) -> None:
    sip_port = free_port()
    edge = serve_process(edge_config(sip_port, tcp_first_message_timeout_s=60))
    idle = [
        await asyncio.open_connection("127.0.0.1", sip_port, local_addr=(f"127.0.3.{n // 32}", 0))
        for n in range(32, 1032)  # 1000 from 32 addresses, 32 each (the per-source limit)
    ]
    call = await sipp_call(
        sip_port, "uac_dtmf_bye.xml", (await register(edge))["call_id"], tmp_path, "-t", "t1"
    )
    await finished(call, tmp_path)  # INVITE, 200, INFO, the edge's BYE: all over TCP
    assert edge.metric("telephony_edge_sip_tcp_closed_total", reason="evicted") >= 1
    edge.assert_healthy()
    for _, writer in idle:
        writer.close()
