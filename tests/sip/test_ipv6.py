"""SIP and RTP over IPv6 with real peers on ``::1``: sipp callers and callees, raw UDP.

The edge listens on ``::`` (an IPv6-only worker advertising ``::1``) or on
``127.0.0.1`` and ``::1`` at once (dual stack). sipp calls it over IPv6
(``-i ::1 -mi ::1``, its SDP ``c=IN IP6 ::1``) while the test owns the
caller's RTP socket on ``::1``: it speaks into the call, and counts what the
edge sends back and from where. The edge also calls a sipp callee on
``[::1]`` through a trunk whose proxy is ``[::1]:<port>``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from telephony_edge.sip.message import Response
from telephony_edge.sip.parse import parse_message
from telephony_edge.sip.provider import SIP_ENDPOINT
from telephony_edge.sip.rtp import parse_rtp
from telephony_edge.sip.sdp import parse_sdp
from tests.conftest import Edge, Receiver, free_port, read_wav, wait_for
from tests.sip.baresip import baresip_binary, dial
from tests.sip.baresip_callee import answering
from tests.sip.certs import Authority
from tests.sip.conftest import (
    SCENARIOS,
    finished,
    register,
    sip_test_settings,
    sipp,
    sipp_binary,
)
from tests.sip.test_outbound import (
    api,
    callee_done,
    carrier,
    outbound_edge,
    place,
    settled,
)
from tests.sip.test_sipp import CallerMedia, loud, speak_pcma
from tests.sip.wire import with_length

SPEECH_S = 2


async def ipv6_edge(make_edge: Callable[..., Any], receiver: Receiver, **sip: Any) -> Edge:
    sipp_binary()
    edge: Edge = await make_edge(sip_test_settings(receiver, sip))
    return edge


async def caller_media(host: str) -> tuple[CallerMedia, int]:
    """The caller's RTP socket on ``host``, and its port."""
    loop = asyncio.get_running_loop()
    _, media = await loop.create_datagram_endpoint(CallerMedia, local_addr=(host, 0))
    assert media.transport is not None
    return media, int(media.transport.get_extra_info("sockname")[1])


async def call_and_speak(
    edge: Edge, host: str, tmp_path: Path, *extra: str
) -> tuple[dict[str, Any], list[tuple[Any, tuple[str, int]]], int]:
    """A sipp call from ``host`` with the test's media there: two seconds of speech into
    it; the registration, what the edge sent (parsed, with its source) and the leg's port."""
    reg = await register(edge)
    media, rtp_port = await caller_media(host)
    process = await sipp(
        edge, "uac_external_media.xml", reg["call_id"], tmp_path,
        "-set", "rtp_port", str(rtp_port), "-d", "5000", "-trace_msg", *extra,
        host=host,
    )  # fmt: skip
    endpoint = edge.app[SIP_ENDPOINT]
    await wait_for(lambda: endpoint.legs, within=5)
    leg = next(iter(endpoint.legs.values()))
    speech = read_wav("speech_table.wav")[: 16000 * 2 * SPEECH_S]
    await speak_pcma(media, (host, leg.port), speech + bytes(640 * 60))
    await finished(process, tmp_path)
    assert media.transport is not None
    media.transport.close()
    received = [(parse_rtp(data), source[:2]) for data, source in media.received]
    return reg, received, leg.port


def heard_by_the_agent(payload: dict[str, Any]) -> bool:
    return "caller spoke" in json.dumps(payload.get("chat"))


async def test_a_sipp_caller_over_ipv6_with_audio_both_ways(
    make_edge: Callable[..., Any], receiver: Receiver, tmp_path: Path
) -> None:
    """An IPv6-only edge (``bind_host: "::"``) answers sipp on ``[::1]``: its sip_uri, Via
    sent-by and Contact in brackets, the SDP ``IN IP6 ::1``, the RTP both ways over IPv6
    from the leg's port, the agent hears the caller, sipp's BYE ends the call."""
    edge = await ipv6_edge(make_edge, receiver, bind_host="::", advertised_host="::1")
    reg, received, port = await call_and_speak(edge, "::1", tmp_path)
    assert reg["sip_uri"] == f"sip:{reg['call_id']}@[::1]:{edge.app[SIP_ENDPOINT].port}"
    assert {source for _, source in received} == {("::1", port)}  # symmetric, over IPv6
    rtp = [p for p, _ in received if p is not None and p.payload_type == 8]
    assert len(rtp) > 50 and sum(loud(p.payload) for p in rtp) > 25
    await wait_for(lambda: receiver.received, within=10)
    [payload] = receiver.received
    assert payload["call_status"] == "user-ended"
    assert heard_by_the_agent(payload)
    ok = answer_sipp_saw(tmp_path)  # the edge's 200 to the INVITE, as sipp received it
    via = ok.top_via()
    assert via.host == "[::1]" and via.params["received"] == "::1"  # bare (RFC 5118 §4.5)
    assert via.params["rport"].isdigit()
    edge_port = edge.app[SIP_ENDPOINT].port
    assert ok.headers.get("Contact") == f"<sip:[::1]:{edge_port};transport=udp>"
    sdp = parse_sdp(ok.body)
    assert (sdp.origin.addrtype, sdp.origin.address, sdp.connection) == ("IP6", "::1", "::1")
    assert b"c=IN IP6 ::1\r\n" in ok.body and sdp.media[0].port == port


