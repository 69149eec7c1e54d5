"""SIP over TCP: Content-Length framing, and the running edge's connections (sipp -t t1, raw)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telephony_edge.sip.message import Response
from telephony_edge.sip.parse import parse_message
from telephony_edge.sip.provider import SIP_ENDPOINT
from telephony_edge.sip.tcp import KEEPALIVE, FramingError, StreamFramer
from tests.conftest import Edge, Receiver, wait_for
from tests.sip import wire
from tests.sip.conftest import finished, register, sip_test_settings, sipp, sipp_binary

OPTIONS = wire.request("OPTIONS", branch="z9hG4bKt1")
INVITE = wire.request("INVITE", body=wire.SIPP_SDP, branch="z9hG4bKt2")


def test_framer_cuts_back_to_back_and_split_messages_and_keepalives() -> None:
    framer = StreamFramer()
    assert framer.feed(OPTIONS + INVITE) == [OPTIONS, INVITE]
    got: list[bytes] = []
    for i in range(len(INVITE)):  # one byte at a time
        got += framer.feed(INVITE[i : i + 1])
    assert got == [INVITE] and not framer.pending
    assert framer.feed(b"\r\n") == [] and framer.pending  # maybe a ping coming
    assert framer.feed(b"\r\n" + OPTIONS) == [KEEPALIVE, OPTIONS]
    assert framer.feed(b"\r\n" + OPTIONS) == [OPTIONS]  # a lone CRLF is skipped
    compact = OPTIONS.replace(b"Content-Length: 0", b"l: 0")
    assert framer.feed(compact) == [compact]


def test_framer_refuses_what_cannot_be_framed() -> None:
    with pytest.raises(FramingError):
        StreamFramer().feed(OPTIONS.replace(b"Content-Length: 0\r\n", b""))
    with pytest.raises(FramingError):
        StreamFramer().feed(OPTIONS.replace(b"Content-Length: 0", b"Content-Length: 99999"))
    with pytest.raises(FramingError):
        StreamFramer().feed(b"INVITE sip:x SIP/2.0\r\nVia: " + b"a" * 70_000)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=600), max_size=12), st.integers(0, 2))
def test_framer_on_random_chunks_frames_or_refuses_never_crashes(
    chunks: list[bytes], glue: int
) -> None:
    """Random bytes, and real messages cut at random places: only FramingError escapes,
    and every message framed is exactly one of those sent."""
    framer = StreamFramer()
    stream = b"".join(chunks) if glue == 0 else (OPTIONS + INVITE) * glue
    cuts = sorted({len(c) % (len(stream) + 1) for c in chunks})
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    out: list[bytes] = []
    try:
        for piece in pieces:
            out += framer.feed(piece)
    except FramingError:
        assert glue == 0
        return
    if glue:
        assert out == [OPTIONS, INVITE] * glue


@pytest.fixture
async def tcp_edge(make_edge: Callable[..., Any], receiver: Receiver) -> Edge:
    sipp_binary()
    sip = {"tcp_read_timeout_s": 0.5, "tcp_max_connections": 3}
    edge: Edge = await make_edge(sip_test_settings(receiver, sip))
    return edge


@pytest.mark.both_loops
async def test_sipp_over_tcp_dtmf_and_bye_from_the_edge(
    tcp_edge: Edge, receiver: Receiver, tmp_path: Path
) -> None:
    reg = await register(tcp_edge)
    process = await sipp(tcp_edge, "uac_dtmf_bye.xml", reg["call_id"], tmp_path, "-t", "t1")
    await finished(process, tmp_path)  # INFO answered and the edge's BYE, all on sipp's socket
    await wait_for(lambda: receiver.received, within=10)
    assert receiver.received[0]["call_status"] == "agent-ended"
    tcp = tcp_edge.app[SIP_ENDPOINT].tcp
    assert tcp is not None and tcp.accepted == 1 and tcp.refused == 0
    assert tcp.framing_errors == 0


async def connect(edge: Edge) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", edge.app[SIP_ENDPOINT].port)


async def read_response(reader: asyncio.StreamReader) -> Response:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
    msg = parse_message(head)
    assert isinstance(msg, Response)
    return msg


async def closed(reader: asyncio.StreamReader, within: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), within) == b""
    except (TimeoutError, ConnectionResetError):
        return False


async def test_responses_on_the_connection_keepalive_pong_and_back_to_back(
    tcp_edge: Edge,
) -> None:
    reader, writer = await connect(tcp_edge)
    second = OPTIONS.replace(b"z9hG4bKt1", b"z9hG4bKt3")
    writer.write(KEEPALIVE + OPTIONS + second)
    assert await asyncio.wait_for(reader.readexactly(2), 3) == b"\r\n"  # RFC 5626 pong
    first, other = await read_response(reader), await read_response(reader)
    assert (first.status, other.status) == (200, 200)
    assert first.top_via().branch == "z9hG4bKt1" and other.top_via().branch == "z9hG4bKt3"
    writer.close()


async def test_framing_error_slow_sender_and_a_full_table_close_connections(
    tcp_edge: Edge,
) -> None:
    tcp = tcp_edge.app[SIP_ENDPOINT].tcp
    assert tcp is not None
    reader, writer = await connect(tcp_edge)
    writer.write(OPTIONS.replace(b"Content-Length: 0\r\n", b""))  # unframeable
    assert await closed(reader, 3)
    slow_reader, slow = await connect(tcp_edge)
    slow.write(OPTIONS[:40])  # and never the rest
    assert await closed(slow_reader, 3)
    assert tcp.framing_errors == 1 and tcp.timed_out >= 1
    kept = [await connect(tcp_edge) for _ in range(3)]
    await wait_for(lambda: len(tcp.connections) == 3, within=3)
    _, newcomer = await connect(tcp_edge)  # a full table: the idle one longest makes room
    assert await closed(kept[0][0], 3) and tcp.refused == 0
    for _, w in [*kept, (None, newcomer)]:
        w.close()
