"""A dialog carried on by another worker (issue 24, SIP): the snapshot one UA keeps, the
re-INVITE another sends from it, and what answers that re-INVITE; bytes and times only."""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest
from pydantic import ValidationError

from telephony_edge.sip.dialog_state import DialogSnapshot
from telephony_edge.sip.message import Request, build_response
from telephony_edge.sip.parse import parse_message
from telephony_edge.sip.sdp import MediaConfig, parse_sdp
from telephony_edge.sip.settings import SipSettings
from telephony_edge.sip.ua import UserAgent
from telephony_edge.sip.ua_records import (
    Action,
    CallConfirmed,
    CallEnded,
    Send,
    StartCall,
    UaConfig,
)
from telephony_edge.sip.ua_resume import CSEQ_LEAP, LATE_BYE_S
from tests.sip import wire

TRUNK = ("54.172.60.1", 5060)
ANSWER = (
    "v=0\r\n"
    "o=root 1234567890 1234567891 IN IP4 54.172.60.2\r\n"
    "s=Twilio Media Gateway\r\n"
    "c=IN IP4 54.172.60.2\r\n"
    "t=0 0\r\n"
    "m=audio 18422 RTP/AVP 0 101\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=sendrecv\r\n"
)


def make_ua(host: str, prefix: str, proxy: str | None = None) -> UserAgent:
    ids = itertools.count(1)
    config = UaConfig(host=host, media=MediaConfig(address=host), dialog_contact=proxy)
    return UserAgent(config, new_id=lambda: f"{prefix}{next(ids)}")


def sends(actions: list[Action]) -> list[Send]:
    return [a for a in actions if isinstance(a, Send)]


def request_of(send: Send) -> Request:
    message = parse_message(send.data)
    assert isinstance(message, Request)
    return message


def answered_call(proxy: str | None = None) -> tuple[UserAgent, str, DialogSnapshot]:
    """Worker A answered a Twilio call and it was acknowledged: its snapshot."""
    a = make_ua("10.0.0.1", "a", proxy)
    (start,) = [x for x in a.receive(wire.twilio_invite(), TRUNK, 0.0) if isinstance(x, StartCall)]
    ref = start.call
    a.answer(ref, 40000, 0.1)
    ack = wire.twilio_invite().replace(b"INVITE sip:", b"ACK sip:", 1)
    ack = ack.replace(b"CSeq: 1 INVITE", b"CSeq: 1 ACK").replace(
        b"branch=z9hG4bK4f3c", b"branch=z9hG4bKac"
    )
    ack = ack.replace(
        b"To: <sip:+14155550100@edge.example.com>",
        f"To: <sip:+14155550100@edge.example.com>;tag={ref}".encode(),
    )
    assert any(isinstance(x, CallConfirmed) for x in a.receive(ack, TRUNK, 0.2))
    snapshot = a.dialog_state(ref, "call_resumed")
    assert snapshot is not None
    return a, ref, snapshot


def resumed(snapshot: DialogSnapshot) -> tuple[UserAgent, str, Request]:
    """Worker B adopts the dialog from its snapshot, through the coordinator's JSON."""
    b = make_ua("10.0.0.2", "b")
    restored = DialogSnapshot.from_dict(json.loads(json.dumps(snapshot.to_dict())))
    assert restored == snapshot
    ref, actions = b.adopt(restored, 41000, 100.0)
    (invite,) = sends(actions)
    assert invite.dest == TRUNK  # the route set's first hop
    return b, ref, request_of(invite)


def answer(invite: Request, code: int, body: str = "") -> bytes:
    headers = [("Contact", "<sip:+14155550199@54.172.60.1:5060;transport=udp>")]
    if body:
        headers.append(("Content-Type", "application/sdp"))
    reply = build_response(invite, code, None, headers, body.encode())
    return reply.to_bytes()


