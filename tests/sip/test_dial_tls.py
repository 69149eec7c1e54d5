"""Outbound calls over TLS and with SRTP, sans-I/O (issue 23): the INVITE machine names the
hop on every send, offers SRTP as the plan's rules say, takes the answer's keys, and takes
a connection that cannot be opened (a certificate not trusted) as a 503; in the UA, the
TLS listener's Via and Contact, and the shell's report of a failed connection."""

from __future__ import annotations

import itertools

import pytest

from telephony_edge.sip import sdes, uac
from telephony_edge.sip.client_outputs import Lookup, SendRequest
from telephony_edge.sip.message import Request, Response, build_response
from telephony_edge.sip.parse import parse_message
from telephony_edge.sip.sdes import Policy, SrtpRules
from telephony_edge.sip.sdp import LocalSession, MediaConfig, negotiate, parse_sdp
from telephony_edge.sip.ua import UserAgent
from telephony_edge.sip.ua_records import DialFailed, Resolve, Send, UaConfig
from tests.sip.test_uac import A1, A2, CONFIG, MEDIA, only, sends

HOP = "sips:sbc.carrier.example"  # TLS, its certificate must name sbc.carrier.example
CALLEE_SDP = MediaConfig(address="192.0.2.50")


def machine(
    policy: Policy = "optional", keys_safe: bool = True, **dial: object
) -> uac.OutboundInvite:
    ids = itertools.count(1)
    plan = uac.Dial(
        request_uri="sip:+15550100@carrier.example",
        from_uri="sip:+15550111@edge.example",
        hops=(HOP,),
        srtp=SrtpRules(policy, keys_safe),
        **dial,  # type: ignore[arg-type]
    )
    local = LocalSession(MEDIA, 20000, "1")
    return uac.OutboundInvite(plan, CONFIG, local, MEDIA, None, lambda: f"id{next(ids)}")


def started(m: uac.OutboundInvite, addresses: list[tuple[str, int]]) -> tuple[Request, SendRequest]:
    assert m.start(0.0) == [Lookup(HOP, "TLS")]  # looked up as _sips._tcp
    out = m.resolved(HOP, addresses, 0.0)
    [(invite, dest)] = sends(out)
    [send] = only(out, SendRequest)
    assert isinstance(send, SendRequest) and dest == addresses[0]
    return invite, send


def answer(invite: Request, code: int, crypto: bool = True) -> Response:
    """The callee's answer: SRTP as an SRTP-capable phone takes the offer (``crypto``), or
    plain RTP as one without SRTP answers."""
    offer = parse_sdp(invite.body)
    if not crypto:  # a phone without SRTP: the same stream, its crypto lines ignored
        for media in offer.media:
            media.proto = "RTP/AVP"
            media.attributes = [(n, v) for n, v in media.attributes if n != "crypto"]
    chosen = negotiate(offer, CALLEE_SDP, SrtpRules("optional", True))
    body = LocalSession(CALLEE_SDP, 40000, "9").answer(offer, chosen)
    headers = [("Content-Type", "application/sdp"), ("Contact", "<sip:callee@192.0.2.50:5071>")]
    return build_response(invite, code, None, headers, body, to_tag="callee1")


@pytest.mark.parametrize(
    ("policy", "keys_safe", "profile", "crypto"),
    [
        ("required", True, "RTP/SAVP", True),
        ("optional", True, "RTP/AVP", True),  # best effort: a=crypto on RTP/AVP
        ("none", True, "RTP/AVP", False),
        ("optional", False, "RTP/AVP", False),  # keys would travel in the clear
    ],
)
def test_the_offer_carries_srtp_as_the_rules_say(
    policy: Policy, keys_safe: bool, profile: str, crypto: bool
) -> None:
    invite, _ = started(machine(policy, keys_safe), [A1])
    [audio] = parse_sdp(invite.body).media
    assert audio.proto == profile
    lines = [v for n, v in audio.attributes if n == "crypto"]
    assert len(lines) == int(crypto)
    if crypto:
        assert sdes.parse_crypto(lines[0]).suite == "AES_CM_128_HMAC_SHA1_80"


def test_every_send_over_tls_names_the_hops_host() -> None:
    m = machine("required")
    invite, send = started(m, [A1])
    assert (send.transport, send.server_name) == ("TLS", "sbc.carrier.example")
    assert invite.top_via().transport == "TLS"
    m.receive(build_response(invite, 180, to_tag="callee1"), 0.1)
    [cancel] = only(m.cancel(0.2), SendRequest)
    assert isinstance(cancel, SendRequest) and cancel.server_name == "sbc.carrier.example"
    # the 2xx crossing the CANCEL: the ACK goes on the INVITE's connection, not to the
    # callee's Contact (as every request of a dialog over TLS does)
    out = m.receive(answer(invite, 200), 0.3)
    [ack] = [s for s in only(out, SendRequest) if isinstance(s, SendRequest) and b"ACK " in s.data]
    assert isinstance(ack, SendRequest)
    assert (ack.dest, ack.transport, ack.server_name) == (A1, "TLS", "sbc.carrier.example")


