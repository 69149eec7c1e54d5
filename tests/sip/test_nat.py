"""SIP behind NAT and against reflection, on real sockets (``make_edge``, uvloop).

The test is the caller (raw UDP on 127.0.0.1) that writes about itself what a
phone behind NAT writes (a private Via and Contact), or what an attacker writes
(a ``received`` of its choosing). The edge must answer, and send its own
in-dialog requests, to where the packets really came from.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from telephony_edge.sip.dialog import Dialog
from telephony_edge.sip.message import Request, Response
from telephony_edge.sip.nat import behind_nat, in_dialog_dest, is_private, response_dest, stamp_via
from telephony_edge.sip.parse import parse_message
from telephony_edge.sip.provider import SIP_ENDPOINT
from telephony_edge.sip.ua import UserAgent
from telephony_edge.sip.ua_records import Send, StartCall, UaConfig
from tests.conftest import Edge, Receiver, ServeProcess, free_port, wait_for
from tests.sip.conftest import (
    API_KEY,
    finished,
    register,
    sip_test_settings,
    sipp,
)
from tests.sip.test_serve_floods import edge_config, sipp_call
from tests.sip.test_udp_edge import Caller, Socket, open_socket, sdp
from tests.sip.wire import SIPP_SDP, request

PRIVATE = "192.168.1.20:5060"  # where the phone thinks it is


def nated(caller: Caller, data: bytes) -> bytes:
    """``data`` as a phone behind NAT writes it: its private address in Via and Contact."""
    here = f"127.0.0.1:{caller.sip.port}"
    return data.replace(f"UDP {here}".encode(), f"UDP {PRIVATE}".encode()).replace(
        f"caller@{here}".encode(), f"caller@{PRIVATE}".encode()
    )


def send_failures() -> float:
    labels = {"kind": "sip"}
    return REGISTRY.get_sample_value("telephony_edge_sip_send_failures_total", labels) or 0.0


async def hangup_from_api(edge: Edge, call_id: str) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            edge.url(f"/calls/{call_id}/hangup"),
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()


# -- on the wire ------------------------------------------------------------------------


async def test_nated_caller_gets_the_edges_bye_at_the_address_its_invite_came_from(
    sip_edge: Edge, receiver: Receiver
) -> None:
    reg = await register(sip_edge)
    endpoint = sip_edge.app[SIP_ENDPOINT]
    rtp = await open_socket()
    caller = Caller(("127.0.0.1", endpoint.port), reg["call_id"], await open_socket())
    caller.send(nated(caller, caller.request("INVITE", sdp(rtp.port))))
    ok = await caller.response("INVITE")  # responses: to the source (rport)
    assert ok.status == 200
    caller.send(nated(caller, caller.request("ACK", cseq=caller.cseq)))
    await asyncio.sleep(0.2)
    await hangup_from_api(sip_edge, reg["call_id"])
    bye = await caller.request_from_edge("BYE")  # not to 192.168.1.20
    assert bye.uri == f"sip:caller@{PRIVATE}"  # the Request-URI stays the Contact
    caller.sip.send(answer(bye, 200), caller.edge)
    await wait_for(lambda: receiver.received, within=5)
    assert receiver.received[0]["call_status"] == "api-ended"
    rtp.close()
    caller.sip.close()


async def test_a_nated_caller_whose_binding_moved_is_reached_where_its_refresh_came_from(
    sip_edge: Edge, receiver: Receiver
) -> None:
    """The caller's NAT gives it a new public port mid-call; its UPDATE comes from there,
    and the edge's BYE follows it (not the INVITE's old port, not the Contact)."""
    reg = await register(sip_edge)
    endpoint = sip_edge.app[SIP_ENDPOINT]
    rtp = await open_socket()
    caller = Caller(("127.0.0.1", endpoint.port), reg["call_id"], await open_socket())
    caller.send(nated(caller, caller.request("INVITE", sdp(rtp.port))))
    assert (await caller.response("INVITE")).status == 200
    caller.send(nated(caller, caller.request("ACK", cseq=caller.cseq)))
    moved = dataclasses.replace(caller, sip=await open_socket())  # the new binding
    moved.send(nated(moved, moved.request("UPDATE")))
    assert (await moved.response("UPDATE")).status == 200
    await hangup_from_api(sip_edge, reg["call_id"])
    bye = await moved.request_from_edge("BYE")
    moved.sip.send(answer(bye, 200), moved.edge)
    await wait_for(lambda: receiver.received, within=5)
    assert not [d for d, _, _ in caller.sip.log if d.startswith(b"BYE ")]
    for sock in (caller.sip, moved.sip, rtp):
        sock.close()


async def test_a_nated_caller_gets_keepalives_on_its_flow_and_a_direct_one_none(
    make_edge: Callable[..., Any], receiver: Receiver
) -> None:
    """``sip.nat_keepalive_s``: CRLF CRLF to the NATed caller's source while the call is
    up (its NAT binding stays open for the BYE); nothing to a caller that is not NATed,
    nothing after the end."""
    edge: Edge = await make_edge(sip_test_settings(receiver, {"nat_keepalive_s": 0.3}))
    endpoint = edge.app[SIP_ENDPOINT]
    rtp = await open_socket()
    callers = []
    for behind in (True, False):
        reg = await register(edge)
        caller = Caller(("127.0.0.1", endpoint.port), reg["call_id"], await open_socket())
        invite = caller.request("INVITE", sdp(rtp.port))
        caller.send(nated(caller, invite) if behind else invite)
        assert (await caller.response("INVITE")).status == 200
        ack = caller.request("ACK", cseq=caller.cseq)
        caller.send(nated(caller, ack) if behind else ack)
        callers.append(caller)
    await asyncio.sleep(1.0)
    for caller in callers:
        caller.send(caller.request("BYE"))
    ended = asyncio.get_running_loop().time()
    await wait_for(lambda: len(receiver.received) == 2, within=5)
    await asyncio.sleep(0.5)
    pings = [[t for d, _, t in c.sip.log if d == b"\r\n\r\n"] for c in callers]
    assert 2 <= len(pings[0]) <= 4 and all(t < ended for t in pings[0]), pings
    assert pings[1] == []
    for sock in (rtp, *(c.sip for c in callers)):
        sock.close()


async def test_sipp_behind_nat_gets_the_edges_bye(
    sip_edge: Edge, receiver: Receiver, tmp_path: Path
) -> None:
    """A real peer (sipp, sip/uac_nated_edge_bye.xml) whose Via and Contact say
    192.168.1.20:5060: answered at its source, hung up from the API, it receives the
    BYE (without the fix-up the BYE went to 192.168.1.20 and sipp timed out)."""
    reg = await register(sip_edge)
    rtp = await open_socket()
    process = await sipp(
        sip_edge, "uac_nated_edge_bye.xml", reg["call_id"], tmp_path, "-set", "rtp_port",
        str(rtp.port),
    )  # fmt: skip
    endpoint = sip_edge.app[SIP_ENDPOINT]
    await wait_for(lambda: endpoint.legs, within=5)
    await asyncio.sleep(0.3)  # its ACK
    await hangup_from_api(sip_edge, reg["call_id"])
    await finished(process, tmp_path)  # sipp got the BYE and answered it
    await wait_for(lambda: receiver.received, within=5)
    assert receiver.received[0]["call_status"] == "api-ended"
    rtp.close()


def answer(req: Request, status: int) -> bytes:
    """A UAC's plain answer to the edge's request (Via, From, To, Call-ID, CSeq copied)."""
    lines = [f"SIP/2.0 {status} OK"]
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        lines += [f"{name}: {value}" for value in req.headers.get_all(name)]
    return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()


async def bind(host: str, port: int = 0) -> Socket:
    loop = asyncio.get_running_loop()
    _, sock = await loop.create_datagram_endpoint(Socket, local_addr=(host, port))
    return sock


async def test_a_received_written_by_the_sender_is_not_trusted(sip_edge: Edge) -> None:
    """An attacker on 127.0.0.1 names a victim (127.0.0.2, same port) in its own Via's
    ``received``: the answers come back to the attacker, the victim gets nothing."""
    endpoint = sip_edge.app[SIP_ENDPOINT]
    victim = await bind("127.0.0.2")
    attacker = await bind("127.0.0.1", victim.port)
    edge = ("127.0.0.1", endpoint.port)
    for method in ("OPTIONS", "INVITE"):
        via = f";received=127.0.0.2;x={secrets.token_hex(2)}"
        data = request(method, uri=f"sip:call_{secrets.token_hex(8)}@127.0.0.1", via_params=via)
        data = data.replace(b"203.0.113.7:5060", f"127.0.0.1:{victim.port}".encode(), 1)
        data = data.replace(b"call-1@", f"{method}-{secrets.token_hex(4)}@".encode())
        attacker.send(data, edge)
        got, _, _ = await asyncio.wait_for(attacker.queue.get(), 3)
        response = parse_message(got)
        assert isinstance(response, Response) and response.cseq().method == method
        assert response.top_via().params.get("received") is None  # its own was dropped
    await asyncio.sleep(0.3)
    assert victim.log == []
    victim.close()
    attacker.close()


async def test_flood_of_invites_with_received_ipv6_is_answered_at_its_source_no_error_no_backlog(
    sip_edge: Edge, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 19's flood: 1000 INVITEs for call ids nobody registered, each Via claiming
    ``received=::1`` without ``rport``, from an IPv4 socket. Nothing fails to send
    (they are answered at their source), no ERROR line, nothing stays pending, and a
    genuine call placed during the flood and one after it are answered."""
    endpoint = sip_edge.app[SIP_ENDPOINT]
    ua = endpoint.ua
    assert ua is not None
    edge = ("127.0.0.1", endpoint.port)
    flooder = await bind("127.0.0.3")
    failures = send_failures()
    reg = await register(sip_edge)
    genuine = Caller(edge, reg["call_id"], await open_socket())
    rtp = await open_socket()
    with caplog.at_level(logging.INFO):
        for i in range(1000):
            flooder.send(spoofed_invite(i, flooder.port), edge)
            if i == 500:
                invite = genuine.request("INVITE", sdp(rtp.port))
                genuine.send(invite)
            if i % 50 == 0:
                await asyncio.sleep(0.005)
        assert (await final_answer(genuine, invite)).status == 200
        await wait_for(lambda: ua.pending_invites == 0, within=10)
        after = Caller(edge, (await register(sip_edge))["call_id"], await open_socket())
        after.send(after.request("INVITE", sdp(rtp.port)))
        assert (await after.response("INVITE", within=5)).status == 200
    answered = [parse_message(d) for d, _, _ in flooder.log]
    refused = [m for m in answered if isinstance(m, Response) and m.status == 404]
    # answered 404 at its source (not ::1) until the edge cut the source off (trunks.py)
    assert len(refused) >= 10
    assert send_failures() == failures
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    for caller in (genuine, after):
        caller.send(caller.request("ACK", cseq=caller.cseq))
        caller.send(caller.request("BYE"))
        assert (await caller.response("BYE")).status == 200
        caller.sip.close()
    flooder.close()
    rtp.close()


