"""SIP over TCP on the open internet: idle connections cannot lock clients out, a live call's
connection is never idle-closed, and the edge reconnects to the Contact when it is gone."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from telephony_edge import metrics
from telephony_edge.sip.message import Request, Response, build_response
from telephony_edge.sip.parse import parse_message
from telephony_edge.sip.provider import SIP_ENDPOINT
from telephony_edge.sip.tcp import StreamFramer, TcpSide
from tests.conftest import Edge, Receiver, wait_for
from tests.sip.conftest import API_KEY, finished, register, sip_test_settings, sipp, sipp_binary
from tests.sip.test_udp_edge import sdp

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def side(edge: Edge) -> TcpSide:
    tcp = edge.app[SIP_ENDPOINT].tcp
    assert tcp is not None
    return tcp


def closed_total(reason: str) -> float:
    return metrics.SIP_TCP_CLOSED.labels(reason=reason)._value.get()


async def connect(edge: Edge, source: str = "127.0.0.1") -> Stream:
    port = edge.app[SIP_ENDPOINT].port
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def is_closed(reader: asyncio.StreamReader, within: float) -> bool:
    """The edge closed the connection within ``within`` s (whatever it sent before)."""
    try:
        await asyncio.wait_for(reader.read(), within)
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return reader.at_eof()


async def next_message(reader: asyncio.StreamReader, within: float = 5.0) -> Request | Response:
    framer = StreamFramer()
    while True:
        data = await asyncio.wait_for(reader.read(4096), within)
        assert data, "the connection closed"
        for raw in framer.feed(data):
            if raw.strip(b"\r\n"):
                return parse_message(raw)


class TcpCaller:
    """One call over TCP, written out by hand; its Contact is a listening port of its own."""

    def __init__(self, edge: Edge, stream: Stream, contact_port: int) -> None:
        self.edge_port = edge.app[SIP_ENDPOINT].port
        self.reader, self.writer = stream
        self.contact_port = contact_port
        self.call_id = secrets.token_hex(8)
        self.tag = secrets.token_hex(4)
        self.to_tag = ""

    def request(self, method: str, user: str, cseq: int, body: str = "") -> bytes:
        local = self.writer.get_extra_info("sockname")
        to = f"<sip:{user}@127.0.0.1>" + (f";tag={self.to_tag}" if self.to_tag else "")
        lines = [
            f"{method} sip:{user}@127.0.0.1:{self.edge_port};transport=tcp SIP/2.0",
            f"Via: SIP/2.0/TCP 127.0.0.1:{local[1]};branch=z9hG4bK{secrets.token_hex(6)};rport",
            "Max-Forwards: 70",
            f"From: <sip:caller@127.0.0.1>;tag={self.tag}",
            f"To: {to}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {cseq} {method}",
            f"Contact: <sip:caller@127.0.0.1:{self.contact_port};transport=tcp>",
        ]
        if body:
            lines.append("Content-Type: application/sdp")
        raw = body.encode()
        return ("\r\n".join(lines) + f"\r\nContent-Length: {len(raw)}\r\n\r\n").encode() + raw

    async def call(self, user: str) -> None:
        """INVITE → 200 → ACK: a live dialog on this connection."""
        self.writer.write(self.request("INVITE", user, 1, sdp(40000 + secrets.randbelow(500) * 2)))
        while True:
            msg = await next_message(self.reader)
            if isinstance(msg, Response) and msg.status >= 200:
                break
        assert msg.status == 200
        self.to_tag = msg.to().tag or ""
        self.writer.write(self.request("ACK", user, 1))


async def hang_up_from_the_api(edge: Edge, call_id: str) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            edge.url(f"/calls/{call_id}/hangup"), headers={"Authorization": f"Bearer {API_KEY}"}
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()


async def test_a_thousand_idle_connections_do_not_lock_a_sipp_call_over_tcp_out(
    make_edge: Callable[..., Any], receiver: Receiver, tmp_path: Path
) -> None:
    """Issue 19: 1000 idle connections (the table's default size) from 32 addresses; a
    33rd from one of them is closed at once; sipp's call over TCP from another address
    then takes the place of the connection idle longest, and completes."""
    sipp_binary()
    edge: Edge = await make_edge(sip_test_settings(receiver, {"tcp_max_per_source": 32}))
    tcp = side(edge)
    assert tcp.policy.max_connections == 1000
    evicted, per_source = closed_total("evicted"), closed_total("per_source")
    idle = [await connect(edge, f"127.0.3.{n // 32 + 1}") for n in range(1000)]
    await wait_for(lambda: len(tcp.connections) == 1000, within=10)
    extra_reader, _ = await connect(edge, "127.0.3.1")  # its 33rd
    assert await is_closed(extra_reader, 3)
    assert closed_total("per_source") == per_source + 1
    reg = await register(edge)
    process = await sipp(
        edge, "uac_dtmf_bye.xml", reg["call_id"], tmp_path, "-t", "t1", host="127.0.0.2"
    )
    await finished(process, tmp_path)  # INVITE, 200, INFO, the edge's BYE: all on TCP
    assert closed_total("evicted") >= evicted + 1
    assert await is_closed(idle[0][0], 3)  # the first one opened, idle longest, made room
    for _, writer in idle:
        writer.close()


async def test_a_connection_that_sends_no_message_is_closed_soon(
    make_edge: Callable[..., Any], receiver: Receiver
) -> None:
    settings = {"tcp_first_message_timeout_s": 0.5}
    edge: Edge = await make_edge(sip_test_settings(receiver, settings))
    before = closed_total("no_message")
    silent_reader, silent = await connect(edge)
    silent.write(b"\r\n\r\n")  # a keep-alive is no SIP message
    talker = TcpCaller(edge, await connect(edge), 5060)
    talker.writer.write(talker.request("OPTIONS", "ping", 1))
    assert isinstance(await next_message(talker.reader), Response)
    assert await is_closed(silent_reader, 3)
    assert closed_total("no_message") == before + 1
    assert not await is_closed(talker.reader, 1.0)  # it spoke: idle rules only
    talker.writer.close()


@dataclass
class ContactServer:
    """The caller's Contact: a TCP port that keeps what the edge sends it (BYE: 200)."""

    port: int
    received: asyncio.Queue[Request | Response]


@pytest.fixture
async def contact_server() -> AsyncIterator[ContactServer]:
    received: asyncio.Queue[Request | Response] = asyncio.Queue()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                msg = await next_message(reader, 30)
                await received.put(msg)
                if isinstance(msg, Request) and msg.method == "BYE":
                    writer.write(build_response(msg, 200).to_bytes())
        except (AssertionError, TimeoutError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield ContactServer(server.sockets[0].getsockname()[1], received)
    server.close()


async def test_a_live_calls_connection_is_not_idle_closed_and_gets_the_bye(
    make_edge: Callable[..., Any], receiver: Receiver, contact_server: ContactServer
) -> None:
    """tcp_idle_timeout_s 1: a connection with nothing on it closes after it, the call's
    connection stays open past it, and the hang-up's BYE comes on it."""
    edge: Edge = await make_edge(sip_test_settings(receiver, {"tcp_idle_timeout_s": 1.0}))
    port = contact_server.port
    reg = await register(edge)
    caller = TcpCaller(edge, await connect(edge), port)
    await caller.call(reg["call_id"])
    other = TcpCaller(edge, await connect(edge), port)
    other.writer.write(other.request("OPTIONS", "ping", 1))
    assert isinstance(await next_message(other.reader), Response)
    assert await is_closed(other.reader, 4)  # idle, no call: closed
    assert not await is_closed(caller.reader, 1.5)  # idle too, but it carries the call
    await hang_up_from_the_api(edge, reg["call_id"])
    bye = await next_message(caller.reader)
    assert isinstance(bye, Request) and bye.method == "BYE"
    assert contact_server.received.empty()  # the connection was there: no new one
    caller.writer.close()


async def test_bye_after_the_callers_connection_closed_goes_to_its_contact(
    make_edge: Callable[..., Any], receiver: Receiver, contact_server: ContactServer
) -> None:
    """Issue 19: hang up from the API after the caller's connection was closed; the edge
    opens a new connection to the Contact (its source port was ephemeral) for the BYE."""
    edge: Edge = await make_edge(sip_test_settings(receiver))
    port = contact_server.port
    reg = await register(edge)
    caller = TcpCaller(edge, await connect(edge), port)
    await caller.call(reg["call_id"])
    caller.writer.close()
    await caller.writer.wait_closed()
    await wait_for(lambda: not side(edge).connections, within=3)
    await hang_up_from_the_api(edge, reg["call_id"])
    bye = await asyncio.wait_for(contact_server.received.get(), 5)
    assert isinstance(bye, Request) and bye.method == "BYE" and bye.call_id() == caller.call_id
    await wait_for(lambda: receiver.received, within=10)
    assert receiver.received[0]["call_status"] == "api-ended"


async def test_the_per_source_cap_spares_a_trunks_address(
    make_edge: Callable[..., Any], receiver: Receiver
) -> None:
    """Some PBXs open a connection per call: a trunk's address is not capped per source,
    a stranger's is."""
    sip = {"tcp_max_per_source": 3, "trunks": {"pbx": {"cidrs": ["127.0.0.5/32"]}}}
    edge: Edge = await make_edge(sip_test_settings(receiver, sip))
    trunk = [await connect(edge, "127.0.0.5") for _ in range(5)]
    stranger = [await connect(edge, "127.0.0.6") for _ in range(4)]
    assert await is_closed(stranger[3][0], 3)  # its 4th
    assert not any([await is_closed(reader, 0.2) for reader, _ in trunk + stranger[:3]])
    assert len(side(edge).connections) == 8
    for _, writer in trunk + stranger:
        writer.close()
