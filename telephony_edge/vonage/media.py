"""The Vonage audio WebSocket leg: the NCCO ``connect`` to a ``websocket`` endpoint.

Theory of operation
-------------------
Vonage opens the WebSocket and sends one text message first,
``{"event":"websocket:connected","content-type":"audio/l16;rate=16000",
…the NCCO's headers…}``; :func:`read_connected` reads and type-checks it.
After it, caller audio arrives as binary messages of 16-bit little-endian
PCM at 16 kHz, 640 bytes per 20 ms: the edge's canonical frame, so no
conversion at all. Text messages are events: ``websocket:dtmf`` (a key),
``websocket:cleared`` (our clear was done), ``websocket:notify``. Vonage
closes the socket when the call ends.

Agent audio leaves in :meth:`VonageMediaLeg.send_frame` as binary messages
of exactly 640 bytes, written to the transport with a precomputed header
(``wsframe``, ``OP_BINARY``): the send is synchronous, and a backed-up
socket drops (counted) instead of waiting. Vonage plays what it receives
from a bounded buffer, so the leg asks for a small playout lead
(``PLAYOUT_LEAD_FRAMES``) and the pacer never bursts beyond it. Barge-in
sends Vonage's clear command, the text message ``{"action":"clear"}``.

Rules: a malformed or unexpected message is counted
(``telephony_edge_bad_input_total{source="vonage-media"}``), logged
(rate-limited) and skipped; it never raises out of the leg.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from telephony_edge import metrics
from telephony_edge.audio.frames import FRAME_BYTES, FrameSplitter
from telephony_edge.calls.leg import Capabilities, Dtmf, Leg, LegEnded, LegEvent, LegInfo
from telephony_edge.logs import sampled
from telephony_edge.vonage.api import VoiceApi
from telephony_edge.wsframe import OP_BINARY, frame_header

log = logging.getLogger(__name__)

CONTENT_TYPE = "audio/l16;rate=16000"
MAX_MESSAGE_BYTES = 64 * 1024  # aiohttp closes (1009) beyond this
MAX_AUDIO_BYTES = 10 * FRAME_BYTES  # 200 ms in one message: anything bigger is refused
MAX_HEADER_CHARS = 2048
CONNECTED_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 10.0  # Vonage sends audio every 20 ms; this much silence means it is gone
SEND_BUFFER_LIMIT = 16 * 1024  # bytes queued in the socket before frames are dropped
CLEAR_MESSAGE = b'{"action":"clear"}'
DTMF_DIGITS = frozenset("0123456789*#ABCD")
_QUIET_EVENTS = frozenset({"websocket:cleared", "websocket:notify"})

_MALFORMED = metrics.BAD_INPUT.labels(source="vonage-media")
BAD_CONNECT = metrics.BAD_INPUT.labels(source="vonage-ws")  # refused before audio
_DROPPED = metrics.FRAMES_DROPPED.labels(reason="vonage_backpressure")
_BINARY_HEADER = frame_header(FRAME_BYTES, OP_BINARY)


class ConnectRejected(Exception):
    """The socket's opening was not acceptable; close with ``code``."""

    def __init__(self, reason: str, code: int = WSCloseCode.POLICY_VIOLATION) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


@dataclass(frozen=True, slots=True)
class Connected:
    """Vonage's ``websocket:connected``: the content type and the NCCO's headers."""

    content_type: str
    headers: dict[str, str]


@dataclass(slots=True)
class MediaStats:
    """Per-socket counters, for the end-of-call log line and tests."""

    frames_in: int = 0
    frames_out: int = 0
    frames_dropped: int = 0
    malformed: int = 0
    clears: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


async def read_connected(
    ws: web.WebSocketResponse, timeout_s: float = CONNECTED_TIMEOUT_S
) -> Connected:
    """Read the first message; :class:`ConnectRejected` unless it is ``websocket:connected``.

    Anything else first (audio, another event, nothing in time) is 1008; a
    content type other than L16 16 kHz is 1003 (unsupported data).
    """
    try:
        async with asyncio.timeout(timeout_s):
            msg = await ws.receive()
    except TimeoutError:
        BAD_CONNECT.inc()
        raise ConnectRejected(f"no websocket:connected within {timeout_s:g}s") from None
    try:
        if msg.type is not WSMsgType.TEXT:
            raise ConnectRejected(f"expected websocket:connected, got {msg.type.name}")
        return parse_connected(msg.data)
    except ConnectRejected:
        BAD_CONNECT.inc()
        raise