async def test_serve_answers_a_spoofed_via_invite_flood_at_its_source_and_a_call_in_200_ms(
    serve_process: Callable[[dict[str, Any]], ServeProcess], tmp_path: Path
) -> None:
    """The same flood against what ships (``serve``, uvloop, JSON logs): 1000 INVITEs
    from 127.0.0.3 at 1000/s, each Via saying ``received=::1`` without ``rport``. No
    datagram fails to send, no ERROR line or traceback, and a genuine INVITE during the
    flood gets its 200 within 200 ms, and sipp's call after it completes."""
    sip_port = free_port()
    edge = serve_process(edge_config(sip_port))
    target = ("127.0.0.1", sip_port)
    genuine = Caller(target, (await register(edge))["call_id"], await open_socket())
    rtp = await open_socket()
    flooder = await bind("127.0.0.3")
    loop = asyncio.get_running_loop()
    started = loop.time()
    answered_in: float | None = None
    for i in range(1000):
        flooder.send(spoofed_invite(i, flooder.port), target)
        if i == 500:
            sent_at = loop.time()
            genuine.send(genuine.request("INVITE", sdp(rtp.port)))
        if i > 500 and answered_in is None and not genuine.sip.queue.empty():
            ok = await genuine.response("INVITE")
            answered_in = loop.time() - sent_at
            assert ok.status == 200
        await asyncio.sleep(max(0.0, started + (i + 1) / 1000 - loop.time()))
    if answered_in is None:
        await genuine.response("INVITE")
        answered_in = loop.time() - sent_at
    assert answered_in < 0.2, answered_in
    genuine.send(genuine.request("ACK", cseq=genuine.cseq))
    genuine.send(genuine.request("BYE"))
    assert (await genuine.response("BYE")).status == 200
    call = await sipp_call(
        sip_port, "uac_external_media.xml", (await register(edge))["call_id"], tmp_path,
        "-set", "rtp_port", str(rtp.port), "-d", "500",
    )  # fmt: skip
    await finished(call, tmp_path)
    assert any(d.startswith(b"SIP/2.0 ") for d, _, _ in flooder.log)  # answered at the source
    assert edge.metric("telephony_edge_sip_send_failures_total", kind="sip") == 0
    edge.assert_healthy()  # no ERROR line, no traceback
    for sock in (genuine.sip, rtp, flooder):
        sock.close()


