"""100 concurrent sipp calls against one in-process edge: every one claims its own
registration, plays PCMA from sipp's pcap, hangs up, and ends with a webhook.

sipp places them as a trunk would (``sip/uac_load_pcap.xml``, ``-m 100 -r 50
-l 100``): the registered call ids come from an injection file (``-inf``,
``[field0]`` in the Request-URI user). Speed is not asserted here
(``bench/sip_load.py`` measures it); only that all 100 succeed.
"""

from __future__ import annotations

import asyncio
import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from telephony_edge.config_loading import load_settings
from telephony_edge.sip.provider import SIP_ENDPOINT
from tests.conftest import Edge, Receiver, free_port, wait_for
from tests.sip.conftest import API_KEY, finished, register, sipp, sipp_binary

PCAP = Path("/usr/share/sip-tester/g711a.pcap")
CALLS = 100


@pytest.fixture
async def load_edge(make_edge: Callable[..., Any], receiver: Receiver) -> Edge:
    sipp_binary()
    rtp_low = free_port() // 2 * 2
    rtp_low = min(rtp_low, 65535 - 4 * CALLS - 2)
    settings = load_settings(
        None,
        api={"private_key": API_KEY},
        webhooks={
            "signing_secret": "whsec_sip_tests_0001",
            "allow_private_targets": True,
            "backoff_base_s": 0.05,
        },
        sip={
            "enabled": True,
            "port": 0,
            "rtp_port_min": rtp_low,
            "rtp_port_max": rtp_low + 4 * CALLS,  # room for busy ports among them
        },
        agents={
            "echo": {
                "prompt": "You echo.",
                "first_message": "Hi",
                "session_data_webhook": receiver.url,
            }
        },
        calls={"inactivity_timeout_s": 30},
    )
    edge: Edge = await make_edge(settings)
    return edge


def successful_calls(stats: Path) -> int:
    """SuccessfulCall(C) of the last row of sipp's ``-trace_stat`` file."""
    rows = list(csv.reader(stats.read_text().splitlines(), delimiter=";"))
    header, last = rows[0], rows[-1]
    return int(last[header.index("SuccessfulCall(C)")])


async def test_100_concurrent_sipp_calls_all_succeed(
    load_edge: Edge, receiver: Receiver, tmp_path: Path
) -> None:
    regs = await asyncio.gather(*(register(load_edge) for _ in range(CALLS)))
    call_ids = [r["call_id"] for r in regs]
    (tmp_path / "calls.csv").write_text("SEQUENTIAL\n" + "".join(f"{c};\n" for c in call_ids))
    stats = tmp_path / "stats.csv"
    process = await sipp(
        load_edge, "uac_load_pcap.xml", "unused", tmp_path,
        "-inf", str(tmp_path / "calls.csv"),
        "-m", str(CALLS), "-r", "50", "-l", str(CALLS), "-d", "2500",
        "-timeout", "60", "-trace_stat", "-stf", str(stats), "-fd", "1",
    )  # fmt: skip
    endpoint = load_edge.app[SIP_ENDPOINT]
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, len(endpoint.legs))
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    try:
        await finished(process, tmp_path)  # exit 0: every call completed
    finally:
        watcher.cancel()
    assert successful_calls(stats) == CALLS
    assert peak >= CALLS * 0.8, f"only {peak} calls up at once"  # they overlapped

    await wait_for(lambda: len(receiver.received) >= CALLS, within=20)
    assert sorted(p["call_id"] for p in receiver.received) == sorted(call_ids)
    assert {p["call_status"] for p in receiver.received} == {"user-ended"}
