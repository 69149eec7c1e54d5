"""The parser and serialiser on real trunk messages and on what must be refused."""

from __future__ import annotations

import pytest

from telephony_edge.sip.header_values import CSeq, NameAddr, Via
from telephony_edge.sip.message import Request, Response, build_response
from telephony_edge.sip.parse import Limits, ParseError, parse_message
from telephony_edge.sip.ua import UserAgent
from telephony_edge.sip.ua_records import StartCall
from telephony_edge.sip.uri import SipUri
from tests.sip import wire


def parse_request(data: bytes) -> Request:
    msg = parse_message(data)
    assert isinstance(msg, Request)
    return msg


def test_twilio_invite() -> None:
    req = parse_request(wire.twilio_invite())
    assert req.method == "INVITE"
    assert SipUri.parse(req.uri).user == "+14155550100"
    assert req.headers.get("x-twilio-callsid") == "CA0123456789abcdef0123456789abcdef"
    via = req.top_via()
    assert via.transport == "UDP" and via.host == "54.172.60.1" and via.port == 5060
    assert via.branch is not None and via.branch.startswith("z9hG4bK")
    assert req.from_().tag == "93750583_6772d868_4f9c9a2e"
    assert req.to().tag is None
    assert req.cseq() == CSeq(1, "INVITE")
    assert req.headers.get_all("Allow")[:3] == ["INVITE", "ACK", "CANCEL"]
    assert req.body.startswith(b"v=0\r\n")
    assert parse_request(req.to_bytes()).to_bytes() == req.to_bytes()  # round trip


def test_asterisk_invite_with_record_route() -> None:
    req = parse_request(wire.asterisk_invite())
    assert req.headers.get_all("Record-Route") == [
        "<sip:10.0.0.2;lr;r2=on;ftag=as5a6f7b8c>",
        "<sip:192.0.2.2;lr;r2=on;ftag=as5a6f7b8c>",
    ]
    assert [v.host for v in req.vias()] == ["10.0.0.2", "10.0.0.9"]
    assert req.from_().display == '"Alice"'
    assert req.vias()[1].params["rport"] == "5060"


def test_compact_forms_and_case() -> None:
    data = (
        b"OPTIONS sip:edge@127.0.0.1 SIP/2.0\r\n"
        b"v: SIP/2.0/UDP 10.1.1.1:5070;branch=z9hG4bKc1\r\n"
        b"f: <sip:a@10.1.1.1>;tag=1\r\n"
        b"t: <sip:edge@127.0.0.1>\r\n"
        b"i: compact-1\r\n"
        b"cSeQ: 7 OPTIONS\r\n"
        b"m: <sip:a@10.1.1.1:5070>\r\n"
        b"k: timer, replaces\r\n"
        b"s: hello\r\n"
        b"l: 0\r\n\r\n"
    )
    req = parse_request(data)
    assert req.call_id() == "compact-1"
    assert req.headers.get_all("Supported") == ["timer", "replaces"]
    assert req.headers.get("Subject") == "hello"
    assert req.headers.get("CONTACT") == "<sip:a@10.1.1.1:5070>"
    assert b"Call-ID: compact-1\r\n" in req.to_bytes()


def test_folded_headers_and_multiple_values() -> None:
    data = (
        b"OPTIONS sip:edge@127.0.0.1 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 10.1.1.1:5070;branch=z9hG4bKf1,\r\n"
        b"  SIP/2.0/TCP 10.2.2.2;branch=z9hG4bKf2\r\n"
        b"Via: SIP/2.0/UDP 10.3.3.3;branch=z9hG4bKf3\r\n"
        b"From: <sip:a@10.1.1.1>\r\n\t;tag=1\r\n"
        b'To: "x, y" <sip:edge@127.0.0.1>\r\n'
        b"Call-ID: fold-1\r\n"
        b"CSeq: 1 OPTIONS\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    req = parse_request(data)
    assert [v.host for v in req.vias()] == ["10.1.1.1", "10.2.2.2", "10.3.3.3"]
    assert req.from_().tag == "1"
    assert req.to().display == '"x, y"'


def test_response_parses() -> None:
    data = (
        b"SIP/2.0 200 OK\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx\r\n"
        b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: r\r\nCSeq: 2 BYE\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    resp = parse_message(data)
    assert isinstance(resp, Response) and resp.status == 200 and resp.cseq().method == "BYE"


def test_wrong_content_length_is_answerable_400() -> None:
    data = wire.request("OPTIONS").replace(b"Content-Length: 0", b"Content-Length: 10")
    with pytest.raises(ParseError) as info:
        parse_message(data)
    assert info.value.status == 400 and info.value.answerable


def test_bytes_past_the_body_are_discarded() -> None:
    """RFC 3261 §18.3: a datagram's bytes past Content-Length are discarded
    (RFC 4475 ``dblreq``); CRLF/NUL padding is the common case."""
    req = parse_request(wire.request("OPTIONS") + b"\r\n\r\n")
    assert req.body == b""
    req = parse_request(wire.request("INVITE", body=wire.TWILIO_SDP) + b"a=extra\r\n")
    assert req.body == wire.TWILIO_SDP.encode()


def test_sip_3_is_505() -> None:
    data = wire.request("OPTIONS").replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1)
    with pytest.raises(ParseError) as info:
        parse_message(data)
    assert info.value.status == 505 and info.value.answerable


def test_unknown_uri_scheme_is_416() -> None:
    data = wire.request("OPTIONS", uri="http://example.com/")
    with pytest.raises(ParseError) as info:
        parse_message(data)
    assert info.value.status == 416


@pytest.mark.parametrize(
    "data",
    [
        b"x" * 70_000,
        wire.request("OPTIONS", extra="X-Big: " + "a" * 9000),
        wire.request("OPTIONS", extra="\r\n".join(f"X-{i}: {i}" for i in range(120))),
        b"\x00\x01\x02garbage",
        b"SIP/2.0 999 Nope\r\n\r\n",
        wire.request("ACK").replace(b"Content-Length: 0", b"Content-Length: 5"),  # never answered
        b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 0\r\n\r\n",  # nothing to answer with
    ],
)
def test_dropped(data: bytes) -> None:
    with pytest.raises(ParseError) as info:
        parse_message(data)
    assert not info.value.answerable


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 INVITE"),  # method mismatch
        lambda d: d.replace(b"Max-Forwards: 70", b"Max-Forwards: seventy"),
        lambda d: d.replace(b"Contact:", b"Bad Header Name:"),
        lambda d: d.replace(b"Content-Length: 0", b"Content-Length: 0\r\nContent-Length: 3"),
    ],
)
def test_answerable_400(mutate: object) -> None:
    assert callable(mutate)
    with pytest.raises(ParseError) as info:
        parse_message(mutate(wire.request("OPTIONS")))
    assert info.value.status == 400 and info.value.answerable


