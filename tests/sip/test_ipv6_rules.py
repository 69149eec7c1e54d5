"""IPv6 in the SIP core, sans-I/O: RFC 5118's torture messages, brackets (RFC 3261 §25.1),
Via ``received`` (§18.2.1), SDP ``IN IP6`` both ways, the UA's choice of family per call,
the dial plan, the resolver's families (a real DNS server on 127.0.0.1), the settings."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from telephony_edge.sip.dialog import Dialog
from telephony_edge.sip.dialplan import NoRoute, plan_call
from telephony_edge.sip.family import family_of, socket_host
from telephony_edge.sip.header_values import Via
from telephony_edge.sip.message import Request, Response
from telephony_edge.sip.nat import behind_nat, is_private, response_dest, stamp_via
from telephony_edge.sip.parse import ParseError, parse_message
from telephony_edge.sip.resolve import HostsFile, SipResolver, Unresolvable, target_of
from telephony_edge.sip.sdp import (
    LocalSession,
    MediaConfig,
    NoCommonCodec,
    accept_answer,
    negotiate,
    parse_sdp,
)
from telephony_edge.sip.settings import SipSettings
from telephony_edge.sip.sources import source_key
from telephony_edge.sip.ua import UserAgent
from telephony_edge.sip.ua_records import Action, Send, StartCall, UaConfig
from telephony_edge.sip.uri import SipUri, format_hostport
from tests.sip.dns_server import start_dns
from tests.sip.wire import with_length

HOST4, HOST6 = "198.51.100.10", "2001:db8::10"
DUAL = MediaConfig(address=HOST4, address6=HOST6, preferences=("PCMU", "PCMA"))
CALLER6 = ("2001:db8::20", 5062)
CALLER4 = ("203.0.113.7", 5060)


# -- RFC 5118: SIP torture test messages for IPv6 ------------------------------------------

HEAD = (
    "To: sip:user@example.com\r\nFrom: sip:user@example.com;tag=81x2\r\n"
    "Call-ID: SSG9559905523997077@hlau_4100\r\nMax-Forwards: 70\r\n"
)


def torture(first: str, via: str, cseq: str, contact: str = "sip:caller@[2001:db8::1]") -> bytes:
    head = f"{first}\r\n{HEAD}Via: {via}\r\nContact: <{contact}>\r\nCSeq: {cseq}"
    return with_length(head)


def test_rfc_5118_ipv6_references_are_read() -> None:
    good = parse_message(  # §4.1: Request-URI, Via and Contact with IPv6 references
        torture(
            "REGISTER sip:[2001:db8::10] SIP/2.0",
            "SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3-111",
            "98176 REGISTER",
        )
    )
    assert isinstance(good, Request)
    assert SipUri.parse(good.uri).host == "[2001:db8::10]" and SipUri.parse(good.uri).port is None
    assert good.top_via().host == "[2001:db8::9:1]" and good.top_via().port is None
    assert Dialog.from_invite(good, "t", "<sip:e>", 1).destination() == ("2001:db8::1", 5060)
    # §4.3: the last group is part of the address, no port; §4.4: a port after the bracket
    assert SipUri.parse("sip:[2001:db8::10:5070]").host == "[2001:db8::10:5070]"
    assert SipUri.parse("sip:[2001:db8::10:5070]").port is None
    assert SipUri.parse("sip:[2001:db8::10]:5070").port == 5070
    # §4.5: received with and without brackets is taken (and never trusted: stamp_via)
    for received in ("[2001:db8::9:255]", "2001:db8::9:255"):
        via = Via.parse(f"SIP/2.0/UDP [2001:db8::9:1];received={received};branch=z9hG4bKas3")
        assert via.params["received"] == received
    # §4.7: IPv6 and IPv4 Vias in one message; §4.9: IPv4-mapped addresses are IPv4
    vias = (
        "SIP/2.0/UDP [2001:db8::9:1]:6050;branch=z9hG4bKas3-111, "
        "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKjhja8781hjuaij65144, "
        "SIP/2.0/TCP [2001:db8::9:255];branch=z9hG4bK451jj;received=192.0.2.200"
    )
    mixed = parse_message(torture("BYE sip:user@host.example.net SIP/2.0", vias, "89187 BYE"))
    assert [v.host for v in mixed.vias()] == ["[2001:db8::9:1]", "192.0.2.1", "[2001:db8::9:255]"]
    assert family_of("[::ffff:192.0.2.2]") == 4 and socket_host("[::ffff:192.0.2.2]") == "192.0.2.2"
    # §4.10: RFC 4291's two colons before an embedded IPv4 address, not three
    assert SipUri.parse("sip:user@[2001:db8::192.0.2.1]").host == "[2001:db8::192.0.2.1]"


@pytest.mark.parametrize(
    "uri",
    [
        "sip:2001:db8::10",  # §4.2: no brackets around the Request-URI's address
        "sip:user@[2001:db8:::192.0.2.1]",  # §4.10: three colons is no IPv6 address
        "sip:user@[2001:db8::10",  # unclosed
        "sip:user@[example.com]",  # a name is no IPv6reference
    ],
)
def test_rfc_5118_bad_ipv6_references_are_answered_400(uri: str) -> None:
    via = "SIP/2.0/UDP [2001:db8::9:1];rport;branch=z9hG4bKx"
    data = torture(f"OPTIONS {uri} SIP/2.0", via, "1 OPTIONS")
    with pytest.raises(ParseError) as caught:
        parse_message(data)
    assert caught.value.status == 400 and caught.value.answerable
    ua = UserAgent(UaConfig(host=HOST4, host6=HOST6))
    [answer] = sent(ua.receive(data, CALLER6, 0.0))
    response = parse(answer.data)
    assert isinstance(response, Response) and response.status == 400
    assert answer.dest == CALLER6  # rport: the source
    assert str(response.headers.get("Warning")).startswith(f"399 [{HOST6}] ")  # our IPv6 name


# -- brackets and Via received -----------------------------------------------------------------


def test_an_ipv6_address_is_written_in_brackets_wherever_the_edge_writes_one() -> None:
    assert format_hostport("2001:db8::7", 5060) == "[2001:db8::7]:5060"
    assert format_hostport("[2001:db8::7]", None) == "[2001:db8::7]"
    assert format_hostport("198.51.100.1", 5060) == "198.51.100.1:5060"
    assert str(SipUri("sip", "+15550100", "2001:db8::7")) == "sip:+15550100@[2001:db8::7]"
    assert str(Via("UDP", "::1", 5070, {"branch": "z9hG4bKa"})) == (
        "SIP/2.0/UDP [::1]:5070;branch=z9hG4bKa"
    )
    config = UaConfig(host=HOST4, host6=HOST6, port=5080, tls_port=5081)
    assert config.contact("UDP", False, 6) == f"<sip:[{HOST6}]:5080;transport=udp>"
    assert config.contact("TLS", True, 6) == f"<sips:[{HOST6}]:5081>"
    assert config.contact("UDP", False, 4) == f"<sip:{HOST4}:5080;transport=udp>"
    assert UaConfig(host="::1").sent_by_for("UDP", 4) == "[::1]:5060"  # IPv6-only: one host


def via_request(via: str) -> Request:
    req = parse_message(torture("OPTIONS sip:edge@[::1] SIP/2.0", via, "1 OPTIONS"))
    assert isinstance(req, Request)
    return req


def test_via_received_is_the_bare_ipv6_source_and_responses_go_back_to_it() -> None:
    req = via_request("SIP/2.0/UDP [2001:db8::5]:5070;branch=z9hG4bKa;rport")
    stamp_via(req, ("2001:db8::99", 40000))  # NAT: not the Via's address or port
    via = req.top_via()
    assert via.params["received"] == "2001:db8::99" and via.params["rport"] == "40000"
    assert "received=2001:db8::99" in str(req.headers.get("Via"))  # no brackets (§4.5)
    assert response_dest(via, ("2001:db8::99", 40000), "UDP") == ("2001:db8::99", 40000)
    assert behind_nat(req, ("2001:db8::99", 40000))
    # no rport: the source address at the Via's port (§18.2.2); the zone is ours, left out
    req = via_request("SIP/2.0/UDP [fe80::5]:5070;branch=z9hG4bKb")
    stamp_via(req, ("fe80::6%lo", 5070))
    assert req.top_via().params["received"] == "fe80::6"
    assert response_dest(req.top_via(), ("fe80::6%lo", 5070), "UDP") == ("fe80::6%lo", 5070)
    # the Via names the source itself, written otherwise: not received, not NAT
    req = via_request("SIP/2.0/UDP [2001:DB8:0::5]:5070;branch=z9hG4bKc")
    stamp_via(req, ("2001:db8::5", 5070))
    assert "received" not in req.top_via().params and not behind_nat(req, ("2001:db8::5", 5070))


def test_private_ipv6_and_per_prefix_sources() -> None:
    for private in ("fd00::5", "[fe80::1]", "fe80::1%eth0", "::ffff:10.0.0.1"):
        assert is_private(private), private
    for public in ("::1", "2001:db8::5", "[2606:4700::1111]"):
        assert not is_private(public), public
    assert (
        source_key("2001:db8:1:2::1")
        == source_key("[2001:db8:1:2:ffff::9]")
        == ("2001:db8:1:2::/64")
    )
    assert source_key("::ffff:192.0.2.7") == "192.0.2.7"


# -- SDP IN IP6 ---------------------------------------------------------------------------------


def offer(address: str, addrtype: str = "IP6", rtcp: str = "") -> bytes:
    return (
        f"v=0\r\no=caller 1 1 IN {addrtype} {address}\r\ns=-\r\nc=IN {addrtype} {address}\r\n"
        f"t=0 0\r\nm=audio 40000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n{rtcp}"
    ).encode()


def test_an_ipv6_offer_is_answered_in_ipv6_and_an_ipv4_one_in_ipv4() -> None:
    six = parse_sdp(offer("2001:db8::20", rtcp="a=rtcp:40009 IN IP6 2001:db8::21\r\n"))
    chosen = negotiate(six, DUAL)
    assert (chosen.remote_address, chosen.rtcp) == ("2001:db8::20", ("2001:db8::21", 40009))
    answer = parse_sdp(LocalSession(DUAL.for_family(6), 30000, "7").answer(six, chosen))
    assert (answer.origin.addrtype, answer.origin.address) == ("IP6", HOST6)
    assert answer.connection == HOST6
    four = parse_sdp(offer("203.0.113.7", "IP4"))
    answer = parse_sdp(
        LocalSession(DUAL.for_family(4), 30000, "7").answer(four, negotiate(four, DUAL))
    )
    assert (answer.origin.addrtype, answer.connection) == ("IP4", HOST4)
    assert b"c=IN IP4 198.51.100.10\r\n" in LocalSession(DUAL.for_family(4), 1, "1").offer()
    assert b"c=IN IP6 2001:db8::10\r\n" in LocalSession(DUAL.for_family(6), 1, "1").offer()


def test_a_stream_in_a_family_the_edge_has_no_address_in_is_refused() -> None:
    with pytest.raises(NoCommonCodec, match="IPv6"):
        negotiate(parse_sdp(offer("2001:db8::20")), MediaConfig(address=HOST4))
    with pytest.raises(NoCommonCodec, match="IPv4"):
        negotiate(parse_sdp(offer("203.0.113.7", "IP4")), MediaConfig(address="::1"))
    # RFC 5118 §4.8: one stream in each family; the first one the edge has is taken
    both = offer("2001:db8::20") + b"m=audio 40002 RTP/AVP 0\r\nc=IN IP4 203.0.113.7\r\n"
    assert negotiate(parse_sdp(both), MediaConfig(address=HOST4)).media_index == 1
    # the answer to our IPv4 offer may not move the audio to IPv6 (the call's socket is IPv4)
    with pytest.raises(NoCommonCodec, match="IPv6"):
        accept_answer(parse_sdp(offer("2001:db8::20")), DUAL.for_family(4))
    # §4.9: an IPv4-mapped address is IPv4; "::" is the IPv6 form of the old hold
    mapped = negotiate(parse_sdp(offer("::ffff:203.0.113.7")), MediaConfig(address=HOST4))
    assert mapped.remote_address == "::ffff:203.0.113.7"
    assert negotiate(parse_sdp(offer("::")), DUAL).direction == "recvonly"


# -- the UA: each call in its family --------------------------------------------------------------


def sent(actions: list[Action]) -> list[Send]:
    return [a for a in actions if isinstance(a, Send)]


def parse(data: bytes) -> Any:
    return parse_message(data)


def invite(host: str, sdp: bytes, branch: str = "z9hG4bKi1", cseq: int = 1) -> bytes:
    where = format_hostport(host, 5062)
    head = (
        f"INVITE sip:call@[{HOST6}] SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {where};branch={branch};rport\r\n"
        f"From: <sip:caller@{where}>;tag=c1\r\nTo: <sip:call@[{HOST6}]>\r\n"
        f"Call-ID: v6-{host}\r\nCSeq: {cseq} INVITE\r\nContact: <sip:caller@{where}>\r\n"
        "Max-Forwards: 70\r\nContent-Type: application/sdp"
    )
    return with_length(head, sdp.decode())


def dual_ua() -> UserAgent:
    ids = itertools.count(1)
    config = UaConfig(host=HOST4, host6=HOST6, port=5080, media=DUAL)
    return UserAgent(config, new_id=lambda: f"id{next(ids)}")


def test_the_ua_answers_an_ipv6_caller_in_ipv6_and_an_ipv4_one_in_ipv4() -> None:
    ua = dual_ua()
    six = [a for a in ua.receive(invite(CALLER6[0], offer("2001:db8::20")), CALLER6, 0.0)]
    [start6] = [a for a in six if isinstance(a, StartCall)]
    assert start6.family == 6
    [ok] = sent(ua.answer(start6.call, 30000, 0.1))
    response = parse(ok.data)
    assert ok.dest == CALLER6 and response.top_via().params["received"] == CALLER6[0]
    assert response.headers.get("Contact") == f"<sip:[{HOST6}]:5080;transport=udp>"
    assert parse_sdp(response.body).connection == HOST6
    ack = invite(CALLER6[0], b"").replace(b"INVITE", b"ACK").replace(b"z9hG4bKi1", b"z9hG4bKa")
    ack = ack.replace(
        b"To: <sip:call@[2001:db8::10]>", f"To: {response.headers.get('To')}".encode()
    )
    ua.receive(ack, CALLER6, 0.2)
    [bye] = sent(ua.hangup(start6.call, 1.0))
    request = parse(bye.data)
    assert request.method == "BYE" and bye.dest == CALLER6
    assert request.top_via().host == f"[{HOST6}]" and request.top_via().port == 5080

    four = ua.receive(invite(CALLER4[0], offer("203.0.113.7", "IP4")), CALLER4, 2.0)
    [start4] = [a for a in four if isinstance(a, StartCall)]
    assert start4.family == 4
    [ok] = sent(ua.answer(start4.call, 30002, 2.1))
    response = parse(ok.data)
    assert response.headers.get("Contact") == f"<sip:{HOST4}:5080;transport=udp>"
    assert parse_sdp(response.body).connection == HOST4


def test_media_family_follows_the_offer_not_the_signalling_and_stays() -> None:
    """An IPv4 offer over IPv6 signalling gets IPv4 media; without an offer, the edge
    offers in the signalling's family; a re-offer in the other family is refused 488."""
    ua = dual_ua()
    [start] = [
        a for a in ua.receive(invite(CALLER6[0], offer("203.0.113.7", "IP4")), CALLER6, 0.0)
        if isinstance(a, StartCall)
    ]  # fmt: skip
    assert start.family == 4
    delayed = invite(CALLER6[0], b"", branch="z9hG4bKi2").replace(b"v6-", b"v6-delayed-")
    [start] = [a for a in ua.receive(delayed, CALLER6, 0.0) if isinstance(a, StartCall)]
    assert start.family == 6
    [ok] = sent(ua.answer(start.call, 30000, 0.1))
    assert parse_sdp(parse(ok.data).body).connection == HOST6  # our offer, in IPv6
    ack = delayed.replace(b"INVITE sip", b"ACK sip").replace(b"INVITE\r\n", b"ACK\r\n")
    ack = ack.replace(b"z9hG4bKi2", b"z9hG4bKa2").replace(
        b"To: <sip:call@[2001:db8::10]>", f"To: {parse(ok.data).headers.get('To')}".encode()
    )
    ack = ack.split(b"\r\n\r\n")[0].replace(b"Content-Length: 0", b"") + b"\r\n"
    ua.receive(with_length(ack.decode().strip(), offer("2001:db8::20").decode()), CALLER6, 0.2)
    to = parse(ok.data).headers.get("To")
    reinvite = invite(CALLER6[0], offer("203.0.113.7", "IP4"), branch="z9hG4bKr", cseq=2)
    reinvite = reinvite.replace(b"v6-", b"v6-delayed-").replace(
        b"To: <sip:call@[2001:db8::10]>", f"To: {to}".encode()
    )
    answers = [parse(s.data) for s in sent(ua.receive(reinvite, CALLER6, 1.0))]
    assert [r.status for r in answers if isinstance(r, Response)][-1] == 488