def test_the_snapshot_holds_the_dialog_media_and_session() -> None:
    _, ref, snapshot = answered_call()
    assert snapshot.call_id == "1d2c3b4a5e6f7a8b9c0d1e2f3a4b5c6d@0.0.0.0"
    assert (snapshot.local_tag, snapshot.remote_tag) == (ref, "93750583_6772d868_4f9c9a2e")
    assert snapshot.route_set == ("<sip:54.172.60.1:5060;lr;ftag=93750583_6772d868_4f9c9a2e>",)
    assert snapshot.remote_target == "sip:+14155550199@54.172.60.1:5060;transport=udp"
    assert snapshot.remote_seq == 1 and snapshot.flow == TRUNK
    media = snapshot.media
    assert (media.address, media.port, media.codec, media.payload_type) == (
        "54.172.60.2",
        18422,
        "PCMU",
        0,
    )
    assert media.event_payload_type == 101
    assert snapshot.sdp_origin == "10.0.0.1"
    assert (snapshot.session_interval, snapshot.we_refresh) == (1800, True)


def test_with_a_proxy_in_front_the_contact_names_the_proxy() -> None:
    """sip.dialog_proxy: the peer's requests in the dialog go to the proxy, which finds the
    worker that carries the call now; the new worker's re-INVITE keeps that Contact."""
    _, _, snapshot = answered_call("sip:proxy.example.com:5060")
    assert snapshot.local_contact == "<sip:proxy.example.com:5060>"
    _, _, invite = resumed(snapshot)
    assert invite.headers.get("Contact") == "<sip:proxy.example.com:5060>"
    assert invite.top_via().host == "10.0.0.2"  # responses still come to the worker


@pytest.mark.parametrize("uri", ["http://proxy.example.com", "proxy.example.com:5060", "sip:"])
def test_a_dialog_proxy_must_be_a_sip_uri(uri: str) -> None:
    with pytest.raises(ValidationError):
        SipSettings(dialog_proxy=uri)


def test_the_new_worker_re_invites_with_its_media_and_the_dialogs_cseq() -> None:
    _, ref, snapshot = answered_call()
    _, _, invite = resumed(snapshot)
    assert invite.uri == snapshot.remote_target
    assert invite.headers.get_all("Route") == list(snapshot.route_set)
    assert invite.call_id() == snapshot.call_id
    assert invite.from_().params["tag"] == ref and invite.to().tag == snapshot.remote_tag
    assert invite.cseq().seq == snapshot.local_seq + CSEQ_LEAP + 1
    assert invite.top_via().host == "10.0.0.2"  # B's own Via: responses come here
    assert invite.headers.get("Contact") == snapshot.local_contact
    assert invite.headers.get("Session-Expires") == "1800;refresher=uac"
    sdp = parse_sdp(invite.body)
    assert sdp.origin.session_id == snapshot.sdp_session_id
    assert sdp.origin.version == snapshot.sdp_version + 1
    assert sdp.origin.address == "10.0.0.1"  # the session's, not the new worker's
    (audio,) = sdp.media
    assert audio.port == 41000 and sdp.connection == "10.0.0.2"
    assert audio.formats == ["0", "101"]  # the payload types agreed, and only those


def test_an_srtp_call_is_offered_srtp_again_with_keys_of_the_new_worker() -> None:
    """SDES keys are not in the live state: the new worker offers its own, in the profile
    the call had."""
    _, _, plain = answered_call()
    media = dataclasses.replace(plain.media, srtp=True, profile="RTP/SAVP")
    snapshot = dataclasses.replace(plain, media=media, srtp_keys_safe=True)
    _, _, invite = resumed(snapshot)
    (audio,) = parse_sdp(invite.body).media
    assert audio.proto == "RTP/SAVP" and audio.attribute("crypto")
    over_plain = dataclasses.replace(snapshot, srtp_keys_safe=False)  # keys would go in clear
    _, _, invite = resumed(over_plain)
    assert parse_sdp(invite.body).media[0].attribute("crypto") is None


