"""Raw UDP against the running edge (real sockets, ``make_edge``): the wire cases
no SIP library gets right, hold/resume, delayed offer, symmetric RTP.

The test is the caller: its own SIP socket (requests written out by hand, so
retransmissions are exact byte copies) and its own RTP socket.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field

from telephony_edge.sip.message import Request, Response
from telephony_edge.sip.parse import parse_message
from telephony_edge.sip.provider import SIP_ENDPOINT
from telephony_edge.sip.rtp import RtpPacket, build_rtp, parse_rtp
from tests.conftest import Edge, Receiver, wait_for
from tests.sip.conftest import register
from tests.sip.test_sipp_features import ring


class Socket(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple[str, int], float]] = asyncio.Queue()
        self.log: list[tuple[bytes, tuple[str, int], float]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        item = (data, addr, asyncio.get_running_loop().time())
        self.log.append(item)
        self.queue.put_nowait(item)

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def send(self, data: bytes, dest: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, dest)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_socket() -> Socket:
    loop = asyncio.get_running_loop()
    _, sock = await loop.create_datagram_endpoint(Socket, local_addr=("127.0.0.1", 0))
    return sock


def sdp(port: int, direction: str = "sendrecv", address: str = "127.0.0.1") -> str:
    return (
        "v=0\r\n"
        f"o=caller 1 {secrets.randbelow(1000) + 1} IN IP4 {address}\r\n"
        "s=-\r\n"
        f"c=IN IP4 {address}\r\n"
        "t=0 0\r\n"
        f"m=audio {port} RTP/AVP 0 101\r\n"
        "a=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\n"
        "a=fmtp:101 0-16\r\n"
        f"a={direction}\r\n"
    )


@dataclass
class Caller:
    """One call's SIP side, written out by hand."""

    edge: tuple[str, int]
    user: str
    sip: Socket
    call_id: str = field(default_factory=lambda: secrets.token_hex(8) + "@127.0.0.1")
    from_tag: str = field(default_factory=lambda: secrets.token_hex(4))
    to_tag: str = ""
    cseq: int = 0

    def request(
        self, method: str, body: str = "", *, cseq: int | None = None, extra: tuple[str, ...] = ()
    ) -> bytes:
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        port = self.sip.port
        to = f"<sip:{self.user}@{self.edge[0]}>" + (f";tag={self.to_tag}" if self.to_tag else "")
        lines = [
            f"{method} sip:{self.user}@{self.edge[0]}:{self.edge[1]} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{secrets.token_hex(6)};rport",
            "Max-Forwards: 70",
            f"From: <sip:caller@127.0.0.1>;tag={self.from_tag}",
            f"To: {to}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {cseq} {method}",
            f"Contact: <sip:caller@127.0.0.1:{port}>",
            *extra,
        ]
        if body:
            lines.append("Content-Type: application/sdp")
        raw = body.encode()
        return ("\r\n".join(lines) + f"\r\nContent-Length: {len(raw)}\r\n\r\n").encode() + raw

    def send(self, data: bytes) -> None:
        self.sip.send(data, self.edge)

    async def response(self, method: str, *, final: bool = True, within: float = 3) -> Response:
        """The next response to ``method`` (a final one unless ``final`` is False)."""
        while True:
            data, _, _ = await asyncio.wait_for(self.sip.queue.get(), within)
            msg = parse_message(data)
            if not isinstance(msg, Response) or msg.cseq().method != method:
                continue
            if final and msg.status < 200:
                continue
            if msg.status >= 200 and method == "INVITE":
                self.to_tag = msg.to().tag or self.to_tag
            return msg

    async def request_from_edge(self, method: str, within: float = 5) -> Request:
        while True:
            data, _, _ = await asyncio.wait_for(self.sip.queue.get(), within)
            msg = parse_message(data)
            if isinstance(msg, Request) and msg.method == method:
                return msg


def media_port(body: bytes) -> int:
    line = next(x for x in body.decode().splitlines() if x.startswith("m=audio "))
    return int(line.split()[1])


def rtp_from(sock: Socket, since: float = 0.0, until: float = 1e18) -> list[RtpPacket]:
    packets = [parse_rtp(d) for d, _, t in sock.log if since <= t < until]
    return [p for p in packets if p is not None]


def pcmu(n: int) -> bytes:
    return build_rtp(0, 100 + n, 160 * n, 0xABCDEF, n == 0, b"\xff" * 160)