def answer_sipp_saw(cwd: Path) -> Response:
    """The 200 to the INVITE in sipp's message trace (``-trace_msg``)."""
    trace = next(cwd.glob("*_messages.log")).read_bytes()
    for chunk in trace.split(b"\n-----------------------------------------------"):
        start = chunk.find(b"SIP/2.0 200 ")
        if start >= 0:
            message = parse_message(chunk[start:])  # as it came, CRLFs and all
            assert isinstance(message, Response)
            if message.cseq().method == "INVITE":
                return message
    raise AssertionError("no 200 to the INVITE in sipp's trace")


async def test_a_dual_stack_edge_answers_each_caller_in_its_family(
    make_edge: Callable[..., Any], receiver: Receiver, tmp_path: Path
) -> None:
    """``bind_host: 127.0.0.1`` and ``bind_host6: ::1``: an IPv4 sipp call is as before
    (IPv4 SDP and RTP), an IPv6 one over TCP gets IPv6 SIP, SDP and RTP, on the same
    worker and port."""
    edge = await ipv6_edge(make_edge, receiver, bind_host="127.0.0.1", bind_host6="::1")
    four = tmp_path / "four"
    six = tmp_path / "six"
    four.mkdir()
    six.mkdir()
    _, received4, port4 = await call_and_speak(edge, "127.0.0.1", four)
    _, received6, port6 = await call_and_speak(edge, "::1", six, "-t", "t1")
    assert {source for _, source in received4} == {("127.0.0.1", port4)}
    assert {source for _, source in received6} == {("::1", port6)}
    for received in (received4, received6):
        assert sum(loud(p.payload) for p, _ in received if p is not None) > 25
    ok4, ok6 = answer_sipp_saw(four), answer_sipp_saw(six)
    assert parse_sdp(ok4.body).connection == "127.0.0.1"
    assert parse_sdp(ok6.body).connection == "::1"
    edge_port = edge.app[SIP_ENDPOINT].port
    assert ok4.headers.get("Contact") == f"<sip:127.0.0.1:{edge_port};transport=udp>"
    assert ok6.headers.get("Contact") == f"<sip:[::1]:{edge_port};transport=tcp>"
    await wait_for(lambda: len(receiver.received) == 2, within=10)
    assert all(heard_by_the_agent(p) for p in receiver.received)


class Peer(asyncio.DatagramProtocol):
    """A raw UDP SIP socket on ``::1``: every message it gets, parsed, with its source."""

    def __init__(self) -> None:
        self.got: list[tuple[Any, tuple[str, int]]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, ...]) -> None:
        self.got.append((parse_message(data), (str(addr[0]), int(addr[1]))))

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def final(self, method: str) -> Response:
        return next(
            m for m, _ in self.got
            if isinstance(m, Response) and m.status >= 200 and m.cseq().method == method
        )  # fmt: skip


async def peer() -> Peer:
    _, made = await asyncio.get_running_loop().create_datagram_endpoint(Peer, local_addr=("::1", 0))
    return made


def invite(call_id: str, edge_port: int, proxy: int, media: int) -> bytes:
    """An INVITE from behind an IPv6 NAT (its Via and Contact name 2001:db8::5, which is
    not where it comes from), through a proxy on ``[::1]:<proxy>`` that record-routes."""
    sdp = (
        "v=0\r\no=caller 1 1 IN IP6 2001:db8::5\r\ns=-\r\nc=IN IP6 ::1\r\nt=0 0\r\n"
        f"m=audio {media} RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\n"
    )
    head = (
        f"INVITE sip:{call_id}@[::1]:{edge_port} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP [2001:db8::5]:5070;branch=z9hG4bK-v6-1;rport\r\n"
        f"Record-Route: <sip:[::1]:{proxy};lr>\r\n"
        "From: <sip:caller@[2001:db8::5]>;tag=v6caller\r\n"
        f"To: <sip:{call_id}@[::1]:{edge_port}>\r\n"
        "Call-ID: v6-nat-1@2001:db8::5\r\n"
        "CSeq: 1 INVITE\r\n"
        "Contact: <sip:caller@[2001:db8::5]:5070>\r\n"
        "Max-Forwards: 70\r\n"
        "Content-Type: application/sdp"
    )
    return with_length(head, sdp)


