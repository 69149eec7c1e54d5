"""Property-based: mutated and random packets → a 400-ish answer or a drop, never an exception."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telephony_edge.sip.parse import ParseError, parse_message
from telephony_edge.sip.ua import UserAgent
from telephony_edge.sip.ua_records import CallEnded, Send, StartCall
from tests.sip import dialog_fuzz, mutate, wire

FAST = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_sends(ua: UserAgent, actions: list[object]) -> None:
    assert ua.stats.internal_errors == 0
    for a in actions:
        if isinstance(a, Send):
            parse_message(a.data)  # whatever the UA sends is well formed


@FAST
@given(st.binary(max_size=3000))
def test_random_bytes(data: bytes) -> None:
    ua = UserAgent()
    actions = ua.receive(data, wire.PEER, 0.0)
    check_sends(ua, actions)
    with contextlib.suppress(ParseError):
        parse_message(data)


@FAST
@given(st.integers(0, 2**32), st.integers(1, 4))
def test_mutated_packets(seed: int, count: int) -> None:
    rng = random.Random(seed)
    data = rng.choice(mutate.CORPUS)
    for _ in range(count):
        data = rng.choice(mutate.MUTATIONS)(rng, data)
    ua = UserAgent()
    before = ua.stats.dropped
    actions = ua.receive(data, wire.PEER, 0.0)
    check_sends(ua, actions)
    try:
        parse_message(data)
    except ParseError as err:
        if err.answerable:
            assert [wire.status(a.data) for a in actions if isinstance(a, Send)] == [err.status]
        else:
            assert actions == []
            assert ua.stats.dropped + ua.stats.keepalives == before + 1


@FAST
@given(st.lists(st.integers(0, 2**32), min_size=1, max_size=30))
def test_sequences_through_one_ua(seeds: list[int]) -> None:
    """A stream of packets (valid ones included) and ticks through one UA."""
    ua = UserAgent()
    now = 0.0
    for seed in seeds:
        rng = random.Random(seed)
        check_sends(ua, ua.receive(mutate.packet(rng), wire.PEER, now))
        for ref in list(ua.calls()):
            if rng.random() < 0.5:
                check_sends(ua, ua.answer(ref, 40000, now))
            elif rng.random() < 0.2:
                check_sends(ua, ua.hangup(ref, now))
        now += rng.choice([0.01, 0.5, 5.0, 40.0])
        check_sends(ua, ua.tick(now))


@FAST
@given(st.text(max_size=200), st.sampled_from(["Via", "From", "To", "CSeq", "Call-ID", "v"]))
def test_header_values(value: str, name: str) -> None:
    lines = wire.request("OPTIONS").split(b"\r\n")
    idx = next(i for i, ln in enumerate(lines) if ln.lower().startswith(name.lower().encode()))
    lines[idx] = name.encode() + b": " + value.encode("utf-8", "surrogatepass")
    ua = UserAgent()
    check_sends(ua, ua.receive(b"\r\n".join(lines), wire.PEER, 0.0))


@pytest.mark.parametrize("seed", [1, 2])
def test_mutations_inside_established_dialogs(seed: int) -> None:
    """``bench/sip_fuzz.py --in-dialog`` for 300 packets: BYE, re-INVITE, UPDATE, INFO,
    PRACK, NOTIFY, REFER, OPTIONS and ACK with an established dialog's Call-ID and
    tags, mostly mutated. Never an internal error, every answer well formed, the
    witness call answers its INFOs and its BYE, and a genuine call still completes."""
    ua = UserAgent()
    r = dialog_fuzz.run(300, seed, ua)
    assert r.internal_errors == 0 and r.bad_output == 0
    assert r.witness_lost == 0 and r.witness_info_ok == 30 and r.witness_bye == 200
    assert r.left == 0
    assert set(r.by_method) == set(dialog_fuzz.METHODS)
    assert r.answered and r.dropped and r.targets > 1  # answered, refused, and ended some

    invite = wire.request("INVITE", body=wire.TWILIO_SDP, call_id="after-the-fuzz")
    (call,) = [a for a in ua.receive(invite, wire.PEER, 1e6) if isinstance(a, StartCall)]
    ref = call.call
    ok = [a for a in ua.answer(ref, 40000, 1e6) if isinstance(a, Send)]
    assert [wire.status(s.data) for s in ok] == [200]
    ua.receive(wire.request("ACK", to_tag=ref, call_id="after-the-fuzz"), wire.PEER, 1e6)
    bye = wire.request("BYE", to_tag=ref, call_id="after-the-fuzz", branch="z9hG4bKb2", cseq=2)
    actions = ua.receive(bye, wire.PEER, 1e6 + 1)
    assert [wire.status(a.data) for a in actions if isinstance(a, Send)] == [200]
    assert CallEnded(ref, "remote_bye") in actions
    assert ua.stats.internal_errors == 0
