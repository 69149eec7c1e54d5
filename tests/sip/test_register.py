"""The registration machine on its own: responses and times in, REGISTERs out, no sockets."""

from __future__ import annotations

import itertools

import pytest

from telephony_edge.sip import register as reg
from telephony_edge.sip.auth import DigestServer, Outcome, binding
from telephony_edge.sip.client_outputs import Lookup, SendRequest
from telephony_edge.sip.digest_client import DigestClient
from telephony_edge.sip.message import Request, Response, build_response
from telephony_edge.sip.parse import parse_message
from telephony_edge.sip.transaction import DEFAULT_TIMERS

REGISTRAR = ("192.0.2.10", 5060)
CONTACT = "sip:reg-0a1b2c@203.0.113.5:5080;transport=udp"
ACCOUNT = reg.Account(
    name="pbx",
    registrar="sip:pbx.example",
    aor="sip:1001@pbx.example",
    contact=CONTACT,
    expires=120,
    retry_min=4.0,
    retry_max=30.0,
)
CONFIG = reg.RegisterConfig(sent_by="203.0.113.5:5080")


def machine(account: reg.Account = ACCOUNT, digest: DigestClient | None = None) -> reg.Registration:
    ids = itertools.count(1)
    return reg.Registration(account, CONFIG, digest, lambda: f"id{next(ids)}", lambda: 1.0)


def requests(out: list[reg.RegisterOutput]) -> list[Request]:
    found = []
    for item in out:
        if isinstance(item, SendRequest):
            assert item.dest == REGISTRAR
            msg = parse_message(item.data)
            assert isinstance(msg, Request)
            found.append(msg)
    return found


def statuses(out: list[reg.RegisterOutput]) -> list[reg.Status]:
    return [item for item in out if isinstance(item, reg.Status)]


def started(m: reg.Registration, now: float = 0.0) -> Request:
    assert m.start(now) == [Lookup("sip:pbx.example", "UDP")]
    [register] = requests(m.resolved([REGISTRAR], now))
    return register


def ok(register: Request, *contacts: str, expires: str | None = None) -> Response:
    headers = [("Contact", c) for c in contacts]
    if expires is not None:
        headers.append(("Expires", expires))
    return build_response(register, 200, None, headers, to_tag="reg1")


def test_register_with_digest_then_refresh_answers_ahead() -> None:
    server = DigestServer()
    m = machine(digest=DigestClient("1001", "s3cret"))
    first = started(m)
    assert first.uri == "sip:pbx.example" and first.method == "REGISTER"
    assert first.headers.get_all("Contact") == [f"<{CONTACT}>;expires=120"]
    assert first.headers.get("Expires") == "120" and first.headers.get("Authorization") is None
    bound = binding("203.0.113.5", first.call_id(), "REGISTER")
    challenge = build_response(first, 401, None, server.challenge("pbx", 0.0, bound=bound))
    [second] = requests(m.receive(challenge, 0.1))
    assert second.call_id() == first.call_id() and second.cseq().seq == first.cseq().seq + 1
    assert second.from_().tag == first.from_().tag
    header = second.headers.get("Authorization")
    assert (
        server.verify(header, "REGISTER", second.uri, "pbx", "1001", "s3cret", 0.2, bound=bound)
        is Outcome.OK
    )
    out = m.receive(ok(second, f"<{CONTACT}>;expires=60"), 0.3)
    assert statuses(out) == [reg.Status(reg.State.REGISTERED, "200 OK, 60 s", 60.3, None)]
    assert m.holds(60.0) and not m.holds(60.4)
    # refreshed at half the granted time (60 s is short), the digest answered ahead
    assert m.next_deadline() == pytest.approx(30.3)
    [third] = requests(m.tick(30.3))
    assert third.cseq().seq == second.cseq().seq + 1 and "nc=00000002" in (
        third.headers.get("Authorization") or ""
    )
    out = m.receive(ok(third, expires="3600"), 30.4)
    assert m.state is reg.State.REGISTERED and m.expires_at == pytest.approx(3630.4)
    assert m.refresh_at == pytest.approx(30.4 + 3600 - reg.REFRESH_MARGIN_S)


def test_423_asks_again_with_min_expires() -> None:
    m = machine()
    first = started(m)
    brief = build_response(first, 423, None, [("Min-Expires", "600")], to_tag="x")
    [second] = requests(m.receive(brief, 0.1))
    assert second.headers.get("Expires") == "600"
    assert second.headers.get("Contact") == f"<{CONTACT}>;expires=600"
    again = build_response(second, 423, None, [("Min-Expires", "600")], to_tag="x")
    out = m.receive(again, 0.2)  # no progress: a failure
    assert m.state is reg.State.BACKOFF and statuses(out)[0].reason.startswith("423")