def test_an_ipv6_only_edge_refuses_an_ipv4_offer_with_488() -> None:
    ua = UserAgent(UaConfig(host="::1", media=MediaConfig(address="::1")))
    answers = sent(ua.receive(invite("::2", offer("203.0.113.7", "IP4")), ("::2", 5062), 0.0))
    assert [parse(s.data).status for s in answers] == [100, 488]


# -- outbound: the dial plan and the resolver -----------------------------------------------------


def test_the_dial_plan_takes_the_family_of_an_address_and_refuses_one_the_edge_lacks() -> None:
    sip = SipSettings.model_validate({"enabled": True})
    plan, _ = plan_call(sip, "+15550100", "sip:agent@[2001:db8::7]:5090", HOST4, HOST6)
    assert plan.family == 6 and plan.from_uri == f"sip:+15550100@[{HOST6}]"
    plan, _ = plan_call(sip, "+15550100", "sip:agent@192.0.2.9", HOST4, HOST6)
    assert plan.family == 4 and plan.from_uri == f"sip:+15550100@{HOST4}"
    plan, _ = plan_call(sip, "+15550100", "sip:agent@pbx.example", "::1")
    assert plan.family == 6 and plan.from_uri == "sip:+15550100@[::1]"  # a name: ours
    with pytest.raises(NoRoute, match=r"IPv6 address and the edge has none .*bind_host6"):
        plan_call(sip, "+15550100", "sip:agent@[2001:db8::7]", HOST4)
    with pytest.raises(NoRoute, match="IPv4"):
        plan_call(sip, "+15550100", "sip:agent@192.0.2.9", "::1")


