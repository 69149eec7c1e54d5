"""Shared fixtures: free ports, speech audio, a scripted test leg, the edge on a real socket."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import wave
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest
import uvloop
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from telephony_edge.app import create_app, set_local_address
from telephony_edge.audio.frames import FRAME_BYTES, SILENCE_FRAME
from telephony_edge.calls.dtmf import DtmfRequest
from telephony_edge.calls.leg import Capabilities, Leg, LegEnded, LegEvent, LegInfo
from telephony_edge.config import Settings
from telephony_edge.config_loading import load_settings
from telephony_edge.services import SERVICES, Services

FIXTURES = Path(__file__).parent / "fixtures"

# -- the event loop: the one ``serve`` runs ----------------------------------------
#
# ``telephony-edge serve`` runs uvloop (``server.use_uvloop: true``), whose
# transports and ``sendto`` differ from asyncio's; so every async test and
# fixture runs on uvloop too. Tests marked ``both_loops`` also run on the
# stdlib loop, the one ``use_uvloop: false`` gives.
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop,
    "asyncio": asyncio.new_event_loop,
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "both_loops: run on the stdlib asyncio loop as well as on uvloop"
    )


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    if item.get_closest_marker("both_loops") is not None:
        return LOOPS
    return {"uvloop": LOOPS["uvloop"]}


def missing_peer(what: str, install: str) -> NoReturn:
    """A real peer the tests need is not installed: a failure in CI, a skip elsewhere.

    In CI (``CI=true``) ``.ci/run`` installs every peer, so a missing one is a
    broken CI, never a test quietly not run.
    """
    reason = f"{what} is missing ({install})"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI must run this test: {reason}", pytrace=False)
    pytest.skip(reason)


def require_binary(name: str, install: str) -> str:
    """The path of a peer's binary (``redis-server``, ``sipp`` …), else :func:`missing_peer`."""
    path = shutil.which(name)
    if path is None:
        missing_peer(name, install)
    return path


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
    playout_lead_frames = 3
    capabilities = Capabilities(
        clear=True, dtmf_out=True, transfer_to_number=True, transfer_to_sip=True
    )

    info: LegInfo = field(
        default_factory=lambda: LegInfo("test", "inbound", "+15555550100", "+15555550199", "T1")
    )
    events: asyncio.Queue[LegEvent] = field(default_factory=asyncio.Queue)
    heard: list[tuple[float, bytes]] = field(default_factory=list)
    clears: list[float] = field(default_factory=list)
    transfers: list[str] = field(default_factory=list)
    dtmf_sent: list[DtmfRequest] = field(default_factory=list)
    talkspurts: int = 0
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

    def send_frame(self, frame: bytes, talkspurt_start: bool) -> None:
        assert len(frame) == FRAME_BYTES
        self.heard.append((asyncio.get_running_loop().time(), frame))
        if talkspurt_start:
            self.talkspurts += 1

    def clear(self) -> None:
        self.clears.append(asyncio.get_running_loop().time())

    async def hangup(self) -> None:
        self.hung_up = True

    async def transfer(self, destination: str) -> None:
        self.transfers.append(destination)

    async def send_dtmf(self, request: DtmfRequest) -> None:
        self.dtmf_sent.append(request)

    async def close(self) -> None:
        self.closed = True

    async def speak(self, pcm: bytes, *, silence_after_s: float = 0.0) -> None:
        """Feed ``pcm`` then silence, one 20 ms frame per 20 ms of wall time."""
        loop = asyncio.get_running_loop()
        pcm = pcm + SILENCE_FRAME * round(silence_after_s / 0.02)
        start = loop.time()
        for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES):
            self.make_frame(pcm[i : i + FRAME_BYTES])
            delay = start + (i // FRAME_BYTES + 1) * 0.02 - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)

    def make_frame(self, frame: bytes) -> None:
        """The network made a caller frame: queued for :meth:`recv`."""
        self.events.put_nowait(frame)

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


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Any]:
    """A private ``redis-server`` on a free port for the whole session (never the machine's).

    Tests share it and keep apart by key prefix. Missing binary: skip, or fail under CI=true.
    """
    from tests.coord.redis_servers import redis_server as start_redis

    with start_redis() as server:
        yield server


