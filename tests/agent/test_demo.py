"""The demo agent core over real WebSockets on 127.0.0.1, and the shared
message helpers it speaks through."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import time
import wave
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from telephony_edge.agent import messages as m
from telephony_edge.agent.demo import (
    DemoCoreSettings,
    add_agent_core_routes,
    create_agent_core_app,
    greeting_chime,
    resume_chime,
    run_agent_core,
)
from telephony_edge.agent.vad import VadConfig
from telephony_edge.audio.frames import FRAME_BYTES, SILENCE_FRAME, FrameSplitter

FIXTURES = Path(__file__).parent.parent / "fixtures"
BPS = 32_000  # bytes per second of canonical audio
FAST = DemoCoreSettings(vad=VadConfig(hangover_ms=300), greeting_s=0.4, idle_timeout_s=10)


def fixture_frames(name: str) -> list[bytes]:
    with wave.open(str(FIXTURES / name)) as w:
        pcm = w.readframes(w.getnframes())
    splitter = FrameSplitter()
    frames = splitter.push(pcm)
    tail = splitter.flush()
    return frames + ([tail] if tail else [])


@dataclass
class Msg:
    at: float
    method: str | None  # None for audio
    data: Any  # dict for events, bytes for audio


class Peer:
    """The test's side of one call: an edge stand-in on an aiohttp client ws."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.audio = bytearray()

    async def initiate(self, **data: Any) -> None:
        data.setdefault("call", {"call_id": "test-call", "provider": "test"})
        await self.ws.send_str(m.encode(m.INITIATE, data))

    async def recv(self, wait: float = 3.0) -> Msg:
        msg = await self.ws.receive(timeout=wait)
        now = time.monotonic()
        if msg.type is WSMsgType.BINARY:
            self.audio += msg.data
            return Msg(now, None, msg.data)
        if msg.type is WSMsgType.TEXT:
            method, data = m.decode(msg.data)
            return Msg(now, method, data)
        raise ConnectionError(f"link closed: {msg.type!r} code={self.ws.close_code}")

    async def until(self, method: str, wait: float = 3.0) -> tuple[list[Msg], Msg]:
        """Read until ``method``; return what came before it, and it."""
        deadline = time.monotonic() + wait
        before: list[Msg] = []
        while True:
            msg = await self.recv(max(0.01, deadline - time.monotonic()))
            if msg.method == method:
                return before, msg
            before.append(msg)

    async def audio_bytes(self, n: int, wait: float = 3.0) -> bytes:
        """Read until ``n`` bytes of agent audio have come (events skipped)."""
        start = len(self.audio)
        deadline = time.monotonic() + wait
        while len(self.audio) - start < n:
            await self.recv(max(0.01, deadline - time.monotonic()))
        return bytes(self.audio[start : start + n])

    async def closed_with(self, wait: float = 3.0) -> int | None:
        """The close code the core sent (skipping whatever came before it)."""
        while True:
            msg = await self.ws.receive(timeout=wait)
            if msg.type is WSMsgType.CLOSE:
                return int(msg.data)
            if msg.type in (WSMsgType.CLOSED, WSMsgType.CLOSING, WSMsgType.ERROR):
                return self.ws.close_code


async def send_realtime(ws: aiohttp.ClientWebSocketResponse, frames: list[bytes]) -> None:
    """Send 20 ms frames on the real-time grid, as an edge does."""
    t0 = time.monotonic()
    for i, frame in enumerate(frames):
        await ws.send_bytes(frame)
        await asyncio.sleep(max(0.0, t0 + (i + 1) * 0.02 - time.monotonic()))


