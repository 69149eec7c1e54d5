"""The simulators exit non-zero, with the reason on one line, when the call failed (issue 17).

They exited 0 when the edge did not connect the call (a number it does not
serve) or ended it before the agent said anything (its agent core
unreachable). Real ``serve`` processes on ``deploy/demo.yaml`` (ports moved),
the real ``simulate`` commands.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from telephony_edge.twilio.simulator import write_wav_ulaw
from tests.conftest import ServeProcess, free_port
from tests.test_demo_offline import TWILIO_TOKEN, VONAGE_SECRET, demo_config

UNKNOWN = "+15555550177"
LOG_SAYS_WHY = "; the edge's log says why (is its agent core reachable?)"


def simulate(network: str, edge: ServeProcess, to: str, tmp: Path, *args: str) -> tuple[int, str]:
    """Run ``simulate NETWORK`` against ``edge``; its exit status and its one stderr line."""
    wav = tmp / "hello.wav"
    write_wav_ulaw(wav, b"\xff" * 4000)
    secret = (
        ("--auth-token", TWILIO_TOKEN)
        if network == "twilio"
        else ("--signature-secret", VONAGE_SECRET)
    )
    done = subprocess.run(
        [
            *(sys.executable, "-m", "telephony_edge", "simulate", network),
            *("--url", edge.base_url, "--to", to, *secret),
            *("--wav", str(wav), "--out", str(tmp / "reply.wav"), "--speak-after", "0"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = done.stderr.strip().splitlines()
    assert len(lines) <= 1, done.stderr  # the reason on one line, never a traceback
    assert (tmp / "reply.wav").exists()  # what the caller heard is written all the same
    return done.returncode, lines[0] if lines else ""


@pytest.fixture(scope="module")
def demo_edge(serve_process: Any) -> ServeProcess:
    edge: ServeProcess = serve_process(demo_config(free_port()))
    return edge


@pytest.fixture(scope="module")
def coreless_edge(serve_process: Any) -> tuple[ServeProcess, int]:
    """The demo with its agent core at a port nobody listens on."""
    rest_port = free_port()
    config = demo_config(rest_port)
    config["agent_core"] = {"url": f"ws://127.0.0.1:{free_port()}/agent"}
    edge: ServeProcess = serve_process(config)
    return edge, rest_port


def test_a_number_the_edge_does_not_serve_fails_both_simulators(
    demo_edge: ServeProcess, tmp_path: Path
) -> None:
    status, line = simulate("twilio", demo_edge, UNKNOWN, tmp_path, "--rest-port", "0")
    assert status == 1
    assert line == (
        "telephony-edge simulate twilio: error: the call failed: the edge answered without a "
        'media stream and said "Sorry, this number is not connected to an assistant right now. '
        'Please try again later. Goodbye."'
    )
    status, line = simulate("vonage", demo_edge, UNKNOWN, tmp_path)
    assert status == 1
    assert line == (
        "telephony-edge simulate vonage: error: the call failed: the edge answered without a "
        'websocket and said "Sorry, this number is not in service. Goodbye."'
    )
    demo_edge.assert_healthy()


def test_a_call_whose_agent_core_is_unreachable_fails_both_simulators(
    coreless_edge: tuple[ServeProcess, int], tmp_path: Path
) -> None:
    edge, rest_port = coreless_edge
    status, line = simulate("twilio", edge, "+15555550100", tmp_path, "--rest-port", str(rest_port))
    assert status == 1
    assert line == (
        "telephony-edge simulate twilio: error: the call failed: the edge hung up through the "
        "REST API (Status=completed) before the agent said anything" + LOG_SAYS_WHY
    )
    status, line = simulate("vonage", edge, "+15555550101", tmp_path)
    assert status == 1
    assert line == (
        "telephony-edge simulate vonage: error: the call failed: the edge closed the audio "
        "socket before the agent said anything" + LOG_SAYS_WHY
    )
    assert edge.log.count("agent core connect") == 2


def test_a_call_that_got_through_exits_0(demo_edge: ServeProcess, tmp_path: Path) -> None:
    status, line = simulate("twilio", demo_edge, "+15555550100", tmp_path, "--rest-port", "0")
    assert (status, line) == (0, "")
