"""The edge calls out over TLS with SRTP (issue 23): a baresip callee with its TLS transport
and ``srtp`` module answers, the audio goes both ways, and a capture of the RTP ports on
loopback holds no audio in the clear; a callee whose certificate the edge does not trust
(another CA, another name) is never called: the call fails with a clear status and a
counted warning.

sipp is not the peer here: Debian's SIPp 3.6.1 is built without OpenSSL (``sipp -t l1``
says "To use a TLS transport you must compile SIPp with OpenSSL").
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from tests.conftest import Edge, Receiver, free_port
from tests.sip.baresip import baresip_binary
from tests.sip.baresip_callee import answering
from tests.sip.capture import Capture, audio_packets, plaintext
from tests.sip.certs import Authority
from tests.sip.conftest import sip_test_settings
from tests.sip.dns_server import start_dns
from tests.sip.test_outbound import FROM, NUMBERS, api, place, settled

SUITE = "AES_CM_128_HMAC_SHA1_80"


def edge_authority(tmp_path: Path) -> Authority:
    """The CA of the edge's own certificate (its TLS listener, where the callee's BYE goes)."""
    folder = tmp_path / "edge"
    folder.mkdir()
    return Authority(folder, "the edge's CA")


async def tls_edge(
    make_edge: Callable[..., Any],
    receiver: Receiver,
    own_ca: Authority,
    ca_file: Path,
    rtp_low: int,
    **sip: Any,
) -> Edge:
    """An edge with its TLS listener (its own certificate) that trusts ``ca_file`` alone."""
    own = own_ca.issue()
    section = {
        "tls": True,
        "tls_port": 0,
        "tls_certificate": str(own.certificate),
        "tls_private_key": str(own.private_key),
        "tls_ca_file": str(ca_file),
        "rtp_port_min": rtp_low,
        "rtp_port_max": rtp_low + 40,
        **sip,
    }
    regions = {"local": {"public_url": "http://127.0.0.1:8080"}}
    edge: Edge = await make_edge(
        sip_test_settings(receiver, section, regions=regions, numbers=NUMBERS)
    )
    return edge


def trunk(proxy: str, srtp: str, **outbound: Any) -> dict[str, Any]:
    """A trunk whose calls go over TLS to ``proxy``; the number dialled is baresip's user."""
    rewrite = {"match": r"^\+15557777$", "replace": "callee"}
    section = {"proxies": [proxy], "transport": "tls", "number_rewrites": [rewrite], **outbound}
    return {"trunks": {"carrier": {"numbers": [FROM], "srtp": srtp, "outbound": section}}}