# -- a real ``telephony-edge serve`` process -------------------------------------


@dataclass
class ServeProcess:
    """A ``telephony-edge serve`` subprocess on 127.0.0.1; stdout and stderr go to ``log_path``."""

    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    @property
    def ws_url(self) -> str:
        return "ws" + self.base_url.removeprefix("http")

    def assert_healthy(self) -> None:
        """Still running, ``/healthz`` answers, and nothing went wrong in its log.

        Hostile input must get the protocol's answer: no traceback, no
        ERROR-level line (those are for the edge's own faults).
        """
        assert self.process.poll() is None, f"the edge exited:\n{self.log[-3000:]}"
        with urllib.request.urlopen(self.base_url + "/healthz", timeout=5) as resp:
            assert resp.status == 200
        log = self.log
        assert "Traceback" not in log, log[-3000:]
        errors = [line for line in log.splitlines() if '"level": "error"' in line]
        assert not errors, "\n".join(errors[:5])

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the process's ``/metrics`` (0 when absent)."""
        with urllib.request.urlopen(self.base_url + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return 0.0


def start_serve_process(
    config: dict[str, Any],
    directory: Path,
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> ServeProcess:
    """Write ``config`` as YAML (host and port filled in) and run the edge on it.

    ``server.public_url`` defaults to the address it listens on, so Twilio
    signatures computed against ``base_url`` check out. ``port``: a port chosen
    before (a proxy in front already names it); else a free one.
    """
    port = port or free_port()
    base_url = f"http://127.0.0.1:{port}"
    config = {**config, "server": {"public_url": base_url, **config.get("server", {})}}
    config["server"].update(host="127.0.0.1", port=port)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"edge-{port}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    log_path = directory / f"edge-{port}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "telephony_edge", "serve", "--config", str(path)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    edge = ServeProcess(process, base_url, log_path)
    deadline = time.monotonic() + 20
    while True:
        assert process.poll() is None, f"the edge did not start:\n{edge.log}"
        try:
            with urllib.request.urlopen(base_url + "/healthz", timeout=1):
                return edge
        except OSError:
            if time.monotonic() >= deadline:
                process.kill()  # not left running behind the failed test
                process.wait()
                raise AssertionError(f"the edge did not start within 20 s:\n{edge.log}") from None
            time.sleep(0.05)


def stop_serve_process(edge: ServeProcess) -> None:
    """SIGTERM (the edge drains and exits 0); killed if it does not within 10 s."""
    if edge.process.poll() is None:
        edge.process.send_signal(signal.SIGTERM)
        try:
            edge.process.wait(10)
        except subprocess.TimeoutExpired:
            edge.process.kill()
            edge.process.wait()


@pytest.fixture(scope="session")
def serve_process(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., ServeProcess]]:
    """``serve_process(config_dict)`` → a running :class:`ServeProcess`; all stopped at the end.

    ``env`` adds to the process's environment (failpoints: :mod:`telephony_edge.failpoints`).
    Session-scoped so a test module can share one process (through its own
    module-scoped fixture) instead of paying a start per test.
    """
    started: list[ServeProcess] = []

    def start(config: dict[str, Any], env: dict[str, str] | None = None) -> ServeProcess:
        edge = start_serve_process(config, tmp_path_factory.mktemp("serve"), env)
        started.append(edge)
        return edge

    yield start
    for edge in started:
        stop_serve_process(edge)


class AgentCoreServer:
    """An agent core of the test's own on 127.0.0.1: its ``handle`` serves ``/ws``."""

    def __init__(self) -> None:
        app = web.Application()
        app.router.add_get("/ws", self.handle)
        self.server = TestServer(app, host="127.0.0.1", port=0)

    @property
    def url(self) -> str:
        return str(self.server.make_url("/ws")).replace("http", "ws", 1)

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        raise NotImplementedError


@dataclass
class Receiver:
    """An end-of-call webhook target on 127.0.0.1: what it received, in order."""

    url: str = ""
    received: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    box = Receiver()

    async def ended(request: web.Request) -> web.Response:
        box.received.append(json.loads(await request.read()))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/ended", ended)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    box.url = str(server.make_url("/ended"))
    yield box
    await server.close()
