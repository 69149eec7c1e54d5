"""A caller that vanishes (its process killed: no BYE, no DTLS close) is noticed within 5 s.

The caller runs in a process of its own (``killable_caller.py``) so that
SIGKILL takes its sockets away as a crashed browser's would; the edge learns
of it only because its ICE consent checks (RFC 7675) stop being answered.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from telephony_edge.calls.record import CallState
from telephony_edge.webrtc.provider import WEBRTC_PEERS
from tests.conftest import Edge, Receiver, wait_for
from tests.webrtc.test_offer import settings_for

ROOT = Path(__file__).resolve().parents[2]


async def test_a_killed_caller_ends_the_call_user_ended_within_5_s(
    make_edge: Callable[..., Any], receiver: Receiver
) -> None:
    edge: Edge = await make_edge(settings_for(receiver, connect_timeout_s=10))
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "tests.webrtc.killable_caller", edge.url("/webrtc/offer")),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        call_id = json.loads(line)["call_id"]
        bridge = edge.services.calls.get(call_id)
        await wait_for(lambda: bridge is not None and bridge.state is CallState.ACTIVE)
        await asyncio.sleep(1.0)  # a live call: audio both ways, consent answered
        assert bridge is not None and bridge.state is CallState.ACTIVE
        proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        await wait_for(lambda: bridge.state is CallState.ENDED, within=10)
        noticed = time.monotonic() - killed
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    print(f"the edge noticed the killed caller after {noticed:.2f} s")
    assert noticed < 5.0, f"the call outlived its caller by {noticed:.1f} s"
    await wait_for(lambda: receiver.received, within=10)
    [payload] = receiver.received
    assert payload["call_id"] == call_id
    assert payload["call_status"] == "user-ended", payload
    await wait_for(lambda: edge.app[WEBRTC_PEERS].count == 0)
