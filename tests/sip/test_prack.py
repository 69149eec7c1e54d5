"""Reliable provisional responses (RFC 3262) and early media in the UserAgent."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from telephony_edge.sip.ua import UserAgent
from telephony_edge.sip.ua_records import CallEnded
from tests.conftest import Edge, Receiver, wait_for
from tests.sip import wire
from tests.sip.conftest import finished, register, sip_test_settings, sipp, sipp_binary
from tests.sip.test_ua import PEER, ack, codes, make_ua, response, run, sent, start

RELIABLE = "Require: 100rel\r\nSupported: 100rel"


def prack(ref: str, rack: str, branch: str = "z9hG4bKpr1") -> bytes:
    return wire.request("PRACK", to_tag=ref, branch=branch, cseq=2, extra=f"RAck: {rack}")


def reliable_call(ua: UserAgent) -> str:
    ref, _ = start(ua, extra=RELIABLE)
    return ref


def test_reliable_180_resent_until_its_prack_then_200() -> None:
    ua = make_ua()
    ref = reliable_call(ua)
    [ringing] = sent(ua.ringing(ref, 0.0))
    r180 = response(ringing.data)
    assert r180.status == 180 and r180.headers.get("Require") == "100rel"
    rseq = int(r180.headers.get("RSeq") or "0")
    assert rseq > 0 and r180.to().tag == ref
    resent = [at for at, a in run(ua, 8.0) if a == ringing]
    assert resent == [0.5, 1.5, 3.5, 7.5]  # T1 doubling, capped at T2
    assert codes(ua.receive(prack(ref, f"{rseq} 1 INVITE"), PEER, 8.0)) == [200]
    assert not run(ua, 20.0)  # acknowledged: no more copies
    ok = response(sent(ua.answer(ref, 40000, 20.0))[0].data)
    assert ok.status == 200 and ok.cseq().method == "INVITE"


def test_reliable_183_with_sdp_holds_the_200_until_its_prack() -> None:
    ua = make_ua()
    ref = reliable_call(ua)
    [progress] = sent(ua.progress(ref, 40000, 0.0))
    r183 = response(progress.data)
    assert r183.status == 183 and b"m=audio 40000 RTP/AVP 0 101" in r183.body
    assert ua.answer(ref, 40000, 0.2) == []  # not before the PRACK (RFC 3262 §3)
    rseq = r183.headers.get("RSeq")
    # a PRACK naming another response does not count
    assert codes(ua.receive(prack(ref, f"{rseq} 9 INVITE", "z9hG4bKx"), PEER, 0.3)) == [481]
    actions = ua.receive(prack(ref, f"{rseq} 1 INVITE"), PEER, 0.4)
    assert codes(actions) == [200, 200]
    ok = response(sent(actions)[1].data)
    assert ok.cseq().method == "INVITE" and ok.body == r183.body  # the same SDP, same o=
    ua.receive(ack(ref), PEER, 0.5)
    assert ref in ua.calls()


def test_no_prack_fails_the_invite_504() -> None:
    ua = make_ua()
    ref = reliable_call(ua)
    ua.ringing(ref, 0.0)
    seen = run(ua, 40.0)
    finals = [r.status for s in sent([a for _, a in seen]) if (r := response(s.data)).status >= 200]
    assert finals[:1] == [504]
    assert [a for _, a in seen if isinstance(a, CallEnded)] == [CallEnded(ref, "no_prack", 504)]


def test_without_100rel_183_is_plain_and_the_200_follows_at_once() -> None:
    ua = make_ua()
    ref, _ = start(ua)
    r183 = response(sent(ua.progress(ref, 40000, 0.0))[0].data)
    assert r183.status == 183 and r183.headers.get("RSeq") is None and r183.body
    assert not run(ua, 5.0)
    assert codes(ua.answer(ref, 40000, 1.0)) == [200]


# -- with sipp against the running edge ---------------------------------------------------


@pytest.fixture
async def early_edge(make_edge: Callable[..., Any], receiver: Receiver) -> Edge:
    sipp_binary()
    settings = sip_test_settings(receiver, {"early_media": True, "ring_s": 0.3})
    edge: Edge = await make_edge(settings)
    return edge


async def test_sipp_100rel_183_early_media_prack_then_200(
    early_edge: Edge, receiver: Receiver, tmp_path: Path
) -> None:
    reg = await register(early_edge)
    process = await sipp(early_edge, "uac_100rel.xml", reg["call_id"], tmp_path)
    await finished(process, tmp_path)  # 183 with SDP and RSeq, PRACK, 200, 200, ACK, BYE
    await wait_for(lambda: receiver.received, within=10)
    assert receiver.received[0]["call_status"] == "user-ended"