def test_a_200_is_acknowledged_and_its_answer_is_the_calls_media() -> None:
    _, _, snapshot = answered_call()
    b, ref, invite = resumed(snapshot)
    actions = b.receive(answer(invite, 200, ANSWER), TRUNK, 100.05)
    (ack,) = sends(actions)
    acked = request_of(ack)
    assert acked.method == "ACK" and acked.cseq().seq == invite.cseq().seq
    (confirmed,) = [a for a in actions if isinstance(a, CallConfirmed)]
    assert confirmed.call == ref and confirmed.media is not None
    assert (confirmed.media.remote_address, confirmed.media.payload_type) == ("54.172.60.2", 0)
    assert b.dialog_state(ref, "call_resumed") is not None  # kept for the next worker
    # the peer's BYE (a CSeq above the snapshot's) reaches the call here
    bye = wire.twilio_invite().replace(b"INVITE sip:", b"BYE sip:", 1)
    bye = bye.replace(b"CSeq: 1 INVITE", b"CSeq: 2 BYE").replace(
        b"branch=z9hG4bK4f3c", b"branch=z9hG4bKbye"
    )
    bye = bye.replace(
        b"To: <sip:+14155550100@edge.example.com>",
        f"To: <sip:+14155550100@edge.example.com>;tag={snapshot.local_tag}".encode(),
    )
    ended = b.receive(bye, TRUNK, 101.0)
    assert CallEnded(ref, "remote_bye") in ended


def test_glare_491_sends_it_again_within_two_seconds() -> None:
    _, _, snapshot = answered_call()
    b, _, invite = resumed(snapshot)
    actions = b.receive(answer(invite, 491), TRUNK, 100.05)
    assert [request_of(s).method for s in sends(actions)] == ["ACK"]  # the 491's own ACK
    at = b.next_deadline()
    assert at is not None and 100.05 <= at <= 102.05
    (again,) = sends(b.tick(at))
    second = request_of(again)
    assert second.method == "INVITE" and second.cseq().seq == invite.cseq().seq + 1
    assert second.body == invite.body  # the same offer
    confirmed = b.receive(answer(second, 200, ANSWER), TRUNK, at + 0.05)
    assert any(isinstance(a, CallConfirmed) for a in confirmed)


def test_the_peers_re_invite_meanwhile_is_glare_too() -> None:
    _, _, snapshot = answered_call()
    b, _, _ = resumed(snapshot)
    theirs = wire.twilio_invite().replace(b"CSeq: 1 INVITE", b"CSeq: 3 INVITE")
    theirs = theirs.replace(
        b"To: <sip:+14155550100@edge.example.com>",
        f"To: <sip:+14155550100@edge.example.com>;tag={snapshot.local_tag}".encode(),
    ).replace(b"branch=z9hG4bK4f3c", b"branch=z9hG4bKre")
    replies = sends(b.receive(theirs, TRUNK, 100.01))
    assert [wire.status(s.data) for s in replies] == [491]


@pytest.mark.parametrize(("code", "bye"), [(408, False), (488, True), (500, True)])
def test_a_refused_resumption_ends_the_call_with_its_status(code: int, bye: bool) -> None:
    _, _, snapshot = answered_call()
    b, ref, invite = resumed(snapshot)
    actions = b.receive(answer(invite, code), TRUNK, 100.05)
    methods = sorted(request_of(s).method for s in sends(actions))  # the ACK is the 4xx's own
    assert methods == (["ACK", "BYE"] if bye else ["ACK"])
    assert [a for a in actions if isinstance(a, CallEnded)] == [
        CallEnded(ref, "resume_failed", code)
    ]
    assert b.dialog_state(ref, "call_resumed") is None


def bye_to(ref: str, seq: int = 2) -> bytes:
    """The peer's BYE in the dialog whose local tag is ``ref``."""
    bye = wire.twilio_invite().replace(b"INVITE sip:", b"BYE sip:", 1)
    bye = bye.replace(b"CSeq: 1 INVITE", f"CSeq: {seq} BYE".encode()).replace(
        b"branch=z9hG4bK4f3c", f"branch=z9hG4bKbye{seq}".encode()
    )
    return bye.replace(
        b"To: <sip:+14155550100@edge.example.com>",
        f"To: <sip:+14155550100@edge.example.com>;tag={ref}".encode(),
    )


