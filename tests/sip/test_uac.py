"""The outbound INVITE machine on its own: responses and times in, messages out, no sockets."""

from __future__ import annotations

import itertools

import pytest

from telephony_edge.sip import uac
from telephony_edge.sip.auth import DigestServer, Outcome, binding
from telephony_edge.sip.client_outputs import Lookup, SendRequest
from telephony_edge.sip.digest_client import DigestClient
from telephony_edge.sip.message import Request, Response, build_response
from telephony_edge.sip.parse import parse_message
from telephony_edge.sip.sdp import LocalSession, MediaConfig, negotiate, parse_sdp
from telephony_edge.sip.transaction import DEFAULT_TIMERS
from tests.sip import wire

A1, A2, B1 = ("192.0.2.1", 5060), ("192.0.2.2", 5060), ("198.51.100.9", 5080)
HOP_A, HOP_B = "sip:sbc.carrier.example;lr", "sip:backup.carrier.example"
MEDIA = MediaConfig(address="127.0.0.1")
CONFIG = uac.UacConfig(sent_by="127.0.0.1:5060", contact="<sip:127.0.0.1:5060;transport=udp>")
T1 = DEFAULT_TIMERS.t1


def machine(
    hops: tuple[str, ...] = (HOP_A,), digest: DigestClient | None = None, **dial: object
) -> uac.OutboundInvite:
    ids = itertools.count(1)
    plan = uac.Dial(
        request_uri="sip:+15550100@carrier.example",
        from_uri="sip:+15550111@edge.example",
        hops=hops,
        **dial,  # type: ignore[arg-type]
    )
    local = LocalSession(MEDIA, 20000, "1")
    return uac.OutboundInvite(plan, CONFIG, local, MEDIA, digest, lambda: f"id{next(ids)}")


def sends(out: list[uac.UacOutput]) -> list[tuple[Request, tuple[str, int]]]:
    found = []
    for item in out:
        if isinstance(item, SendRequest):
            msg = parse_message(item.data)
            if isinstance(msg, Request):
                found.append((msg, item.dest))
    return found


def only(out: list[uac.UacOutput], kind: type) -> list[object]:
    return [item for item in out if isinstance(item, kind)]


def started(m: uac.OutboundInvite, addresses: list[tuple[str, int]]) -> Request:
    """Start, answer the lookup of the first hop; the INVITE sent."""
    out = m.start(0.0)
    assert out == [Lookup(m.dial.hops[0], "UDP")]
    [(invite, dest)] = sends(m.resolved(m.dial.hops[0], addresses, 0.0))
    assert dest == addresses[0] and invite.method == "INVITE"
    return invite


def answer(invite: Request, code: int, *headers: tuple[str, str], sdp: bool = False) -> Response:
    body = b""
    extra = list(headers)
    if sdp:
        offer = parse_sdp(invite.body)
        body = LocalSession(MediaConfig(address="192.0.2.50"), 40000, "9").answer(
            offer, negotiate(offer, MEDIA)
        )
        extra.append(("Content-Type", "application/sdp"))
    if 100 < code < 300:
        extra.append(("Contact", "<sip:callee@192.0.2.50:5070>"))
    return build_response(invite, code, None, extra, body, to_tag="callee1")


def test_answered_call_acks_the_2xx_and_its_retransmissions() -> None:
    m = machine()
    invite = started(m, [A1])
    assert "Route: <sip:sbc.carrier.example;lr>" in invite.to_bytes().decode()
    assert invite.headers.get("Content-Type") == "application/sdp" and invite.body
    assert m.receive(answer(invite, 100), 0.1) == []
    out = m.receive(answer(invite, 180), 0.2)
    assert out == [uac.Progress(180, "Ringing", False)]
    ok = answer(invite, 200, ("Record-Route", "<sip:192.0.2.1;lr>"), sdp=True)
    out = m.receive(ok, 3.0)
    [(ack, dest)] = sends(out)
    assert ack.method == "ACK" and ack.cseq().seq == invite.cseq().seq and dest == A1
    assert ack.uri == "sip:callee@192.0.2.50:5070"  # the remote target, routed by the proxy
    assert ack.headers.get("Route") == "<sip:192.0.2.1;lr>"
    [answered] = only(out, uac.Answered)
    assert isinstance(answered, uac.Answered)
    assert answered.media is not None and answered.media.codec.name in ("G722", "PCMU", "PCMA")
    assert answered.problem is None and not answered.cancelled
    dialog = answered.dialog
    assert (dialog.local_tag, dialog.remote_tag) == (invite.from_().tag, "callee1")
    assert dialog.local_seq == invite.cseq().seq and dialog.route_set == ["<sip:192.0.2.1;lr>"]
    # a retransmitted 2xx gets the same ACK; after Timer M the machine is done
    [again] = only(m.receive(ok, 3.5), SendRequest)
    assert isinstance(again, SendRequest) and again.data == ack.to_bytes() and again.dest == A1
    assert not m.done
    m.tick(3.0 + 64 * T1)
    assert m.done and m.phase is uac.Phase.ANSWERED


