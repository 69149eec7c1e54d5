"""The UA over TLS and with SRTP (sans-I/O): Contact and Via for TLS, RFC 5630's ``sips:``,
SDES offers taken, refused with 488 (counted as bad input) or answered plain, by policy."""

from __future__ import annotations

import base64
import ipaddress
import itertools

import pytest

from telephony_edge.sip.message import Request
from telephony_edge.sip.parse import parse_message
from telephony_edge.sip.sdes import parse_crypto
from telephony_edge.sip.sdp import MediaConfig
from telephony_edge.sip.trunks import Admission, Trunk
from telephony_edge.sip.ua import UserAgent
from telephony_edge.sip.ua_records import Action, CallConfirmed, Send, StartCall, UaConfig
from tests.sip import wire
from tests.sip.test_sdes import BARESIP_SAVP

PEER = ("203.0.113.7", 40123)
KEY = base64.b64encode(bytes(range(30))).decode()
CRYPTO = f"a=crypto:3 AES_CM_128_HMAC_SHA1_80 inline:{KEY}\r\n"


def make_ua(**kw: object) -> UserAgent:
    ids = itertools.count(1)
    config = UaConfig(  # type: ignore[arg-type]
        media=MediaConfig(address="127.0.0.1"), port=5060, tls_port=5061, **kw
    )
    return UserAgent(config, new_id=lambda: f"id{next(ids)}")


def sdp(proto: str = "RTP/SAVP", crypto: str = CRYPTO) -> str:
    return BARESIP_SAVP.format(proto=proto, crypto=crypto)


def invite(transport: str, body: str, uri: str = "sip:call_x@127.0.0.1:5061") -> bytes:
    data = wire.request("INVITE", body=body, uri=uri)
    return data.replace(b"SIP/2.0/UDP", f"SIP/2.0/{transport}".encode(), 1)


def statuses(actions: list[Action]) -> list[int]:
    return [
        wire.status(a.data) for a in actions if isinstance(a, Send) and a.data[:8] == b"SIP/2.0 "
    ]


def answered(
    ua: UserAgent, transport: str, body: str, uri: str = "sip:call_x@127.0.0.1:5061"
) -> tuple[str, bytes]:
    actions = ua.receive(invite(transport, body, uri), PEER, 0.0, transport)
    [start] = [a for a in actions if isinstance(a, StartCall)]
    [ok] = [a for a in ua.answer(start.call, 40000, 0.1) if isinstance(a, Send)]
    assert wire.status(ok.data) == 200 and ok.transport == transport
    return start.call, ok.data


def test_savp_over_tls_answered_with_our_key_contact_and_via_on_the_tls_port() -> None:
    ua = make_ua()
    ref, ok = answered(ua, "TLS", sdp())
    text = ok.decode()
    assert "Contact: <sip:127.0.0.1:5061;transport=tls>" in text
    assert "m=audio 40000 RTP/SAVP " in text
    [line] = [ln for ln in text.split("\r\n") if ln.startswith("a=crypto:")]
    ours = parse_crypto(line.removeprefix("a=crypto:"))
    assert ours.tag == 3 and ours.suite == "AES_CM_128_HMAC_SHA1_80"
    confirmed = ua.receive(
        wire.request("ACK", to_tag=ref, branch="z9hG4bKack").replace(b"/UDP", b"/TLS", 1),
        PEER,
        0.2,
        "TLS",
    )
    [event] = [a for a in confirmed if isinstance(a, CallConfirmed)]
    assert event.media is not None and event.media.srtp is not None
    assert event.media.srtp.local == ours.key and event.media.srtp.remote.key == bytes(range(30))
    [bye] = [a for a in ua.hangup(ref, 1.0) if isinstance(a, Send)]
    assert bye.transport == "TLS" and bye.dest == PEER  # on the dialog's flow
    request = parse_message(bye.data)
    assert isinstance(request, Request) and request.method == "BYE"
    assert request.top_via().transport == "TLS" and request.top_via().port == 5061


