"""The UserAgent on the wire cases of issue 9: bytes and times in, bytes and events out."""

from __future__ import annotations

import itertools

import pytest

from telephony_edge.sip.message import Response
from telephony_edge.sip.parse import parse_message
from telephony_edge.sip.sdp import MediaConfig
from telephony_edge.sip.ua import UserAgent
from telephony_edge.sip.ua_records import (
    Action,
    CallConfirmed,
    CallEnded,
    InfoReceived,
    MediaUpdated,
    Send,
    StartCall,
    UaConfig,
)
from tests.sip import wire

PEER = wire.PEER


def make_ua(**kw: object) -> UserAgent:
    ids = itertools.count(1)
    config = UaConfig(media=MediaConfig(address="127.0.0.1"), **kw)  # type: ignore[arg-type]
    return UserAgent(config, new_id=lambda: f"id{next(ids)}")


def sent(actions: list[Action]) -> list[Send]:
    return [a for a in actions if isinstance(a, Send)]


def codes(actions: list[Action]) -> list[int]:
    return [wire.status(s.data) for s in sent(actions) if s.data.startswith(b"SIP/2.0 ")]


def of(actions: list[Action], kind: type) -> list[object]:
    return [a for a in actions if isinstance(a, kind)]


def response(data: bytes) -> Response:
    msg = parse_message(data)
    assert isinstance(msg, Response)
    return msg


def start(ua: UserAgent, now: float = 0.0, **kw: object) -> tuple[str, list[Action]]:
    body = kw.pop("body", wire.TWILIO_SDP)
    actions = ua.receive(wire.request("INVITE", body=body, **kw), PEER, now)  # type: ignore[arg-type]
    calls = of(actions, StartCall)
    assert len(calls) == 1 and codes(actions) == [100]
    return calls[0].call, actions  # type: ignore[attr-defined]


def run(ua: UserAgent, end: float) -> list[tuple[float, Action]]:
    seen: list[tuple[float, Action]] = []
    while (at := ua.next_deadline()) is not None and at <= end:
        seen += [(at, a) for a in ua.tick(at)]
    return seen


def ack(ref: str, **kw: object) -> bytes:
    return wire.request("ACK", to_tag=ref, branch="z9hG4bKack", **kw)  # type: ignore[arg-type]


# -- the call's life ----------------------------------------------------------------------


def test_twilio_call_answer_ack_bye() -> None:
    ua = make_ua()
    actions = ua.receive(wire.twilio_invite(), ("54.172.60.1", 5060), 0.0)
    (call,) = of(actions, StartCall)
    ref = call.call  # type: ignore[attr-defined]
    assert call.request.headers.get("X-Twilio-CallSid").startswith("CA")  # type: ignore[attr-defined]
    ok = sent(ua.answer(ref, 40000, 0.2))
    assert len(ok) == 1 and ok[0].dest == ("54.172.60.1", 5060)
    resp = response(ok[0].data)
    assert resp.status == 200 and resp.to().tag == ref
    assert resp.headers.get_all("Record-Route") == [
        "<sip:54.172.60.1:5060;lr;ftag=93750583_6772d868_4f9c9a2e>"
    ]
    assert b"m=audio 40000 RTP/AVP 0 101" in resp.body
    assert resp.headers.get("Contact") == "<sip:127.0.0.1:5060;transport=udp>"


def test_duplicate_invite_is_one_call_and_resends_last_provisional() -> None:
    ua = make_ua()
    ref, first = start(ua)
    trying = sent(first)[0].data
    again = ua.receive(wire.request("INVITE", body=wire.TWILIO_SDP), PEER, 0.3)
    assert [s.data for s in sent(again)] == [trying] and not of(again, StartCall)
    ringing = sent(ua.ringing(ref, 0.4))[0].data
    assert wire.status(ringing) == 180
    again = ua.receive(wire.request("INVITE", body=wire.TWILIO_SDP), PEER, 0.9)
    assert [s.data for s in sent(again)] == [ringing] and not of(again, StartCall)
    assert ua.stats.calls_started == 1 and ua.stats.retransmissions_absorbed == 2
    ok = sent(ua.answer(ref, 40000, 1.0))[0].data
    again = ua.receive(wire.request("INVITE", body=wire.TWILIO_SDP), PEER, 1.2)
    assert [s.data for s in sent(again)] == [ok] and not of(again, StartCall)