def test_a_481_is_the_peer_that_hung_up_during_the_move_and_its_bye_gets_200() -> None:
    """The peer's BYE went to the dead worker; the proxy brings it here after the peer
    answered the re-INVITE 481: the call ends as the peer's hang-up, its BYE gets 200."""
    _, a_ref, snapshot = answered_call()
    b, ref, invite = resumed(snapshot)
    actions = b.receive(answer(invite, 481), TRUNK, 100.05)
    assert [request_of(s).method for s in sends(actions)] == ["ACK"]  # no BYE
    assert [a for a in actions if isinstance(a, CallEnded)] == [CallEnded(ref, "remote_bye")]
    replies = b.receive(bye_to(a_ref), TRUNK, 101.0)
    assert [wire.status(s.data) for s in sends(replies)] == [200]
    assert not [x for x in replies if isinstance(x, CallEnded)]  # ended once


def test_a_peer_that_hung_up_before_the_takeover_gets_no_re_invite() -> None:
    """The proxy saw the peer's BYE (``hung_up``): nothing is sent, the call ends as the
    peer's hang-up, and its BYE gets 200 for a while, then 481 like any unknown dialog."""
    _, a_ref, snapshot = answered_call()
    b = make_ua("10.0.0.2", "b")
    ref, actions = b.adopt(snapshot, 41000, 100.0, hung_up=True)
    assert actions == [CallEnded(ref, "remote_bye")]
    assert b.calls() == {} and b.next_deadline() is None
    assert [wire.status(s.data) for s in sends(b.receive(bye_to(a_ref), TRUNK, 101.0))] == [200]
    later = b.receive(bye_to(a_ref, 3), TRUNK, 100.0 + LATE_BYE_S + 1)
    assert [wire.status(s.data) for s in sends(later)] == [481]


def test_an_answer_without_sdp_ends_the_call_with_bye() -> None:
    _, _, snapshot = answered_call()
    b, ref, invite = resumed(snapshot)
    actions = b.receive(answer(invite, 200), TRUNK, 100.05)
    assert sorted(request_of(s).method for s in sends(actions)) == ["ACK", "BYE"]
    assert CallEnded(ref, "resume_failed", 200) in actions
    assert b.last_bad is not None and "SDP" in b.last_bad.reason


def test_no_answer_at_all_ends_the_call_without_bye() -> None:
    _, _, snapshot = answered_call()
    b, ref, _ = resumed(snapshot)
    seen: list[Action] = []
    while (at := b.next_deadline()) is not None and at < 200.0:
        seen += b.tick(at)
    assert CallEnded(ref, "resume_failed", 408) in seen
    assert {request_of(s).method for s in sends(seen)} == {"INVITE"}  # resent, never BYE


def test_a_call_let_go_leaves_without_a_word() -> None:
    """The worker that lost the call (another took it over, or it handed the call on on a
    drain) forgets the dialog: no BYE, no end reported. The peer's BYE the proxy still
    brings here (the route names this worker until the new one takes the call) gets 200
    for a while: the proxy noted it, so the new worker ends the call; later, 481."""
    a, ref, _ = answered_call()
    a.forget(ref, 1.0)
    assert a.calls() == {} and a.next_deadline() is None  # its 2xx retransmitter gone too
    assert a.dialog_state(ref, "call_resumed") is None
    replies = a.receive(bye_to(ref), TRUNK, 1.1)
    assert [wire.status(s.data) for s in sends(replies)] == [200]
    assert not [x for x in replies if isinstance(x, CallEnded)]
    later = a.receive(bye_to(ref, 3), TRUNK, 1.0 + LATE_BYE_S + 1)
    assert [wire.status(s.data) for s in sends(later)] == [481]


@pytest.mark.parametrize(
    "change",
    [
        {"v": 2},
        {"local_seq": -1},
        {"route_set": "x"},
        {"call_id": ""},
        {"media": {"codec": "OPUS"}},
        {"transport": "SCTP"},
    ],
)
def test_a_snapshot_out_of_shape_is_refused(change: dict[str, object]) -> None:
    _, _, snapshot = answered_call()
    doc = snapshot.to_dict()
    for name, value in change.items():
        if isinstance(value, dict):
            doc[name] = {**doc[name], **value}
        else:
            doc[name] = value
    with pytest.raises(ValueError):
        DialogSnapshot.from_dict(doc)