def test_busy_is_acked_and_reported_busy() -> None:
    m = machine()
    invite = started(m, [A1])
    out = m.receive(answer(invite, 486), 1.0)
    [(ack, _)] = sends(out)
    assert ack.method == "ACK" and ack.top_via().branch == invite.top_via().branch
    assert only(out, uac.Failed) == [uac.Failed("busy", 486, "Busy Here")]


def test_ring_timeout_cancels_then_487_is_no_answer() -> None:
    m = machine(ring_timeout=30.0)
    invite = started(m, [A1])
    m.receive(answer(invite, 180), 1.0)
    assert m.next_deadline() == 30.0
    [(cancel, dest)] = sends(m.tick(30.0))
    assert cancel.method == "CANCEL" and dest == A1
    assert cancel.top_via().branch == invite.top_via().branch
    assert cancel.cseq().seq == invite.cseq().seq and cancel.uri == invite.uri
    assert cancel.headers.get("Route") == invite.headers.get("Route")
    out = m.receive(answer(invite, 487), 30.2)
    assert only(out, uac.Failed) == [
        uac.Failed("no-answer", 487, "no answer before the ring timeout")
    ]


def test_cancel_waits_for_a_provisional_response() -> None:
    m = machine()
    invite = started(m, [A1])
    assert sends(m.cancel(0.1)) == []  # §9.1: nothing came back yet
    [(cancel, _)] = sends(m.receive(answer(invite, 100), 0.3))
    assert cancel.method == "CANCEL"
    assert sends(m.cancel(0.4)) == []  # once
    out = m.receive(answer(invite, 487), 0.5)
    assert only(out, uac.Failed) == [uac.Failed("canceled", 487, "cancelled before the answer")]


def test_a_2xx_crossing_the_cancel_is_acked_and_marked() -> None:
    m = machine()
    invite = started(m, [A1])
    m.receive(answer(invite, 180), 0.2)
    m.cancel(0.3)
    out = m.receive(answer(invite, 200, sdp=True), 0.4)
    [answered] = only(out, uac.Answered)
    assert isinstance(answered, uac.Answered) and answered.cancelled
    assert [r.method for r, _ in sends(out)] == ["ACK"]


def test_503_fails_over_to_the_next_address_then_the_next_hop() -> None:
    m = machine(hops=(HOP_A, HOP_B))
    first = started(m, [A1, A2])
    [(ack, _), (second, dest)] = sends(m.receive(answer(first, 503), 0.1))
    assert ack.method == "ACK" and dest == A2 and second.top_via().branch != first.top_via().branch
    assert second.cseq().seq == first.cseq().seq + 1 and second.call_id() == first.call_id()
    out = m.receive(answer(second, 503), 0.2)
    assert [o for o in out if isinstance(o, Lookup)] == [Lookup(HOP_B, "UDP")]
    [(third, dest)] = sends(m.resolved(HOP_B, [B1], 0.3))
    assert dest == B1 and third.headers.get("Route") is None  # no ;lr: no preloaded route
    out = m.receive(answer(third, 200, sdp=True), 0.5)
    assert only(out, uac.Answered)


def test_silent_address_fails_over_after_the_failover_timeout() -> None:
    m = machine(failover_timeout=2.0)
    started(m, [A1, A2])
    out = m.tick(1.0)  # a resend at T1, nothing else
    assert [d for _, d in sends(out)] == [A1]
    assert [d for _, d in sends(m.tick(2.0))] == [A1, A2]  # A1's last resend (1.5 s), then A2
    # the first address's transaction is gone: no more resends there
    later = m.tick(3.0)
    assert {d for _, d in sends(later)} <= {A2}


def test_a_host_that_never_answers_is_failed_not_no_answer() -> None:
    m = machine(failover_timeout=2.0)
    started(m, [A1])
    [failed] = only(m.tick(2.0), uac.Failed)
    assert failed == uac.Failed("failed", 408, "no response in time")


def test_unresolvable_hops_fail_the_call() -> None:
    m = machine(hops=(HOP_A, HOP_B))
    m.start(0.0)
    out = m.unresolvable(HOP_A, "NXDOMAIN", 0.1)
    assert out == [Lookup(HOP_B, "UDP")]
    assert m.unresolvable(HOP_A, "late", 0.2) == []  # an answer nobody waits for
    out = m.resolved(HOP_B, [], 0.3)
    [failed] = only(out, uac.Failed)
    assert isinstance(failed, uac.Failed) and failed.outcome == "failed" and failed.status == 503
    assert m.done


