"""Mutations inside established dialogs: shared by tests/sip/test_fuzz.py and
``bench/sip_fuzz.py --in-dialog``.

:func:`run` drives one sans-I/O UserAgent: it sets up a witness call and a target
call (INVITE, the app's 200, ACK), then sends the target's in-dialog requests (BYE,
re-INVITE, UPDATE, INFO, PRACK, NOTIFY, REFER, OPTIONS, ACK with its Call-ID, tags
and a CSeq that moves on), most with one to three of ``mutate.py``'s mutations, while
the clock runs and timers fire. When a request ends the target (a BYE that survived
its mutations, a re-INVITE's 2xx never ACKed …) a new target is set up. Every few
packets the witness gets a genuine INFO, which must be answered 200; at the end its
BYE must be answered 200 and end it ``remote_bye``. The UA must never raise, and
whatever it sends must parse.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from telephony_edge.sip.parse import ParseError, parse_message
from telephony_edge.sip.ua import UserAgent
from telephony_edge.sip.ua_records import Action, CallEnded, Phase, Send, StartCall
from tests.sip import mutate, wire

PEER = wire.PEER
METHODS = ("BYE", "INVITE", "UPDATE", "INFO", "PRACK", "NOTIFY", "REFER", "OPTIONS", "ACK")


@dataclass
class Dialog:
    """The caller's side of one call: what its in-dialog requests carry."""

    call_id: str
    from_tag: str
    to_tag: str = ""  # the edge's (its call ref)
    cseq: int = 1


@dataclass
class Result:
    packets: int = 0
    answered: int = 0  # a response went back
    dropped: int = 0  # refused unanswered, counted
    taken: int = 0  # no response and no drop (an ACK, a retransmission absorbed)
    targets: int = 0  # target dialogs set up (a mutation may end one)
    witness_info_ok: int = 0
    witness_lost: int = 0  # must be 0
    witness_bye: int | None = None  # must be 200
    internal_errors: int = 0  # must be 0
    bad_output: int = 0  # must be 0
    left: int = 0  # calls and transactions once every timer ran out; must be 0
    by_method: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (
            not self.internal_errors
            and not self.bad_output
            and not self.witness_lost
            and self.witness_bye == 200
            and not self.left
        )


def request(d: Dialog, method: str, branch: str) -> bytes:
    """A valid in-dialog request of ``d`` (the CSeq moves on, but for an ACK)."""
    if method != "ACK":
        d.cseq += 1
    lines = [
        f"{method} sip:{d.to_tag}@127.0.0.1:5060 SIP/2.0",
        f"Via: SIP/2.0/UDP 203.0.113.7:5060;branch={branch};rport",
        "Max-Forwards: 70",
        f"From: <sip:+15551230000@203.0.113.7>;tag={d.from_tag}",
        f"To: <sip:abc123@127.0.0.1>;tag={d.to_tag}",
        f"Call-ID: {d.call_id}",
        f"CSeq: {d.cseq} {method}",
        "Contact: <sip:+15551230000@203.0.113.7:5060>",
    ]
    body = ""
    if method in ("INVITE", "UPDATE"):
        lines.append("Content-Type: application/sdp")
        body = wire.SIPP_SDP
    elif method == "INFO":
        lines.append("Content-Type: application/dtmf-relay")
        body = "Signal=5\r\nDuration=160\r\n"
    elif method == "PRACK":
        lines.append("RAck: 1 1 INVITE")
    elif method == "NOTIFY":
        lines += ["Event: refer", "Subscription-State: terminated;reason=noresource"]
        lines.append("Content-Type: message/sipfrag;version=2.0")
        body = "SIP/2.0 200 OK\r\n"
    elif method == "REFER":
        lines += ["Refer-To: <sip:+15557654321@203.0.113.7>", "Referred-By: <sip:a@b>"]
    return wire.with_length("\r\n".join(lines), body)


def packet(rng: random.Random, d: Dialog) -> tuple[str, bytes]:
    """One of ``d``'s requests: 15 % as it is, else with one to three mutations."""
    method = rng.choice(METHODS)
    data = request(d, method, f"z9hG4bKfz{rng.getrandbits(40):x}")
    if rng.random() >= 0.15:
        for _ in range(rng.randint(1, 3)):
            data = rng.choice(mutate.MUTATIONS)(rng, data)
    return method, data


