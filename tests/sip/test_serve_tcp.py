"""SIP over TCP against what ships: a ``telephony-edge serve`` process on its default loop.

``serve`` runs uvloop, whose stream transports are not asyncio's classes; a
check on the class once reset every TCP connection right after the INVITE
while the in-process tests passed. Here sipp dials over TCP (``-t t1``), the
test owns the caller's RTP socket (PCMA both ways), and the end-of-call
webhook says the agent core heard the caller.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from telephony_edge.sip.rtp import parse_rtp
from tests.conftest import Receiver, ServeProcess, free_port, read_wav, wait_for
from tests.sip.conftest import API_KEY, SCENARIOS, register, sipp_binary
from tests.sip.test_sipp import CallerMedia, loud, speak_pcma


async def test_sipp_over_tcp_to_a_serve_process_on_its_default_loop(
    serve_process: Callable[[dict[str, Any]], ServeProcess], receiver: Receiver, tmp_path: Path
) -> None:
    sipp = sipp_binary()
    sip_port, rtp_low = free_port(), free_port() // 2 * 2
    edge = serve_process(
        {
            "api": {"private_key": API_KEY},
            "webhooks": {"allow_private_targets": True, "signing_secret": "whsec_tcp_serve_01"},
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
    assert '"event_loop": "uvloop"' in edge.log  # the default, as shipped
    call_id = (await register(edge))["call_id"]

    loop = asyncio.get_running_loop()
    _, media = await loop.create_datagram_endpoint(CallerMedia, local_addr=("127.0.0.1", 0))
    assert media.transport is not None
    rtp_port = media.transport.get_extra_info("sockname")[1]
    process = await asyncio.create_subprocess_exec(
        sipp, f"127.0.0.1:{sip_port}", "-t", "t1",
        "-sf", str(SCENARIOS / "uac_external_media.xml"), "-s", call_id,
        "-set", "rtp_port", str(rtp_port), "-d", "5000",
        "-i", "127.0.0.1", "-mi", "127.0.0.1", "-p", str(free_port()),
        "-m", "1", "-nostdin", "-timeout", "20", "-timeout_error",
        cwd=tmp_path, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    # the edge's first RTP packet tells the test where to send the caller's voice
    await wait_for(lambda: media.received, within=10)
    edge_rtp = media.received[0][1]
    assert rtp_low <= edge_rtp[1] <= rtp_low + 20
    speech = read_wav("speech_table.wav")[: 16000 * 2 * 2]
    await speak_pcma(media, edge_rtp, speech + bytes(640 * 50))
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, f"sipp over TCP: exit {process.returncode}: {stderr!r}"
    media.transport.close()

    rtp = [p for p in (parse_rtp(data) for data, _ in media.received) if p is not None]
    assert sum(loud(p.payload) for p in rtp if p.payload_type == 8) > 25
    await wait_for(lambda: receiver.received, within=10)
    [payload] = receiver.received
    assert payload["call_id"] == call_id and payload["call_status"] == "user-ended"
    assert "caller spoke" in json.dumps(payload.get("chat"))
    edge.assert_healthy()