async def test_the_resolver_looks_up_the_edges_families_in_order(tmp_path: Path) -> None:
    zone = {
        ("pbx.test", "A"): ["127.0.0.7"],
        ("pbx.test", "AAAA"): ["2001:db8::7"],
        ("six.test", "AAAA"): ["2001:db8::6"],
    }
    server = await start_dns(zone)
    hosts = tmp_path / "hosts"
    hosts.write_text("::ffff:127.0.0.9 mapped.test\n")

    def resolver(*families: int) -> SipResolver:
        return SipResolver([server.address], 2.0, families, HostsFile(str(hosts)))  # type: ignore[arg-type]

    try:
        target = target_of("sip:pbx.test:5070", "UDP")
        assert await resolver(4).lookup_all(target) == [("127.0.0.7", 5070)]
        assert await resolver(6).lookup_all(target) == [("2001:db8::7", 5070)]
        assert await resolver(4, 6).lookup_all(target) == [
            ("127.0.0.7", 5070),
            ("2001:db8::7", 5070),
        ]
        assert await resolver(4, 6).lookup_all(target_of("sip:six.test", "UDP")) == [
            ("2001:db8::6", 5060)
        ]
        with pytest.raises(Unresolvable, match="no A record"):
            await resolver(4).lookup_all(target_of("sip:six.test", "UDP"))
        literal = target_of("sip:[2001:db8::9]:5062", "UDP")
        assert await resolver(6).lookup_all(literal) == [("2001:db8::9", 5062)]
        with pytest.raises(Unresolvable, match="no IPv6 socket"):
            await resolver(4).lookup_all(literal)
        mapped = target_of("sip:[::ffff:192.0.2.9]", "UDP")
        assert await resolver(4).lookup_all(mapped) == [("192.0.2.9", 5060)]
        assert await resolver(4).lookup_all(target_of("sip:mapped.test", "UDP")) == [
            ("127.0.0.9", 5060)
        ]
    finally:
        assert server.transport is not None
        server.transport.close()


