"""Who may call (Admission, sans-I/O): call ids, trunks by CIDR and digest, drop, rate."""

from __future__ import annotations

import ipaddress

from telephony_edge.sip.auth import digest_response, parse_auth_params
from telephony_edge.sip.message import Request
from telephony_edge.sip.parse import parse_message
from telephony_edge.sip.trunks import Admission, Decision, Trunk
from tests.sip import wire

NUMBERS = {"+15555550200", "+15555550201"}


def dialled(user: str) -> str | None:
    number = "+" + user.lstrip("+")
    return number if number in NUMBERS else None


def admission(**kw: object) -> Admission:
    trunks = [
        Trunk("pbx", (ipaddress.ip_network("10.0.0.0/24"),), frozenset({"+15555550200"})),
        Trunk(
            "carrier",
            (ipaddress.ip_network("54.172.60.0/30"),),
            username="edge",
            password="s3cret",
            realm="edge.example",
        ),
    ]
    return Admission(trunks, dialled, **kw)  # type: ignore[arg-type]


def invite(user: str, extra: str = "") -> Request:
    msg = parse_message(wire.request("INVITE", uri=f"sip:{user}@edge.example", extra=extra))
    assert isinstance(msg, Request)
    return msg


def test_call_ids_from_anywhere_numbers_only_from_their_trunks() -> None:
    gate = admission()
    assert gate.check(invite("call_abc"), ("198.51.100.9", 5060), 0.0).decision is Decision.ADMIT
    ok = gate.check(invite("+15555550200"), ("10.0.0.7", 5060), 0.0)
    assert ok.decision is Decision.ADMIT and ok.trunk is not None and ok.trunk.name == "pbx"
    assert ok.number == "+15555550200"
    # the PBX may not call the other number; a stranger may call neither; unknown users
    for user, source in [
        ("+15555550201", "10.0.0.7"),
        ("+15555550200", "198.51.100.9"),
        ("+19999999999", "10.0.0.7"),
        ("admin", "10.0.0.7"),
    ]:
        assert gate.check(invite(user), (source, 5060), 0.0).decision is Decision.REFUSE
    assert (
        admission(drop_unknown=True).check(invite("admin"), ("198.51.100.9", 5060), 0.0).decision
        is Decision.DROP
    )


def test_digest_trunk_challenged_then_admitted_then_refused_with_a_bad_password() -> None:
    gate = admission()
    source = ("54.172.60.1", 5060)
    first = gate.check(invite("15555550201"), source, 0.0)
    assert first.decision is Decision.CHALLENGE and len(first.headers) == 2
    params = parse_auth_params(first.headers[1][1])[1]
    assert params["algorithm"] == "MD5" and params["realm"] == "edge.example"
    uri = "sip:15555550201@edge.example"

    def header(password: str) -> str:
        response = digest_response(
            "MD5", "edge", "edge.example", password, "INVITE", uri, params["nonce"]
        )
        return (
            f'Authorization: Digest username="edge", realm="edge.example", '
            f'nonce="{params["nonce"]}", uri="{uri}", response="{response}"'
        )

    ok = gate.check(invite("15555550201", header("s3cret")), source, 1.0)
    assert ok.decision is Decision.ADMIT and ok.number == "+15555550201"
    bad = gate.check(invite("15555550201", header("guess")), source, 1.0)
    assert bad.decision is Decision.REFUSE
    stale = gate.check(invite("15555550201", header("s3cret")), source, 1000.0)
    assert stale.decision is Decision.CHALLENGE and "stale=true" in stale.headers[0][1]


def test_a_source_of_refused_invites_is_cut_off_and_admitted_calls_are_never_limited() -> None:
    gate = admission(rate_per_minute=60.0, burst=3)
    stranger = ("198.51.100.9", 5060)
    # a busy PBX using registered call ids: not slowed down
    calls = [gate.check(invite("call_x"), stranger, 0.0).decision for _ in range(50)]
    assert calls == [Decision.ADMIT] * 50
    scans = [gate.check(invite("admin"), stranger, 0.0).decision for _ in range(5)]
    assert scans == [Decision.REFUSE] * 3 + [Decision.DROP] * 2
    # cut off: even a call id is dropped until a token is back (1/s)
    assert gate.check(invite("call_x"), stranger, 0.5).decision is Decision.DROP
    assert gate.check(invite("call_x"), stranger, 1.01).decision is Decision.ADMIT
    assert gate.check(invite("admin"), ("198.51.100.10", 5060), 0.0).decision is Decision.REFUSE
    # the shell's 404s for unknown call ids count as refusals
    other = "198.51.100.11"
    assert [gate.penalize(other, 0.0) for _ in range(4)] == [False, False, False, True]
    assert gate.check(invite("call_y"), (other, 5060), 0.1).decision is Decision.DROP
    # a trunk is never cut off
    pbx = [gate.check(invite("+15555550201"), ("10.0.0.7", 5060), 0.0) for _ in range(50)]
    assert all(v.decision is Decision.REFUSE for v in pbx)