def test_failures_back_off_doubling_to_the_cap() -> None:
    m = machine()
    register = started(m)
    out = m.receive(build_response(register, 403, None, [], to_tag="x"), 1.0)
    [status] = statuses(out)
    assert status == reg.Status(reg.State.BACKOFF, "403 Forbidden", None, 5.0)
    delays = []
    now = 5.0
    for _ in range(5):
        assert m.tick(now) == [Lookup("sip:pbx.example", "UDP")]
        out = m.unresolvable("NXDOMAIN", now)
        [status] = statuses(out)
        assert "does not resolve" in status.reason and status.retry_at is not None
        delays.append(status.retry_at - now)
        now = status.retry_at
    assert delays == [8.0, 16.0, 30.0, 30.0, 30.0]  # jitter 1.0: the whole delay


def test_silent_registrar_is_timer_f_and_the_binding_runs_out() -> None:
    m = machine()
    register = started(m)
    m.receive(ok(register, f"<{CONTACT}>;expires=120"), 0.0)
    assert m.refresh_at == pytest.approx(60.0)
    requests(m.tick(60.0))
    out = m.tick(60.0 + 64 * DEFAULT_TIMERS.t1)
    [status] = statuses(out)
    assert status.state is reg.State.BACKOFF and "Timer F" in status.reason
    assert status.expires_at == 120.0  # the binding still holds meanwhile
    out = m.tick(120.0)
    assert [s.expires_at for s in statuses(out)] == [None] and not m.holds(120.0)


def test_wrong_credentials_back_off() -> None:
    server = DigestServer()
    m = machine(digest=DigestClient("1001", "wrong"))
    first = started(m)
    bound = binding("203.0.113.5", first.call_id(), "REGISTER")
    challenge = server.challenge("pbx", 0.0, bound=bound)
    [second] = requests(m.receive(build_response(first, 401, None, challenge), 0.1))
    out = m.receive(build_response(second, 401, None, challenge), 0.2)
    [status] = statuses(out)
    assert status.state is reg.State.BACKOFF and "credentials were refused" in status.reason


def test_unregister_removes_the_binding() -> None:
    m = machine()
    register = started(m)
    m.receive(ok(register, f"<{CONTACT}>;expires=120"), 0.0)
    [remove] = requests(m.stop(10.0))
    assert remove.headers.get("Expires") == "0"
    assert remove.headers.get_all("Contact") == [f"<{CONTACT}>;expires=0"]
    out = m.receive(ok(remove), 10.1)
    assert statuses(out) == [reg.Status(reg.State.STOPPED, "stopped", None, None)]
    assert m.next_deadline() is None


def test_stop_without_unregister_or_binding_sends_nothing() -> None:
    m = machine()
    register = started(m)
    m.receive(ok(register, f"<{CONTACT}>;expires=120"), 0.0)
    out = m.stop(5.0, unregister=False)
    assert requests(out) == [] and m.state is reg.State.STOPPED and m.next_deadline() is None
    fresh = machine()
    fresh.start(0.0)
    assert requests(fresh.stop(0.1)) == [] and fresh.state is reg.State.STOPPED


def test_another_workers_binding_is_removed_once() -> None:
    m = machine()
    register = started(m)
    old = "sip:reg-0a1b2c@203.0.113.99:5080;transport=udp"
    other_user = "<sip:alice@198.51.100.1>;expires=50"
    m.receive(ok(register, f"<{CONTACT}>;expires=120", f"<{old}>;expires=80", other_user), 0.0)
    assert m.state is reg.State.REGISTERED and m.next_deadline() == 0.0
    [refresh] = requests(m.tick(0.0))
    assert refresh.headers.get_all("Contact") == [f"<{CONTACT}>;expires=120", f"<{old}>;expires=0"]
    # a registrar that lists it still is not asked again
    m.receive(ok(refresh, f"<{CONTACT}>;expires=120", f"<{old}>;expires=80"), 0.1)
    assert m.next_deadline() == pytest.approx(60.1)


def test_late_responses_are_ignored() -> None:
    m = machine()
    register = started(m)
    m.stop(0.5)  # nothing granted yet: stopped at once
    assert m.receive(ok(register, f"<{CONTACT}>;expires=120"), 0.6) == []
    assert m.state is reg.State.STOPPED
