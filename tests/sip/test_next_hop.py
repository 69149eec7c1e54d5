"""Host names in a call's route set or Contact, on real sockets (``make_edge``, uvloop):
the edge resolves them (RFC 3263) without holding anything else up, and a name that
does not resolve fails that call alone, its caller still released by the flow its
INVITE came from.

The callers are raw UDP on 127.0.0.1 (tests/sip/test_udp_edge.py); the names are
``localhost`` (the hosts file) or names of a DNS server of the test's own
(tests/sip/dns_server.py) that the edge is configured with.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from telephony_edge.sip.message import Request, Response
from telephony_edge.sip.parse import parse_message
from telephony_edge.sip.provider import SIP_ENDPOINT
from telephony_edge.sip.ua import UserAgent
from telephony_edge.sip.ua_records import Action, CallEnded, Send, StartCall, UaConfig
from tests.conftest import Edge, Receiver, wait_for
from tests.sip.conftest import finished, register, sip_test_settings, sipp
from tests.sip.dns_server import DnsServer, start_dns
from tests.sip.kamailio import start_proxy
from tests.sip.test_nat import answer, hangup_from_api
from tests.sip.test_udp_edge import Caller, open_socket, sdp
from tests.sip.wire import SIPP_SDP, request


def dns_failures() -> float:
    labels = {"kind": "dns"}
    return REGISTRY.get_sample_value("telephony_edge_sip_send_failures_total", labels) or 0.0


async def edge_with_dns(
    make_edge: Callable[..., Any], receiver: Receiver, server: DnsServer
) -> Edge:
    sip = {"dns_servers": [server.address], "dns_timeout_s": 3}
    edge: Edge = await make_edge(sip_test_settings(receiver, sip))
    return edge


async def routed_call(edge: Edge, route: str) -> tuple[Caller, str, Any]:
    """A confirmed call whose INVITE carried ``Record-Route: <route>`` (``{port}``: the
    caller's own SIP port); returns the caller, its call id and its RTP socket."""
    reg = await register(edge)
    rtp = await open_socket()
    caller = Caller(("127.0.0.1", edge.app[SIP_ENDPOINT].port), reg["call_id"], await open_socket())
    record_route = f"Record-Route: <{route.format(port=caller.sip.port)}>"
    caller.send(caller.request("INVITE", sdp(rtp.port), extra=(record_route,)))
    assert (await caller.response("INVITE")).status == 200
    caller.send(caller.request("ACK", cseq=caller.cseq))
    return caller, reg["call_id"], rtp


async def bye_reaches_the_caller(edge: Edge, caller: Caller, call_id: str) -> Request:
    await asyncio.sleep(0.2)
    await hangup_from_api(edge, call_id)
    bye = await caller.request_from_edge("BYE", within=5)
    caller.sip.send(answer(bye, 200), caller.edge)
    return bye


async def test_a_route_set_naming_localhost_gets_the_bye(
    sip_edge: Edge, receiver: Receiver
) -> None:
    caller, call_id, rtp = await routed_call(sip_edge, "sip:localhost:{port};lr")
    bye = await bye_reaches_the_caller(sip_edge, caller, call_id)
    assert bye.headers.get("Route") == f"<sip:localhost:{caller.sip.port};lr>"
    await wait_for(lambda: receiver.received, within=5)
    assert receiver.received[0]["call_status"] == "api-ended"
    rtp.close()
    caller.sip.close()


async def test_a_route_by_srv_record_gets_the_bye(
    make_edge: Callable[..., Any], receiver: Receiver
) -> None:
    server = await start_dns({})
    edge = await edge_with_dns(make_edge, receiver, server)
    caller, call_id, rtp = await routed_call(edge, "sip:carrier.test;lr")
    server.zone.update(
        {
            ("_sip._udp.carrier.test", "SRV"): [f"10 0 {caller.sip.port} sbc1.carrier.test."],
            ("sbc1.carrier.test", "A"): ["127.0.0.1"],
        }
    )
    await bye_reaches_the_caller(edge, caller, call_id)
    assert ("_sip._udp.carrier.test", "SRV") in server.queries
    await wait_for(lambda: receiver.received, within=5)
    rtp.close()
    caller.sip.close()
    server.close()


async def test_a_name_that_does_not_resolve_fails_its_call_only(
    make_edge: Callable[..., Any], receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """Call A's route names a host the DNS server says does not exist, 0.7 s after each
    question (NAPTR, SRV, A: 2.1 s). While A's BYE waits for the answers, call B's
    unacknowledged 200 is resent on
    Timer G's schedule (0.5 s, then 1 s …): nothing waits for DNS. Then A's BYE goes
    to where A's INVITE came from, A's record ends with its webhook, and the failure is
    a counted warning naming A."""
    server = await start_dns({}, delay=0.7)
    edge = await edge_with_dns(make_edge, receiver, server)
    a, a_id, a_rtp = await routed_call(edge, "sip:nowhere.test;lr")
    reg = await register(edge)
    b_rtp = await open_socket()
    b = Caller(a.edge, reg["call_id"], await open_socket())
    failures = dns_failures()
    loop = asyncio.get_running_loop()
    with caplog.at_level(logging.INFO):
        b.send(b.request("INVITE", sdp(b_rtp.port)))
        assert (await b.response("INVITE")).status == 200  # B: no ACK, so the 200 is resent
        hung_up = loop.time()
        await hangup_from_api(edge, a_id)
        bye = await a.request_from_edge("BYE", within=5)
        bye_at = loop.time()
        a.sip.send(answer(bye, 200), a.edge)
    assert 2.0 < bye_at - hung_up < 3.5  # after the three "no"s, not before
    resent = [
        t
        for data, _, t in b.sip.log
        if isinstance(m := parse_message(data), Response) and m.status == 200
    ]
    assert len(resent) >= 3, resent  # the 200 and two resends while A's lookup was pending
    gaps = [later - earlier for earlier, later in itertools.pairwise(resent)]
    assert 0.35 < gaps[0] < 0.75 and 0.8 < gaps[1] < 1.3, gaps
    await wait_for(lambda: receiver.received, within=5)
    assert receiver.received[0]["call_id"] == a_id
    assert dns_failures() == failures + 1
    warned = [r for r in caplog.records if "does not resolve" in r.getMessage()]
    assert [getattr(r, "call_id", None) for r in warned] == [a_id]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    b.send(b.request("ACK", cseq=b.cseq))
    b.send(b.request("BYE"))
    assert (await b.response("BYE")).status == 200
    for sock in (a.sip, b.sip, a_rtp, b_rtp):
        sock.close()
    server.close()


async def test_a_refresh_to_a_name_that_does_not_resolve_ends_the_live_call(
    make_edge: Callable[..., Any], receiver: Receiver
) -> None:
    """The edge refreshes the session (the caller asked ``refresher=uas``) through a
    route that names a host nobody resolves: that call ends, its BYE at the flow its
    INVITE came from, its record and webhook ``error`` with the reason."""
    server = await start_dns({})
    sip = {"dns_servers": [server.address], "dns_timeout_s": 3, "min_se_s": 1}
    edge: Edge = await make_edge(sip_test_settings(receiver, sip))
    reg = await register(edge)
    rtp = await open_socket()
    caller = Caller(("127.0.0.1", edge.app[SIP_ENDPOINT].port), reg["call_id"], await open_socket())
    extra = (
        "Record-Route: <sip:nowhere.test;lr>",
        "Supported: timer",
        "Session-Expires: 2;refresher=uas",
        "Allow: INVITE, ACK, BYE, CANCEL, UPDATE",
    )
    caller.send(caller.request("INVITE", sdp(rtp.port), extra=extra))
    assert (await caller.response("INVITE")).status == 200
    caller.send(caller.request("ACK", cseq=caller.cseq))
    bye = await caller.request_from_edge("BYE", within=5)  # about 1 s in: the refresh
    caller.sip.send(answer(bye, 200), caller.edge)
    await wait_for(lambda: receiver.received, within=5)
    payload = receiver.received[0]
    assert payload["call_status"] == "error"
    assert "does not resolve" in payload["error_message"]
    assert ("nowhere.test", "A") in server.queries
    rtp.close()
    caller.sip.close()
    server.close()


@pytest.mark.parametrize("name", ["localhost", "nowhere.test"])
async def test_kamailio_record_routing_by_name_relays_the_edges_bye(
    make_edge: Callable[..., Any],
    receiver: Receiver,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    name: str,
) -> None:
    """A real proxy (Kamailio) in front of the edge Record-Routes itself by name. With
    ``localhost`` the edge resolves it (hosts file) and its BYE goes through Kamailio to
    sipp. With a name nobody resolves, the BYE goes to the flow the INVITE came from,
    which is Kamailio too: it knows the name as its own alias, relays the BYE, and sipp
    is released all the same; the failure is a warning naming the call."""
    server = await start_dns({})  # knows no name at all
    edge = await edge_with_dns(make_edge, receiver, server)
    proxy = await start_proxy(tmp_path, edge.app[SIP_ENDPOINT].port, name)
    try:
        reg = await register(edge)
        rtp = await open_socket()
        with caplog.at_level(logging.INFO):
            process = await sipp(
                edge, "uac_routed_edge_bye.xml", reg["call_id"], tmp_path,
                "-set", "rtp_port", str(rtp.port), port=proxy.port,
            )  # fmt: skip
            endpoint = edge.app[SIP_ENDPOINT]
            await wait_for(lambda: endpoint.legs, within=5)
            await asyncio.sleep(0.3)  # its ACK, through Kamailio
            await hangup_from_api(edge, reg["call_id"])
            await finished(process, tmp_path)  # the BYE reached sipp through Kamailio
            await wait_for(lambda: receiver.received, within=5)
        assert receiver.received[0]["call_status"] == "api-ended"
        warned = [r for r in caplog.records if "does not resolve" in r.getMessage()]
        expected = [] if name == "localhost" else [reg["call_id"]]
        assert [getattr(r, "call_id", None) for r in warned] == expected
        rtp.close()
    finally:
        await proxy.stop()
        server.close()


# -- sans-I/O: the UA's side of it ------------------------------------------------------


def test_ua_sends_a_named_hop_for_resolution_and_ends_the_call_when_it_cannot_be() -> None:
    """A live call's INFO goes to ``proxy.invalid`` (a Send with the URI to resolve);
    told it does not resolve, the UA resends the INFO to the INVITE's source, sends its
    BYE there and ends the call ``unreachable``."""
    ua = UserAgent(UaConfig())
    source = ("203.0.113.7", 5060)
    route = "Record-Route: <sip:proxy.invalid;lr>"
    invite = request("INVITE", uri="sip:call_x@127.0.0.1", extra=route, body=SIPP_SDP)
    started = ua.receive(invite, source, 0.0)
    ref = next(a.call for a in started if isinstance(a, StartCall))
    ok = [a for a in ua.answer(ref, 30000, 0.1) if isinstance(a, Send)][-1]
    to_tag = parse_message(ok.data).to().tag
    ack = request("ACK", uri="sip:call_x@127.0.0.1", branch="z9hG4bKack", to_tag=to_tag)
    ua.receive(ack, source, 0.2)
    info = ua.send_request(ref, "INFO", 1.0)
    assert [(a.dest, a.uri, a.call) for a in info if isinstance(a, Send)] == [
        (("proxy.invalid", 5060), "sip:proxy.invalid;lr", ref)
    ]
    actions = ua.unreachable(ref, 2.0)
    sends = [parse_message(a.data) for a in actions if isinstance(a, Send)]
    assert [m.method for m in sends if isinstance(m, Request)] == ["INFO", "BYE"]
    assert {a.dest for a in actions if isinstance(a, Send)} == {source}
    assert [a.reason for a in actions if isinstance(a, CallEnded)] == ["unreachable"]
    assert ua.unreachable(ref, 2.1) == []  # once
    retransmitted = ua.tick(2.6)  # Timer E: the BYE again, still to the source
    assert {a.dest for a in retransmitted if isinstance(a, Send)} == {source}


def test_ua_unreachable_never_raises_into_the_send_path() -> None:
    """A bug past the redirect (here a BYE that cannot be built) is counted and kept for
    the shell's ERROR line; what was redirected so far is still sent."""

    class Broken(UserAgent):
        def _bye(self, call: Any, now: float, reason: str) -> list[Action]:
            raise RuntimeError("a bug")

    ua = Broken(UaConfig())
    source = ("203.0.113.7", 5060)
    route = "Record-Route: <sip:proxy.invalid;lr>"
    started = ua.receive(
        request("INVITE", uri="sip:call_x@127.0.0.1", extra=route, body=SIPP_SDP), source, 0.0
    )
    ref = next(a.call for a in started if isinstance(a, StartCall))
    ok = [a for a in ua.answer(ref, 30000, 0.1) if isinstance(a, Send)][-1]
    ack = request("ACK", branch="z9hG4bKack", to_tag=parse_message(ok.data).to().tag)
    ua.receive(ack, source, 0.2)
    ua.send_request(ref, "INFO", 1.0)
    actions = ua.unreachable(ref, 2.0)
    assert [a.dest for a in actions if isinstance(a, Send)] == [source]  # the INFO
    assert ua.stats.internal_errors == 1 and "a bug" in (ua.last_error or "")
