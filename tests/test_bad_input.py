"""Bad input from outside: the protocol's own error, a counted warning, never an ERROR.

A ``telephony-edge serve`` process with every network on (shared by the
module) takes hostile input through real sockets on 127.0.0.1: SIP
datagrams and TCP streams, Twilio's and Vonage's media WebSockets, a WebRTC
data channel, HTTP requests aiohttp cannot parse. Each test asserts the
protocol's answer (SIP 400/501/505, a closed stream, WebSocket 1007, HTTP
400), that ``telephony_edge_bad_input_total`` counted every one, that the
warning names the error (and the call id where there is a call) and is
rate-limited per sender, that no record is at ERROR or carries a traceback,
and that a call still works afterwards. The rate limiter itself, and the
agent core's link, are tested in process.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer
from aiortc import RTCSessionDescription

from telephony_edge import badinput, metrics
from telephony_edge.agent.link import AgentLink, AgentMessage
from telephony_edge.sip.message import Request, Response
from telephony_edge.sip.parse import parse_message
from telephony_edge.sip.provider import SIP_ENDPOINT
from telephony_edge.sip.tcp import KEEPALIVE, StreamFramer
from telephony_edge.sip.ua import UserAgent
from telephony_edge.twilio.context import CALL_ID_PARAM
from telephony_edge.twilio.simulator import encode_payloads
from telephony_edge.vonage.context import CALL_ID_HEADER
from telephony_edge.vonage.simulator import SimulatedVonageCall
from tests.conftest import Receiver, ServeProcess, free_port, wait_for
from tests.sip import wire
from tests.sip.conftest import sip_test_settings
from tests.sip.test_udp_edge import Caller, Socket, open_socket, sdp
from tests.test_hostile import (
    AUTH,
    bad_input,
    fixture_session,  # noqa: F401  (fixture)
    hostile_config,
    raw_status,
)
from tests.twilio.harness import answered, serve_call
from tests.webrtc.test_offer import Client

SIP_PORT = free_port()
VONAGE_SECRET = "vonage-signature-secret-bad-input-01"
VONAGE_NUMBER = "+15555550103"


@pytest.fixture(scope="module")
def edge(serve_process: Any) -> ServeProcess:
    config = hostile_config()
    rtp_low = free_port() // 2 * 2
    config.update(
        vonage={"enabled": True, "signature_secret": VONAGE_SECRET},
        sip={
            "enabled": True,
            "bind_host": "127.0.0.1",
            "port": SIP_PORT,
            "tcp": True,
            "tcp_read_timeout_s": 1.0,
            "rtp_port_min": rtp_low,
            "rtp_port_max": rtp_low + 40,
        },
        webrtc={
            "enabled": True,
            "advertised_addresses": ["127.0.0.1"],
            "allowed_peer_networks": ["127.0.0.0/8"],
        },
    )
    config["numbers"][VONAGE_NUMBER] = {
        "provider": "vonage",
        "agent_id": "demo",
        "region": "local",
    }
    started: ServeProcess = serve_process(config)
    return started


def warnings(edge: ServeProcess, source: str) -> list[dict[str, Any]]:
    """The bad-input warnings logged for ``source`` so far."""
    lines = []
    for line in edge.log.splitlines():
        if '"telephony_edge.badinput"' not in line or f'"source": "{source}"' not in line:
            continue
        record = json.loads(line)
        assert record["level"] == "warning" and "exc" not in record, line
        lines.append(record)
    return lines


def assert_clean(edge: ServeProcess) -> None:
    """Still serving; no ERROR line, no traceback, no record with exception info."""
    edge.assert_healthy()
    assert '"exc":' not in edge.log, edge.log[-3000:]


async def counted(edge: ServeProcess, source: str, expected: float) -> None:
    """Wait until the edge's counter for ``source`` reads ``expected`` (and not beyond)."""
    await wait_for(lambda: bad_input(edge, source) >= expected, within=10)
    assert bad_input(edge, source) == expected


# -- SIP over UDP ---------------------------------------------------------------------------


def _invite(tag: str, body: str = "", extra: str = "", user: str = "call_hostile") -> bytes:
    return wire.request(
        "INVITE",
        uri=f"sip:{user}@127.0.0.1:{SIP_PORT}",
        body=body,
        extra=extra,
        branch=f"z9hG4bKbad{tag}",
        call_id=f"bad-{tag}@127.0.0.1",
    )


