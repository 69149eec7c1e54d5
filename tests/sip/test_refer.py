"""Blind transfer by REFER in the UserAgent: Refer-To, 202 and NOTIFY sipfrag, refusals."""

from __future__ import annotations

from telephony_edge.sip.message import Request, build_response
from telephony_edge.sip.parse import parse_message
from telephony_edge.sip.refer import refer_to_uri, sipfrag_status
from telephony_edge.sip.ua import UserAgent
from telephony_edge.sip.ua_records import Action, CallEnded, TransferResult
from tests.sip import wire
from tests.sip.test_ua import PEER, ack, codes, make_ua, of, run, sent, start

NUMBER = "+15555550123"


def up(ua: UserAgent) -> str:
    ref, _ = start(ua)
    ua.answer(ref, 40000, 0.1)
    ua.receive(ack(ref), PEER, 0.2)
    return ref


def request_of(actions: list[Action], method: str) -> Request:
    [req] = [
        msg
        for s in sent(actions)
        if isinstance(msg := parse_message(s.data), Request) and msg.method == method
    ]
    return req


def reply(req: Request, code: int) -> bytes:
    return build_response(req, code).to_bytes()


def notify(ref: str, cseq: int, frag: str, state: str = "active;expires=60") -> bytes:
    data = wire.request(
        "NOTIFY",
        to_tag=ref,
        branch=f"z9hG4bKn{cseq}",
        cseq=cseq,
        body=f"{frag}\r\n",
        extra=f"Event: refer\r\nSubscription-State: {state}",
    )
    return data.replace(b"application/sdp", b"message/sipfrag;version=2.0")


def test_refer_to_uri_tel_or_sip_and_sipfrag_status() -> None:
    assert refer_to_uri(NUMBER, "tel", "trunk.example") == f"tel:{NUMBER}"
    assert refer_to_uri(NUMBER, "sip", "trunk.example") == f"sip:{NUMBER}@trunk.example"
    assert refer_to_uri("sip:desk@pbx.example", "tel", "x") == "sip:desk@pbx.example"
    assert sipfrag_status(b"SIP/2.0 200 OK\r\n") == 200
    assert sipfrag_status(b"SIP/2.0 486 Busy Here") == 486
    assert sipfrag_status(b"INVITE sip:x SIP/2.0") is None


def test_refer_202_notify_100_then_200_ends_the_call_as_transferred_with_bye() -> None:
    ua = make_ua()
    ref = up(ua)
    actions = ua.refer(ref, NUMBER, 1.0)
    refer = request_of(actions, "REFER")
    assert refer.headers.get("Refer-To") == f"<tel:{NUMBER}>"
    assert refer.headers.get("Referred-By") == "<sip:abc123@127.0.0.1>"
    assert refer.headers.get("To") == "<sip:+15551230000@203.0.113.7>;tag=ft1"
    assert sent(actions)[0].dest == PEER
    assert ua.receive(reply(refer, 202), PEER, 1.1) == []
    trying = ua.receive(notify(ref, 2, "SIP/2.0 100 Trying"), PEER, 1.2)
    assert codes(trying) == [200] and not of(trying, TransferResult)
    done = ua.receive(notify(ref, 3, "SIP/2.0 200 OK", "terminated;reason=noresource"), PEER, 3.0)
    assert codes(done) == [200]
    assert of(done, TransferResult) == [
        TransferResult(ref, True, 200, "the transfer target answered")
    ]
    assert request_of(done, "BYE").headers.get("CSeq") == f"{refer.cseq().seq + 1} BYE"
    assert of(done, CallEnded) == [CallEnded(ref, "transferred")]
    assert not ua.calls()
    # a late NOTIFY for the ended dialog: 481
    assert codes(ua.receive(notify(ref, 4, "SIP/2.0 200 OK"), PEER, 3.5)) == [481]


