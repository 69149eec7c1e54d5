"""Outbound calls and registrations inside the UserAgent: its own requests routed, answered
calls kept as dialogs, timers on the UA's clock. Bytes and times in, no sockets."""

from __future__ import annotations

import itertools

from telephony_edge.sip.message import Request, build_response
from telephony_edge.sip.parse import parse_message
from telephony_edge.sip.register import Account, State
from telephony_edge.sip.sdp import LocalSession, MediaConfig, negotiate, parse_sdp
from telephony_edge.sip.ua import UserAgent
from telephony_edge.sip.ua_records import (
    Action,
    CallConfirmed,
    CallEnded,
    CallProgress,
    DialFailed,
    InfoReceived,
    MediaUpdated,
    RegistrationChanged,
    Resolve,
    Send,
    UaConfig,
)
from telephony_edge.sip.uac import Dial

CALLEE = ("192.0.2.50", 5070)
MEDIA = MediaConfig(address="127.0.0.1")
PLAN = Dial(
    request_uri="sip:+15550100@192.0.2.50:5070",
    from_uri="sip:+15550111@127.0.0.1",
    hops=("sip:192.0.2.50:5070",),
)


def make_ua() -> UserAgent:
    ids = itertools.count(1)
    return UserAgent(UaConfig(media=MEDIA), new_id=lambda: f"id{next(ids)}")


def requests(actions: list[Action]) -> list[Request]:
    found = []
    for action in actions:
        if isinstance(action, Send):
            msg = parse_message(action.data)
            if isinstance(msg, Request):
                found.append(msg)
    return found


def of(actions: list[Action], kind: type) -> list[object]:
    return [a for a in actions if isinstance(a, kind)]


def dialled(ua: UserAgent) -> tuple[str, Request]:
    ref, call_id, actions = ua.dial(PLAN, 20000, 0.0)
    assert actions == [Resolve(ref, "sip:192.0.2.50:5070", "UDP")]
    [invite] = requests(ua.resolved(ref, "sip:192.0.2.50:5070", [CALLEE], 0.0))
    assert invite.call_id() == call_id
    return ref, invite


def answer(invite: Request, code: int) -> bytes:
    offer = parse_sdp(invite.body)
    body = b""
    headers = [("Contact", "<sip:callee@192.0.2.50:5070>")]
    if code == 200:
        callee = LocalSession(MediaConfig(address="192.0.2.50"), 40000, "9")
        body = callee.answer(offer, negotiate(offer, MEDIA))
        headers.append(("Content-Type", "application/sdp"))
    return build_response(invite, code, None, headers, body, to_tag="callee").to_bytes()


