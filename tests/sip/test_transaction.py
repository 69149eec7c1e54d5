"""The transaction tables on their own: events and times in, outputs out, no sleeping."""

from __future__ import annotations

import itertools

import pytest

from telephony_edge.sip import transaction as tx
from telephony_edge.sip.message import Request, build_response
from telephony_edge.sip.parse import parse_message
from tests.sip import wire

T = tx.DEFAULT_TIMERS


def req(method: str = "INVITE", **kw: object) -> Request:
    msg = parse_message(wire.request(method, **kw))  # type: ignore[arg-type]
    assert isinstance(msg, Request)
    return msg


def run_until(machine: tx._Machine, end: float) -> list[tuple[float, tx.Output]]:
    """Fire timers up to ``end``; (time, output) for each output."""
    seen: list[tuple[float, tx.Output]] = []
    while (at := machine.next_deadline()) is not None and at <= end:
        seen += [(at, out) for out in machine.tick(at)]
    return seen


def sends(seen: list[tuple[float, tx.Output]]) -> list[float]:
    return [at for at, out in seen if isinstance(out, tx.Transmit)]


def test_invite_non_2xx_timer_g_backoff_then_h() -> None:
    invite = req()
    t = tx.InviteServerTransaction(invite)
    assert [type(o) for o in t.respond(build_response(invite, 100), 0.0)] == [tx.Transmit]
    out = t.respond(build_response(invite, 487, to_tag="x"), 0.0)
    assert t.state is tx.State.COMPLETED and isinstance(out[0], tx.Transmit)
    seen = run_until(t, 100.0)
    # T1, 2T1, 4T1, then capped at T2 = 4 s, until Timer H at 64*T1 = 32 s
    assert sends(seen) == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert (32.0, tx.TimedOut("terminated")) in seen and t.terminated


def test_invite_ack_stops_g_and_i_absorbs() -> None:
    invite = req()
    t = tx.InviteServerTransaction(invite)
    t.respond(build_response(invite, 486, to_tag="x"), 0.0)
    assert t.receive_ack(0.7) == []
    assert t.state is tx.State.CONFIRMED
    assert t.receive_request(1.0) == [] and t.receive_ack(1.1) == []  # absorbed
    assert t.next_deadline() == pytest.approx(0.7 + T.t4)
    assert run_until(t, 10.0) == [(0.7 + T.t4, tx.Terminated())]


def test_reliable_transport_skips_g_and_i_is_zero() -> None:
    invite = req()
    t = tx.InviteServerTransaction(invite, reliable=True)
    t.respond(build_response(invite, 487, to_tag="x"), 0.0)
    assert t.next_deadline() == 32.0  # only H
    t.receive_ack(1.0)
    assert t.next_deadline() == 1.0 and t.tick(1.0) == [tx.Terminated()]


def test_late_final_after_487_is_never_sent() -> None:
    invite = req()
    t = tx.InviteServerTransaction(invite)
    t.respond(build_response(invite, 487, to_tag="x"), 0.0)
    assert t.respond(build_response(invite, 200, to_tag="x"), 0.1) == []
    assert t.respond(build_response(invite, 180, to_tag="x"), 0.1) == []


def test_retransmitted_invite_gets_last_provisional() -> None:
    invite = req()
    t = tx.InviteServerTransaction(invite)
    t.respond(build_response(invite, 100), 0.0)
    ringing = build_response(invite, 180, to_tag="x")
    t.respond(ringing, 0.1)
    assert t.receive_request(0.5) == [tx.Transmit(ringing.to_bytes())]


def test_2xx_goes_to_accepted_until_timer_l() -> None:
    invite = req()
    t = tx.InviteServerTransaction(invite)
    ok = build_response(invite, 200, to_tag="x")
    t.respond(ok, 0.0)
    assert t.state is tx.State.ACCEPTED
    assert t.receive_request(1.0) == [tx.Transmit(ok.to_bytes())]
    assert run_until(t, 100.0) == [(32.0, tx.Terminated())]


def test_uas_2xx_retransmission_schedule_and_give_up() -> None:
    invite = req()
    ok = build_response(invite, 200, to_tag="x")
    r = tx.Uas2xxRetransmitter(ok)
    assert r.start(0.0) == [tx.Transmit(ok.to_bytes())]
    seen = run_until(r, 100.0)
    assert sends(seen) == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert (32.0, tx.TimedOut("gave_up")) in seen and r.terminated


def test_uas_2xx_ack_stops() -> None:
    invite = req()
    r = tx.Uas2xxRetransmitter(build_response(invite, 200, to_tag="x"))
    r.start(0.0)
    r.tick(0.5)
    r.receive_ack(0.6)
    assert r.next_deadline() is None and r.state is tx.State.CONFIRMED