# -- settings ------------------------------------------------------------------------------


def settings(**sip: Any) -> SipSettings:
    return SipSettings.model_validate({"enabled": True, **sip})


def test_settings_keep_each_address_in_its_family() -> None:
    dual = settings(bind_host="127.0.0.1", bind_host6="::1")
    assert dual.bind_hosts == {4: "127.0.0.1", 6: "::1"}
    assert (dual.public_host, dual.public_host6) == ("127.0.0.1", "::1")
    wild = settings(bind_host="::", advertised_host="2001:db8::10")
    assert wild.bind_hosts == {6: "::"} and wild.public_host == "2001:db8::10"
    assert wild.public_host6 is None
    for bad, why in (
        ({"bind_host": "::1", "bind_host6": "::1"}, "goes with an IPv4 bind_host"),
        ({"bind_host6": "127.0.0.2"}, "no IPv6 address"),
        ({"advertised_host": "2001:db8::10"}, "advertised_host6"),
        ({"bind_host": "::1", "advertised_host": "203.0.113.5"}, "not IPv6"),
        ({"bind_host": "::1", "advertised_host": "edge.example.com"}, "not IPv6"),
        ({"advertised_host6": "2001:db8::10"}, "goes with bind_host6"),
        ({"bind_host6": "::", "advertised_host6": "203.0.113.5"}, "no IPv6 address"),
    ):
        with pytest.raises(ValidationError, match=why):
            settings(**bad)


