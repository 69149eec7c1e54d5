"""The demo never reaches a real carrier (issue 17, "the first hour").

A simulated call on ``deploy/demo.yaml`` that the agent ends made the edge
hang up through ``api.twilio.com`` with the demo's credentials: a warning
plus the twilio library's request dump in the log. Now the demo points
``twilio.api_base_url`` at the simulator's REST stand-in, and Vonage's Voice
API stays off. These run a real ``serve`` on the demo file (only its ports
moved, so tests do not collide) and the real ``simulate`` command.
"""

from __future__ import annotations

import subprocess
import sys
import wave
from pathlib import Path
from typing import Any

import pytest
import yaml

from telephony_edge.config_loading import load_settings
from telephony_edge.twilio.rest_standin import DEFAULT_PORT
from telephony_edge.twilio.settings import twilio_settings
from telephony_edge.twilio.simulator import write_wav_ulaw
from telephony_edge.vonage.settings import vonage_settings
from tests.conftest import ServeProcess, free_port

DEMO = Path(__file__).parent.parent / "deploy" / "demo.yaml"
CARRIER_HOSTS = ("api.twilio.com", "api.nexmo.com", "api.vonage.com")
TWILIO_TOKEN = "demo_auth_token_not_secret"
VONAGE_SECRET = "demo_vonage_signature_secret_not_secret"


def demo_config(rest_port: int) -> dict[str, Any]:
    """``deploy/demo.yaml`` with free ports: HTTP (the fixture's), SIP, RTP and the stand-in's."""
    config: dict[str, Any] = yaml.safe_load(DEMO.read_text(encoding="utf-8"))
    rtp_low = free_port() // 2 * 2
    config["sip"].update(port=free_port(), rtp_port_min=rtp_low, rtp_port_max=rtp_low + 40)
    config["twilio"]["api_base_url"] = f"http://127.0.0.1:{rest_port}"
    return config


def simulate(network: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "telephony_edge", "simulate", network, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def short_wav(tmp_path: Path) -> Path:
    path = tmp_path / "hello.wav"
    write_wav_ulaw(path, b"\xff" * 4000)  # half a second: the agent is ended by DTMF 9
    return path


def test_the_demo_points_rest_at_the_simulator_and_keeps_vonage_api_off() -> None:
    settings = load_settings(DEMO)
    assert twilio_settings(settings).api_base_url == f"http://127.0.0.1:{DEFAULT_PORT}"
    assert not vonage_settings(settings).api_enabled


def test_an_agent_ended_demo_call_hangs_up_at_the_stand_in_not_at_twilio(
    serve_process: Any, tmp_path: Path, short_wav: Path
) -> None:
    rest_port = free_port()
    edge: ServeProcess = serve_process(demo_config(rest_port))
    out = tmp_path / "reply.wav"
    twilio = simulate(
        "twilio",
        *("--url", edge.base_url, "--to", "+15555550100", "--auth-token", TWILIO_TOKEN),
        *("--wav", str(short_wav), "--out", str(out), "--speak-after", "0", "--dtmf", "9@0.5"),
        *("--rest-port", str(rest_port)),
    )
    assert twilio.returncode == 0, twilio.stdout + twilio.stderr
    assert "the edge hung up through the REST API (Status=completed)" in twilio.stdout
    with wave.open(str(out)) as heard:
        assert heard.getnframes() > 0  # the greeting's start, before the agent ended the call
    # the stand-in checked auth, path and form, and answered as Twilio does
    assert edge.metric("telephony_edge_twilio_rest_requests_total", op="hangup", outcome="ok") == 1
    vonage = simulate(
        "vonage",
        *("--url", edge.base_url, "--to", "+15555550101", "--signature-secret", VONAGE_SECRET),
        *("--wav", str(short_wav), "--out", str(out), "--speak-after", "0", "--dtmf", "9@0.5"),
    )
    assert vonage.returncode == 0, vonage.stdout + vonage.stderr
    assert "the edge ended the call" in vonage.stdout
    log = edge.log
    for host in CARRIER_HOSTS:
        assert host not in log
    assert "Twilio API Request" not in log and '"logger": "twilio.' not in log, log
    assert '"level": "warning"' not in log, log  # no failed hang-up, in either network
    assert log.count('"call_status": "agent-ended"') == 2, log
    edge.assert_healthy()
