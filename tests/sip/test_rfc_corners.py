"""RFC corners that carriers hit (issue 19): glare, an early UPDATE, a refresh left at 100,
and RTP/AVPF. Sans-I/O, on the UserAgent with time passed in."""

from __future__ import annotations

from telephony_edge.sip.message import build_response
from telephony_edge.sip.sdp import LocalSession, MediaConfig, negotiate, parse_sdp
from telephony_edge.sip.ua import Action, CallEnded, MediaUpdated, UserAgent
from tests.sip import wire
from tests.sip.test_prack import RELIABLE, prack
from tests.sip.test_refer import request_of
from tests.sip.test_ua import PEER, ack, codes, make_ua, of, response, run, sent, start

NO_UPDATE = "Session-Expires: 90;refresher=uas\r\nAllow: INVITE, ACK, BYE, CANCEL"
MOVED_SDP = wire.TWILIO_SDP.replace("18422", "18500")


def refreshing_call() -> tuple[UserAgent, str]:
    """A confirmed call whose session timer makes the edge re-INVITE at 45 s."""
    ua = make_ua(min_se=1)
    ref, _ = start(ua, extra=NO_UPDATE)
    sent(ua.answer(ref, 40000, 0.1))
    ua.receive(ack(ref), PEER, 0.2)
    return ua, ref


def test_a_reinvite_crossing_our_refresh_gets_491_and_the_refresh_goes_on() -> None:
    ua, ref = refreshing_call()
    [(_, action)] = run(ua, 45.5)
    ours = request_of([action], "INVITE")
    theirs = wire.request("INVITE", to_tag=ref, branch="z9hG4bKg1", cseq=2, body=MOVED_SDP)
    assert codes(ua.receive(theirs, PEER, 45.6)) == [491]
    ok = build_response(ours, 200, None, [("Content-Type", "application/sdp")])
    ok.body = wire.TWILIO_SDP.encode()
    ua.receive(ok.to_bytes(), PEER, 45.7)
    # once ours is answered, their retry (RFC 3261 §14.1) is taken
    retry = wire.request("INVITE", to_tag=ref, branch="z9hG4bKg2", cseq=3, body=MOVED_SDP)
    assert 200 in codes(ua.receive(retry, PEER, 48.0))


def test_a_refresh_answered_only_with_100_ends_the_call_instead_of_hanging() -> None:
    ua, ref = refreshing_call()
    [(at, action)] = run(ua, 45.5)
    ours = request_of([action], "INVITE")
    trying = build_response(ours, 100, None, [])
    ua.receive(trying.to_bytes(), PEER, 45.2)
    seen = run(ua, 200.0)
    ended = [(when, a) for when, a in seen if isinstance(a, CallEnded)]
    assert ended == [(at + 32.0, CallEnded(ref, "session_expired"))]  # 64*T1, then BYE
    firsts: list[Action] = [a for _, a in seen][:1]
    assert request_of(firsts, "BYE")


def test_an_update_in_the_early_dialog_after_the_prack_is_answered() -> None:
    ua = make_ua()
    ref, _ = start(ua, extra=RELIABLE)
    [progress] = sent(ua.progress(ref, 40000, 0.0))
    rseq = response(progress.data).headers.get("RSeq")
    assert codes(ua.receive(prack(ref, f"{rseq} 1 INVITE"), PEER, 0.1)) == [200]
    update = wire.request("UPDATE", to_tag=ref, branch="z9hG4bKup", cseq=3, body=MOVED_SDP)
    actions = ua.receive(update, PEER, 0.2)
    assert codes(actions) == [200]
    answer = response(sent(actions)[0].data)
    assert b"m=audio 40000 RTP/AVP" in answer.body
    [moved] = of(actions, MediaUpdated)
    assert isinstance(moved, MediaUpdated) and moved.media.remote_port == 18500


def test_an_update_before_the_early_answer_is_acknowledged_is_still_491() -> None:
    ua = make_ua()
    ref, _ = start(ua, extra=RELIABLE)
    sent(ua.progress(ref, 40000, 0.0))  # no PRACK yet
    update = wire.request("UPDATE", to_tag=ref, branch="z9hG4bKup", cseq=3, body=MOVED_SDP)
    assert codes(ua.receive(update, PEER, 0.2)) == [491]


def test_an_rtp_avpf_offer_is_answered_rtp_avpf() -> None:
    offer = parse_sdp(wire.TWILIO_SDP.replace("RTP/AVP ", "RTP/AVPF ").encode())
    answer = LocalSession(MediaConfig(), 40000, "1").answer(offer, negotiate(offer, MediaConfig()))
    assert b"m=audio 40000 RTP/AVPF 0 101" in answer
    plain = parse_sdp(wire.TWILIO_SDP.encode())
    assert b"RTP/AVP 0" in LocalSession(MediaConfig(), 40000, "1").answer(
        plain, negotiate(plain, MediaConfig())
    )