def test_target_failure_is_reported_and_the_call_goes_on() -> None:
    ua = make_ua()
    ref = up(ua)
    refer = request_of(ua.refer(ref, NUMBER, 1.0), "REFER")
    ua.receive(reply(refer, 202), PEER, 1.1)
    busy = ua.receive(notify(ref, 2, "SIP/2.0 486 Busy Here", "terminated"), PEER, 5.0)
    assert of(busy, TransferResult) == [
        TransferResult(ref, False, 486, "the transfer target answered 486")
    ]
    assert not of(busy, CallEnded) and ref in ua.calls()
    # a second transfer may follow
    assert request_of(ua.refer(ref, "sip:desk@pbx.example", 6.0), "REFER")


def test_refused_refer_reports_and_hangs_up_or_not_by_config() -> None:
    ua = make_ua()
    ref = up(ua)
    refer = request_of(ua.refer(ref, NUMBER, 1.0), "REFER")
    refused = ua.receive(reply(refer, 403), PEER, 1.1)
    assert of(refused, TransferResult) == [
        TransferResult(ref, False, 403, "REFER refused: 403 Forbidden")
    ]
    assert request_of(refused, "BYE")
    assert of(refused, CallEnded) == [CallEnded(ref, "refer_refused")]

    ua = make_ua(refer_refused_bye=False, refer_scheme="sip")
    ref = up(ua)
    refer = request_of(ua.refer(ref, NUMBER, 1.0), "REFER")
    assert refer.headers.get("Refer-To") == f"<sip:{NUMBER}@203.0.113.7>"
    refused = ua.receive(reply(refer, 501), PEER, 1.1)
    assert [r.status for r in of(refused, TransferResult)] == [501]  # type: ignore[attr-defined]
    assert not of(refused, CallEnded) and ref in ua.calls()


def test_unanswered_refer_times_out_as_refused() -> None:
    ua = make_ua()
    ref = up(ua)
    ua.refer(ref, NUMBER, 1.0)
    seen = [a for _, a in run(ua, 1.0 + 33.0)]
    assert of(seen, TransferResult) == [
        TransferResult(ref, False, 408, "REFER refused: 408 no answer")
    ]
    assert of(seen, CallEnded) == [CallEnded(ref, "refer_refused")]


def test_accepted_refer_without_final_notify_fails_at_refer_timeout() -> None:
    ua = make_ua(refer_timeout=20.0)
    ref = up(ua)
    refer = request_of(ua.refer(ref, NUMBER, 1.0), "REFER")
    ua.receive(reply(refer, 202), PEER, 1.1)
    seen = run(ua, 60.0)
    [(at, result)] = [(at, a) for at, a in seen if isinstance(a, TransferResult)]
    assert at == 21.1 and not result.ok and result.status == 408
    assert ref in ua.calls()


def test_bye_after_202_is_the_trunk_completing_the_transfer() -> None:
    ua = make_ua()
    ref = up(ua)
    refer = request_of(ua.refer(ref, NUMBER, 1.0), "REFER")
    ua.receive(reply(refer, 202), PEER, 1.1)
    bye = ua.receive(wire.request("BYE", to_tag=ref, branch="z9hG4bKbye", cseq=2), PEER, 4.0)
    assert codes(bye) == [200]
    assert [r.ok for r in of(bye, TransferResult)] == [True]  # type: ignore[attr-defined]
    assert of(bye, CallEnded) == [CallEnded(ref, "transferred")]


def test_one_refer_at_a_time_and_none_before_the_call_is_up() -> None:
    ua = make_ua()
    ref, _ = start(ua)
    assert ua.refer(ref, NUMBER, 0.1) == [TransferResult(ref, False, 481, "the call is not up")]
    ua.answer(ref, 40000, 0.1)
    ua.receive(ack(ref), PEER, 0.2)
    assert request_of(ua.refer(ref, NUMBER, 1.0), "REFER")
    assert ua.refer(ref, NUMBER, 1.1) == [
        TransferResult(ref, False, 491, "a transfer is already under way")
    ]


def test_notify_outside_a_dialog_is_481() -> None:
    ua = make_ua()
    assert codes(ua.receive(notify("nobody", 2, "SIP/2.0 200 OK"), PEER, 0.0)) == [481]