def test_limits_are_configurable() -> None:
    with pytest.raises(ParseError):
        parse_message(wire.twilio_invite(), Limits(max_headers=5))
    with pytest.raises(ParseError):
        parse_message(wire.twilio_invite(), Limits(max_message_bytes=200))


def test_build_response_copies_per_8_2_6() -> None:
    req = parse_request(wire.asterisk_invite())
    resp = build_response(req, 180, None, [("Contact", "<sip:edge@127.0.0.1>")], to_tag="abc")
    raw = resp.to_bytes()
    again = parse_message(raw)
    assert isinstance(again, Response)
    assert raw.startswith(b"SIP/2.0 180 Ringing\r\n")
    assert [v.host for v in again.vias()] == ["10.0.0.2", "10.0.0.9"]
    assert again.to().tag == "abc"
    assert again.from_().tag == "as5a6f7b8c"
    assert again.call_id() == req.call_id() and again.cseq() == req.cseq()
    assert again.headers.get_all("Record-Route") == req.headers.get_all("Record-Route")
    trying = build_response(req, 100, to_tag="abc")
    assert parse_message(trying.to_bytes()).to().tag is None  # no tag on 100
    tagged = parse_request(wire.request("BYE", to_tag="mine"))
    assert build_response(tagged, 200, to_tag="other").to().tag == "mine"  # kept


def test_structured_values() -> None:
    via = Via.parse("SIP/2.0/udp [2001:db8::1]:5080;branch=z9hG4bKa;rport;received=1.2.3.4")
    assert via.transport == "UDP" and via.host == "[2001:db8::1]" and via.port == 5080
    assert via.params == {"branch": "z9hG4bKa", "rport": "", "received": "1.2.3.4"}
    assert str(via) == "SIP/2.0/UDP [2001:db8::1]:5080;branch=z9hG4bKa;rport;received=1.2.3.4"
    na = NameAddr.parse("sip:bob@example.com;tag=9")
    assert na.uri == "sip:bob@example.com" and na.tag == "9"
    uri = SipUri.parse("sips:+1555@pbx.example.com:5061;transport=tls;lr?X=1")
    assert (uri.user, uri.host, uri.port) == ("+1555", "pbx.example.com", 5061)
    assert uri.params["lr"] == ""
    assert str(uri) == "sips:+1555@pbx.example.com:5061;transport=tls;lr?X=1"
    assert str(SipUri.parse("tel:+15551234;phone-context=x")) == "tel:+15551234;phone-context=x"
    for bad in ("SIP/2.0/UDP", "SIP/2.0/UDP host:99999", "HTTP/1.1/TCP a"):
        with pytest.raises(ValueError):
            Via.parse(bad)


def test_quoted_display_name_may_hold_angle_brackets() -> None:
    """RFC 3261 §25.1: a quoted-string is qdtext, '<' included (issue 19: it got 400)."""
    quoted = '"Smith, J <ext 5>" <sip:+15551230000@203.0.113.7>;tag=ft1'
    na = NameAddr.parse(quoted)
    assert (na.display, na.uri, na.tag) == (
        '"Smith, J <ext 5>"',
        "sip:+15551230000@203.0.113.7",
        "ft1",
    )
    data = wire.request("INVITE", body=wire.TWILIO_SDP).replace(
        b"From: <sip:+15551230000@203.0.113.7>;tag=ft1", b"From: " + quoted.encode()
    )
    ua = UserAgent()
    actions = ua.receive(data, wire.PEER, 0.0)
    assert [a for a in actions if isinstance(a, StartCall)]
    with pytest.raises(ValueError):  # an unterminated quote still is not (RFC 4475 quotbal)
        NameAddr.parse('"Mr. J. User <sip:j.user@example.com>')
