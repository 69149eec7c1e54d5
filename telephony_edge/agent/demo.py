"""The built-in demo agent core: a real WebSocket server speaking the
agent-core protocol (``AGENT_PROTOCOL.md``), used when no agent-core URL is
configured and by tests.

One WebSocket connection is one call. The core waits for ``initiate``,
replies ``onready``, greets with a two-tone chime (there is no TTS here; the
chime is generated, so the package ships no audio), then echoes whatever the
caller says once the caller stops speaking. If the caller talks while the
core's audio is still playing, it sends ``clear`` and stops sending the rest
(barge-in). Agent audio goes out in ``chunk_ms`` chunks, faster than real time
but at most ``send_ahead_ms`` ahead of where playback should be, as a real
core streaming TTS would; the edge paces it. "Playing" is estimated from the
clock: audio of duration D queued at t0 plays until t0 + D (held while the
core has sent ``pause``).

Every reply sends ``ontranscript`` (``"[caller spoke 1.4 s]"``, final) as soon
as the caller stops, then ``ai_action``, ``function_call`` (``demo_echo``),
``start_answering``, ``onresponsetext`` and the audio, so every message type
of the protocol is exercised.

A resumed call (``session_continuation.resumed``: the call went on on another
worker of the edge after its own was lost or drained) is not greeted again:
the core says ``resumed_text`` over a short rising chime (:func:`resume_chime`),
and counts its turns on from the chat so far.

Testing hooks:

* DTMF ``9``: ``end_call`` with ``{"reason": "dtmf 9"}``.
* DTMF ``0``: ``transfer_call`` with ``{"destination": metadata.transfer_to}``,
  or ``+15555550123`` (``DemoCoreSettings.default_transfer_to``) without it.
* DTMF ``#``: ``onsessionended`` with ``{"reason": "dtmf #"}``, then the core
  closes the WebSocket (code 1000).
* Any other digit: ``ai_action`` ``{"action": "dtmf", "digit": d}``.
* ``metadata.demo_end_after_greeting: true``: ``end_call`` with
  ``{"reason": "demo_end_after_greeting"}`` once the greeting has played.
* ``metadata.demo_pause_ms: N``: ``pause`` before the greeting and ``unpause``
  N ms later (the greeting's audio is sent meanwhile, for the edge to hold).
* ``agent.agent_config.first_message``: the greeting's ``onresponsetext``.
* ``amd_result`` ``{"result": "machine"}`` with ``agent_config.voicemail.action``
  ``leave_message``: the core stops what it was saying, plays its recorded
  message (:func:`voicemail_message`; ``onresponsetext`` is
  ``voicemail.message``), then sends ``end_call`` ``{"reason": "voicemail
  message left"}``, and no longer answers the machine. Other results change
  nothing (a human is answered as usual).

Errors and limits: a first message that is not ``initiate`` (binary, another
method, malformed JSON) or none within ``initiate_timeout_s``, and malformed
JSON at any time, close the WebSocket with 1008 (policy violation) and a log
line naming the call. Frames over ``max_message_bytes`` close it with 1009
(aiohttp). Unknown methods are logged and ignored; ``ping`` and ``playback``
are accepted silently. An utterance is cut at ``max_recording_s``. After
``idle_timeout_s`` without any message the core sends ``onsessionended``
``{"reason": "idle timeout"}`` and closes with 1000.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hmac
import logging
import math
import weakref
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import WSCloseCode, WSMsgType, web

from telephony_edge import badinput
from telephony_edge.agent import messages as m
from telephony_edge.agent.vad import EnergyVad, SpeechEnded, SpeechStarted, VadConfig
from telephony_edge.audio.frames import (
    FRAME_BYTES,
    FRAME_MS,
    FRAME_SAMPLES,
    SAMPLE_RATE,
    SAMPLE_WIDTH,
    FrameSplitter,
)

__all__ = [
    "DEFAULT_PATH",
    "DemoCoreSettings",
    "add_agent_core_routes",
    "create_agent_core_app",
    "greeting_chime",
    "resume_chime",
    "run_agent_core",
    "voicemail_message",
]

log = logging.getLogger(__name__)

DEFAULT_PATH = "/agent"
BYTES_PER_SECOND = SAMPLE_RATE * SAMPLE_WIDTH
_MAX_PAUSE_MS = 60_000


@dataclass(frozen=True, slots=True)
class DemoCoreSettings:
    """Knobs of the demo core; the defaults suit a real phone call."""

    vad: VadConfig = field(default_factory=VadConfig)
    greeting_s: float = 1.5
    greeting_text: str = "Hello! This is the demo agent. Say something and I will say it back."
    reply_text: str = "Here is what you said."
    resumed_text: str = "Sorry, we were cut off for a moment. I am back; go on."
    chunk_ms: int = 100
    """Size of each binary frame of agent audio."""
    send_ahead_ms: int = 1000
    """How far ahead of estimated playback the core may have sent audio."""
    max_message_bytes: int = 256 * 1024
    max_recording_s: float = 30.0
    initiate_timeout_s: float = 10.0
    idle_timeout_s: float = 30.0
    default_transfer_to: str = "+15555550123"

    def __post_init__(self) -> None:
        if self.greeting_s <= 0:
            raise ValueError("greeting_s must be > 0")
        if self.chunk_ms < FRAME_MS or self.chunk_ms % FRAME_MS:
            raise ValueError(f"chunk_ms must be a positive multiple of {FRAME_MS}")
        if self.send_ahead_ms < 0:
            raise ValueError("send_ahead_ms must be >= 0")
        if self.max_message_bytes < FRAME_BYTES:
            raise ValueError(f"max_message_bytes must be >= {FRAME_BYTES}")
        for name in ("max_recording_s", "initiate_timeout_s", "idle_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")


@functools.lru_cache(maxsize=8)
def greeting_chime(duration_s: float = 1.5) -> bytes:
    """A "ding-dong" of about ``duration_s`` (whole frames) as canonical PCM.

    Generated, not recorded: deterministic, no TTS and no package data.
    """
    n = max(2, round(duration_s * 1000 / FRAME_MS)) * FRAME_SAMPLES
    out = np.zeros(n)
    half = n // 2
    for start, freq in ((0, 659.25), (half, 523.25)):  # E5 then C5
        t = np.arange(n - start) / SAMPLE_RATE
        envelope = np.exp(-3.0 * t) * np.minimum(1.0, t / 0.005)
        tone = np.sin(2 * np.pi * freq * t) + 0.25 * np.sin(4 * np.pi * freq * t)
        out[start:] += 0.3 * envelope * tone
    fade = FRAME_SAMPLES
    out[-fade:] *= np.linspace(1.0, 0.0, fade)
    pcm = np.clip(out * 32767, -32768, 32767).astype("<i2")
    return pcm.tobytes()


@functools.lru_cache(maxsize=1)
def resume_chime() -> bytes:
    """What the demo core plays when a call resumes on another worker: a 0.6 s rising sweep
    (C5 to G5), unlike the greeting, so a listener hears which one it is."""
    n = round(0.6 * 1000 / FRAME_MS) * FRAME_SAMPLES
    t = np.arange(n) / SAMPLE_RATE
    freq = 523.25 + (783.99 - 523.25) * t / t[-1]
    phase = 2 * np.pi * np.cumsum(freq) / SAMPLE_RATE
    envelope = np.minimum(1.0, t / 0.01) * np.minimum(1.0, (t[-1] - t) / 0.05)
    pcm = np.clip(0.3 * envelope * np.sin(phase) * 32767, -32768, 32767).astype("<i2")
    return bytes(pcm.tobytes())


@functools.lru_cache(maxsize=1)
def voicemail_message() -> bytes:
    """The demo core's "recorded" voicemail message: three short chimes, 2.4 s.

    Generated like the greeting (the package ships no audio): it stands for
    the recording a real core would play or synthesise from ``message``.
    """
    return b"".join(greeting_chime(0.8) for _ in range(3))


class _Playout:
    """The core's estimate of where the edge is in playing what was sent.

    Audio queued while nothing plays starts now; while paused the position
    stands still and the end moves out by the length of the pause.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._until = 0.0
        self._paused_at: float | None = None

    @property
    def paused(self) -> bool:
        return self._paused_at is not None

    def _position(self) -> float:
        return self._clock() if self._paused_at is None else self._paused_at

    def ahead(self) -> float:
        """Seconds of sent audio not yet heard."""
        return max(0.0, self._until - self._position())

    @property
    def playing(self) -> bool:
        return self.ahead() > 0.0

    def queue(self, seconds: float) -> None:
        self._until = max(self._position(), self._until) + seconds

    def clear(self) -> None:
        self._until = self._position()

    async def settle(self, lead: float) -> None:
        """Return once at most ``lead`` seconds of sent audio are unheard."""
        while True:
            excess = self.ahead() - lead
            if excess <= 0.0:
                return
            await asyncio.sleep(min(excess, 0.1))  # re-check: pause/resume/clear move it

    def pause(self) -> None:
        if self._paused_at is None:
            self._paused_at = self._clock()

    def resume(self) -> None:
        if self._paused_at is None:
            return
        now = self._clock()
        if self._until > self._paused_at:
            self._until += now - self._paused_at
        self._paused_at = None


