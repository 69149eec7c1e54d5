"""RFC 4475's torture messages through the parser, a UserAgent and a running edge.

Each message (``tests/sip/fixtures/rfc4475/*.dat``, byte for byte from the RFC's
archive; its README says how they were obtained) goes to :func:`parse_message` with the
UA's limits and, for requests, to a UserAgent as a UAS that knows none of the users
and registers nobody: what the RFC says an element does with it is in ``CASES``. A
valid message parses and is answered as any request of its method (an unknown method
501, REGISTER 405, an INVITE starts a call); an invalid one gets the response the RFC
names, or, where that response could not be built (no From, a CSeq past 2**31 to echo),
is dropped and counted as bad input. Never a traceback: ``internal_errors`` stays 0 and
whatever the UA sends parses. Where the RFC allows either a rejection or being liberal,
the note says which the edge does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import pytest

from telephony_edge.sip.message import Request, Response
from telephony_edge.sip.parse import ParseError, parse_message
from telephony_edge.sip.provider import SIP_ENDPOINT
from telephony_edge.sip.transaction import server_key
from telephony_edge.sip.ua import UserAgent
from telephony_edge.sip.ua_records import Action, BadMessage, StartCall, UaConfig
from telephony_edge.sip.uri import SipUri
from tests.conftest import Edge
from tests.sip import wire
from tests.sip.test_ua import codes, make_ua, of, response, sent
from tests.sip.test_udp_edge import Socket, open_socket, sdp, start_call

FIXTURES = Path(__file__).parent / "fixtures" / "rfc4475"
LIMITS = UaConfig().limits
SOURCE = ("192.0.2.77", 5060)


@dataclass(frozen=True)
class Case:
    section: str
    codes: tuple[int, ...] = ()  # what the UA answers, in order; () for nothing
    parses: bool = True  # False: ParseError (answerable when ``codes``)
    call: bool = False  # a StartCall (an INVITE the app would answer)
    response: bool = False  # a response: parsed, then dropped (no transaction)


CASES: dict[str, Case] = {
    # 3.1.1 valid messages: parse, and a UAS answers them as any request
    "wsinv": Case("3.1.1.1", (481,)),  # a To tag for no dialog of ours
    "intmeth": Case("3.1.1.2", (501,)),  # "Endpoints will generate a 501 … Allow"
    "esc01": Case("3.1.1.3", (100,), call=True),
    "escnull": Case("3.1.1.4", (405,)),  # REGISTER: not a registrar
    "esc02": Case("3.1.1.5", (501,)),  # RE%47IST%45R is not REGISTER
    "lwsdisp": Case("3.1.1.6", (200,)),
    "longreq": Case("3.1.1.7", (100,), call=True),
    "dblreq": Case("3.1.1.8", (405,)),  # the REGISTER; the INVITE after it is discarded
    "semiuri": Case("3.1.1.9", (200,)),
    "transports": Case("3.1.1.10", (200,)),
    "mpart01": Case("3.1.1.11", (405,)),  # MESSAGE
    "unreason": Case("3.1.1.12", response=True),
    "noreason": Case("3.1.1.13", response=True),
    # 3.1.2 invalid messages
    "badinv01": Case("3.1.2.1", (400,), parses=False),
    "clerr": Case("3.1.2.2", (400,), parses=False),
    "ncl": Case("3.1.2.3", (400,), parses=False),
    # RFC: 400. The 400 would echo a CSeq past 2**31, itself invalid: dropped, counted
    "scalar02": Case("3.1.2.4", parses=False),
    "scalarlg": Case("3.1.2.5", parses=False),  # a response: discarded
    # RFC: 400, or infer the quote. A 400 would echo the broken To: dropped, counted
    "quotbal": Case("3.1.2.6", parses=False),
    "ltgtruri": Case("3.1.2.7", (400,), parses=False),
    "lwsruri": Case("3.1.2.8", (400,), parses=False),
    "lwsstart": Case("3.1.2.9", (400,), parses=False),  # "acceptable to reject"
    "trws": Case("3.1.2.10", (400,), parses=False),  # "acceptable to reject"
    # "could choose to be liberal … ignore the escaped headers": it does
    "escruri": Case("3.1.2.11", (100,), call=True),
    "baddate": Case("3.1.2.12", (100,), call=True),  # liberal: Date is not read
    "regbadct": Case("3.1.2.13", (405,)),  # "not required to detect the error"
    "badaspec": Case("3.1.2.14", (200,)),  # liberal: the spaces are ignored
    # as archived, no empty line ends the header: 400 (see test_baddn_*)
    "baddn": Case("3.1.2.15", (400,), parses=False),
    "badvers": Case("3.1.2.16", (505,), parses=False),
    "mismatch01": Case("3.1.2.17", (400,), parses=False),
    "mismatch02": Case("3.1.2.18", (400,), parses=False),  # "A 400 … is also acceptable"
    "bigcode": Case("3.1.2.19", parses=False),  # a response: discarded
    # 3.2 transaction layer
    "badbranch": Case("3.2.1", (200,)),  # falls back to RFC 2543 matching
    # 3.3 application layer
    "insuf": Case("3.3.1", parses=False),  # no From/To/Call-ID to answer with: dropped
    "unkscm": Case("3.3.2", (416,), parses=False),
    "novelsc": Case("3.3.3", (416,), parses=False),
    "unksm2": Case("3.3.4", (405,)),  # REGISTER; a registrar would 400 the isbn: To
    "bext01": Case("3.3.5", (420,)),
    "invut": Case("3.3.6", (100, 415)),
    "regaut01": Case("3.3.7", (405,)),  # a registrar would 401
    "multi01": Case("3.3.8", (400,), parses=False),
    "mcl01": Case("3.3.9", (400,), parses=False),
    "bcast": Case("3.3.10", response=True),  # no transaction: nothing goes anywhere
    "zeromf": Case("3.3.11", (200,)),  # an endpoint answers Max-Forwards: 0
    "cparam01": Case("3.3.12", (405,)),
    "cparam02": Case("3.3.13", (405,)),
    "regescrt": Case("3.3.14", (405,)),
    # RFC: "could respond with a 406" (no SDP answer may be sent); the edge takes the
    # call and answers with SDP, as it would for a caller whose Accept it ignores
    "sdp01": Case("3.3.15", (100,), call=True),
    # 3.4 backward compatibility
    "inv2543": Case("3.4.1", (100,), call=True),
}


def load(name: str) -> bytes:
    return (FIXTURES / f"{name}.dat").read_bytes()


def feed(data: bytes, ua: UserAgent | None = None, now: float = 0.0) -> list[Action]:
    ua = ua or make_ua()
    actions = ua.receive(data, SOURCE, now)
    assert ua.stats.internal_errors == 0, ua.last_error
    for s in sent(actions):
        parse_message(s.data)  # whatever the UA sends is well formed
    return actions


def test_every_archived_message_has_a_case() -> None:
    assert sorted(p.stem for p in FIXTURES.glob("*.dat")) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_parser_and_ua(name: str) -> None:
    case = CASES[name]
    data = load(name)
    try:
        message = parse_message(data, LIMITS)
    except ParseError as err:
        assert not case.parses, f"RFC 4475 §{case.section}: {err.reason}"
        assert err.status == (case.codes[-1] if case.codes else err.status)
        assert err.answerable == bool(case.codes)
    else:
        assert case.parses, f"RFC 4475 §{case.section} is refused, but parsed"
        assert isinstance(message, Response) == case.response

    ua = make_ua()
    before = (ua.stats.dropped, ua.stats.responses)
    actions = feed(data, ua)
    assert codes(actions) == list(case.codes)
    assert all(s.dest[0] == SOURCE[0] for s in sent(actions))  # answers go to the source
    assert bool(of(actions, StartCall)) == case.call
    if case.response:
        assert ua.stats.responses == before[1] + 1 and not sent(actions)
    elif not case.codes:  # dropped: counted as bad input, with its reason
        assert ua.stats.dropped == before[0] + 1
        assert isinstance(ua.last_bad, BadMessage) and ua.last_bad.status is None


def test_wsinv_lws_folding_and_leading_zeros() -> None:
    """§3.1.1.1: LWS around the Via's slashes, folded lines, 0068 and 0009."""
    req = parse_message(load("wsinv"), LIMITS)
    assert isinstance(req, Request)
    vias = req.vias()
    assert [(v.transport, v.host, v.branch) for v in vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert req.to().uri == "sip:vivekg@chair-dnrc.example.com"
    assert req.to().tag == "1918181833n" and req.from_().tag == "98asjd8"
    assert req.cseq().seq == 9 and req.cseq().method == "INVITE"
    assert req.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    contact = req.headers.get("Contact")
    assert contact is not None and contact.startswith('"Quoted string \\"\\"" <sip:jdrosen')
    assert len(req.body) == 150


def test_intmeth_characters_and_the_501_lists_allow() -> None:
    """§3.1.1.2: quoted NUL/BEL/DEL in To, ?;: in the userinfo; endpoints 501 with Allow."""
    req = parse_message(load("intmeth"), LIMITS)
    assert isinstance(req, Request)
    assert req.method == "!interesting-Method0123456789_*+`.%indeed'~"
    uri = SipUri.parse(req.uri)
    assert uri.host == "example.com"
    assert uri.user == (
        "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    )
    assert "\x00" in req.to().display and req.to().uri.endswith("crazy?,/;;*@example.com")
    (answer,) = sent(feed(load("intmeth")))
    resp = response(answer.data)
    assert resp.status == 501 and "INVITE" in (resp.headers.get_all("Allow") or [])
    assert resp.to().display == req.to().display  # echoed, NUL and all


def test_dblreq_only_the_first_request_is_taken() -> None:
    """§3.1.1.8: the INVITE past the REGISTER's Content-Length: 0 is discarded (§18.3)."""
    req = parse_message(load("dblreq"), LIMITS)
    assert isinstance(req, Request) and req.method == "REGISTER" and req.body == b""
    ua = make_ua()
    assert codes(feed(load("dblreq"), ua)) == [405] and not ua.calls()


def test_badbranch_requests_are_not_taken_for_retransmissions() -> None:
    """§3.2.1: branch=z9hG4bK names no transaction; two requests that carry it are two
    (RFC 2543 matching), and a resend of one is still absorbed."""
    ua = make_ua()
    first = load("badbranch")
    second = first.replace(b"CSeq: 8 OPTIONS", b"CSeq: 9 OPTIONS")
    ok1 = sent(feed(first, ua))
    ok2 = sent(feed(second, ua, 0.1))
    assert [response(s.data).cseq().seq for s in ok1 + ok2] == [8, 9]
    assert [s.data for s in sent(feed(second, ua, 0.2))] == [ok2[0].data]
    assert ua.stats.retransmissions_absorbed == 1


def test_bext01_unsupported_lists_require_not_proxy_require() -> None:
    (answer,) = sent(feed(load("bext01")))
    resp = response(answer.data)
    assert resp.status == 420
    assert resp.headers.get_all("Unsupported") == [
        "nothingSupportsThis",
        "nothingSupportsThisEither",
    ]


def test_invut_415_says_what_is_accepted() -> None:
    actions = feed(load("invut"))
    final = response(sent(actions)[-1].data)
    assert final.status == 415 and final.headers.get("Accept") == "application/sdp"


def test_multi01_400_echoes_one_of_each() -> None:
    """§3.3.8: From, To, Call-ID and CSeq twice: 400 (the edge took the call before)."""
    (answer,) = sent(feed(load("multi01")))
    resp = response(answer.data)
    assert resp.status == 400
    assert resp.call_id() == "multi01.98asdh@192.0.2.1" and resp.cseq().seq == 5
    assert len(resp.headers.raw("To")) == 1 and len(resp.headers.raw("From")) == 1


def test_baddn_with_its_empty_line_is_taken_liberally() -> None:
    """§3.1.2.15 allows inferring the quotes of ``Bell, Alexander``: with the empty
    line the archived file lacks, the edge does (From/To are never forwarded)."""
    req = parse_message(load("baddn") + b"\r\n", LIMITS)
    assert isinstance(req, Request) and req.from_().display == "Bell, Alexander"
    assert codes(feed(load("baddn") + b"\r\n")) == [200]


def test_the_ua_goes_on_after_all_of_them() -> None:
    """Every message through one UA, then a genuine call is answered and hung up."""
    ua = make_ua()
    for i, name in enumerate(sorted(CASES)):
        feed(load(name), ua, i * 0.01)
    for ref in list(ua.calls()):
        ua.hangup(ref, 1.0)
    invite = wire.request("INVITE", body=wire.TWILIO_SDP, call_id="genuine@203.0.113.7")
    actions = feed(invite, ua, 2.0)
    (call,) = of(actions, StartCall)
    ref = call.call  # type: ignore[attr-defined]
    assert codes(ua.answer(ref, 40000, 2.1)) == [200]
    ack = wire.request("ACK", to_tag=ref, branch="z9hG4bKack", call_id="genuine@203.0.113.7")
    feed(ack, ua, 2.2)
    bye = wire.request(
        "BYE", to_tag=ref, branch="z9hG4bKbye", cseq=2, call_id="genuine@203.0.113.7"
    )
    assert codes(feed(bye, ua, 3.0)) == [200]
    assert ua.stats.internal_errors == 0


# -- a running edge, over real UDP -------------------------------------------------


async def bind_5060() -> Socket:
    """A socket at port 5060 of a loopback address of its own: the archived Vias name
    no port and ask no rport, so the edge answers at the source's address, port 5060
    (RFC 3261 §18.2.2)."""
    loop = asyncio.get_running_loop()
    for last in range(200, 254):
        with contextlib.suppress(OSError):
            _, sock = await loop.create_datagram_endpoint(
                Socket, local_addr=(f"127.0.0.{last}", 5060)
            )
            return sock
    pytest.fail("no loopback address 127.0.0.200-253 with port 5060 free: the test needs one")


async def test_a_running_edge_answers_each_and_then_a_call(
    sip_edge: Edge, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint = sip_edge.app[SIP_ENDPOINT]
    assert endpoint.ua is not None
    sock = await bind_5060()
    answered: dict[str, list[int]] = {}
    with caplog.at_level(logging.WARNING):
        for name in sorted(CASES):
            sock.send(load(name), ("127.0.0.1", endpoint.port))
            await asyncio.sleep(0.01)
        await asyncio.sleep(1.0)
        for data, _, _ in sock.log:
            resp = parse_message(data)
            assert isinstance(resp, Response)
            answered.setdefault(resp.call_id(), []).append(resp.status)
        rtp = await open_socket()
        caller, ok = await start_call(sip_edge, sdp(rtp.port))
        assert ok.status == 200
        caller.send(caller.request("ACK", cseq=caller.cseq))
        caller.send(caller.request("BYE"))
        assert (await caller.response("BYE")).status == 200
    rtp.close()
    caller.sip.close()
    sock.close()
    assert endpoint.ua.stats.internal_errors == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    seen: set[object] = set()
    for name in sorted(CASES):
        case = CASES[name]
        with contextlib.suppress(ParseError):
            req = parse_message(load(name))
            key = server_key(req) if isinstance(req, Request) else None
            if key in seen:  # cparam02, regescrt: cparam01's branch, sent-by and method
                continue  # (a retransmission of it, answered as such)
            seen.add(key)
        if case.response or case.call or not case.codes or name == "invut":
            continue  # invut: an INVITE from an address of no trunk is refused first (403)
        call_id = next(
            line.split(b":", 1)[1].strip().decode()
            for line in load(name).split(b"\r\n")
            if line.lower().startswith((b"call-id:", b"i:"))
        )
        assert answered.get(call_id, [])[-1:] == [case.codes[-1]], name