def test_resent_bye_gets_the_same_200() -> None:
    ua = make_ua()
    ref, _ = start(ua)
    ua.answer(ref, 40000, 0.1)
    assert of(ua.receive(ack(ref), PEER, 0.2), CallConfirmed)
    bye = wire.request("BYE", to_tag=ref, branch="z9hG4bKbye", cseq=2)
    first = ua.receive(bye, PEER, 5.0)
    assert codes(first) == [200]
    assert of(first, CallEnded) == [CallEnded(ref, "remote_bye")]
    second = ua.receive(bye, PEER, 5.5)
    assert [s.data for s in sent(second)] == [s.data for s in sent(first)]
    assert not of(second, CallEnded)
    run(ua, 5.0 + 32.0)  # Timer J ends the BYE's transaction
    assert codes(ua.receive(bye, PEER, 40.0)) == [481]


def test_missing_ack_retransmits_2xx_then_bye_at_64_t1() -> None:
    ua = make_ua()
    ref, _ = start(ua)
    ok = sent(ua.answer(ref, 40000, 0.0))[0].data
    seen = run(ua, 40.0)
    resent = [at for at, a in seen if isinstance(a, Send) and a.data == ok]
    assert resent == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    byes = [(at, a) for at, a in seen if isinstance(a, Send) and a.data.startswith(b"BYE ")]
    assert byes[0][0] == 32.0
    bye = byes[0][1].data.decode()
    assert bye.startswith("BYE sip:+15551230000@203.0.113.7:5060 SIP/2.0\r\n")
    assert f"From: <sip:abc123@127.0.0.1>;tag={ref}\r\n" in bye
    assert "To: <sip:+15551230000@203.0.113.7>;tag=ft1\r\n" in bye
    assert (32.0, CallEnded(ref, "no_ack")) in seen
    assert ua.answer(ref, 40000, 33.0) == [] and ua.hangup(ref, 33.0) == []


def test_cancel_before_answer_487_and_no_late_200() -> None:
    ua = make_ua()
    ref, _ = start(ua)
    ua.ringing(ref, 0.1)
    cancel = wire.request("CANCEL", cseq_method="CANCEL")
    actions = ua.receive(cancel, PEER, 0.5)
    assert codes(actions) == [200, 487]
    assert response(sent(actions)[1].data).to().tag == ref
    assert of(actions, CallEnded) == [CallEnded(ref, "cancelled", 487)]
    assert ua.answer(ref, 40000, 0.6) == []  # the late answer: nothing sent
    assert ua.pending_invites == 0
    # the 487 is retransmitted (Timer G) until its ACK (same branch as the INVITE)
    seen = run(ua, 1.2)
    assert [wire.status(a.data) for _, a in seen if isinstance(a, Send)] == [487]
    assert ua.receive(wire.request("ACK"), PEER, 1.3) == []
    assert not [a for _, a in run(ua, 40.0) if isinstance(a, Send)]


def test_cancel_after_200_is_200_but_no_487() -> None:
    ua = make_ua()
    ref, _ = start(ua)
    ua.answer(ref, 40000, 0.1)
    actions = ua.receive(wire.request("CANCEL", cseq_method="CANCEL"), PEER, 0.2)
    assert codes(actions) == [200] and not of(actions, CallEnded)


def test_cancel_for_nothing_is_481() -> None:
    ua = make_ua()
    actions = ua.receive(wire.request("CANCEL", cseq_method="CANCEL"), PEER, 0.0)
    assert codes(actions) == [481]