def _replace(data: bytes, old: str, new: str) -> bytes:
    assert old.encode() in data
    return data.replace(old.encode(), new.encode())


def _with_body(tag: str, body: str, ctype: str = "application/sdp") -> bytes:
    """An INVITE with ``body`` of type ``ctype`` (and the right Content-Length)."""
    head = _invite(tag).decode().removesuffix("\r\nContent-Length: 0\r\n\r\n")
    return wire.with_length(f"{head}\r\nContent-Type: {ctype}", body)


SUPERSCRIPT_TWO = "\u00b2"  # str.isdigit() says yes, int() says no

#: (what, datagram, the Call-ID it answers for, the final status expected: None = dropped)
HOSTILE_DATAGRAMS: list[tuple[str, bytes, str, int | None]] = [
    ("garbage", b"\x00\xff" * 300, "", None),
    ("truncated head", _invite("t1", wire.SIPP_SDP)[:90], "", None),
    ("Content-Length past the end", _invite("t2", wire.SIPP_SDP)[:-40], "bad-t2@127.0.0.1", 400),
    (
        "Content-Length not a number",
        _replace(_invite("t3", wire.SIPP_SDP), "Content-Length: ", "Content-Length: x"),
        "bad-t3@127.0.0.1",
        400,
    ),
    (
        "Content-Length of digits int() refuses",
        _replace(_invite("t4"), "Content-Length: 0", f"Content-Length: {SUPERSCRIPT_TWO}"),
        "bad-t4@127.0.0.1",
        400,
    ),
    (
        "a header line past the limit",
        _invite("t5", extra="X-Huge: " + "h" * 20_000),
        "",
        None,
    ),
    (
        "another SIP version",
        _replace(_invite("t6"), "SIP/2.0\r\n", "SIP/3.0\r\n"),
        "bad-t6@127.0.0.1",
        505,
    ),
    (
        "an unknown method",
        wire.request("FROB", branch="z9hG4bKbadt7", call_id="bad-t7@127.0.0.1"),
        "bad-t7@127.0.0.1",
        501,
    ),
    ("a body that is not SDP", _with_body("t8", "hello", "text/plain"), "bad-t8@127.0.0.1", 415),
    ("SDP that is not SDP", _with_body("t9", "garbage"), "bad-t9@127.0.0.1", 400),
    (
        "an SDP port int() refuses",
        _with_body("t10", wire.SIPP_SDP.replace("audio 6000", f"audio {SUPERSCRIPT_TWO}")),
        "bad-t10@127.0.0.1",
        400,
    ),
    (
        "an SDP version int() refuses",
        _with_body("t11", wire.SIPP_SDP.replace("2353687637", SUPERSCRIPT_TWO * 3)),
        "bad-t11@127.0.0.1",
        400,
    ),
    (
        "a Session-Expires int() refuses",
        _invite("t12", wire.SIPP_SDP, f"Session-Expires: {SUPERSCRIPT_TWO}"),
        "bad-t12@127.0.0.1",
        400,
    ),
    (
        "a Via port int() refuses",
        _replace(
            _invite("t13"), "203.0.113.7:5060;branch", f"203.0.113.7:{SUPERSCRIPT_TWO};branch"
        ),
        "",
        None,
    ),
    (
        "a response with a status int() refuses",
        (
            f"SIP/2.0 {SUPERSCRIPT_TWO * 3} OK\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKx\r\n"
            "From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: r\r\nCSeq: 1 BYE\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode(),
        "",
        None,
    ),
]


async def final_status(sock: Socket, data: bytes, call_id: str) -> int | None:
    """Send ``data`` to the SIP port; the final status answered for ``call_id`` (None: none)."""
    sock.send(data, ("127.0.0.1", SIP_PORT))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (1.5 if call_id else 0.3)
    while (left := deadline - loop.time()) > 0:
        try:
            reply, _, _ = await asyncio.wait_for(sock.queue.get(), left)
        except TimeoutError:
            break
        message = parse_message(reply)
        if isinstance(message, Response) and message.call_id() == call_id and message.status >= 200:
            return message.status
    return None


async def test_hostile_sip_datagrams_get_sip_errors_are_counted_and_never_an_error(
    edge: ServeProcess,
) -> None:
    valid = parse_message(_with_body("ok", wire.SIPP_SDP))  # the cases' base is a valid INVITE
    assert isinstance(valid, Request) and valid.body == wire.SIPP_SDP.encode()
    before = bad_input(edge, "sip-udp")
    sock = await open_socket()
    try:
        for what, data, call_id, expected in HOSTILE_DATAGRAMS:
            assert await final_status(sock, data, call_id) == expected, what
    finally:
        sock.close()
    await counted(edge, "sip-udp", before + len(HOSTILE_DATAGRAMS))
    logged = warnings(edge, "sip-udp")
    assert logged and logged[0]["peer"].startswith("127.0.0.1:"), logged
    assert any(w in logged[0]["error"] for w in ("dropped", "answered")), logged[0]
    assert_clean(edge)


async def test_a_call_still_works_and_bad_requests_inside_it_are_400(
    edge: ServeProcess, session: aiohttp.ClientSession
) -> None:
    async with session.post(
        edge.base_url + "/register_sip_call", json={"agent_id": "demo"}, headers=AUTH
    ) as resp:
        assert resp.status == 200
        call_id = (await resp.json())["call_id"]
    rtp = await open_socket()
    caller = Caller(("127.0.0.1", SIP_PORT), call_id, await open_socket())
    try:
        caller.send(caller.request("INVITE", sdp(rtp.port)))
        assert (await caller.response("INVITE")).status == 200
        caller.send(caller.request("ACK", cseq=caller.cseq))
        await wait_for(lambda: len(rtp.log) > 0, within=10)  # the greeting's RTP
        before = bad_input(edge, "sip-udp")
        contact = f"Contact: <sip:caller@127.0.0.1:{caller.sip.port}>".encode()
        reoffers = [
            caller.request(
                "INVITE", sdp(rtp.port).replace(f"audio {rtp.port}", f"audio {SUPERSCRIPT_TWO}")
            ),
            caller.request("INVITE", sdp(rtp.port), extra=(f"Session-Expires: {SUPERSCRIPT_TWO}",)),
            caller.request("INVITE", sdp(rtp.port)).replace(contact, b"Contact: <sip:c@[::1"),
        ]
        for reoffer in reoffers:
            caller.send(reoffer)
            assert (await caller.response("INVITE")).status == 400, reoffer
        await counted(edge, "sip-udp", before + len(reoffers))
        heard = len(rtp.log)
        await wait_for(lambda: len(rtp.log) > heard + 10, within=5)  # media goes on
        caller.send(caller.request("BYE"))
        assert (await caller.response("BYE")).status == 200
    finally:
        rtp.close()
        caller.sip.close()
    assert_clean(edge)


async def test_one_sender_repeating_bad_sip_gets_one_line_and_every_one_counted(
    edge: ServeProcess,
) -> None:
    before, lines = bad_input(edge, "sip-udp"), len(warnings(edge, "sip-udp"))
    sock = await open_socket()
    try:
        for _ in range(40):
            sock.send(b"\x00garbage\xff" * 10, ("127.0.0.1", SIP_PORT))
        await counted(edge, "sip-udp", before + 40)
    finally:
        sock.close()
    assert len(warnings(edge, "sip-udp")) - lines <= 1
    assert_clean(edge)


# -- SIP over TCP -----------------------------------------------------------------------------


class TcpPeer:
    """One TCP connection to the SIP port, with the edge's messages framed as they come."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.framer = StreamFramer()
        self.messages: list[bytes] = []

    @classmethod
    async def open(cls) -> TcpPeer:
        return cls(*await asyncio.open_connection("127.0.0.1", SIP_PORT))

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def final(self, method: str, within: float = 3.0) -> int:
        """The next final response to ``method`` on this connection."""
        while True:
            while self.messages:
                message = parse_message(self.messages.pop(0))
                if (
                    isinstance(message, Response)
                    and message.cseq().method == method
                    and message.status >= 200
                ):
                    return message.status
            data = await asyncio.wait_for(self.reader.read(65536), within)
            assert data, "the edge closed the connection"
            self.messages += [m for m in self.framer.feed(data) if m != KEEPALIVE]

    async def closed_by_edge(self, within: float = 3.0) -> bool:
        try:
            while await asyncio.wait_for(self.reader.read(65536), within):
                pass
        except TimeoutError:
            return False
        except ConnectionError:
            pass
        return True

    def close(self) -> None:
        self.writer.close()


def _tcp(data: bytes) -> bytes:
    return data.replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP")


async def test_hostile_sip_streams_are_closed_or_answered_and_counted(
    edge: ServeProcess,
) -> None:
    before = bad_input(edge, "sip-tcp")
    unframeable = [
        _tcp(_invite("s1")).replace(b"Content-Length: 0", b"X-No-Length: 0"),
        _tcp(_invite("s2")).replace(b"Content-Length: 0", b"Content-Length: " + b"9" * 5000),
        _tcp(_invite("s3")).replace(b"Content-Length: 0", b"Content-Length: 999999"),
        b"x" * 70_000,  # a head that never ends
        _tcp(_invite("s4"))[:100],  # and the rest never comes (slowloris)
    ]
    for data in unframeable:
        peer = await TcpPeer.open()
        try:
            peer.send(data)
            assert await peer.closed_by_edge(), data[:100]
        finally:
            peer.close()
    peer = await TcpPeer.open()
    try:
        peer.send(_tcp(wire.request("FROB", branch="z9hG4bKtcp1", call_id="tcp-1")))
        assert await peer.final("FROB") == 501
        peer.send(_tcp(_with_body("s5", "garbage")))
        assert await peer.final("INVITE") == 400
        options = wire.request("OPTIONS", branch="z9hG4bKtcp2", call_id="tcp-2")
        peer.send(KEEPALIVE + _tcp(options))  # the connection took all that: still served
        assert await peer.final("OPTIONS") == 200
    finally:
        peer.close()
    await counted(edge, "sip-tcp", before + len(unframeable) + 2)
    assert warnings(edge, "sip-tcp")
    assert_clean(edge)


# -- the media WebSockets ---------------------------------------------------------------------


async def test_garbage_on_a_twilio_stream_is_counted_with_the_call_id_and_bad_utf8_is_1007(
    edge: ServeProcess, session: aiohttp.ClientSession
) -> None:
    call = serve_call(edge.base_url, session)
    stream = await answered(call)
    call_id = stream.parameters[CALL_ID_PARAM]
    await call.open_stream(stream)
    await call.stream_until_quiet(until=lambda r: r.frames_received > 0, max_s=5)
    before = bad_input(edge, "twilio-media")
    payload = encode_payloads(b"\xff" * 160)[0].decode()
    garbage: list[str | bytes] = [
        "not json",
        "[1, 2]",
        '{"event": "frob"}',
        '{"event": "media"}',
        '{"event": "media", "media": {"payload": "%%% not base64 %%%"}}',
        json.dumps({"event": "dtmf", "dtmf": {"digit": ["5"]}}),
        json.dumps({"event": "media", "media": {"payload": payload}, "sequenceNumber": "²"}),
        b"\x00\xff binary",
    ]
    for message in garbage:
        await call.send_raw(message)
    await counted(edge, "twilio-media", before + len(garbage))
    assert call.ws is not None and not call.ws.closed  # skipped, the call goes on
    logged = [w for w in warnings(edge, "twilio-media") if w.get("call_id") == call_id]
    assert logged and logged[0]["peer"] == "127.0.0.1", warnings(edge, "twilio-media")

    await call.ws.send_frame(b"\xff\xfe not UTF-8", WSMsgType.TEXT)
    assert await call.wait_closed(5)
    assert call.result.close_code == 1007
    await counted(edge, "twilio-media", before + len(garbage) + 1)

    again = serve_call(edge.base_url, session)  # another call still works
    await again.open_stream(await answered(again))
    await again.stream_until_quiet(until=lambda r: r.frames_received > 0, max_s=5)
    assert again.result.frames_received > 0
    await again.stop()
    assert_clean(edge)


async def test_bad_utf8_before_twilios_start_is_1007_and_counted(
    edge: ServeProcess, session: aiohttp.ClientSession
) -> None:
    call = serve_call(edge.base_url, session)
    stream = await answered(call)
    before = bad_input(edge, "twilio-stream")
    async with session.ws_connect(stream.url) as ws:
        await ws.send_frame(b'{"event": "start\xff"}', WSMsgType.TEXT)
        msg = await ws.receive(timeout=5)
        assert msg.type is WSMsgType.CLOSE and msg.data == 1007
    await counted(edge, "twilio-stream", before + 1)
    assert warnings(edge, "twilio-stream")
    assert_clean(edge)


async def test_garbage_on_a_vonage_socket_is_counted_and_bad_utf8_is_1007(
    edge: ServeProcess, session: aiohttp.ClientSession
) -> None:
    call = SimulatedVonageCall(
        session, edge.base_url, to=VONAGE_NUMBER, signature_secret=VONAGE_SECRET
    )
    await call.post_answer()
    instruction = call.result.answer.websocket if call.result.answer else None
    assert instruction is not None
    call_id = instruction.headers[CALL_ID_HEADER]
    await call.open_socket(instruction)
    await wait_for(lambda: call.result.frames_received > 0, within=10)
    before = bad_input(edge, "vonage-media")
    garbage: list[str | bytes] = [
        "{not json",
        '"a string"',
        '{"event": "websocket:frob"}',
        '{"event": "websocket:dtmf", "digit": "55"}',
        b"\x00" * 3,  # not whole 16-bit samples
        b"\x00" * 64_000,  # 2 s in one message
    ]
    for message in garbage:
        await call.send_raw(message)
    await counted(edge, "vonage-media", before + len(garbage))
    logged = [w for w in warnings(edge, "vonage-media") if w.get("call_id") == call_id]
    assert logged, warnings(edge, "vonage-media")
    assert call.ws is not None and not call.ws.closed
    await call.ws.send_frame(b"\xc3\x28", WSMsgType.TEXT)
    assert await call.wait_closed(5)
    assert call.ws.close_code == 1007
    await counted(edge, "vonage-media", before + len(garbage) + 1)
    assert_clean(edge)


async def test_json_nested_past_the_parser_on_the_data_channel_is_skipped(
    edge: ServeProcess, session: aiohttp.ClientSession
) -> None:
    client = Client(events=True)
    try:
        body = {"agent_id": "demo", "offer": await client.offer()}
        async with session.post(edge.base_url + "/webrtc/offer", json=body, headers=AUTH) as resp:
            assert resp.status == 200
            answer = await resp.json()
        await client.pc.setRemoteDescription(
            RTCSessionDescription(**{k: answer[k] for k in ("sdp", "type")})
        )
        await wait_for(lambda: client.events.readyState == "open", within=10)
        before = bad_input(edge, "webrtc-datachannel")
        client.events.send("[" * 1000)  # fits in the size limit, past the parser's depth
        await counted(edge, "webrtc-datachannel", before + 1)
        client.events.send(json.dumps({"type": "end"}))  # the channel still works
        call = edge.base_url + f"/calls/{answer['call_id']}"

        async def state() -> str:
            async with session.get(call, headers=AUTH) as resp:
                return str((await resp.json())["state"])

        for _ in range(100):
            if await state() == "ended":
                break
            await asyncio.sleep(0.05)
        assert await state() == "ended"
    finally:
        await client.close()
    assert_clean(edge)


# -- HTTP that aiohttp cannot parse ---------------------------------------------------------------


async def test_unparseable_http_is_400_counted_and_one_line_per_client(
    edge: ServeProcess,
) -> None:
    before, lines = bad_input(edge, "http"), len(warnings(edge, "http"))
    requests = [
        b"POST /twilio/voice HTTP/1.1\r\nHost: edge\r\nX-Pad: " + b"p" * 9000 + b"\r\n\r\n",
        b"POST /vonage/event HTTP/1.1\r\nHost: edge\r\nContent-Length: x\r\n\r\n",
        b"POST /twilio/status HTTP/1.1\r\nHost: edge\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET / HTTP/1.1\r\nHost: edge\r\nBad Header: 1\r\n\r\n",
    ] * 5
    for request in requests:
        assert await raw_status(edge, request) == 400
    await counted(edge, "http", before + len(requests))
    assert len(warnings(edge, "http")) - lines <= 1
    assert_clean(edge)


# -- the agent core's link (in process) -----------------------------------------------------------


@pytest.fixture
async def deep_core() -> AsyncIterator[str]:
    """An agent core that answers initiate, then sends JSON nested 5000 deep, then ``clear``."""

    async def core(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive()
        await ws.send_str('{"method":"onready"}')
        await ws.send_str('{"method": "clear", "data": ' + "[" * 5000 + "}")
        await ws.send_str('{"method":"clear"}')
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/agent", core)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield str(server.make_url("/agent")).replace("http", "ws", 1)
    finally:
        await server.close()


async def test_an_agent_message_nested_past_the_parser_is_skipped(deep_core: str) -> None:
    counter = metrics.BAD_INPUT.labels(source="agent-core")
    before = counter._value.get()
    async with aiohttp.ClientSession() as http:
        link = AgentLink(http, deep_core, call_id="call_deep")
        try:
            await link.open({})
            assert await asyncio.wait_for(link.recv(), 5) == AgentMessage("clear", {})
        finally:
            await link.close()
    assert counter._value.get() == before + 1


# -- an internal error of the SIP user agent (in process) -----------------------------------------


async def test_a_bug_the_packets_find_is_one_error_a_minute_not_one_per_packet(
    make_edge: Any,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The edge's own fault stays an ERROR with its traceback, but a sender repeating the
    packet that finds it cannot repeat the traceback."""

    def broken(*args: object) -> list[object]:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(UserAgent, "_in_dialog", broken)
    edge = await make_edge(sip_test_settings(receiver))
    endpoint = edge.app[SIP_ENDPOINT]
    sock = await open_socket()
    try:
        with caplog.at_level(logging.WARNING):
            for i in range(20):
                bye = wire.request("BYE", to_tag="t", branch=f"z9hG4bKbug{i}", call_id="bug-1")
                sock.send(bye, ("127.0.0.1", endpoint.port))
            assert endpoint.ua is not None
            await wait_for(lambda: endpoint.ua.stats.internal_errors == 20, within=5)
    finally:
        sock.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage()[:200] for r in errors]
    assert "ZeroDivisionError: a bug" in errors[0].getMessage()