Connect = Callable[..., Awaitable[Peer]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """``await connect(settings)`` serves a fresh demo core and opens a call to it."""
    servers: list[TestServer] = []
    session = aiohttp.ClientSession()

    async def _connect(settings: DemoCoreSettings = FAST, path: str = "/agent") -> Peer:
        server = TestServer(create_agent_core_app(settings, path=path), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return Peer(await session.ws_connect(server.make_url(path)))

    yield _connect
    await session.close()
    for server in servers:
        await server.close()


async def ready(peer: Peer, **initiate: Any) -> Msg:
    await peer.initiate(**initiate)
    msg = await peer.recv()
    assert msg.method == m.ONREADY
    return msg


async def test_initiate_onready_then_greeting(connect: Connect) -> None:
    peer = await connect()
    await ready(peer, agent={"agent_id": "a", "agent_config": {"first_message": "Hi Ada!"}})

    before, text = await peer.until(m.ONRESPONSETEXT)
    assert [x.method for x in before] == [m.START_ANSWERING]
    assert text.data == {"text": "Hi Ada!", "is_final": True}
    greeting = await peer.audio_bytes(len(greeting_chime(FAST.greeting_s)))
    assert greeting == greeting_chime(FAST.greeting_s)
    assert len(greeting) == 0.4 * BPS
    # Sent in chunk_ms pieces, and nothing more follows.
    with pytest.raises(TimeoutError):
        await peer.recv(wait=0.3)


async def test_a_resumed_call_is_not_greeted_again_and_counts_its_turns_on(
    connect: Connect,
) -> None:
    peer = await connect()
    chat = [
        {"role": "assistant", "content": "Hello.", "ts": 1.0},
        {"role": "user", "content": "[caller spoke 1.4 s]", "ts": 3.0},
        {"role": "assistant", "content": "Here is what you said.", "ts": 3.1},
    ]
    continuation = {"session_id": "sess_1", "found": True, "resumed": True, "chat": chat}
    await ready(
        peer,
        agent={"agent_id": "a", "agent_config": {"first_message": "Hi Ada!"}},
        session_continuation=continuation,
    )
    before, text = await peer.until(m.ONRESPONSETEXT)
    assert [x.method for x in before] == [m.START_ANSWERING]
    assert text.data == {"text": FAST.resumed_text, "is_final": True}  # no greeting
    assert await peer.audio_bytes(len(resume_chime())) == resume_chime()
    assert resume_chime() != greeting_chime(0.6)
    await asyncio.sleep(0.7)  # the chime plays out

    speech = fixture_frames("speech_order.wav")
    sender = asyncio.create_task(send_realtime(peer.ws, speech + [SILENCE_FRAME] * 60))
    try:
        _, action = await peer.until(m.AI_ACTION, wait=4)
    finally:
        sender.cancel()
    assert action.data == {"action": "echo", "turn": 2}  # the second turn of the call


async def test_echoes_the_caller_after_they_stop(connect: Connect) -> None:
    peer = await connect()
    await ready(peer)
    await peer.audio_bytes(len(greeting_chime(FAST.greeting_s)))
    await asyncio.sleep(FAST.greeting_s)  # let the greeting finish playing

    speech = fixture_frames("speech_order.wav")
    sent = b"".join(speech)
    sender = asyncio.create_task(send_realtime(peer.ws, speech + [SILENCE_FRAME] * 60))
    try:
        before, transcript = await peer.until(m.ONTRANSCRIPT, wait=4)
        assert all(x.method != m.CLEAR for x in before)
        assert transcript.data["is_final"] is True
        spoken = re.fullmatch(r"\[caller spoke (\d+\.\d) s\]", transcript.data["text"])
        assert spoken and float(spoken[1]) == pytest.approx(1.4, abs=0.15)

        turn = [await peer.recv() for _ in range(4)]
        assert [x.method for x in turn] == [
            m.AI_ACTION,
            m.FUNCTION_CALL,
            m.START_ANSWERING,
            m.ONRESPONSETEXT,
        ]
        call = turn[1].data
        assert call["name"] == "demo_echo"
        echo = await peer.audio_bytes(call["params"]["duration_ms"] * BPS // 1000)
    finally:
        sender.cancel()

    # The echo is the caller's own PCM: the utterance, whole frames, no hangover.
    assert len(echo) / BPS == pytest.approx(1.397, abs=0.12)
    assert len(echo) % FRAME_BYTES == 0
    assert echo in sent
    assert sent.index(echo) == pytest.approx(0.25 * BPS, abs=0.06 * BPS)


async def test_barge_in_clears_and_stops_the_audio(connect: Connect) -> None:
    settings = replace(FAST, greeting_s=2.0)
    peer = await connect(settings)
    await ready(peer)
    await peer.until(m.ONRESPONSETEXT)
    greeting_len = len(greeting_chime(2.0))

    speech = fixture_frames("speech_table.wav")[:60]  # 0.25 s silence, then "Hello, I..."
    started = time.monotonic()
    sender = asyncio.create_task(send_realtime(peer.ws, speech + [SILENCE_FRAME] * 50))
    try:
        before, clear = await peer.until(m.CLEAR, wait=2)
        # Speech begins 0.25 s in; the VAD needs 3 voiced frames.
        assert clear.at - started < 0.7
        got = sum(len(x.data) for x in before if x.method is None)
        assert 0 < got < greeting_len

        # The caller keeps talking: no more agent audio until its echo turn.
        after, transcript = await peer.until(m.ONTRANSCRIPT, wait=3)
        assert [x for x in after if x.method is None] == []
        assert transcript.at - clear.at > 0.5  # long enough for the greeting to have gone on
    finally:
        sender.cancel()


@pytest.mark.parametrize(
    ("metadata", "destination"),
    [({"transfer_to": "+15550001111"}, "+15550001111"), ({}, "+15555550123")],
)
async def test_dtmf_0_transfers(
    connect: Connect, metadata: dict[str, str], destination: str
) -> None:
    peer = await connect()
    await ready(peer, metadata=metadata)
    await peer.ws.send_str(m.encode(m.DTMF, {"digit": "0"}))
    _, msg = await peer.until(m.TRANSFER_CALL)
    assert msg.data == {"destination": destination}


async def test_dtmf_9_ends_call_and_other_events_are_ignored(connect: Connect) -> None:
    peer = await connect()
    await ready(peer)
    for text in (
        m.encode(m.PING),
        m.encode("no_such_method", {"x": 1}),
        m.encode(m.PLAYBACK, {"stream_id": "s1"}),
        m.encode(m.INITIATE, {}),
        m.encode(m.DTMF, {"digit": "5"}),
        m.encode(m.DTMF, {"digit": "9"}),
    ):
        await peer.ws.send_str(text)
    before, end = await peer.until(m.END_CALL)
    assert end.data == {"reason": "dtmf 9"}
    actions = [x.data for x in before if x.method == m.AI_ACTION]
    assert actions == [{"action": "dtmf", "digit": "5"}]
    assert not peer.ws.closed


async def test_dtmf_hash_ends_the_session(connect: Connect) -> None:
    peer = await connect()
    await ready(peer)
    await peer.ws.send_str(m.encode(m.DTMF, {"digit": "#"}))
    _, ended = await peer.until(m.ONSESSIONENDED)
    assert ended.data == {"reason": "dtmf #"}
    assert await peer.closed_with() == 1000


@pytest.mark.parametrize(
    "first",
    ["{not json", '["initiate"]', '{"data": {}}', m.encode(m.PING), b"\x00\x01"],
    ids=["malformed", "not-object", "no-method", "ping-first", "binary-first"],
)
async def test_no_initiate_first_closes_1008(connect: Connect, first: str | bytes) -> None:
    peer = await connect()
    if isinstance(first, bytes):
        await peer.ws.send_bytes(first)
    else:
        await peer.ws.send_str(first)
    assert await peer.closed_with() == 1008


async def test_malformed_json_after_initiate_closes_1008(connect: Connect) -> None:
    peer = await connect()
    await ready(peer)
    await peer.ws.send_str("{oops")
    assert await peer.closed_with() == 1008


async def test_initiate_timeout_closes_1008(connect: Connect) -> None:
    peer = await connect(replace(FAST, initiate_timeout_s=0.2))
    assert await peer.closed_with() == 1008


async def test_oversized_frame_closes_1009(connect: Connect) -> None:
    peer = await connect(replace(FAST, max_message_bytes=4 * FRAME_BYTES))
    await ready(peer)
    await peer.ws.send_bytes(bytes(8 * FRAME_BYTES))
    assert await peer.closed_with() == 1009


async def test_idle_timeout_ends_the_session(connect: Connect) -> None:
    peer = await connect(replace(FAST, idle_timeout_s=0.3))
    await ready(peer)
    _, ended = await peer.until(m.ONSESSIONENDED)
    assert ended.data == {"reason": "idle timeout"}
    assert await peer.closed_with() == 1000


async def test_pause_hook_and_end_after_greeting(connect: Connect) -> None:
    peer = await connect()
    onready = await ready(peer, metadata={"demo_pause_ms": 300, "demo_end_after_greeting": True})
    pause = await peer.recv()
    assert pause.method == m.PAUSE
    held, unpause = await peer.until(m.UNPAUSE)
    assert 0.29 <= unpause.at - pause.at < 0.5
    # The greeting is sent during the pause, for the edge to hold.
    assert sum(len(x.data) for x in held if x.method is None) == 0.4 * BPS

    # The greeting plays after the pause, so the call ends pause + greeting later.
    _, end = await peer.until(m.END_CALL)
    assert end.data == {"reason": "demo_end_after_greeting"}
    assert 0.68 <= end.at - onready.at < 1.0


async def test_end_after_greeting_without_pause(connect: Connect) -> None:
    peer = await connect(replace(FAST, greeting_s=0.6))
    onready = await ready(peer, metadata={"demo_end_after_greeting": "true"})
    before, end = await peer.until(m.END_CALL)
    assert m.PAUSE not in [x.method for x in before]
    assert 0.58 <= end.at - onready.at < 0.9


async def test_recording_is_cut_at_max_length(connect: Connect) -> None:
    peer = await connect(replace(FAST, max_recording_s=0.5))
    await ready(peer)
    await peer.audio_bytes(len(greeting_chime(FAST.greeting_s)))
    await asyncio.sleep(FAST.greeting_s)
    speech = fixture_frames("speech_table.wav")
    for frame in speech[:40]:  # the VAD counts frames, not seconds: no need to wait
        await peer.ws.send_bytes(frame)
    _, transcript = await peer.until(m.ONTRANSCRIPT)
    assert transcript.data["text"] == "[caller spoke 0.5 s]"
    _, call = await peer.until(m.FUNCTION_CALL)
    assert call.data["params"]["duration_ms"] == 500
    echo = await peer.audio_bytes(BPS // 2)
    sent = b"".join(speech[:40])
    assert echo in sent  # from the onset (0.25 s) on
    assert sent.index(echo) == pytest.approx(0.25 * BPS, abs=2 * FRAME_BYTES)


async def test_mounted_in_another_app() -> None:
    app = web.Application()
    add_agent_core_routes(app, path="/_demo_agent", settings=FAST)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(server.make_url("/_demo_agent")) as resp:
                assert resp.status == 400  # not a WebSocket upgrade
            async with session.ws_connect(server.make_url("/_demo_agent")) as ws:
                peer = Peer(ws)
                await ready(peer)
    finally:
        await server.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_run_agent_core_until_cancelled() -> None:
    port = _free_port()
    task = asyncio.create_task(run_agent_core("127.0.0.1", port, FAST))
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            with contextlib.suppress(aiohttp.ClientConnectionError):
                ws = await session.ws_connect(f"http://127.0.0.1:{port}/agent")
                break
            await asyncio.sleep(0.02)
        else:
            pytest.fail("run_agent_core did not start listening")
        peer = Peer(ws)
        await ready(peer)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Shutdown closes the open call rather than leaving it hanging.
        assert await peer.closed_with() == 1001
        await ws.close()


# -- messages --------------------------------------------------------------


def test_encode_is_compact_and_omits_missing_data() -> None:
    assert m.encode(m.ONREADY) == '{"method":"onready"}'
    assert json.loads(m.encode(m.DTMF, {"digit": "5"})) == {
        "method": "dtmf",
        "data": {"digit": "5"},
    }
    assert m.encode(m.ONRESPONSETEXT, {"text": "héllo"}) == (
        '{"method":"onresponsetext","data":{"text":"héllo"}}'
    )
    with pytest.raises(ValueError):
        m.encode("")


def test_decode_round_trips_and_normalises_data() -> None:
    assert m.decode(m.encode(m.END_CALL, {"reason": "x"})) == (m.END_CALL, {"reason": "x"})
    assert m.decode('{"method":"onready"}') == ("onready", {})
    assert m.decode(b'{"method":"clear","data":null}') == ("clear", {})
    assert m.decode('{"method":"ai_action","data":"thinking"}') == (
        "ai_action",
        {"value": "thinking"},
    )


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("{nope", "malformed JSON"),
        (b"\xff\xfe", "malformed JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"data": {}}', "no string 'method'"),
        ('{"method": 5}', "no string 'method'"),
    ],
)
def test_decode_errors_say_what_is_wrong(text: str | bytes, error: str) -> None:
    with pytest.raises(m.ProtocolError, match=error):
        m.decode(text)


def test_method_sets_cover_the_protocol() -> None:
    assert {"initiate", "ping", "dtmf", "playback", "error", "amd_result"} == m.EDGE_TO_CORE
    assert {
        "onready", "ontranscript", "onresponsetext", "function_call", "ai_action", "clear",
        "pause", "unpause", "start_answering", "transfer_call", "end_call", "onsessionended",
        "send_dtmf",  # the agent presses keys (issue 23)
    } == m.CORE_TO_EDGE  # fmt: skip
    assert not m.CORE_TO_EDGE & m.EDGE_TO_CORE