def test_bye_from_the_edge_follows_record_route_and_retransmits() -> None:
    ua = make_ua()
    actions = ua.receive(wire.asterisk_invite(), ("10.0.0.2", 5060), 0.0)
    (call,) = of(actions, StartCall)
    ref = call.call  # type: ignore[attr-defined]
    assert sent(actions)[0].dest == ("10.0.0.2", 5060)
    ua.answer(ref, 40000, 0.1)
    ua.receive(
        b"ACK sip:127.0.0.1:5060 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bKa2\r\n"
        b'From: "Alice" <sip:1001@10.0.0.9>;tag=as5a6f7b8c\r\n'
        + f"To: <sip:edge@10.0.0.5:5060>;tag={ref}\r\n".encode()
        + b"Call-ID: 3f2e1d0c4b5a69788796a5b4c3d2e1f0@10.0.0.9:5060\r\n"
        b"CSeq: 102 ACK\r\nContent-Length: 0\r\n\r\n",
        ("10.0.0.2", 5060),
        0.2,
    )
    bye_actions = ua.hangup(ref, 10.0)
    assert of(bye_actions, CallEnded) == [CallEnded(ref, "local_bye")]
    (bye,) = sent(bye_actions)
    assert bye.dest == ("10.0.0.2", 5060)
    text = bye.data.decode()
    assert text.startswith("BYE sip:1001@10.0.0.9:5060 SIP/2.0\r\n")
    assert text.index("Route: <sip:10.0.0.2;lr") < text.index("Route: <sip:192.0.2.2;lr")
    assert "CSeq: " in text and "Max-Forwards: 70\r\n" in text
    # Timer E retransmits until the 200 arrives
    seen = run(ua, 1.0 + 10.0)
    assert [at for at, a in seen if isinstance(a, Send) and a.data == bye.data] == [10.5]
    branch = response_via_branch(bye.data)
    ok = (
        f"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch={branch}\r\n"
        f"From: <sip:edge@10.0.0.5:5060>;tag={ref}\r\n"
        'To: "Alice" <sip:1001@10.0.0.9>;tag=as5a6f7b8c\r\n'
        "Call-ID: 3f2e1d0c4b5a69788796a5b4c3d2e1f0@10.0.0.9:5060\r\n"
        f"CSeq: {bye.data.decode().split('CSeq: ')[1].split()[0]} BYE\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    assert ua.receive(ok, ("10.0.0.2", 5060), 10.7) == []
    assert not [a for _, a in run(ua, 60.0) if isinstance(a, Send)]


def response_via_branch(data: bytes) -> str:
    line = next(ln for ln in data.decode().split("\r\n") if ln.startswith("Via:"))
    return line.split("branch=")[1].split(";")[0]


# -- offers ----------------------------------------------------------------------------------


def test_no_common_codec_is_488_and_no_call() -> None:
    ua = make_ua()
    offer = wire.SIPP_SDP.replace("RTP/AVP 8 101", "RTP/AVP 18").replace("PCMA", "G729")
    actions = ua.receive(wire.request("INVITE", body=offer), PEER, 0.0)
    assert codes(actions) == [100, 488] and not of(actions, StartCall)
    assert ua.pending_invites == 0


def test_delayed_offer_answer_in_ack() -> None:
    ua = make_ua()
    ref, _ = start(ua, body="")
    ok = response(sent(ua.answer(ref, 40000, 0.1))[0].data)
    assert b"m=audio 40000 RTP/AVP 9 0 8 101" in ok.body
    actions = ua.receive(ack(ref, body=wire.SIPP_SDP), PEER, 0.2)
    (confirmed,) = of(actions, CallConfirmed)
    assert confirmed.media.codec.name == "PCMA"  # type: ignore[attr-defined]


def test_reinvite_hold_and_resume() -> None:
    ua = make_ua()
    ref, _ = start(ua)
    first = response(sent(ua.answer(ref, 40000, 0.1))[0].data)
    assert b"o=- " in first.body and b" 0 IN IP4" in first.body
    ua.receive(ack(ref), PEER, 0.2)
    hold = wire.TWILIO_SDP.replace("a=sendrecv", "a=sendonly")
    actions = ua.receive(
        wire.request("INVITE", to_tag=ref, branch="z9hG4bKre1", cseq=2, body=hold), PEER, 5.0
    )
    ok = response(sent(actions)[-1].data)
    assert ok.status == 200 and b"a=recvonly" in ok.body and b" 1 IN IP4" in ok.body
    (update,) = of(actions, MediaUpdated)
    assert update.media.on_hold  # type: ignore[attr-defined]
    ua.receive(ack(ref, cseq=2), PEER, 5.1)
    actions = ua.receive(
        wire.request("INVITE", to_tag=ref, branch="z9hG4bKre2", cseq=3, body=wire.TWILIO_SDP),
        PEER,
        9.0,
    )
    ok = response(sent(actions)[-1].data)
    assert b"a=sendrecv" in ok.body and b" 2 IN IP4" in ok.body
    # session refreshes (RFC 4028): UPDATE without SDP → 200 without SDP (RFC 3311);
    # re-INVITE without SDP → our offer in the 200, the answer in the ACK
    ua.receive(ack(ref, cseq=3), PEER, 9.1)
    actions = ua.receive(
        wire.request("UPDATE", to_tag=ref, branch="z9hG4bKup", cseq=4), PEER, 900.0
    )
    ok = response(sent(actions)[-1].data)
    assert ok.status == 200 and ok.body == b"" and not of(actions, MediaUpdated)
    actions = ua.receive(
        wire.request("INVITE", to_tag=ref, branch="z9hG4bKre3", cseq=5), PEER, 1800.0
    )
    ok = response(sent(actions)[-1].data)
    assert ok.status == 200 and b"m=audio 40000 RTP/AVP 9 0 8 101" in ok.body
    actions = ua.receive(ack(ref, cseq=5, body=wire.TWILIO_SDP), PEER, 1800.1)
    assert [type(a) for a in actions] == [MediaUpdated]
    assert ua.calls()[ref].phase.value == "confirmed"


def test_info_dtmf_relay() -> None:
    ua = make_ua()
    ref, _ = start(ua)
    ua.answer(ref, 40000, 0.1)
    ua.receive(ack(ref), PEER, 0.2)
    body = "Signal=5\r\nDuration=160\r\n"
    data = wire.request("INFO", to_tag=ref, branch="z9hG4bKinfo", cseq=2, body=body).replace(
        b"application/sdp", b"application/dtmf-relay"
    )
    actions = ua.receive(data, PEER, 1.0)
    assert codes(actions) == [200]
    assert of(actions, InfoReceived) == [InfoReceived(ref, "application/dtmf-relay", body.encode())]


# -- what the UA refuses -----------------------------------------------------------------------


def test_options_ready_and_draining() -> None:
    ua = make_ua()
    actions = ua.receive(wire.request("OPTIONS"), PEER, 0.0)
    assert codes(actions) == [200]
    assert b"Allow: INVITE, ACK, BYE, CANCEL, OPTIONS" in sent(actions)[0].data
    ua.set_draining(True)
    assert codes(ua.receive(wire.request("OPTIONS", branch="z9hG4bKo2"), PEER, 0.0)) == [503]
    assert codes(ua.receive(wire.request("INVITE", body=wire.SIPP_SDP), PEER, 0.0)) == [503]


@pytest.mark.parametrize(
    ("method", "code"), [("FOO", 501), ("SUBSCRIBE", 405), ("REGISTER", 405), ("BYE", 481)]
)
def test_methods(method: str, code: int) -> None:
    ua = make_ua()
    actions = ua.receive(wire.request(method), PEER, 0.0)
    assert codes(actions) == [code]
    if code == 405:
        assert b"\r\nAllow: INVITE" in sent(actions)[0].data


def test_unknown_require_is_420() -> None:
    ua = make_ua()
    data = wire.request("INVITE", body=wire.SIPP_SDP, extra="Require: 100rel, timer, foo")
    actions = ua.receive(data, PEER, 0.0)
    assert codes(actions) == [420] and not of(actions, StartCall)
    assert response(sent(actions)[0].data).headers.get_all("Unsupported") == ["foo"]


def test_malformed_400_505_and_drop_are_counted() -> None:
    ua = make_ua()
    bad_length = wire.request("OPTIONS").replace(b"Content-Length: 0", b"Content-Length: 9")
    actions = ua.receive(bad_length, PEER, 0.0)
    assert codes(actions) == [400] and b"Warning: 399" in sent(actions)[0].data
    v3 = wire.request("OPTIONS").replace(b" SIP/2.0\r\n", b" SIP/3.0\r\n", 1)
    assert codes(ua.receive(v3, PEER, 0.0)) == [505]
    assert ua.receive(b"\xff" * 100_000, PEER, 0.0) == []
    assert ua.receive(b"hello", PEER, 0.0) == []
    assert ua.receive(b"\r\n\r\n", PEER, 0.0) == []  # keep-alive
    s = ua.stats
    assert (s.answered_400, s.answered_505, s.dropped, s.keepalives) == (1, 1, 2, 1)
    assert s.internal_errors == 0


def test_pending_invites_are_bounded() -> None:
    ua = make_ua(max_pending_invites=2)
    start(ua, branch="z9hG4bK1", call_id="c1")
    start(ua, branch="z9hG4bK2", call_id="c2")
    actions = ua.receive(
        wire.request("INVITE", branch="z9hG4bK3", call_id="c3", body=wire.SIPP_SDP), PEER, 0.0
    )
    assert codes(actions) == [503] and not of(actions, StartCall)
    assert ua.stats.overload_503 == 1 and ua.pending_invites == 2


def test_unanswered_invite_gets_480_after_invite_timeout() -> None:
    ua = make_ua(invite_timeout=60.0)
    ref, _ = start(ua)
    seen = run(ua, 61.0)
    assert [wire.status(a.data) for at, a in seen if isinstance(a, Send)][:1] == [480]
    assert (60.0, CallEnded(ref, "timeout", 480)) in seen
    assert ua.pending_invites == 0


def test_response_goes_to_rport_and_received() -> None:
    ua = make_ua()
    nat_source = ("198.51.100.99", 40123)
    actions = ua.receive(wire.request("OPTIONS"), nat_source, 0.0)
    (s,) = sent(actions)
    assert s.dest == nat_source
    via = response(s.data).top_via()
    assert via.params["received"] == "198.51.100.99" and via.params["rport"] == "40123"
    no_rport = wire.request("OPTIONS", branch="z9hG4bKnr", via_params="")
    (s,) = sent(ua.receive(no_rport, nat_source, 0.0))
    assert s.dest == ("198.51.100.99", 5060)  # received, sent-by port (§18.2.2)


def test_tcp_responses_on_the_connection_and_no_timer_g() -> None:
    ua = make_ua()
    conn = ("203.0.113.7", 53000)
    data = wire.request("INVITE", body=wire.SIPP_SDP).replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP")
    actions = ua.receive(data, conn, 0.0, transport="tcp")
    (call,) = of(actions, StartCall)
    assert sent(actions)[0].dest == conn and sent(actions)[0].transport == "TCP"
    ua.reject(call.call, 486, 0.1)  # type: ignore[attr-defined]
    assert not [a for _, a in run(ua, 31.0) if isinstance(a, Send)]  # no 486 retransmits


def test_hangup_before_ack_waits_for_the_ack_to_send_bye() -> None:
    ua = make_ua()
    ref, _ = start(ua)
    ua.answer(ref, 40000, 0.0)
    assert ua.hangup(ref, 0.1) == [CallEnded(ref, "local_bye")]
    assert ua.hangup(ref, 0.2) == []  # once
    actions = ua.receive(ack(ref), PEER, 0.3)
    assert [first_word(s.data) for s in sent(actions)] == ["BYE"]
    assert not of(actions, CallEnded) and ref not in ua.calls()


def test_hangup_before_ack_then_no_ack_sends_bye_at_give_up() -> None:
    ua = make_ua()
    ref, _ = start(ua)
    ua.answer(ref, 40000, 0.0)
    ua.hangup(ref, 0.1)
    seen = run(ua, 32.0)
    byes = [at for at, a in seen if isinstance(a, Send) and first_word(a.data) == "BYE"]
    assert byes == [32.0] and not [a for _, a in seen if isinstance(a, CallEnded)]


def test_state_is_released() -> None:
    ua = make_ua()
    ref, _ = start(ua)
    ua.answer(ref, 40000, 0.0)
    ua.receive(ack(ref), PEER, 0.1)
    ua.receive(wire.request("OPTIONS", branch="z9hG4bKo9"), PEER, 0.2)
    ua.receive(wire.request("BYE", to_tag=ref, branch="z9hG4bKbye", cseq=2), PEER, 1.0)
    run(ua, 100.0)
    assert ua.next_deadline() is None and not ua.calls() and not ua._machines


def first_word(data: bytes) -> str:
    return data.split(b" ", 1)[0].decode()


def test_same_invite_under_a_new_branch_or_very_late_is_no_second_call() -> None:
    ua = make_ua()
    ref, _ = start(ua)
    ua.answer(ref, 40000, 0.0)
    ua.receive(ack(ref), PEER, 0.1)
    run(ua, 40.0)  # the INVITE transaction is gone (Timer L)
    late = ua.receive(wire.request("INVITE", body=wire.TWILIO_SDP), PEER, 41.0)
    other_branch = wire.request("INVITE", branch="z9hG4bKother", body=wire.TWILIO_SDP)
    assert late == [] and ua.receive(other_branch, PEER, 41.0) == []
    assert ua.stats.calls_started == 1


def test_dtmf_from_info_bodies() -> None:
    from telephony_edge.sip.ua_records import dtmf_from_info

    assert dtmf_from_info("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n") == "5"
    assert dtmf_from_info("Application/DTMF-Relay; x=1", b"Signal= 11\r\n") == "#"
    assert dtmf_from_info("application/dtmf-relay", b"Signal=*\r\n") == "*"
    assert dtmf_from_info("application/dtmf", b"9") == "9"
    assert dtmf_from_info("application/dtmf", b"x") is None
    assert dtmf_from_info("application/dtmf-relay", b"Duration=160") is None
    assert dtmf_from_info("text/plain", b"5") is None
