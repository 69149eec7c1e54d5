"""A real softphone, baresip, calls a ``telephony-edge serve`` process over UDP and TCP.

The edge runs as shipped (its default loop, uvloop). baresip plays the speech
fixture as its microphone and records what it decodes: the agent's chime and
echo must be heard, and the end-of-call webhook must show the agent core
heard the caller. Over TCP this is the call that uvloop once broke.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Receiver, ServeProcess, free_port, wait_for
from tests.sip.baresip import baresip_binary, dial
from tests.sip.conftest import API_KEY, register


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_baresip_calls_a_serve_process_with_audio_both_ways(
    serve_process: Callable[[dict[str, Any]], ServeProcess],
    receiver: Receiver,
    tmp_path: Path,
    transport: str,
) -> None:
    baresip_binary()
    sip_port, rtp_low = free_port(), free_port() // 2 * 2
    edge = serve_process(
        {
            "api": {"private_key": API_KEY},
            "webhooks": {"allow_private_targets": True, "signing_secret": "whsec_baresip_01"},
            "sip": {
                "enabled": True,
                "bind_host": "127.0.0.1",
                "port": sip_port,
                "rtp_port_min": rtp_low,
                "rtp_port_max": rtp_low + 20,
            },
            "agents": {
                "echo": {
                    "prompt": "You echo.",
                    "first_message": "Hi",
                    "session_data_webhook": receiver.url,
                }
            },
        }
    )
    registered = await register(edge)

    call = await dial(registered["sip_uri"], tmp_path, transport)
    assert call.returncode == 0, call.log[-3000:]
    assert "Call established" in call.log, call.log[-3000:]
    assert call.heard_seconds() > 0.5, f"baresip heard {call.heard_seconds()} s of the agent"
    await wait_for(lambda: receiver.received, within=15)
    [payload] = receiver.received
    assert payload["call_id"] == registered["call_id"]
    assert payload["call_status"] == "user-ended"
    assert "caller spoke" in json.dumps(payload.get("chat"))
    edge.assert_healthy()
