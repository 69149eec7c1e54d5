"""Shared fixtures: free ports, speech audio, a scripted test leg, the edge on a real socket."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import wave
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from telephony_edge.app import create_app, set_local_address
from telephony_edge.audio.frames import FRAME_BYTES, SILENCE_FRAME
from telephony_edge.calls.leg import Leg, LegEnded, LegEvent, LegInfo
from telephony_edge.config import Settings, load_settings
from telephony_edge.services import SERVICES, Services

FIXTURES = Path(__file__).parent / "fixtures"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``telephony-edge ARGS`` as a user runs it: a real process, its exit status and output."""
    return subprocess.run(
        [sys.executable, "-m", "telephony_edge", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_wav(name: str) -> bytes:
    """A committed speech fixture as canonical PCM16 16 kHz mono."""
    with wave.open(str(FIXTURES / name)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (16000, 1, 2)
        return wav.readframes(wav.getnframes())


async def wait_for(predicate: Callable[[], object], within: float = 10.0) -> None:
    """Poll ``predicate`` until true; fail the test after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.fixture(scope="session")
def speech() -> bytes:
    return read_wav("speech_table.wav")


@dataclass
class TestLeg(Leg):
    """A network leg driven by the test: it speaks frames at real time and records what it hears."""

    __test__ = False

    info: LegInfo = field(
        default_factory=lambda: LegInfo("test", "inbound", "+15555550100", "+15555550199", "T1")
    )
    events: asyncio.Queue[LegEvent] = field(default_factory=asyncio.Queue)
    heard: list[tuple[float, bytes]] = field(default_factory=list)
    clears: list[float] = field(default_factory=list)
    transfers: list[str] = field(default_factory=list)
    hung_up: bool = False
    closed: bool = False
    _ended: LegEnded | None = None

    async def recv(self) -> LegEvent:
        if self._ended is not None:
            return self._ended
        event = await self.events.get()
        if isinstance(event, LegEnded):
            self._ended = event
        return event

    async def send_frame(self, frame: bytes) -> None:
        assert len(frame) == FRAME_BYTES
        self.heard.append((asyncio.get_running_loop().time(), frame))

    async def clear(self) -> None:
        self.clears.append(asyncio.get_running_loop().time())

    async def hangup(self) -> None:
        self.hung_up = True

    async def transfer(self, destination: str) -> None:
        self.transfers.append(destination)

    async def close(self) -> None:
        self.closed = True

    async def speak(self, pcm: bytes, *, silence_after_s: float = 0.0) -> None:
        """Feed ``pcm`` then silence, one 20 ms frame per 20 ms of wall time."""
        loop = asyncio.get_running_loop()
        pcm = pcm + SILENCE_FRAME * round(silence_after_s / 0.02)
        start = loop.time()
        for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES):
            self.events.put_nowait(pcm[i : i + FRAME_BYTES])
            delay = start + (i // FRAME_BYTES + 1) * 0.02 - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)

    def heard_audio(self, since: float = 0.0) -> bytes:
        return b"".join(f for t, f in self.heard if t >= since)


def edge_settings(**overrides: Any) -> Settings:
    """Settings for an edge under test: one agent, built-in agent core."""
    base: dict[str, Any] = {
        "agents": {"echo": {"prompt": "You echo. Caller {FromPhone}.", "first_message": "Hi"}},
        "calls": {"inactivity_timeout_s": 30},
    }
    base.update(overrides)
    return load_settings(None, **base)


@dataclass
class Edge:
    server: TestServer
    app: web.Application

    @property
    def services(self) -> Services:
        return self.app[SERVICES]

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))


EdgeFactory = Callable[..., "asyncio.Future[Edge] | Any"]


@pytest.fixture
async def make_edge() -> AsyncIterator[Callable[..., Any]]:
    """Start edges on real sockets on 127.0.0.1; all are stopped after the test."""
    servers: list[TestServer] = []

    async def start(settings: Settings | None = None) -> Edge:
        app = create_app(settings or edge_settings())
        server = TestServer(app, host="127.0.0.1", port=0)
        await server.start_server()
        set_local_address(app, "127.0.0.1", server.port or 0)
        servers.append(server)
        return Edge(server, app)

    yield start
    for server in servers:
        await server.close()
