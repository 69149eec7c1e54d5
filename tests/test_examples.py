"""examples/custom_agent_core.py, run as a user runs it, answers a real call through the edge."""

from __future__ import annotations

import asyncio
import audioop
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from telephony_edge.calls.leg import Dtmf, LegEnded
from telephony_edge.calls.record import CallState, CallStatus
from tests.calls.test_bridge import start_call
from tests.conftest import Edge, TestLeg, edge_settings, free_port, wait_for

EXAMPLE = Path(__file__).parent.parent / "examples" / "custom_agent_core.py"


@pytest.fixture
async def example_core() -> AsyncIterator[str]:
    """The example on a free port; its agent-core URL."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, str(EXAMPLE), "--port", str(port)), stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    banner = await asyncio.wait_for(proc.stdout.readline(), 10)
    url = f"ws://127.0.0.1:{port}/agent"
    assert banner.decode().strip() == f"custom agent core on {url}"
    yield url
    proc.terminate()
    await proc.wait()


async def test_the_example_core_hears_the_caller_and_answers(
    make_edge: Any, example_core: str, speech: bytes
) -> None:
    edge: Edge = await make_edge(edge_settings(agent_core={"url": example_core}))
    leg = TestLeg()
    record, task = await start_call(edge, leg)
    await wait_for(lambda: record.state is CallState.ACTIVE)  # connect, initiate, onready
    bridge: Any = edge.services.calls.get(record.call_id)
    chat = bridge.conversation.chat

    def voiced_s() -> float:
        return sum(audioop.rms(frame, 2) > 300 for _, frame in leg.heard) * 0.02

    await leg.speak(speech, silence_after_s=0.8)  # over the greeting: caller audio reaches the core
    await wait_for(lambda: any(c["content"].startswith("[caller spoke") for c in chat), 5)
    assert leg.clears  # the core's barge-in clear reached the network leg
    leg.events.put_nowait(Dtmf("5"))  # key presses reach it too
    await wait_for(lambda: any(c["content"] == "[key 5]" for c in chat), 5)
    await wait_for(lambda: voiced_s() > 0.6)  # both beeps were played to the caller
    assert [c["content"] for c in chat if c["role"] == "assistant"] == ["Hi", "beep", "beep"]
    leg.events.put_nowait(LegEnded("completed"))
    assert (await asyncio.wait_for(task, 5)).call_status is CallStatus.USER_ENDED