class _Session:
    """One call: the handshake, then caller audio and events in, turns out."""

    def __init__(self, ws: web.WebSocketResponse, settings: DemoCoreSettings) -> None:
        self._ws = ws
        self._settings = settings
        self._call_id = "?"
        self._metadata: dict[str, Any] = {}
        self._greeting_text = settings.greeting_text
        self._vad = EnergyVad(settings.vad)
        self._splitter = FrameSplitter()
        self._preroll: collections.deque[tuple[int, bytes]] = collections.deque(
            maxlen=settings.vad.start_frames + 1
        )
        self._recording: bytearray | None = None
        self._max_recording = math.ceil(settings.max_recording_s * 1000 / FRAME_MS) * FRAME_BYTES
        self._playout = _Playout(asyncio.get_running_loop().time)
        self._speaker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._send_lock = asyncio.Lock()
        self._turns = 0
        self._voicemail: Mapping[str, Any] = {}
        self._leaving_message = False
        self._resumed = False  # the call goes on from another worker: no greeting

    async def run(self) -> None:
        try:
            if not await self._handshake():
                return
            if self._resumed:
                self._speak(self._settings.resumed_text, resume_chime())
            else:
                await self._greet()
            await self._receive_loop()
        finally:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            log.info("demo core: call %s: session ended", self._call_id)

    # -- receiving -------------------------------------------------------

    async def _handshake(self) -> bool:
        try:
            msg = await self._ws.receive(timeout=self._settings.initiate_timeout_s)
        except TimeoutError:
            await self._reject(f"no initiate within {self._settings.initiate_timeout_s:g} s")
            return False
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return False
        if msg.type is not WSMsgType.TEXT:
            await self._reject("binary frame before initiate")
            return False
        try:
            method, data = m.decode(msg.data)
        except m.ProtocolError as exc:
            await self._reject(str(exc))
            return False
        if method != m.INITIATE:
            await self._reject(f"first message is {method!r}, not 'initiate'")
            return False

        call = _mapping(data.get("call"))
        self._call_id = str(call.get("call_id") or "?")
        self._metadata = dict(_mapping(data.get("metadata")))
        agent_config = _mapping(_mapping(data.get("agent")).get("agent_config"))
        self._voicemail = _mapping(agent_config.get("voicemail"))
        first_message = agent_config.get("first_message")
        if isinstance(first_message, str) and first_message.strip():
            self._greeting_text = first_message
        continued = _mapping(data.get("session_continuation"))
        self._resumed = continued.get("resumed") is True
        chat = continued.get("chat") if self._resumed else None
        if isinstance(chat, list):  # the turns so far go on being counted
            self._turns = sum(1 for e in chat if isinstance(e, dict) and e.get("role") == "user")
        log.info(
            "demo core: call %s: %s (provider=%s, direction=%s)",
            self._call_id,
            f"resumed after {self._turns} turn(s)" if self._resumed else "initiated",
            call.get("provider", "?"),
            call.get("direction", "?"),
        )
        return await self._send(m.ONREADY)

    async def _receive_loop(self) -> None:
        while True:
            try:
                msg = await self._ws.receive(timeout=self._settings.idle_timeout_s)
            except TimeoutError:
                log.info("demo core: call %s: idle timeout", self._call_id)
                await self._send(m.ONSESSIONENDED, {"reason": "idle timeout"})
                await self._ws.close(code=WSCloseCode.OK, message=b"idle timeout")
                return
            if msg.type is WSMsgType.BINARY:
                await self._on_audio(msg.data)
            elif msg.type is WSMsgType.TEXT:
                if not await self._on_text(msg.data):
                    return
            else:
                if msg.type is WSMsgType.ERROR:
                    log.warning("demo core: call %s: link error: %s", self._call_id, msg.data)
                return

    async def _on_text(self, text: str) -> bool:
        """Handle one event; False when the session is over."""
        try:
            method, data = m.decode(text)
        except m.ProtocolError as exc:
            await self._reject(str(exc))
            return False
        if method == m.PING:
            pass
        elif method == m.DTMF:
            return await self._on_dtmf(str(data.get("digit", "")))
        elif method == m.PLAYBACK:
            log.debug("demo core: call %s: playback %s", self._call_id, data)
        elif method == m.INITIATE:
            log.warning("demo core: call %s: second initiate ignored", self._call_id)
        elif method == m.AMD_RESULT:
            await self._on_amd(data)
        else:
            log.info("demo core: call %s: unknown method %r ignored", self._call_id, method)
        return True

    async def _on_dtmf(self, digit: str) -> bool:
        log.info("demo core: call %s: dtmf %r", self._call_id, digit)
        if digit == "9":
            await self._send(m.END_CALL, {"reason": "dtmf 9"})
        elif digit == "0":
            destination = self._metadata.get("transfer_to")
            if not isinstance(destination, str) or not destination:
                destination = self._settings.default_transfer_to
            await self._send(m.TRANSFER_CALL, {"destination": destination})
        elif digit == "#":
            await self._send(m.ONSESSIONENDED, {"reason": "dtmf #"})
            await self._ws.close(code=WSCloseCode.OK, message=b"session ended")
            return False
        else:
            await self._send(m.AI_ACTION, {"action": "dtmf", "digit": digit})
        return True

    async def _on_amd(self, data: Mapping[str, Any]) -> None:
        log.info("demo core: call %s: amd_result %s", self._call_id, dict(data))
        if data.get("result") != "machine" or self._leaving_message:
            return
        if self._voicemail.get("action") != "leave_message":
            return
        self._leaving_message = True
        self._recording = None
        if self._playout.playing or (self._speaker is not None and not self._speaker.done()):
            await self._barge_in()
        text = str(self._voicemail.get("message") or "")
        speaker = self._speak(text, voicemail_message())
        self._spawn(self._end_call_after(speaker, "voicemail message left"))

    async def _on_audio(self, chunk: bytes) -> None:
        if self._leaving_message:
            return  # the machine records; nobody to answer
        for frame in self._splitter.push(chunk):
            await self._on_frame(frame)

    async def _on_frame(self, frame: bytes) -> None:
        index = self._vad.frames_fed
        event = self._vad.feed(frame)
        if self._recording is not None:
            self._recording += frame
            if event is None and len(self._recording) >= self._max_recording:
                log.info("demo core: call %s: utterance cut at max length", self._call_id)
                event = self._vad.end()
        else:
            self._preroll.append((index, frame))

        if isinstance(event, SpeechStarted):
            self._recording = bytearray(b"".join(f for i, f in self._preroll if i >= event.frame))
            self._preroll.clear()
            log.debug("demo core: call %s: caller speaking", self._call_id)
            if self._playout.playing or (self._speaker is not None and not self._speaker.done()):
                await self._barge_in()
        elif isinstance(event, SpeechEnded) and self._recording is not None:
            utterance = bytes(self._recording[: (event.frame - event.start) * FRAME_BYTES])
            self._recording = None
            await self._reply(utterance)

    # -- speaking --------------------------------------------------------

    async def _greet(self) -> None:
        pause_ms = _int_flag(self._metadata.get("demo_pause_ms"))
        if pause_ms > 0:
            await self._send(m.PAUSE)
            self._playout.pause()
            self._spawn(self._unpause_after(min(pause_ms, _MAX_PAUSE_MS) / 1000))
        speaker = self._speak(self._greeting_text, greeting_chime(self._settings.greeting_s))
        if _bool_flag(self._metadata.get("demo_end_after_greeting")):
            self._spawn(self._end_call_after(speaker, "demo_end_after_greeting"))

    async def _reply(self, utterance: bytes) -> None:
        self._turns += 1
        seconds = len(utterance) / BYTES_PER_SECOND
        log.info("demo core: call %s: caller spoke %.2f s", self._call_id, seconds)
        await self._send(
            m.ONTRANSCRIPT, {"text": f"[caller spoke {seconds:.1f} s]", "is_final": True}
        )
        self._speak(
            self._settings.reply_text,
            utterance,
            prelude=(
                (m.AI_ACTION, {"action": "echo", "turn": self._turns}),
                (
                    m.FUNCTION_CALL,
                    {"name": "demo_echo", "params": {"duration_ms": round(seconds * 1000)}},
                ),
            ),
        )

    def _speak(
        self,
        text: str,
        pcm: bytes,
        prelude: tuple[tuple[str, Mapping[str, Any]], ...] = (),
    ) -> asyncio.Task[None]:
        """Start a turn (after the one in progress, if any) and return its task."""
        previous = self._speaker

        async def turn() -> None:
            if previous is not None:
                try:
                    await asyncio.wait([previous])
                except asyncio.CancelledError:
                    previous.cancel()  # a barge-in stops the whole queue
                    raise
            for method, data in prelude:
                await self._send(method, data)
            await self._send(m.START_ANSWERING)
            await self._send(m.ONRESPONSETEXT, {"text": text, "is_final": True})
            await self._stream(pcm)

        self._speaker = self._spawn(turn())
        return self._speaker

    async def _stream(self, pcm: bytes) -> None:
        chunk = self._settings.chunk_ms * BYTES_PER_SECOND // 1000
        lead = self._settings.send_ahead_ms / 1000
        for offset in range(0, len(pcm), chunk):
            piece = pcm[offset : offset + chunk]
            await self._playout.settle(lead)
            self._playout.queue(len(piece) / BYTES_PER_SECOND)
            if not await self._send_bytes(piece):
                return

    async def _barge_in(self) -> None:
        log.info("demo core: call %s: caller barged in, clearing", self._call_id)
        speaker, self._speaker = self._speaker, None
        if speaker is not None:
            speaker.cancel()
            await asyncio.wait([speaker])
        self._playout.clear()
        await self._send(m.CLEAR)

    async def _unpause_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self._playout.resume()
        await self._send(m.UNPAUSE)

    async def _end_call_after(self, turn: asyncio.Task[None], reason: str) -> None:
        await asyncio.wait([turn])
        await self._playout.settle(0.0)
        await self._send(m.END_CALL, {"reason": reason})

    # -- plumbing --------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _send(self, method: str, data: Mapping[str, Any] | None = None) -> bool:
        if self._ws.closed:
            return False
        try:
            async with self._send_lock:
                await self._ws.send_str(m.encode(method, data))
        except ConnectionError:
            return False
        return True

    async def _send_bytes(self, data: bytes) -> bool:
        if self._ws.closed:
            return False
        try:
            async with self._send_lock:
                await self._ws.send_bytes(data)
        except ConnectionError:
            return False
        return True

    async def _reject(self, reason: str) -> None:
        log.warning("demo core: call %s: closing with 1008: %s", self._call_id, reason)
        message = reason.encode("utf-8")[:120]
        with contextlib.suppress(ConnectionError):
            await self._ws.close(code=WSCloseCode.POLICY_VIOLATION, message=message)


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _bool_flag(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return value is True


def _int_flag(value: object) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int | float):
        return max(0, int(value))
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return max(0, int(float(value)))
    return 0