def spoofed_invite(n: int, port: int) -> bytes:
    """Flood INVITE ``n`` from 127.0.0.3:``port`` for a call id nobody registered, its
    Via claiming ``received=::1`` without ``rport`` (issue 19)."""
    return request(
        "INVITE",
        uri=f"sip:call_{secrets.token_hex(8)}@127.0.0.1",
        branch=f"z9hG4bKf{n}",
        call_id=f"flood-{n}@127.0.0.3",
        via_params=";received=::1",
    ).replace(b"203.0.113.7:5060", f"127.0.0.3:{port}".encode(), 1)


async def final_answer(caller: Caller, invite: bytes) -> Response:
    """The INVITE's final response, resent on Timer A's schedule as a UAC does (a burst
    of the flood can overflow the edge's socket buffer and lose it)."""
    for wait in (0.5, 1.0, 2.0, 4.0):
        try:
            return await caller.response("INVITE", within=wait)
        except TimeoutError:
            caller.send(invite)
    raise AssertionError("the INVITE was never answered")


# -- sans-I/O: the rules of sip/nat.py --------------------------------------------------


def test_private_addresses() -> None:
    for host in ("192.168.1.20", "10.1.2.3", "172.16.0.9", "100.64.1.1", "fd00::5", "[fe80::1]"):
        assert is_private(host), host
    for host in ("203.0.113.7", "127.0.0.1", "8.8.8.8", "pbx.example.com", "::ffff:8.8.8.8"):
        assert not is_private(host), host
    assert is_private("::ffff:10.0.0.1")