async def test_responses_and_the_edges_bye_go_back_over_ipv6(
    make_edge: Callable[..., Any], receiver: Receiver
) -> None:
    """A caller behind an IPv6 NAT (Via and Contact ``[2001:db8::5]``, sent from ``::1``)
    through a record-routing proxy on ``[::1]``: the 200 goes to the packet's source port
    (``rport``) with ``received=::1``; the edge's BYE (an API hang-up) goes to the proxy of
    the Record-Route, over IPv6, routed by it (``Route: <sip:[::1]:<port>;lr>``), with our
    Via in brackets."""
    edge = await ipv6_edge(make_edge, receiver, bind_host="::1")
    edge_port = edge.app[SIP_ENDPOINT].port
    reg = await register(edge)
    caller, proxy = await peer(), await peer()
    media, media_port = await caller_media("::1")
    assert caller.transport is not None
    caller.transport.sendto(
        invite(reg["call_id"], edge_port, proxy.port, media_port), ("::1", edge_port)
    )
    await wait_for(lambda: any(isinstance(m, Response) and m.status == 200 for m, _ in caller.got))
    ok = caller.final("INVITE")
    via = ok.top_via()
    assert (via.host, via.port, via.params["received"]) == ("[2001:db8::5]", 5070, "::1")
    assert via.params["rport"] == str(caller.port)
    assert ok.headers.get("Record-Route") == f"<sip:[::1]:{proxy.port};lr>"
    ack = (
        f"ACK sip:caller@[2001:db8::5]:5070 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP [2001:db8::5]:5070;branch=z9hG4bK-v6-2;rport\r\n"
        f"Route: <sip:[::1]:{proxy.port};lr>\r\n"
        "From: <sip:caller@[2001:db8::5]>;tag=v6caller\r\n"
        f"To: {ok.headers.get('To')}\r\n"
        "Call-ID: v6-nat-1@2001:db8::5\r\nCSeq: 1 ACK\r\nMax-Forwards: 70"
    )
    caller.transport.sendto(with_length(ack), ("::1", edge_port))
    await wait_for(lambda: media.received, within=5)  # the agent's greeting, over IPv6
    status, _ = await api(edge, "POST", f"/calls/{reg['call_id']}/hangup")
    assert status == 200
    await wait_for(lambda: proxy.got, within=5)
    bye, source = proxy.got[0]
    assert bye.method == "BYE" and source == ("::1", edge_port)
    assert bye.uri == "sip:caller@[2001:db8::5]:5070"  # loose routing: the target stays
    assert bye.headers.get("Route") == f"<sip:[::1]:{proxy.port};lr>"
    assert bye.top_via().host == "[::1]" and bye.top_via().port == edge_port
    assert media.transport is not None
    media.transport.close()


async def test_baresip_calls_over_ipv6_with_audio_both_ways(
    make_edge: Callable[..., Any], receiver: Receiver, tmp_path: Path
) -> None:
    """baresip, IPv6 only on ``::1``, calls an IPv6-only edge at its ``[::1]`` sip_uri: the
    agent hears it, it hears the agent, its RTP comes from ``[::1]``."""
    baresip_binary()
    edge = await ipv6_edge(make_edge, receiver, bind_host="::1")
    reg = await register(edge)
    call = await dial(reg["sip_uri"], tmp_path, "udp", host="::1")
    assert call.heard_seconds() > 0.5, f"baresip heard {call.heard_seconds()} s\n{call.log}"
    assert "receiving from [::1]:" in call.log
    await wait_for(lambda: receiver.received, within=10)
    assert heard_by_the_agent(receiver.received[0])


async def test_the_edge_calls_a_baresip_sip_uri_on_ipv6(
    make_edge: Callable[..., Any], receiver: Receiver, tmp_path: Path
) -> None:
    """``to_phone: sip:callee@[::1]:<port>`` from a dual-stack edge: the INVITE, From and
    Contact in the edge's IPv6 address, an ``IN IP6`` offer, audio both ways over IPv6."""
    baresip_binary()
    edge = await outbound_edge(make_edge, receiver, {"bind_host6": "::1"})
    phone = await answering(tmp_path, seconds=6, host="::1")
    assert phone.uri.startswith("sip:callee@[::1]:")
    call_id = await place(edge, to=phone.uri)
    call = await phone.finished(within=30)
    assert call.heard_seconds() > 0.5, f"baresip heard {call.heard_seconds()} s\n{call.log}"
    assert "receiving from [::1]:" in call.log
    payload = await settled(receiver, call_id)
    assert heard_by_the_agent(payload)


