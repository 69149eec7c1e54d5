"""RFC corners that carriers hit (issue 19): glare, an early UPDATE, a refresh left at 100,
and RTP/AVPF. Sans-I/O, on the UserAgent with time passed in."""

from __future__ import annotations

from telephony_edge.sip.message import build_response
from telephony_edge.sip.sdp import LocalSession, MediaConfig, negotiate, parse_sdp
from telephony_edge.sip.ua import UserAgent
from telephony_edge.sip.ua_records import Action, CallEnded, MediaUpdated, StartCall
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


def sip_i_invite() -> bytes:
    """A SIP-I INVITE: the SDP and an encapsulated ISUP IAM in one multipart/mixed body."""
    isup = "\x01\x00\x49\x00\x00\x03\x02\x00\x07\x04\x10\x00\x33\x63\x21\x43\x00"
    body = (
        "--unique-boundary-1\r\nContent-Type: application/sdp\r\n\r\n"
        f"{wire.TWILIO_SDP}\r\n"
        "--unique-boundary-1\r\nContent-Type: application/ISUP;version=itu-t92+\r\n"
        "Content-Disposition: signal;handling=optional\r\n\r\n"
        f"{isup}\r\n--unique-boundary-1--\r\n"
    )
    invite = wire.request("INVITE", body=body)
    return invite.replace(
        b"Content-Type: application/sdp\r\nContent-Length",
        b'Content-Type: multipart/mixed;boundary="unique-boundary-1"\r\nContent-Length',
        1,
    )


def test_a_sip_i_invite_takes_the_sdp_part_of_its_multipart_body() -> None:
    ua = make_ua()
    actions = ua.receive(sip_i_invite(), PEER, 0.0)
    assert codes(actions) == [100]  # not 415: the call starts
    [call] = of(actions, StartCall)
    ref = call.call  # type: ignore[attr-defined]
    answer = response(sent(ua.answer(ref, 40000, 0.1))[0].data)
    assert answer.status == 200 and b"m=audio 40000 RTP/AVP 0 101" in answer.body


def test_a_body_with_no_sdp_at_all_is_still_415_naming_what_is_taken() -> None:
    ua = make_ua()
    invite = wire.request("INVITE", body="hello").replace(
        b"Content-Type: application/sdp", b"Content-Type: text/plain", 1
    )
    actions = ua.receive(invite, PEER, 0.0)
    refusal = response(sent(actions)[-1].data)
    assert refusal.status == 415
    assert "multipart/mixed" in ",".join(refusal.headers.get_all("Accept"))


def test_a_merged_invite_gets_482_and_its_retransmission_nothing() -> None:
    ua = make_ua()
    ref, _ = start(ua)
    merged = wire.request("INVITE", body=wire.TWILIO_SDP, branch="z9hG4bKother")
    [loop] = sent(ua.receive(merged, PEER, 0.5))
    assert response(loop.data).status == 482  # the same request by another path
    assert not of(ua.receive(merged, PEER, 0.6), StartCall)
    assert list(ua.calls()) == [ref]