@settings(max_examples=300, deadline=None)
@given(
    received=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=40),
    rport=st.sampled_from(["", ";rport", ";rport=1", ";rport=99999", ";rport=x"]),
    sent_by=st.sampled_from(["203.0.113.7", "198.51.100.9:5070", "[::1]", "pbx.test:5061"]),
    source=st.sampled_from([("203.0.113.7", 40000), ("::ffff:203.0.113.7", 5060), ("::1", 9)]),
)
def test_a_response_never_goes_to_an_address_the_request_did_not_come_from(
    received: str, rport: str, sent_by: str, source: tuple[str, int]
) -> None:
    text = received.replace(";", "").replace(",", "").replace('"', "")
    data = request("OPTIONS", via_params=f"{rport};received={text}")
    try:
        req = parsed(data.replace(b"203.0.113.7:5060", sent_by.encode(), 1))
        stamp_via(req, source)
    except ValueError:
        return  # not a request the edge would answer
    assert response_dest(req.top_via(), source, "UDP")[0] == source[0]


def test_a_dual_stack_socket_sees_an_ipv4_sender_as_itself() -> None:
    req = parsed(request("INVITE", via_params=""))
    assert not behind_nat(req, ("::ffff:203.0.113.7", 5060))
    stamp_via(req, ("::ffff:203.0.113.7", 5060))
    assert "received" not in req.top_via().params  # sent-by is the source: nothing to add


def parsed(data: bytes) -> Request:
    msg = parse_message(data)
    assert isinstance(msg, Request)
    return msg


def test_stamp_via_replaces_a_received_the_sender_wrote() -> None:
    req = parsed(request("OPTIONS", via_params=";received=198.51.100.1"))
    stamp_via(req, ("203.0.113.7", 5060))  # sent-by is the source: no received of ours
    via = req.top_via()
    assert "received" not in via.params
    assert response_dest(via, ("203.0.113.7", 5060), "UDP") == ("203.0.113.7", 5060)
    req = parsed(request("OPTIONS", via_params=";rport;received=::1"))
    stamp_via(req, ("203.0.113.7", 40000))
    via = req.top_via()
    assert (via.params["received"], via.params["rport"]) == ("203.0.113.7", "40000")
    assert response_dest(via, ("203.0.113.7", 40000), "UDP") == ("203.0.113.7", 40000)


def test_responses_never_leave_the_source_address() -> None:
    """Without ``rport`` the port is the Via's (RFC 3261), the address always the source's,
    whatever the Via names (a host name, another address)."""
    for sent_by in ("pbx.example.com:5070", "198.51.100.1:5070", "[::1]:5070"):
        data = request("OPTIONS", via_params="").replace(b"203.0.113.7:5060", sent_by.encode(), 1)
        req = parsed(data)
        stamp_via(req, ("203.0.113.7", 5099))
        assert response_dest(req.top_via(), ("203.0.113.7", 5099), "UDP") == ("203.0.113.7", 5070)
    via = parsed(request("OPTIONS")).top_via()
    assert response_dest(via, ("203.0.113.7", 7), "TCP") == ("203.0.113.7", 7)


def dialog_of(data: bytes) -> Dialog:
    return Dialog.from_invite(parsed(data), "tag", "<sip:127.0.0.1>", 1)