class _Run:
    def __init__(self, ua: UserAgent, result: Result) -> None:
        self.ua = ua
        self.result = result
        self.now = 0.0
        self.serial = 0

    def check(self, actions: list[Action]) -> list[Action]:
        for a in actions:
            if isinstance(a, Send):
                try:
                    parse_message(a.data)
                except ParseError:
                    self.result.bad_output += 1
        return actions

    def receive(self, data: bytes) -> list[Action]:
        return self.check(self.ua.receive(data, PEER, self.now))

    def establish(self, name: str) -> Dialog:
        self.serial += 1
        d = Dialog(f"{name}-{self.serial}@203.0.113.7", f"{name}{self.serial}")
        invite = wire.request(
            "INVITE",
            branch=f"z9hG4bK{name}{self.serial}",
            call_id=d.call_id,
            from_tag=d.from_tag,
            body=wire.SIPP_SDP,
        )
        starts = [a for a in self.receive(invite) if isinstance(a, StartCall)]
        assert len(starts) == 1, f"the {name} call did not start"
        d.to_tag = starts[0].call
        self.check(self.ua.answer(d.to_tag, 40000, self.now))
        self.receive(request(d, "ACK", f"z9hG4bK{name}ack{self.serial}"))
        call = self.ua.calls().get(d.to_tag)
        assert call is not None and call.phase is Phase.CONFIRMED
        return d

    def alive(self, d: Dialog) -> bool:
        call = self.ua.calls().get(d.to_tag)
        return call is not None and call.phase is not Phase.ENDED

    def advance(self, rng: random.Random) -> None:
        self.now += rng.choice([0.001, 0.01, 0.1, 0.5])
        deadline = self.ua.next_deadline()
        if deadline is not None and deadline <= self.now:
            self.check(self.ua.tick(self.now))


def run(packets: int, seed: int, ua: UserAgent | None = None) -> Result:
    """``packets`` in-dialog requests, mostly mutated; see the module docstring."""
    rng = random.Random(seed)
    result = Result()
    r = _Run(ua or UserAgent(), result)
    s = r.ua.stats
    witness = r.establish("witness")
    target = r.establish("target")
    result.targets = 1
    for i in range(packets):
        method, data = packet(rng, target)
        result.by_method[method] = result.by_method.get(method, 0) + 1
        dropped = s.dropped
        actions = r.receive(data)
        if any(isinstance(a, Send) and a.data.startswith(b"SIP/2.0 ") for a in actions):
            result.answered += 1
        elif s.dropped > dropped:
            result.dropped += 1
        else:
            result.taken += 1
        for ref, call in r.ua.calls().items():  # calls a mutation started: refused
            if ref not in (witness.to_tag, target.to_tag) and call.phase is Phase.PENDING:
                r.check(r.ua.reject(ref, 486, r.now))
        if i % 10 == 9:
            info = request(witness, "INFO", f"z9hG4bKwinfo{i}")
            if [wire.status(a.data) for a in r.receive(info) if isinstance(a, Send)] == [200]:
                result.witness_info_ok += 1
        if not r.alive(witness):
            result.witness_lost += 1
            witness = r.establish("witness")
        if not r.alive(target):
            target = r.establish("target")
            result.targets += 1
        r.advance(rng)
    result.packets = packets

    bye = r.receive(request(witness, "BYE", "z9hG4bKwbye"))
    codes = [wire.status(a.data) for a in bye if isinstance(a, Send)]
    ended = [a for a in bye if isinstance(a, CallEnded) and a.call == witness.to_tag]
    if codes == [200] and [e.reason for e in ended] == ["remote_bye"]:
        result.witness_bye = 200
    else:
        result.witness_bye = codes[0] if codes else 0
    for ref in list(r.ua.calls()):
        r.check(r.ua.hangup(ref, r.now))
    for _ in range(200):  # let every timer run out: nothing may be left behind
        deadline = r.ua.next_deadline()
        if deadline is None:
            break
        r.now = max(r.now, deadline)
        r.check(r.ua.tick(r.now))
    result.left = len(r.ua.calls()) + len(r.ua._machines)
    result.internal_errors = s.internal_errors
    return result