async def start_call(
    sip_edge: Edge, body: str, metadata: dict[str, object] | None = None
) -> tuple[Caller, Response]:
    reg = await register(sip_edge, metadata=metadata or {})
    endpoint = sip_edge.app[SIP_ENDPOINT]
    caller = Caller(("127.0.0.1", endpoint.port), reg["call_id"], await open_socket())
    caller.send(caller.request("INVITE", body))
    ok = await caller.response("INVITE")
    assert ok.status == 200
    return caller, ok


async def test_hold_stops_the_edge_sending_and_resume_restarts_it(
    sip_edge: Edge, receiver: Receiver
) -> None:
    rtp = await open_socket()
    # the demo core holds its greeting 800 ms, so the chime plays while we hold the call
    caller, ok = await start_call(sip_edge, sdp(rtp.port), {"demo_pause_ms": 800})
    edge_rtp = ("127.0.0.1", media_port(ok.body))
    caller.send(caller.request("ACK", cseq=caller.cseq))
    loop = asyncio.get_running_loop()
    for n in range(3):  # a little caller audio (latches our source)
        rtp.send(pcmu(n), edge_rtp)

    caller.send(caller.request("INVITE", sdp(rtp.port, "sendonly")))
    held = await caller.response("INVITE")
    assert held.status == 200 and b"a=recvonly" in held.body
    caller.send(caller.request("ACK", cseq=caller.cseq))
    leg = next(iter(sip_edge.app[SIP_ENDPOINT].legs.values()))
    assert leg.media is not None and leg.media.on_hold and leg.sender is not None
    sent_at_hold = leg.sender.sent
    await asyncio.sleep(1.5)  # the chime starts meanwhile (≈ 0.8 s in)
    assert leg.sender.sent == sent_at_hold  # the edge sent nothing while held
    resume_sent_at = loop.time()
    caller.send(caller.request("INVITE", sdp(rtp.port, "sendrecv")))
    resumed = await caller.response("INVITE")
    hold_until = loop.time()
    assert resumed.status == 200 and b"a=sendrecv" in resumed.body
    caller.send(caller.request("ACK", cseq=caller.cseq))
    await asyncio.sleep(0.8)

    # on the wire: what arrived before we resumed was all sent before the hold
    # (sequence numbers, not arrival times, so a busy machine cannot blur it)
    before = rtp_from(rtp, 0.0, resume_sent_at)
    first_seq = rtp_from(rtp)[0].sequence
    assert all((p.sequence - first_seq) & 0xFFFF < sent_at_hold for p in before)
    after = rtp_from(rtp, hold_until)
    assert len(after) > 15, len(after)  # the rest of the chime once resumed
    assert len(after) < 75  # part of the 1.5 s chime fell in the hold
    caller.send(caller.request("BYE"))
    assert (await caller.response("BYE")).status == 200
    await wait_for(lambda: receiver.received, within=5)
    assert receiver.received[0]["call_status"] == "user-ended"
    rtp.close()
    caller.sip.close()


async def test_delayed_offer_edge_offers_in_200_answer_in_ack_rtp_both_ways(
    sip_edge: Edge, receiver: Receiver
) -> None:
    rtp = await open_socket()
    caller, ok = await start_call(sip_edge, "")  # INVITE without SDP
    assert ok.headers.get("Content-Type") == "application/sdp"
    offer = ok.body.decode()
    assert "RTP/AVP" in offer and "a=sendrecv" in offer
    edge_rtp = ("127.0.0.1", media_port(ok.body))
    caller.send(caller.request("ACK", sdp(rtp.port), cseq=caller.cseq))  # the answer
    endpoint = sip_edge.app[SIP_ENDPOINT]
    await wait_for(lambda: endpoint.legs, within=3)
    leg = next(iter(endpoint.legs.values()))
    for n in range(25):
        rtp.send(pcmu(n), edge_rtp)
        await asyncio.sleep(0.02)
    await wait_for(lambda: len(rtp_from(rtp)) > 10, within=3)  # the greeting comes back
    assert {p.payload_type for p in rtp_from(rtp)} == {0}  # PCMU, as answered in the ACK
    assert leg.inbound is not None and leg.inbound.stats.received == 25
    assert leg.frames_in >= 20
    caller.send(caller.request("BYE"))
    assert (await caller.response("BYE")).status == 200
    rtp.close()
    caller.sip.close()