async def test_the_edge_calls_a_sipp_callee_on_ipv6_through_a_trunk(
    make_edge: Callable[..., Any], receiver: Receiver, tmp_path: Path
) -> None:
    """A trunk whose proxy is ``[::1]:<port>`` (a sipp callee there, ``-i ::1``, answering
    after a digest challenge with ``IN IP6 ::1``): the edge's INVITE goes over IPv6 from a
    dual-stack edge with its IPv6 address in Via and Contact, and the audio flows both ways
    over IPv6."""
    port = free_port()
    sip = {**carrier(f"[::1]:{port}"), "bind_host6": "::1"}
    edge = await outbound_edge(make_edge, receiver, sip)
    media, rtp_port = await caller_media("::1")
    uas = await asyncio.create_subprocess_exec(
        sipp_binary(), "-sf", str(SCENARIOS / "uas_answer.xml"),
        "-i", "::1", "-mi", "::1", "-p", str(port), "-set", "rtp_port", str(rtp_port),
        "-d", "5000", "-m", "1", "-nostdin", "-timeout", "30", "-timeout_error",
        "-trace_err", "-error_file", str(tmp_path / f"sipp_{port}.log"), "-trace_msg",
        cwd=tmp_path, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    await asyncio.sleep(0.3)  # sipp binds its port
    call_id = await place(edge)
    await wait_for(lambda: media.received, within=15)
    edge_rtp = media.received[0][1][:2]
    assert edge_rtp[0] == "::1"
    await speak_pcma(media, edge_rtp, read_wav("speech_table.wav")[: 640 * 150])
    await callee_done(uas, tmp_path, port)
    payload = await settled(receiver, call_id)
    assert payload["call_status"] == "user-ended"  # the callee's BYE
    assert heard_by_the_agent(payload)
    heard = [parse_rtp(data) for data, _ in media.received]
    assert sum(loud(p.payload) for p in heard if p is not None) > 10  # the agent's greeting
    invite = request_sipp_got(tmp_path, "INVITE")
    edge_port = edge.app[SIP_ENDPOINT].port
    assert invite.top_via().host == "[::1]" and invite.top_via().port == edge_port
    assert invite.headers.get("Contact") == f"<sip:[::1]:{edge_port};transport=udp>"
    assert invite.from_().sip_uri().host == "[::1]"
    offer = parse_sdp(invite.body)
    assert (offer.origin.addrtype, offer.connection) == ("IP6", "::1")
    assert media.transport is not None
    media.transport.close()


def request_sipp_got(cwd: Path, method: str) -> Any:
    """The last ``method`` request in sipp's message trace (``-trace_msg``)."""
    trace = next(cwd.glob("*_messages.log")).read_bytes()
    found = None
    for chunk in trace.split(b"\n-----------------------------------------------"):
        start = chunk.find(method.encode() + b" sip")
        if start >= 0 and b"message received" in chunk:
            found = parse_message(chunk[start:])
    assert found is not None, f"no {method} in sipp's trace"
    return found


async def test_baresip_over_tls_on_ipv6_with_srtp(
    make_edge: Callable[..., Any], receiver: Receiver, tmp_path: Path
) -> None:
    """A dual-stack edge's TLS listener takes baresip on ``[::1]`` (a certificate for
    ``::1``): the call over TLS, its media RTP/SAVP over IPv6, heard both ways."""
    baresip_binary()
    issued = Authority(tmp_path).issue(("::1", "127.0.0.1"))
    sip = {
        "bind_host6": "::1",
        "tls": True,
        "tls_port": 0,
        "tls_certificate": str(issued.certificate),
        "tls_private_key": str(issued.private_key),
    }
    edge = await ipv6_edge(make_edge, receiver, **sip)
    reg = await register(edge)
    tls_port = edge.app[SIP_ENDPOINT].tls_port
    folder = tmp_path / "baresip"
    folder.mkdir()
    uri = f"sip:{reg['call_id']}@[::1]:{tls_port}"
    call = await dial(uri, folder, "tls", mediaenc="srtp-mand", host="::1")
    assert "Call established" in call.log, call.log[-3000:]
    assert "SRTP is Enabled (cryptosuite=AES_CM_128_HMAC_SHA1_80)" in call.log
    assert "receiving from [::1]:" in call.log
    assert call.heard_seconds() > 0.5, f"baresip heard {call.heard_seconds()} s\n{call.log}"
    await wait_for(lambda: receiver.received, within=10)
    [payload] = receiver.received
    assert heard_by_the_agent(payload)
    assert payload["voip"]["media"]["srtp"] == "AES_CM_128_HMAC_SHA1_80"