# -- the rate limiter (in process) ----------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_sender_per_interval_then_the_count_left_out() -> None:
    clock = Clock()
    limiter = badinput.RateLimiter(interval_s=60, clock=clock)
    assert limiter.admit("a") == badinput.Admitted(0)
    assert [limiter.admit("a") for _ in range(99)] == [None] * 99
    assert limiter.admit("b") == badinput.Admitted(0)  # another sender has its own window
    clock.now += 60
    assert limiter.admit("a") == badinput.Admitted(99)  # the summary of what was left out
    assert limiter.admit("a") is None


def spoofed(count: int) -> list[str]:
    return [f"10.{i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(count)]


def test_the_sender_table_is_bounded() -> None:
    clock = Clock()
    limiter = badinput.RateLimiter(interval_s=60, max_sources=100, max_lines=10**6, clock=clock)
    for sender in spoofed(10_000):
        limiter.admit(sender)
        limiter.admit(sender)  # left out, then evicted: the summary still counts it
    assert len(limiter) == 100  # an attacker choosing its addresses fills no memory
    assert limiter.take_overflow() == 10_000 - 100
    assert limiter.take_overflow() == 0


def test_all_senders_together_get_a_bounded_number_of_lines() -> None:
    clock = Clock()
    limiter = badinput.RateLimiter(interval_s=60, max_sources=100, max_lines=10, clock=clock)
    admitted = [limiter.admit(sender) for sender in spoofed(10_000)]
    assert sum(a is not None for a in admitted) == 10
    assert len(limiter) == 10  # the ones left out are not remembered either
    assert limiter.take_overflow() == 10_000 - 10
    clock.now += 60
    assert limiter.admit("192.0.2.9") is not None  # a new window


def test_report_counts_every_one_and_logs_the_first_with_the_sender_and_call_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limiter = badinput.RateLimiter(clock=Clock())
    counter = metrics.BAD_INPUT.labels(source="test-source")
    before = counter._value.get()
    with caplog.at_level(logging.WARNING, logger="telephony_edge.badinput"):
        for _ in range(25):
            badinput.report(
                "test-source", "bad thing", "192.0.2.1", port=5060, call_id="call_1",
                limiter=limiter,
            )  # fmt: skip
    assert counter._value.get() == before + 25
    [record] = caplog.records
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert record.getMessage() == "bad test-source input from 192.0.2.1:5060: bad thing"
    assert (record.call_id, record.error) == ("call_1", "bad thing")  # type: ignore[attr-defined]


def test_phrase_keeps_the_senders_bytes_out() -> None:
    assert badinput.phrase("bad Via 'SIP/2.0/UDP x;secret'") == "bad Via"
    assert badinput.phrase('bad URI in "<sip:x@y>"') == "bad URI"
    assert badinput.phrase("unknown type 'x', not 'y'") == "unknown type"
    assert badinput.phrase("body shorter than Content-Length") == (
        "body shorter than Content-Length"
    )