def test_every_address_unavailable_is_failed_503() -> None:
    m = machine()
    invite = started(m, [A1])
    out = m.receive(answer(invite, 503), 0.1)
    assert only(out, uac.Failed) == [uac.Failed("failed", 503, "Service Unavailable")]


def test_digest_challenge_is_answered_once() -> None:
    server = DigestServer()
    m = machine(digest=DigestClient("edge", "s3cret"))
    invite = started(m, [A1])
    bound = binding("127.0.0.1", invite.call_id(), "INVITE")
    challenge = answer(invite, 407, *server.challenge("carrier", 0.0, bound=bound))
    challenge.headers = type(challenge.headers)(
        [
            ("Proxy-Authenticate" if n == "WWW-Authenticate" else n, v)
            for n, v in challenge.headers.items()
        ]
    )
    out = m.receive(challenge, 0.1)
    requests = sends(out)
    assert [r.method for r, _ in requests] == ["ACK", "INVITE"]
    again, dest = requests[1]
    assert dest == A1 and again.cseq().seq == invite.cseq().seq + 1
    header = again.headers.get("Proxy-Authorization")
    outcome = server.verify(
        header, "INVITE", again.uri, "carrier", "edge", "s3cret", 0.2, bound=bound
    )
    assert outcome is Outcome.OK
    # the same challenge again: the credentials are wrong, the call fails
    out = m.receive(
        build_response(again, 407, None, list(challenge.headers.raw("Proxy-Authenticate"))),
        0.3,
    )
    [failed] = only(out, uac.Failed)
    assert isinstance(failed, uac.Failed) and failed.outcome == "failed" and failed.status == 407


def test_challenge_without_credentials_fails() -> None:
    m = machine()
    invite = started(m, [A1])
    out = m.receive(answer(invite, 401, ("WWW-Authenticate", 'Digest realm="x", nonce="n"')), 0.1)
    [failed] = only(out, uac.Failed)
    assert isinstance(failed, uac.Failed) and "no credentials" in failed.reason


def test_answer_without_sdp_is_a_problem() -> None:
    m = machine()
    invite = started(m, [A1])
    out = m.receive(answer(invite, 200), 0.1)
    [answered] = only(out, uac.Answered)
    assert isinstance(answered, uac.Answered) and answered.problem == "the answer carries no SDP"


def test_a_2xx_that_forms_no_dialog_fails_the_call_as_bad_input() -> None:
    m = machine()
    invite = started(m, [A1])
    ok = answer(invite, 200, sdp=True)
    ok.headers.set("Contact", "<sip:callee@192.0.2.50")  # unclosed
    out = m.receive(ok, 0.1)
    [failed] = only(out, uac.Failed)
    assert failed == uac.Failed("failed", 502, "a 2xx whose To or Contact is unreadable")
    assert m.bad == "a 2xx whose To or Contact is unreadable"


def test_early_media_sdp_stands_for_a_2xx_without_one() -> None:
    m = machine()
    invite = started(m, [A1])
    out = m.receive(answer(invite, 183, sdp=True), 0.1)
    assert out == [uac.Progress(183, "Session Progress", True)]
    [answered] = only(m.receive(answer(invite, 200), 0.5), uac.Answered)
    assert isinstance(answered, uac.Answered) and answered.media is not None


def test_ring_timeout_with_nothing_back_is_failed() -> None:
    m = machine(ring_timeout=10.0, failover_timeout=60.0)
    started(m, [A1])
    out = m.tick(10.0)
    [failed] = only(out, uac.Failed)
    assert isinstance(failed, uac.Failed) and failed.outcome == "failed"
    assert m.done


@pytest.mark.parametrize(
    ("code", "outcome"),
    [(600, "busy"), (603, "busy"), (480, "no-answer"), (404, "failed"), (488, "failed")],
)
def test_final_statuses_map_to_outcomes(code: int, outcome: str) -> None:
    m = machine()
    invite = started(m, [A1])
    [failed] = only(m.receive(answer(invite, code), 0.1), uac.Failed)
    assert isinstance(failed, uac.Failed) and (failed.outcome, failed.status) == (outcome, code)


def test_response_of_another_branch_is_ignored() -> None:
    m = machine()
    invite = started(m, [A1])
    stray = parse_message(wire.twilio_invite())
    assert isinstance(stray, Request)
    assert m.receive(build_response(stray, 200, to_tag="x"), 0.1) == []
    assert m.phase is uac.Phase.CALLING and invite.method == "INVITE"