class _AgentCoreEndpoint:
    """The WebSocket route; remembers open sockets to close them on shutdown.

    With a ``key`` (the edge's embedded core), a connection must carry it as
    ``?key=``: the core shares the edge's public listener, and its sessions are
    for the edge's own calls, not for whoever finds the path.
    """

    def __init__(self, settings: DemoCoreSettings, key: str | None = None) -> None:
        self.settings = settings
        self.key = key
        self._sockets: weakref.WeakSet[web.WebSocketResponse] = weakref.WeakSet()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.key is not None and not hmac.compare_digest(
            request.query.get("key", "").encode(), self.key.encode()
        ):
            badinput.report("demo-agent", "no key or a wrong key", request.remote or "?")
            return web.Response(status=403, text="the demo agent core serves this edge only\n")
        ws = web.WebSocketResponse(max_msg_size=self.settings.max_message_bytes)
        if not ws.can_prepare(request).ok:
            return web.Response(status=400, text="the demo agent core expects a WebSocket\n")
        await ws.prepare(request)
        self._sockets.add(ws)
        try:
            await _Session(ws, self.settings).run()
        finally:
            self._sockets.discard(ws)
            if not ws.closed:
                await ws.close()
        return ws

    async def on_shutdown(self, app: web.Application) -> None:
        for ws in list(self._sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")


def add_agent_core_routes(
    app: web.Application,
    path: str = DEFAULT_PATH,
    settings: DemoCoreSettings | None = None,
    *,
    key: str | None = None,
) -> None:
    """Serve the demo agent core's WebSocket at ``path`` of ``app``.

    This is how the edge embeds it (e.g. at ``/_demo_agent``, behind a
    per-process ``key``) when no agent core is configured; open sessions are
    closed on the app's shutdown.
    """
    endpoint = _AgentCoreEndpoint(settings or DemoCoreSettings(), key)
    app.router.add_get(path, endpoint.handle)
    app.on_shutdown.append(endpoint.on_shutdown)


def create_agent_core_app(
    settings: DemoCoreSettings | None = None, *, path: str = DEFAULT_PATH
) -> web.Application:
    """A stand-alone application serving only the demo agent core."""
    app = web.Application()
    add_agent_core_routes(app, path, settings)
    return app


async def run_agent_core(
    host: str,
    port: int,
    settings: DemoCoreSettings | None = None,
    *,
    path: str = DEFAULT_PATH,
) -> None:
    """Serve the demo agent core on ``host:port`` until cancelled."""
    runner = web.AppRunner(create_agent_core_app(settings, path=path), handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        log.info("demo agent core listening on ws://%s:%d%s", host, port, path)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