def in_dialog(invite: Request, method: str, cseq: int, body: bytes = b"", **h: str) -> bytes:
    """A request of the callee in the dialog the 2xx formed."""
    lines = [
        f"{method} sip:127.0.0.1:5060 SIP/2.0",
        f"Via: SIP/2.0/UDP 192.0.2.50:5070;branch=z9hG4bK{method}{cseq}",
        f"From: <{invite.to().uri}>;tag=callee",
        f"To: {invite.headers.get('From')}",
        f"Call-ID: {invite.call_id()}",
        f"CSeq: {cseq} {method}",
        "Max-Forwards: 70",
        *(f"{name.replace('_', '-')}: {value}" for name, value in h.items()),
        f"Content-Length: {len(body)}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def test_answered_dial_is_a_call_of_the_ua() -> None:
    ua = make_ua()
    ref, invite = dialled(ua)
    actions = ua.receive(answer(invite, 180), CALLEE, 0.5)
    assert actions == [CallProgress(ref, 180, False)]
    actions = ua.receive(answer(invite, 200), CALLEE, 1.0)
    assert [r.method for r in requests(actions)] == ["ACK"]
    [confirmed] = of(actions, CallConfirmed)
    assert isinstance(confirmed, CallConfirmed) and confirmed.media is not None
    assert ref in ua.calls()
    # the callee's INFO and BYE reach the call like an inbound one's
    info = in_dialog(invite, "INFO", 1, b"Signal=5\r\n", Content_Type="application/dtmf-relay")
    assert of(ua.receive(info, CALLEE, 2.0), InfoReceived)
    actions = ua.receive(in_dialog(invite, "BYE", 2), CALLEE, 3.0)
    assert of(actions, CallEnded) == [CallEnded(ref, "remote_bye")]
    assert ref not in ua.calls()


def test_callee_re_invite_is_answered_in_the_dials_dialog() -> None:
    ua = make_ua()
    _ref, invite = dialled(ua)
    ua.receive(answer(invite, 200), CALLEE, 1.0)
    hold = (
        b"v=0\r\no=callee 1 2 IN IP4 192.0.2.50\r\ns=-\r\nc=IN IP4 192.0.2.50\r\nt=0 0\r\n"
        b"m=audio 40000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=sendonly\r\n"
    )
    reinvite = in_dialog(
        invite, "INVITE", 2, hold, Content_Type="application/sdp", Contact="<sip:c@192.0.2.50:5070>"
    )
    actions = ua.receive(reinvite, CALLEE, 2.0)
    [ok] = [a for a in actions if isinstance(a, Send) and a.data.startswith(b"SIP/2.0 200")]
    assert b"a=recvonly" in ok.data  # our answer to the callee's hold
    [updated] = of(actions, MediaUpdated)
    assert isinstance(updated, MediaUpdated) and updated.media.direction == "recvonly"


def test_edge_hangs_up_an_answered_dial_with_bye_and_its_200_is_the_byes() -> None:
    ua = make_ua()
    ref, invite = dialled(ua)
    ua.receive(answer(invite, 200), CALLEE, 1.0)
    actions = ua.hangup(ref, 2.0)
    [bye] = requests(actions)
    assert bye.method == "BYE" and bye.uri == "sip:callee@192.0.2.50:5070"
    assert bye.from_().tag == invite.from_().tag and bye.to().tag == "callee"
    assert bye.cseq().seq == invite.cseq().seq + 1
    assert of(actions, CallEnded) == [CallEnded(ref, "local_bye")]
    ok = build_response(bye, 200, None, [], to_tag="callee").to_bytes()
    assert ua.receive(ok, CALLEE, 2.1) == []
    assert ua.stats.dropped == 0  # the BYE's transaction took it, not the dial


def test_hangup_while_ringing_cancels_and_ends_canceled() -> None:
    ua = make_ua()
    ref, invite = dialled(ua)
    ua.receive(answer(invite, 180), CALLEE, 0.5)
    [cancel] = requests(ua.hangup(ref, 1.0))
    assert cancel.method == "CANCEL" and cancel.top_via().branch == invite.top_via().branch
    ua.receive(build_response(cancel, 200, to_tag="callee").to_bytes(), CALLEE, 1.1)
    actions = ua.receive(answer(invite, 487), CALLEE, 1.2)
    assert of(actions, DialFailed) == [
        DialFailed(ref, "canceled", 487, "cancelled before the answer")
    ]


def test_unusable_answer_is_hung_up_and_failed() -> None:
    ua = make_ua()
    ref, invite = dialled(ua)
    no_sdp = build_response(invite, 200, None, [("Contact", "<sip:c@192.0.2.50:5070>")], to_tag="t")
    actions = ua.receive(no_sdp.to_bytes(), CALLEE, 1.0)
    assert [r.method for r in requests(actions)] == ["ACK", "BYE"]
    assert of(actions, DialFailed) == [DialFailed(ref, "failed", 200, "the answer carries no SDP")]
    assert ua.last_bad is not None and ua.last_bad.reason == "the answer carries no SDP"
    assert not of(actions, CallEnded) and ref not in ua.calls()


def test_a_2xx_without_a_usable_contact_is_bad_input_not_an_error() -> None:
    ua = make_ua()
    ref, invite = dialled(ua)
    bad = answer(invite, 200).replace(b"<sip:callee@192.0.2.50:5070>", b"<sip:callee@192.0.2.50")
    actions = ua.receive(bad, CALLEE, 1.0)
    [failed] = of(actions, DialFailed)
    assert isinstance(failed, DialFailed) and failed.status == 502
    assert ua.stats.internal_errors == 0 and ua.last_error is None
    assert ua.last_bad is not None and ua.last_bad.call == ref


def test_dial_timers_are_the_uas_deadlines() -> None:
    ua = make_ua()
    _, invite = dialled(ua)
    ua.receive(answer(invite, 180), CALLEE, 0.5)
    assert ua.next_deadline() == PLAN.ring_timeout
    [cancel] = requests(ua.tick(PLAN.ring_timeout))
    assert cancel.method == "CANCEL"
    actions = ua.receive(answer(invite, 487), CALLEE, 60.5)
    [failed] = of(actions, DialFailed)
    assert isinstance(failed, DialFailed) and failed.outcome == "no-answer"


def test_registration_inside_the_ua() -> None:
    ua = make_ua()
    account = Account("pbx", "sip:192.0.2.10", "sip:1001@pbx.example", "sip:reg-x@127.0.0.1:5060")
    actions = ua.register(account, 0.0)
    assert actions == [Resolve("register:pbx", "sip:192.0.2.10", "UDP")]
    [register] = requests(
        ua.resolved("register:pbx", "sip:192.0.2.10", [("192.0.2.10", 5060)], 0.0)
    )
    ok = build_response(
        register, 200, None, [("Contact", "<sip:reg-x@127.0.0.1:5060>;expires=600")]
    )
    actions = ua.receive(ok.to_bytes(), ("192.0.2.10", 5060), 0.1)
    [changed] = of(actions, RegistrationChanged)
    assert isinstance(changed, RegistrationChanged) and changed.status.state is State.REGISTERED
    assert ua.next_deadline() == 540.1
    [refresh] = requests(ua.tick(540.1))
    assert refresh.method == "REGISTER" and refresh.call_id() == register.call_id()
    [remove] = requests(ua.unregister("pbx", 541.0))
    assert remove.headers.get("Expires") == "0"
    done = build_response(remove, 200, None, []).to_bytes()
    [changed] = of(ua.receive(done, ("192.0.2.10", 5060), 541.1), RegistrationChanged)
    assert isinstance(changed, RegistrationChanged) and changed.status.state is State.STOPPED
    assert ua.registrations() == {}


def test_resolve_failure_of_a_dial_fails_it() -> None:
    ua = make_ua()
    ref, _, _ = ua.dial(PLAN, 20000, 0.0)
    actions = ua.resolved(ref, "sip:192.0.2.50:5070", [], 0.1, "NXDOMAIN")
    [failed] = of(actions, DialFailed)
    assert (
        isinstance(failed, DialFailed)
        and failed.outcome == "failed"
        and "NXDOMAIN" in failed.reason
    )
    assert ua.resolved("nobody", "sip:x", [], 0.2) == []