def parse_connected(text: str) -> Connected:
    """The first message, every field type-checked: it comes from whoever connected."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ConnectRejected("first message is not JSON") from None
    if not isinstance(data, dict) or data.get("event") != "websocket:connected":
        event = data.get("event") if isinstance(data, dict) else None
        raise ConnectRejected(f"expected websocket:connected, got {str(event)[:40]!r}")
    content_type = data.get("content-type")
    if not isinstance(content_type, str) or content_type.replace(" ", "").lower() != CONTENT_TYPE:
        raise ConnectRejected(
            f"unsupported content-type {str(content_type)[:60]!r}; expected {CONTENT_TYPE}",
            code=WSCloseCode.UNSUPPORTED_DATA,
        )
    headers: dict[str, str] = {}
    for key, value in data.items():
        if key in ("event", "content-type"):
            continue
        if isinstance(value, str) and len(value) <= MAX_HEADER_CHARS:
            headers[key] = value
    return Connected(content_type=CONTENT_TYPE, headers=headers)


class VonageMediaLeg(Leg):
    """A call's audio over Vonage's WebSocket, as a :class:`Leg`."""

    # Vonage plays from a bounded buffer at real time: prime it, never flood it
    playout_lead_frames = 2
    capabilities = Capabilities(clear=True, transfer_to_number=True, transfer_to_sip=True)

    def __init__(
        self,
        ws: web.WebSocketResponse,
        request: web.BaseRequest,
        info: LegInfo,
        *,
        call_id: str,
        api: VoiceApi | None = None,
        from_number: str = "",
        idle_timeout_s: float = IDLE_TIMEOUT_S,
    ) -> None:
        self.info = info
        self.call_id = call_id
        self.stats = MediaStats()
        self._ws = ws
        self._transport = request.transport
        self._api = api
        self._from_number = from_number
        self._idle_timeout_s = idle_timeout_s
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_error: str | None = None
        self._received = 0
        self._received_at_check = -1
        self._ended: LegEnded | None = None
        self._pending: deque[bytes] = deque()
        self._splitter = FrameSplitter(FRAME_BYTES)
        self._control_tasks: set[asyncio.Future[object]] = set()

    # -- caller → edge -----------------------------------------------------

    async def recv(self) -> LegEvent:
        if self._pending:
            return self._pending.popleft()
        if self._ended is not None:
            return self._ended
        ws = self._ws
        if self._idle_timer is None:
            self._arm_idle_check()
        while True:
            msg = await ws.receive()
            self._received += 1
            if msg.type is WSMsgType.BINARY:
                frame = self._on_audio(msg.data)
                if frame is not None:
                    return frame
            elif msg.type is WSMsgType.TEXT:
                event = self._on_text(msg.data)
                if event is not None:
                    return event
            elif msg.type is WSMsgType.ERROR:
                return self._end("completed", f"socket error: {ws.exception()!r}")
            elif self._idle_error is not None:
                return self._end("timeout", self._idle_error)
            else:  # CLOSE, CLOSING, CLOSED: the caller hung up (or the call moved on)
                return self._end("completed")

    def _on_audio(self, data: bytes) -> bytes | None:
        size = len(data)
        if size == FRAME_BYTES and not self._splitter.pending:
            self.stats.frames_in += 1
            return data
        if size == 0 or size % 2 or size > MAX_AUDIO_BYTES:
            self._malformed("oversize audio" if size > MAX_AUDIO_BYTES else "odd audio size")
            return None
        self.stats.frames_in += 1
        frames = self._splitter.push(data)
        if not frames:
            return None
        self._pending.extend(frames[1:])
        return frames[0]

    def _on_text(self, text: str) -> LegEvent | None:
        try:
            data = orjson.loads(text)
            event = data["event"]
            if event == "websocket:dtmf":
                raw = data.get("digit")
                if raw is None and isinstance(data.get("dtmf"), dict):
                    raw = data["dtmf"].get("digit")
                digit = str(raw) if isinstance(raw, str | int) else ""
                if digit not in DTMF_DIGITS:
                    self._malformed("dtmf digit out of range")
                    return None
                return Dtmf(digit)
            if event in _QUIET_EVENTS:
                return None
            reason = "repeated connected" if event == "websocket:connected" else "unknown event"
            self._malformed(reason)
            return None
        except (orjson.JSONDecodeError, LookupError, TypeError, ValueError) as exc:
            self._malformed(type(exc).__name__)
            return None

    def _arm_idle_check(self) -> None:
        loop = asyncio.get_running_loop()
        self._idle_timer = loop.call_later(self._idle_timeout_s, self._idle_check)

    def _idle_check(self) -> None:
        """Close a socket that has gone silent: one timer per call, not one per frame."""
        if self._received == self._received_at_check and not self._ws.closed:
            self._idle_error = f"no message from Vonage for {self._idle_timeout_s:g}s"
            log.warning("Vonage socket idle; closing it", extra={"call_id": self.call_id})
            self._spawn_control(self._ws.close(code=WSCloseCode.GOING_AWAY))
            return
        self._received_at_check = self._received
        self._arm_idle_check()

    def _malformed(self, reason: str) -> None:
        _MALFORMED.inc()
        stats = self.stats
        stats.malformed += 1
        stats.reasons[reason] = stats.reasons.get(reason, 0) + 1
        if sampled(stats.malformed):
            log.warning(
                "malformed Vonage message skipped: %s",
                reason,
                extra={"call_id": self.call_id, "malformed": stats.malformed},
            )

    def _end(self, status: str, error: str | None = None) -> LegEnded:
        if self._ended is None:
            self._ended = LegEnded(status=status, error=error)
        return self._ended

    # -- edge → caller -----------------------------------------------------

    def send_frame(self, frame: bytes, talkspurt_start: bool) -> None:
        transport = self._transport
        if self._ws.closed or transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() > SEND_BUFFER_LIMIT:
            _DROPPED.inc()
            self.stats.frames_dropped += 1
            return
        if len(frame) == FRAME_BYTES:
            transport.write(_BINARY_HEADER + frame)
        else:  # the pacer sends canonical frames; anything else still goes out whole
            transport.write(frame_header(len(frame), OP_BINARY) + frame)
        self.stats.frames_out += 1

    def clear(self) -> None:
        """Barge-in: Vonage drops the audio it still holds."""
        self.stats.clears += 1
        transport = self._transport
        if self._ws.closed or transport is None or transport.is_closing():
            return
        transport.write(frame_header(len(CLEAR_MESSAGE)) + CLEAR_MESSAGE)

    def _spawn_control(self, coro: Coroutine[Any, Any, object]) -> None:
        task = asyncio.ensure_future(coro)
        self._control_tasks.add(task)
        task.add_done_callback(self._control_done)

    def _control_done(self, task: asyncio.Future[object]) -> None:
        self._control_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("control message not sent: %r", task.exception())

    # -- call control ------------------------------------------------------

    async def hangup(self) -> None:
        """End the call through the Voice API when configured, then close the socket.

        Closing the socket alone ends the ``connect`` (and the call, as no
        NCCO action follows it), so the caller is released even if the API fails.
        """
        try:
            if self._api is not None and self.info.provider_call_id:
                await self._api.hangup(self.info.provider_call_id)
        finally:
            await self.close()

    async def transfer(self, destination: str) -> None:
        """Replace the call's NCCO with a ``connect`` to ``destination``; Vonage closes us."""
        if self._api is None:
            raise RuntimeError("the Vonage Voice API is not configured; cannot transfer")
        await self._api.transfer(self.info.provider_call_id, destination, self._from_number)

    async def close(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        for task in list(self._control_tasks):
            task.cancel()
        self._control_tasks.clear()
        if not self._ws.closed:
            await self._ws.close()
        self._end("completed")