@pytest.mark.parametrize(
    ("sip", "problem"),
    [
        ({"bind_host": "::"}, "sip.advertised_host: required when sip.bind_host is a wildcard"),
        ({"bind_host6": "::"}, "sip.advertised_host6: required when sip.bind_host6 is a wildcard"),
        ({"bind_host": "::", "advertised_host": "fd00::5"}, "fd00::5 is a private address"),
        ({"bind_host6": "::", "advertised_host6": "fe80::1"}, "sip.advertised_host6: fe80::1"),
        ({"bind_host6": "fd12:3456::1"}, "sip.advertised_host6: fd12:3456::1 is a private"),
    ],
)
def test_a_private_or_missing_ipv6_advertised_address_is_a_start_up_problem(
    sip: dict[str, Any], problem: str
) -> None:
    problems = settings(**sip)._advertised_problems()
    assert any(problem in p for p in problems), problems
    deliberate = settings(**sip, private_advertised_host=True)._advertised_problems()
    assert ("wildcard" in problem) == bool(deliberate)


def test_loopback_is_advertised_in_either_family_as_tests_do() -> None:
    for sip in ({"bind_host": "::1"}, {"bind_host6": "::1"}, {"bind_host": "127.0.0.1"}):
        assert settings(**sip)._advertised_problems() == []
