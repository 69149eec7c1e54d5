"""A worker loads only the libraries of what it runs (issue 21: idle memory).

aiortc and PyAV, Twilio's and Vonage's SDKs, botocore and redis-py cost a worker tens
of MB of RSS each. The configuration needs only each network's settings model, so a
worker imports a network's code when that network is enabled, S3 code when recordings
go to S3, and Redis code when it coordinates through Redis. Each case runs in a fresh
interpreter, since this one has imported everything already.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

# OpenTelemetry: its trace SDK and exporter, which only tracing.enabled loads. Not the bare
# "opentelemetry": redis-py (>= 8) imports the OTel metrics API and SDK itself whenever they
# are installed (its own observability, about 2.4 MB of RSS), tracing or not.
TRACING = ("opentelemetry.sdk.trace", "opentelemetry.exporter")
HEAVY = ("aiortc", "av", "twilio", "vonage_voice", "aiobotocore", "redis", *TRACING)

PROBE = """
import asyncio, json, sys
from telephony_edge.app import create_app
from telephony_edge.config_loading import load_settings

async def main():
    create_app(load_settings(None, **json.loads(sys.argv[1])))

asyncio.run(main())
print(json.dumps(sorted(m for m in json.loads(sys.argv[2]) if m in sys.modules)))
"""


def loaded(**settings: Any) -> list[str]:
    """The heavy packages an app built from ``settings`` has imported."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(settings), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    result: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_a_worker_with_no_network_enabled_loads_none_of_their_libraries() -> None:
    assert loaded() == []


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"webrtc": {"enabled": True}, "api": {"private_key": "k" * 24}}, ["aiortc", "av"]),
        ({"coordination": {"redis_url": "redis://127.0.0.1:1"}}, ["redis"]),
        (
            {"tracing": {"enabled": True, "endpoint": "http://127.0.0.1:1/v1/traces"}},
            sorted(TRACING),
        ),
    ],
    ids=["webrtc", "redis", "tracing"],
)
def test_what_is_enabled_is_what_is_loaded(settings: dict[str, Any], expected: list[str]) -> None:
    assert loaded(**settings) == expected


PARSER_PROBE = """
import json, sys
from telephony_edge.cli import build_parser

build_parser()
print(json.dumps(sorted(m for m in json.loads(sys.argv[1]) if m in sys.modules)))
"""


def test_the_command_line_loads_no_simulator_before_a_simulate_command_runs() -> None:
    """Every command builds the whole parser, ``serve`` too: the ``simulate`` subcommands'
    simulators (Twilio's SDK for its signature, Vonage's JWT and its cryptography) load
    when such a command runs, not in every worker (about 10 MB of a serve process's RSS)."""
    simulators = ("telephony_edge.twilio.simulator", "telephony_edge.vonage.simulator")
    libraries = ("twilio", "vonage_jwt", "jwt", "cryptography")
    out = subprocess.run(
        [sys.executable, "-c", PARSER_PROBE, json.dumps([*HEAVY, *libraries, *simulators])],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