async def test_private_address_in_sdp_rtp_latched_to_where_it_comes_from(
    sip_edge: Edge, receiver: Receiver
) -> None:
    rtp = await open_socket()  # the real source; the SDP names a private address
    caller, ok = await start_call(sip_edge, sdp(14562, address="10.0.0.9"))
    edge_rtp = ("127.0.0.1", media_port(ok.body))
    caller.send(caller.request("ACK", cseq=caller.cseq))
    for n in range(10):
        rtp.send(pcmu(n), edge_rtp)
        await asyncio.sleep(0.02)
    await wait_for(lambda: len(rtp_from(rtp)) > 10, within=3)
    assert {addr for _, addr, _ in rtp.log} == {edge_rtp}  # from the port we send to
    stranger = await open_socket()
    stranger.send(pcmu(50), edge_rtp)  # never re-latched to a stranger mid-call
    await asyncio.sleep(0.2)
    leg = next(iter(sip_edge.app[SIP_ENDPOINT].legs.values()))
    assert leg.inbound is not None and leg.inbound.stats.strangers == 1
    assert leg.inbound.source == ("127.0.0.1", rtp.port)
    assert stranger.log == []
    caller.send(caller.request("BYE"))
    assert (await caller.response("BYE")).status == 200
    for sock in (rtp, stranger, caller.sip):
        sock.close()


async def test_duplicate_invite_is_one_call_and_gets_the_provisional_again(
    sip_edge: Edge, receiver: Receiver
) -> None:
    ring(sip_edge, 0.6)
    rtp = await open_socket()
    reg = await register(sip_edge)
    endpoint = sip_edge.app[SIP_ENDPOINT]
    assert endpoint.ua is not None
    started = endpoint.ua.stats.calls_started
    caller = Caller(("127.0.0.1", endpoint.port), reg["call_id"], await open_socket())
    invite = caller.request("INVITE", sdp(rtp.port))
    caller.send(invite)
    ringing = await caller.response("INVITE", final=False)
    while ringing.status != 180:
        ringing = await caller.response("INVITE", final=False)
    caller.send(invite)  # the same bytes: a retransmission
    again = await caller.response("INVITE", final=False)
    assert again.status == 180 and again.to().tag == ringing.to().tag
    ok = await caller.response("INVITE")
    assert ok.status == 200
    caller.send(invite)  # after the 200: the 2xx again, still no second call
    assert (await caller.response("INVITE")).status == 200
    caller.send(caller.request("ACK", cseq=caller.cseq))
    await asyncio.sleep(0.2)
    assert endpoint.ua.stats.calls_started == started + 1
    assert len(endpoint.legs) == 1
    caller.send(caller.request("BYE"))
    assert (await caller.response("BYE")).status == 200
    await wait_for(lambda: receiver.received, within=5)
    await asyncio.sleep(0.2)
    assert len(receiver.received) == 1
    rtp.close()
    caller.sip.close()


async def test_resent_bye_gets_the_same_200_and_the_call_ends_once(
    sip_edge: Edge, receiver: Receiver
) -> None:
    rtp = await open_socket()
    caller, _ = await start_call(sip_edge, sdp(rtp.port))
    caller.send(caller.request("ACK", cseq=caller.cseq))
    await asyncio.sleep(0.3)
    bye = caller.request("BYE")
    caller.send(bye)
    first = await caller.response("BYE")
    caller.send(bye)  # the 200 was "lost": the same BYE again
    second = await caller.response("BYE")
    assert first.status == second.status == 200  # not 481
    assert first.to_bytes() == second.to_bytes()
    await wait_for(lambda: receiver.received, within=5)
    await asyncio.sleep(0.3)
    assert [p["call_status"] for p in receiver.received] == ["user-ended"]
    rtp.close()
    caller.sip.close()


async def test_draining_edge_answers_new_invites_503_retry_after_and_keeps_its_call(
    sip_edge: Edge, receiver: Receiver
) -> None:
    rtp = await open_socket()
    caller, _ = await start_call(sip_edge, sdp(rtp.port))
    caller.send(caller.request("ACK", cseq=caller.cseq))
    reg = await register(sip_edge)
    sip_edge.services.calls.accepting = False  # what drain() does first
    late = Caller(caller.edge, reg["call_id"], await open_socket())
    late.send(late.request("INVITE", sdp(rtp.port)))
    refused = await late.response("INVITE")
    assert refused.status == 503 and refused.headers.get("Retry-After") == "5"
    late.to_tag = ""
    late.send(late.request("OPTIONS"))
    assert (await late.response("OPTIONS")).status == 503
    # the call already up is not disturbed: in-dialog requests are answered, BYE ends it
    caller.send(caller.request("OPTIONS"))
    assert (await caller.response("OPTIONS")).status == 200
    caller.send(caller.request("BYE"))
    assert (await caller.response("BYE")).status == 200
    await wait_for(lambda: receiver.received, within=5)
    assert receiver.received[0]["call_status"] == "user-ended"
    for sock in (rtp, caller.sip, late.sip):
        sock.close()
