"""baresip calls a ``telephony-edge serve`` process over TLS with SRTP (issue 23).

baresip's TLS transport and ``srtp`` module against the edge as shipped
(uvloop): the call is answered, the agent heard and the caller heard, and a
capture of the RTP ports on loopback holds no audio in the clear; baresip's
best effort (``RTP/AVP`` with ``a=crypto``), ``RTP/SAVP`` and ``RTP/SAVPF``
offers each. The same call with baresip's SRTP off is the capture's control:
its audio shows.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Receiver, ServeProcess, free_port, wait_for
from tests.sip.baresip import baresip_binary, dial
from tests.sip.capture import Capture, audio_packets, plaintext
from tests.sip.certs import Authority
from tests.sip.conftest import API_KEY, register


@pytest.mark.parametrize("mediaenc", ["srtp", "srtp-mand", "srtp-mandf", None])
async def test_baresip_over_tls_with_srtp(
    serve_process: Callable[[dict[str, Any]], ServeProcess],
    receiver: Receiver,
    tmp_path: Path,
    mediaenc: str | None,
) -> None:
    baresip_binary()
    issued = Authority(tmp_path).issue()
    tls_port, rtp_low = free_port(), free_port() // 2 * 2
    edge = serve_process(
        {
            "api": {"private_key": API_KEY},
            "webhooks": {"allow_private_targets": True, "signing_secret": "whsec_baresip_tls1"},
            "sip": {
                "enabled": True,
                "bind_host": "127.0.0.1",
                "port": free_port(),
                "tls": True,
                "tls_port": tls_port,
                "tls_certificate": str(issued.certificate),
                "tls_private_key": str(issued.private_key),
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
    uri = f"sip:{registered['call_id']}@127.0.0.1:{tls_port}"
    folder = tmp_path / "baresip"
    folder.mkdir()
    async with Capture(tmp_path / "rtp.pcap", rtp_low, rtp_low + 21) as capture:
        call = await dial(uri, folder, "tls", mediaenc=mediaenc)
    assert call.returncode == 0, call.log[-3000:]
    assert "Call established" in call.log, call.log[-3000:]
    if mediaenc:
        assert "SRTP is Enabled (cryptosuite=AES_CM_128_HMAC_SHA1_80)" in call.log, call.log
        assert "failed to decrypt" not in call.log, call.log  # our SRTP and SRTCP taken
    assert call.heard_seconds() > 0.5, f"baresip heard {call.heard_seconds()} s of the agent"
    await wait_for(lambda: receiver.received, within=15)
    [payload] = receiver.received
    assert payload["call_id"] == registered["call_id"]
    assert "caller spoke" in json.dumps(payload.get("chat"))
    media = payload["voip"]["media"]
    assert media.get("srtp") == ("AES_CM_128_HMAC_SHA1_80" if mediaenc else None)
    # every packet of baresip's authenticated, but for its last RTCP at the hang-up (the BYE,
    # and with AVPF a report with it): baresip 1.0 sends them in the clear once its SRTP is
    # gone, and the edge drops them
    assert media.get("srtp_dropped", 0) <= 3

    packets = audio_packets(capture.datagrams())
    assert len(packets) > 200, f"{len(packets)} RTP packets captured"
    clear = [p for p in packets if plaintext(p)]
    if mediaenc:
        assert not clear, f"{len(clear)} of {len(packets)} RTP packets carry audio in the clear"
        assert all(len(p) == 12 + 160 + 10 for p in packets)  # an 80-bit tag on each
    else:
        assert len(clear) > len(packets) // 2  # the control: plain RTP is seen as such
    edge.assert_healthy()