@pytest.mark.parametrize(
    ("route", "policy", "mediaenc"),
    [
        ("trunk", "required", "srtp-mand"),  # RTP/SAVP offered, SRTP answered
        ("uri", "optional", "srtp"),  # best effort: RTP/AVP with a=crypto, taken
        ("sips", "none", None),  # the capture's control: plain RTP is seen as such
    ],
)
async def test_the_edge_calls_baresip_over_tls_with_srtp(
    make_edge: Callable[..., Any],
    receiver: Receiver,
    tmp_path: Path,
    route: str,
    policy: str,
    mediaenc: str | None,
) -> None:
    """``trunk``: the trunk's proxy ``carrier.test`` is found by its ``_sips._tcp`` SRV
    record, and baresip's certificate must name ``carrier.test`` (RFC 5922: the proxy's
    domain, not the SRV target); ``uri``: ``sip:…;transport=tls``, its certificate for the
    URI's host ``localhost``; ``sips``: a ``sips:`` URI, hung up through the API (baresip
    1.0's SIP stack sends requests to ``sip:`` URIs only, so its BYE cannot reach the
    edge's ``sips:`` Contact)."""
    baresip_binary()
    authority = Authority(tmp_path)
    name = "carrier.test" if route == "trunk" else "localhost"
    own_ca = edge_authority(tmp_path)
    phone_folder = tmp_path / "phone"
    phone_folder.mkdir()
    certificate = authority.issue((name,))
    phone = await answering(phone_folder, 10, certificate, mediaenc, cafile=own_ca.ca_file)
    rtp_low = free_port() // 2 * 2
    dns = None
    if route == "trunk":
        dns = await start_dns(
            {
                ("_sips._tcp.carrier.test", "SRV"): [f"10 0 {phone.tls_port} a.carrier.test."],
                ("a.carrier.test", "A"): ["127.0.0.1"],
            }
        )
        sip = {**trunk("carrier.test", policy), "dns_servers": [dns.address]}
        to = "+15557777"
    else:
        sip = {"srtp": policy}
        to = f"sip:callee@localhost:{phone.tls_port};transport=tls"
        if route == "sips":
            to = f"sips:callee@localhost:{phone.tls_port}"
    edge = await tls_edge(make_edge, receiver, own_ca, authority.ca_file, rtp_low, **sip)
    async with Capture(tmp_path / "rtp.pcap", rtp_low, rtp_low + 41) as capture:
        call_id = await place(edge, to=to)
        if route == "sips":
            await asyncio.sleep(8)  # the call goes on (no assertion is timed)
            status, body = await api(edge, "POST", f"/calls/{call_id}/hangup")
            assert status == 200, body
        call = await phone.finished(within=30)  # it quits after 10 s, hanging up
    assert "Call established" in call.log, call.log[-3000:]
    if mediaenc:
        assert f"SRTP is Enabled (cryptosuite={SUITE})" in call.log, call.log[-3000:]
        assert "failed to decrypt" not in call.log, call.log[-3000:]  # our SRTP taken
    assert call.heard_seconds() > 0.5, f"baresip heard {call.heard_seconds()} s of the agent"
    payload = await settled(receiver, call_id)
    assert payload["call_status"] == ("api-ended" if route == "sips" else "user-ended")
    assert "caller spoke" in json.dumps(payload.get("chat"))  # the agent heard baresip
    media = payload["voip"]["media"]
    assert media.get("srtp") == (SUITE if mediaenc else None)
    assert media.get("srtp_dropped", 0) <= 1  # baresip 1.0's last RTCP BYE, in the clear
    if dns is not None:
        assert ("_sips._tcp.carrier.test", "SRV") in dns.queries
        dns.close()

    packets = audio_packets(capture.datagrams())
    assert len(packets) > 200, f"{len(packets)} RTP packets captured"
    clear = [p for p in packets if plaintext(p)]
    if mediaenc:
        assert not clear, f"{len(clear)} of {len(packets)} RTP packets carry audio in the clear"
        assert all(len(p) == 12 + 160 + 10 for p in packets)  # an 80-bit tag on each
    else:
        assert len(clear) > len(packets) // 2


def certificate_failures() -> float:
    labels = {"transport": "tls", "reason": "certificate"}
    return REGISTRY.get_sample_value("telephony_edge_sip_connect_failures_total", labels) or 0.0


@pytest.mark.parametrize("untrusted", ["another CA", "another name"])
async def test_a_callee_whose_certificate_the_edge_does_not_trust_is_not_called(
    make_edge: Callable[..., Any],
    receiver: Receiver,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    untrusted: str,
) -> None:
    baresip_binary()
    trusted = Authority(tmp_path)
    if untrusted == "another CA":
        (tmp_path / "other").mkdir()
        certificate = Authority(tmp_path / "other", "someone else's CA").issue(("localhost",))
    else:
        certificate = trusted.issue(("other.test",))
    own_ca = edge_authority(tmp_path)
    phone_folder = tmp_path / "phone"
    phone_folder.mkdir()
    phone = await answering(phone_folder, 6, certificate, "srtp", cafile=own_ca.ca_file)
    rtp_low = free_port() // 2 * 2
    edge = await tls_edge(make_edge, receiver, own_ca, trusted.ca_file, rtp_low)
    before = certificate_failures()
    with caplog.at_level(logging.WARNING):
        call_id = await place(edge, to=f"sips:callee@localhost:{phone.tls_port}")
        payload = await settled(receiver, call_id)
    assert payload["call_status"] == "error"
    assert payload["error_message"].startswith("the network could not place the call: 503 TLS")
    assert "certificate not trusted" in payload["error_message"]
    why = "Hostname mismatch" if untrusted == "another name" else "unable to get local issuer"
    assert why in payload["error_message"], payload["error_message"]
    _, record = await api(edge, "GET", f"/calls/{call_id}")
    assert record["provider_status"] == "failed"
    assert certificate_failures() == before + 1
    [warning] = [r for r in caplog.records if r.getMessage() == "SIP connection for a call failed"]
    assert getattr(warning, "call_id", None) == call_id
    call = await phone.finished(within=20)
    assert "Incoming call" not in call.log  # no INVITE ever reached it