def test_the_answers_key_makes_the_calls_srtp() -> None:
    m = machine("required")
    invite, _ = started(m, [A1])
    [answered] = only(m.receive(answer(invite, 200), 0.1), uac.Answered)
    assert isinstance(answered, uac.Answered) and answered.problem is None
    srtp = answered.media.srtp if answered.media is not None else None
    assert srtp is not None and srtp.suite == "AES_CM_128_HMAC_SHA1_80"
    assert srtp.local.inline() in invite.body.decode()  # our key, the one offered


def test_an_answer_without_srtp_when_it_is_required_is_a_problem() -> None:
    m = machine("required")
    invite, _ = started(m, [A1])
    [answered] = only(m.receive(answer(invite, 200, crypto=False), 0.1), uac.Answered)
    assert isinstance(answered, uac.Answered)
    assert answered.problem == "SRTP required, the answer has none"
    assert m.bad == answered.problem  # the callee's fault: bad input for the shell


def test_best_effort_srtp_answered_plain_is_a_plain_call() -> None:
    m = machine("optional")
    invite, _ = started(m, [A1])
    [answered] = only(m.receive(answer(invite, 200, crypto=False), 0.1), uac.Answered)
    assert isinstance(answered, uac.Answered) and answered.problem is None
    assert answered.media is not None and answered.media.srtp is None


def test_a_connection_that_cannot_be_opened_is_a_503_then_the_next_address() -> None:
    m = machine(failover_timeout=5.0)
    started(m, [A1, A2])
    why = "TLS to 192.0.2.1:5061 (sbc.carrier.example): certificate not trusted (x)"
    [(second, dest)] = sends(m.connect_failed(A1, why, 0.1))
    assert dest == A2 and second.method == "INVITE"
    assert m.connect_failed(A1, why, 0.2) == []  # the old address's: too late
    out = m.connect_failed(A2, why.replace("192.0.2.1", "192.0.2.2"), 0.3)
    assert only(out, uac.Failed) == [uac.Failed("failed", 503, why.replace(".1:", ".2:"))]
    assert m.done


def test_the_ua_dials_over_tls_from_its_tls_listener_and_hears_a_failed_connection() -> None:
    ids = itertools.count(1)
    ua = UserAgent(UaConfig(media=MEDIA, tls_port=5071), new_id=lambda: f"id{next(ids)}")
    plan = uac.Dial(
        request_uri="sips:alice@pbx.example",
        from_uri="sip:+15550111@127.0.0.1",
        hops=("sips:alice@pbx.example",),
        transport="TLS",
        srtp=SrtpRules("required", True),
    )
    ref, _, actions = ua.dial(plan, 20000, 0.0)
    assert actions == [Resolve(ref, "sips:alice@pbx.example", "TLS")]
    [send] = ua.resolved(ref, "sips:alice@pbx.example", [A1, A2], 0.0)
    assert isinstance(send, Send) and (send.dest, send.transport) == (A1, "TLS")
    assert send.server_name == "pbx.example" and send.call == ref
    text = send.data.decode()
    assert "Via: SIP/2.0/TLS 127.0.0.1:5071;" in text
    assert "Contact: <sips:127.0.0.1:5071>" in text  # a sips: Request-URI (RFC 3261 §8.1.1.8)
    assert "m=audio 20000 RTP/SAVP " in text
    [again] = ua.connect_failed(ref, A1, "certificate not trusted", 0.1)
    assert isinstance(again, Send) and again.dest == A2
    assert ua.connect_failed("nobody", A2, "x", 0.2) == []  # not a call being placed
    actions = ua.connect_failed(ref, A2, "TLS to 192.0.2.2:5060: certificate not trusted", 0.2)
    assert actions == [
        DialFailed(ref, "failed", 503, "TLS to 192.0.2.2:5060: certificate not trusted")
    ]


def test_an_answered_call_keeps_the_plans_srtp_rules() -> None:
    """Its re-offers are judged by the trunk's policy, not by ``sip.srtp``."""
    ids = itertools.count(1)
    ua = UserAgent(UaConfig(media=MEDIA, tls_port=5071), new_id=lambda: f"id{next(ids)}")
    hop = "sip:a@192.0.2.1;transport=tls"
    plan = uac.Dial(hop, "sip:b@127.0.0.1", (hop,), srtp=SrtpRules("none", True))
    ref, _, _ = ua.dial(plan, 20000, 0.0)
    [send] = ua.resolved(ref, hop, [A1], 0.0)
    assert isinstance(send, Send) and send.transport == "TLS" and b"a=crypto" not in send.data
    invite = parse_message(send.data)
    assert isinstance(invite, Request)
    ua.receive(answer(invite, 200, crypto=False).to_bytes(), A1, 0.1, "TLS")
    assert ua.calls()[ref].srtp_rules == SrtpRules("none", True)