def test_in_dialog_requests_of_a_nated_caller_go_to_its_source() -> None:
    phone = ("203.0.113.9", 61000)  # its NAT's public side
    invite = request("INVITE").replace(b"203.0.113.7:5060", PRIVATE.encode())
    req = parsed(invite)
    assert behind_nat(req, phone)
    assert in_dialog_dest(dialog_of(invite), phone, "UDP", True) == phone
    # the same phone reached directly (no NAT): its Contact
    assert not behind_nat(req, ("192.168.1.20", 5060))
    assert in_dialog_dest(dialog_of(invite), phone, "UDP", False) == ("192.168.1.20", 5060)
    # a public Contact, but the Via is not where it came from: NAT (rport-style)
    assert behind_nat(parsed(request("INVITE")), ("198.51.100.4", 5060))
    assert not behind_nat(parsed(request("INVITE")), ("203.0.113.7", 5060))


def test_a_port_that_differs_is_nat_only_for_a_sender_that_asked_for_rport() -> None:
    """A sender without ``rport`` listens at its Via's port (RFC 3261) and may send from
    another (some gateways do): its Contact is used. With ``rport`` it declared its
    source port the way back, so a port that differs is a NAT's."""
    from_elsewhere = ("203.0.113.7", 40123)
    assert behind_nat(parsed(request("INVITE")), from_elsewhere)
    assert not behind_nat(parsed(request("INVITE", via_params="")), from_elsewhere)
    named = request("INVITE", via_params="").replace(b"203.0.113.7:5060", b"gw.test:5060", 1)
    assert not behind_nat(parsed(named), ("203.0.113.7", 5060))  # a name tells nothing


def test_a_route_set_is_followed_unless_its_first_hop_is_private_and_not_the_source() -> None:
    proxy = ("198.51.100.10", 5060)
    routed = request("INVITE", extra="Record-Route: <sip:198.51.100.10;lr>")
    assert in_dialog_dest(dialog_of(routed), proxy, "UDP", True) == proxy
    behind = request("INVITE", extra="Record-Route: <sip:10.0.0.2;lr>")
    assert in_dialog_dest(dialog_of(behind), proxy, "UDP", False) == proxy
    assert in_dialog_dest(dialog_of(behind), ("10.0.0.2", 5060), "UDP", False) == (
        "10.0.0.2",
        5060,
    )
    named = request("INVITE", extra="Record-Route: <sip:proxy.example.net;lr>")
    assert in_dialog_dest(dialog_of(named), proxy, "UDP", True) == ("proxy.example.net", 5060)


def test_ua_pings_a_nated_caller_while_its_call_is_up() -> None:
    ua = UserAgent(UaConfig(nat_keepalive=20.0))
    phone = ("203.0.113.9", 61000)  # its NAT; Via and Contact say 192.168.1.20
    invite = request("INVITE", uri="sip:call_x@127.0.0.1", body=SIPP_SDP)
    started = ua.receive(invite.replace(b"203.0.113.7:5060", PRIVATE.encode()), phone, 0.0)
    ref = next(a.call for a in started if isinstance(a, StartCall))
    ok = [a for a in ua.answer(ref, 30000, 0.1) if isinstance(a, Send)][-1]
    to_tag = parse_message(ok.data).to().tag
    ua.receive(request("ACK", branch="z9hG4bKa2", to_tag=to_tag), phone, 1.0)
    assert ua.calls()[ref].keepalive_at == 21.0
    assert (ua.next_deadline() or 99) <= 21.0
    assert [(a.data, a.dest) for a in ua.tick(21.0) if isinstance(a, Send)] == [
        (b"\r\n\r\n", phone)
    ]
    assert ua.calls()[ref].keepalive_at == 41.0
    ua.hangup(ref, 30.0)
    assert all(a.data != b"\r\n\r\n" for a in ua.tick(41.0) if isinstance(a, Send))
    direct = UserAgent(UaConfig(nat_keepalive=20.0))  # the same caller, not behind NAT
    started = direct.receive(invite, ("203.0.113.7", 5060), 0.0)
    ref = next(a.call for a in started if isinstance(a, StartCall))
    ok = [a for a in direct.answer(ref, 30000, 0.1) if isinstance(a, Send)][-1]
    to_tag = parse_message(ok.data).to().tag
    direct.receive(request("ACK", branch="z9hG4bKa2", to_tag=to_tag), ("203.0.113.7", 5060), 1.0)
    assert direct.calls()[ref].phase.value == "confirmed"
    assert direct.calls()[ref].keepalive_at is None
