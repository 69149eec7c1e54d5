"""Session timers (RFC 4028) in the UserAgent: what the 2xx says, refreshes sent and missed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from telephony_edge.sip.message import Request, build_response
from telephony_edge.sip.parse import parse_message
from telephony_edge.sip.session_timer import Negotiated, TooSmall, negotiate
from telephony_edge.sip.ua import UserAgent
from telephony_edge.sip.ua_records import CallEnded, Send, StartCall
from tests.conftest import Edge, Receiver, wait_for
from tests.sip import wire
from tests.sip.conftest import finished, register, sip_test_settings, sipp, sipp_binary
from tests.sip.test_refer import request_of
from tests.sip.test_ua import PEER, ack, codes, make_ua, of, response, run, sent, start

TWILIO = ("54.172.60.1", 5060)


def invite(extra: str) -> Request:
    msg = parse_message(wire.request("INVITE", body=wire.TWILIO_SDP, extra=extra))
    assert isinstance(msg, Request)
    return msg


def test_negotiate_keeps_the_refresher_imposes_a_default_and_enforces_min_se() -> None:
    asked = "Session-Expires: 1800;refresher=uas\r\nSupported: timer"
    assert negotiate(invite(asked), 90, 1800) == Negotiated(1800, "uas", True)
    assert negotiate(invite("Supported: timer"), 90, 600) == Negotiated(600, "uac", True)
    assert negotiate(invite("Supported: 100rel"), 90, 600) is None
    assert negotiate(invite("Session-Expires: 30\r\nSupported: timer"), 90, 600) == TooSmall(90)
    # without timer support: raised to Min-SE, and the edge must refresh
    assert negotiate(invite("x: 30"), 90, 600) == Negotiated(90, "uas", False)
    # unreadable: as if absent (a fuzzed packet found this one)
    assert negotiate(invite("Session-Expires: 90;refre\tsher=uas"), 90, None) is None
    assert negotiate(invite("Session-Expires: 99999999999"), 90, None) is None


def answered_twilio_call(ua: UserAgent) -> tuple[str, list[Send]]:
    actions = ua.receive(wire.twilio_invite(), TWILIO, 0.0)
    (call,) = of(actions, StartCall)
    ref: str = call.call  # type: ignore[attr-defined]
    ok = sent(ua.answer(ref, 40000, 0.1))
    twilio_ack = wire.twilio_invite().replace(b"INVITE sip:", b"ACK sip:", 1)
    twilio_ack = twilio_ack.replace(b"CSeq: 1 INVITE", b"CSeq: 1 ACK").replace(
        b"To: <sip:+14155550100@edge.example.com>",
        f"To: <sip:+14155550100@edge.example.com>;tag={ref}".encode(),
    )
    ua.receive(twilio_ack.replace(b"z9hG4bK4f3c", b"z9hG4bKack1"), TWILIO, 0.2)
    return ref, ok


def test_edge_as_refresher_sends_update_at_half_the_interval_and_the_call_stays() -> None:
    ua = make_ua()
    ref, ok = answered_twilio_call(ua)
    answer = response(ok[0].data)
    assert answer.headers.get("Session-Expires") == "1800;refresher=uas"
    assert "timer" in answer.headers.get_all("Require")
    restarted = 0.1  # the 2xx
    for _ in range(3):  # 30 minutes and more, refreshed every 15
        due = restarted + 900.0
        seen = run(ua, due - 1.0)
        assert not [a for _, a in seen if isinstance(a, Send)]
        [(at, action)] = run(ua, due + 0.4)
        assert at == due and isinstance(action, Send) and action.dest == TWILIO
        update = request_of([action], "UPDATE")
        assert update.headers.get("Session-Expires") == "1800;refresher=uac"
        granted = build_response(update, 200, None, [("Session-Expires", "1800;refresher=uac")])
        restarted = due + 0.1
        ua.receive(granted.to_bytes(), TWILIO, restarted)
    assert ref in ua.calls()


def test_peer_as_refresher_refreshes_with_update_or_the_edge_says_bye() -> None:
    ua = make_ua(min_se=1)
    extra = "Session-Expires: 60;refresher=uac\r\nSupported: timer"
    ref, _ = start(ua, extra=extra)
    ok = response(sent(ua.answer(ref, 40000, 0.1))[0].data)
    assert ok.headers.get("Session-Expires") == "60;refresher=uac"
    ua.receive(ack(ref), PEER, 0.2)
    refresh = wire.request("UPDATE", to_tag=ref, branch="z9hG4bKu1", cseq=2, extra=extra)
    assert codes(ua.receive(refresh, PEER, 30.0)) == [200]
    # nothing more: the edge gives up at 60 - min(32, 60/3) = 40 s after the refresh
    seen = run(ua, 100.0)
    ended = [(at, a) for at, a in seen if isinstance(a, CallEnded)]
    assert ended == [(70.0, CallEnded(ref, "session_expired"))]
    assert request_of([a for _, a in seen if isinstance(a, Send)][:1], "BYE")


def test_refresh_by_reinvite_when_the_peer_has_no_update() -> None:
    ua = make_ua(min_se=1)
    extra = "Session-Expires: 90;refresher=uas\r\nAllow: INVITE, ACK, BYE, CANCEL"
    ref, _ = start(ua, extra=extra)
    first = response(sent(ua.answer(ref, 40000, 0.1))[0].data)
    ua.receive(ack(ref), PEER, 0.2)
    [(at, action)] = run(ua, 45.5)
    reinvite = request_of([action], "INVITE")
    assert at == 45.1 and reinvite.body == first.body  # the same SDP, same o= version
    assert reinvite.headers.get("Session-Expires") == "90;refresher=uac"
    ok = build_response(reinvite, 200, None, [("Content-Type", "application/sdp")])
    ok.body = wire.TWILIO_SDP.encode()
    acked = sent(ua.receive(ok.to_bytes(), PEER, 45.2))
    ack_of_2xx = request_of(acked, "ACK")
    assert ack_of_2xx.cseq().seq == reinvite.cseq().seq
    assert sent(ua.receive(ok.to_bytes(), PEER, 45.7)) == acked  # a resent 2xx: the same ACK
    [(again, _)] = run(ua, 91.0)[:1]
    assert again == 90.2 and ref in ua.calls()


def test_too_short_session_expires_is_422_with_min_se() -> None:
    ua = make_ua()
    actions = ua.receive(
        wire.request(
            "INVITE", body=wire.TWILIO_SDP, extra="Session-Expires: 30\r\nSupported: timer"
        ),
        PEER,
        0.0,
    )
    assert codes(actions) == [100, 422] and not of(actions, StartCall)
    rejection = response(sent(actions)[1].data)
    assert rejection.headers.get("Min-SE") == "90"


# -- with sipp against the running edge ---------------------------------------------------


@pytest.fixture
async def timer_edge(make_edge: Callable[..., Any], receiver: Receiver) -> Edge:
    sipp_binary()
    edge: Edge = await make_edge(sip_test_settings(receiver, {"min_se_s": 1}))
    return edge


async def test_sipp_call_outlives_its_session_interval_on_the_edges_updates(
    timer_edge: Edge, receiver: Receiver, tmp_path: Path
) -> None:
    reg = await register(timer_edge)
    started = asyncio.get_running_loop().time()
    process = await sipp(timer_edge, "uac_session_refresh.xml", reg["call_id"], tmp_path)
    await finished(process, tmp_path)  # four UPDATEs answered, then sipp's BYE
    assert asyncio.get_running_loop().time() - started > 4.0  # two 2 s intervals
    await wait_for(lambda: receiver.received, within=10)
    assert receiver.received[0]["call_status"] == "user-ended"


async def test_sipp_call_without_its_refresh_gets_the_edges_bye(
    timer_edge: Edge, receiver: Receiver, tmp_path: Path
) -> None:
    reg = await register(timer_edge)
    process = await sipp(timer_edge, "uac_session_expire.xml", reg["call_id"], tmp_path)
    await finished(process, tmp_path)  # the BYE came and was answered
    await wait_for(lambda: receiver.received, within=10)
    [payload] = receiver.received
    assert payload["call_status"] == "timeout"
    assert "session timer expired" in payload["error_message"]