def test_a_sips_request_uri_gets_a_sips_contact() -> None:
    _, ok = answered(make_ua(), "TLS", sdp(), uri="sips:call_x@127.0.0.1:5061")
    assert "Contact: <sips:127.0.0.1:5061>" in ok.decode()


def test_a_sips_request_uri_over_udp_is_416_and_bad_input() -> None:
    ua = make_ua()
    actions = ua.receive(invite("UDP", sdp(), "sips:call_x@127.0.0.1"), PEER, 0.0, "UDP")
    assert statuses(actions) == [416] and not [a for a in actions if isinstance(a, StartCall)]
    assert ua.last_bad is not None and "SIPS" in ua.last_bad.reason


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (sdp(), "not TLS"),  # SAVP over UDP: its keys were in clear text
        (sdp(crypto="a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:c2hvcnQ\r\n"), "not TLS"),
    ],
)
def test_savp_over_udp_is_488_counted(body: str, why: str) -> None:
    ua = make_ua()
    actions = ua.receive(invite("UDP", body), PEER, 0.0, "UDP")
    assert statuses(actions) == [100, 488]
    assert ua.last_bad is not None and ua.last_bad.status == 488 and why in ua.last_bad.reason


def test_savp_over_udp_taken_when_configured() -> None:
    _, ok = answered(make_ua(srtp_over_plain=True), "UDP", sdp())
    assert b"a=crypto:3 AES_CM_128_HMAC_SHA1_80 inline:" in ok


def test_a_malformed_crypto_line_over_tls_is_488_and_bad_input() -> None:
    ua = make_ua()
    bad = "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:c2hvcnQ\r\n"  # 5 bytes of key
    actions = ua.receive(invite("TLS", sdp(crypto=bad)), PEER, 0.0, "TLS")
    assert statuses(actions) == [100, 488]
    assert ua.last_bad is not None and "bad a=crypto" in ua.last_bad.reason


def test_a_best_effort_offer_over_udp_is_answered_plain() -> None:
    _, ok = answered(make_ua(), "UDP", sdp("RTP/AVP"))
    assert b"RTP/AVP" in ok and b"a=crypto" not in ok


def test_the_trunks_policy_wins() -> None:
    trunk = Trunk("pbx", (ipaddress.ip_network("203.0.113.0/24"),), srtp="required")
    ua = make_ua()
    ua.admission = Admission([trunk], lambda user: "+15550001111" if user == "100" else None)
    plain = invite("TLS", sdp("RTP/AVP", crypto=""), "sip:100@127.0.0.1:5061")
    assert statuses(ua.receive(plain, PEER, 0.0, "TLS")) == [100, 488]
    assert ua.last_bad is not None and "required" in ua.last_bad.reason
    registered = make_ua(srtp="required")  # no trunk: sip.srtp
    assert statuses(registered.receive(invite("TLS", sdp("RTP/AVP", "")), PEER, 0, "TLS")) == [
        100,
        488,
    ]


def test_a_delayed_offer_over_tls_offers_best_effort_srtp_and_reads_the_answer() -> None:
    ua = make_ua()
    actions = ua.receive(invite("TLS", ""), PEER, 0.0, "TLS")
    [start] = [a for a in actions if isinstance(a, StartCall)]
    [ok] = [a for a in ua.answer(start.call, 40000, 0.1) if isinstance(a, Send)]
    text = ok.data.decode()
    assert "m=audio 40000 RTP/AVP " in text
    [line] = [ln for ln in text.split("\r\n") if ln.startswith("a=crypto:")]
    ours = parse_crypto(line.removeprefix("a=crypto:"))
    answer = sdp("RTP/AVP", f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}\r\n")
    ack = wire.request("ACK", to_tag=start.call, branch="z9hG4bKack", body=answer)
    [event] = [
        a
        for a in ua.receive(ack.replace(b"/UDP", b"/TLS", 1), PEER, 0.2, "TLS")
        if isinstance(a, CallConfirmed)
    ]
    assert event.media is not None and event.media.srtp is not None
    assert event.media.srtp.local == ours.key