@pytest.mark.parametrize(("reliable", "j"), [(False, 32.0), (True, 0.0)])
def test_non_invite_server_timer_j(reliable: bool, j: float) -> None:
    bye = req("BYE", to_tag="x")
    t = tx.NonInviteServerTransaction(bye, reliable=reliable)
    assert t.receive_request(0.0) == []  # trying: absorbed
    ok = build_response(bye, 200)
    t.respond(ok, 0.0)
    assert t.receive_request(5.0) == [tx.Transmit(ok.to_bytes())]  # the same 200
    assert t.respond(build_response(bye, 500), 5.0) == []
    assert t.next_deadline() == j
    assert t.tick(j) == [tx.Terminated()]


def test_non_invite_client_timer_e_and_f() -> None:
    bye = req("BYE", to_tag="x")
    c = tx.NonInviteClientTransaction(bye)
    assert c.start(0.0) == [tx.Transmit(bye.to_bytes())]
    seen = run_until(c, 100.0)
    assert sends(seen) == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert (32.0, tx.TimedOut("terminated")) in seen


def test_non_invite_client_provisional_then_final() -> None:
    bye = req("BYE", to_tag="x")
    c = tx.NonInviteClientTransaction(bye)
    c.start(0.0)
    c.tick(0.5)
    c.receive_response(build_response(bye, 100), 0.6)
    assert c.state is tx.State.PROCEEDING
    assert sends(run_until(c, 5.0)) == [1.5]  # 0.5 + 2*T1 was already armed
    assert sends(run_until(c, 10.0)) == [5.5, 9.5]  # then every T2 in proceeding
    out = c.receive_response(build_response(bye, 200), 10.0)
    assert isinstance(out[0], tx.PassUp) and c.state is tx.State.COMPLETED
    assert c.next_deadline() == 10.0 + T.t4


def test_invite_client_timer_a_doubles_until_b() -> None:
    invite = req(to_tag="x")
    c = tx.InviteClientTransaction(invite)
    assert c.start(0.0) == [tx.Transmit(invite.to_bytes())]
    seen = run_until(c, 100.0)
    assert sends(seen) == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]  # no T2 cap for INVITE
    assert (32.0, tx.TimedOut("terminated")) in seen


def test_invite_client_non_2xx_is_acked_on_its_branch_and_again_for_each_resend() -> None:
    invite = req(to_tag="x", branch="z9hG4bKre1", cseq=7)
    c = tx.InviteClientTransaction(invite)
    c.start(0.0)
    busy = build_response(invite, 491)
    out = c.receive_response(busy, 0.1)
    assert isinstance(out[0], tx.PassUp) and isinstance(out[1], tx.Transmit)
    ack = parse_message(out[1].data)
    assert isinstance(ack, Request) and ack.method == "ACK"
    assert ack.top_via().branch == "z9hG4bKre1" and ack.headers.get("CSeq") == "7 ACK"
    assert ack.to().tag == "x"
    assert c.receive_response(busy, 0.6) == [tx.Transmit(out[1].data)]
    assert c.next_deadline() == 0.1 + 32.0


def test_invite_client_2xx_passed_up_each_time_until_timer_m() -> None:
    invite = req(to_tag="x")
    c = tx.InviteClientTransaction(invite)
    c.start(0.0)
    ok = build_response(invite, 200)
    assert [type(o) for o in c.receive_response(ok, 0.2)] == [tx.PassUp]
    assert [type(o) for o in c.receive_response(ok, 0.7)] == [tx.PassUp]  # the TU ACKs again
    assert c.state is tx.State.ACCEPTED and c.next_deadline() == 0.2 + 64 * T.t1


def test_every_event_in_every_state_is_safe() -> None:
    invite = req()
    for cls, table in (
        (tx.InviteServerTransaction, tx.INVITE_SERVER),
        (tx.NonInviteServerTransaction, tx.NON_INVITE_SERVER),
        (tx.NonInviteClientTransaction, tx.NON_INVITE_CLIENT),
        (tx.InviteClientTransaction, tx.INVITE_CLIENT),
    ):
        states = {s for s, _ in table} | {ns for ns, _ in table.values()}
        for state, ev in itertools.product(states, tx.Ev):
            m = cls(invite)  # type: ignore[abstract]
            m.state = state
            m.intervals = {"E": 0.5, "G": 0.5, "A": 0.5, "retransmit": 0.5}
            message = build_response(invite, 200, to_tag="x")
            m._event(ev, 1.0, message)  # no exception; absent pairs do nothing
            if (state, ev) not in table:
                assert m.state is state


def test_matching() -> None:
    invite = req()
    ack = req("ACK")
    cancel = req("CANCEL", cseq_method="CANCEL")
    assert tx.server_key(ack) == tx.server_key(invite)
    assert tx.server_key(cancel) != tx.server_key(invite)
    assert tx.cancel_target(cancel) == tx.server_key(invite)
    other_host = parse_message(wire.request("INVITE").replace(b"203.0.113.7:5060;", b"10.0.0.1;"))
    assert isinstance(other_host, Request)
    assert tx.server_key(other_host) != tx.server_key(invite)
    old = req(branch="1234")  # RFC 2543 peer: matched on the §17.2.3 fields
    assert tx.server_key(old) == tx.server_key(req(branch="1234"))
    assert tx.server_key(old)[0] == "2543"
