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
closes the socket when the call ends, but also when the connection between
it and the edge breaks (a reset, no close frame) while the call goes on: a
socket's end alone does not say which. A resumable call's leg (its NCCO has
the ``notify`` after the socket) then ends ``moved``
(:class:`~telephony_edge.wsleg.SocketLeg`): if the call goes on, Vonage runs
the ``notify`` and any worker carries it on
(:mod:`telephony_edge.vonage.resume`); if the caller hung up, the event
webhook's ``completed`` ends it
(:func:`~telephony_edge.socket_resume.network_ended`). Only the socket of a
call the edge transferred (the Voice API replaced its NCCO) ends it.

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
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import WebSocketError, WSCloseCode, WSMsgType, web

from telephony_edge import metrics
from telephony_edge.audio.frames import FRAME_BYTES
from telephony_edge.calls.dtmf import DtmfRequest
from telephony_edge.calls.leg import (
    Capabilities,
    Dtmf,
    LegEnded,
    LegEvent,
    LegInfo,
    NotSupported,
)
from telephony_edge.vonage.api import VoiceApi
from telephony_edge.wsframe import OP_BINARY, frame_header
from telephony_edge.wsleg import PLAYOUT_LEAD_MS, SocketLeg, SocketRejected, SocketStats

log = logging.getLogger(__name__)

CONTENT_TYPE = "audio/l16;rate=16000"
MAX_MESSAGE_BYTES = 64 * 1024  # aiohttp closes (1009) beyond this
MAX_AUDIO_BYTES = 10 * FRAME_BYTES  # 200 ms in one message: anything bigger is refused
MAX_HEADER_CHARS = 2048
CONNECTED_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 10.0  # Vonage sends audio every 20 ms; this much silence means it is gone
CLEAR_MESSAGE = b'{"action":"clear"}'
DTMF_DIGITS = frozenset("0123456789*#ABCD")
_QUIET_EVENTS = frozenset({"websocket:cleared", "websocket:notify"})

BAD_MEDIA = "vonage-media"  # the bad-input source of the socket's messages after connected
BAD_CONNECT = metrics.BAD_INPUT.labels(source="vonage-ws")  # refused before audio
_DROPPED = metrics.FRAMES_DROPPED.labels(reason="vonage_backpressure")
_BINARY_HEADER = frame_header(FRAME_BYTES, OP_BINARY)


class ConnectRejected(SocketRejected):
    """The socket's opening was not acceptable; close with ``code``."""


@dataclass(frozen=True, slots=True)
class Connected:
    """Vonage's ``websocket:connected``: the content type and the NCCO's headers."""

    content_type: str
    headers: dict[str, str]


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
        if isinstance(msg.data, WebSocketError):  # aiohttp closed it: 1007, 1002 …
            reason = "WebSocket protocol error before websocket:connected"
            raise ConnectRejected(reason, code=msg.data.code)
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


class VonageMediaLeg(SocketLeg):
    """A call's audio over Vonage's WebSocket, as a :class:`Leg`."""

    network = "Vonage"
    send_buffer_limit = 16 * 1024  # the socket's backlog: the 200 ms lead fits, a stall does not

    capabilities = Capabilities(
        clear=True, dtmf_out=True, transfer_to_number=True, transfer_to_sip=True
    )

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
        playout_lead_ms: int = PLAYOUT_LEAD_MS,
        resumable: bool = False,
    ) -> None:
        """``resumable``: the call's NCCO goes on to the edge's ``notify`` after this
        socket (``telephony_edge.vonage.resume``), so another worker can carry it on."""
        super().__init__(
            ws,
            request,
            info,
            call_id=call_id,
            stats=SocketStats(),
            playout_lead_ms=playout_lead_ms,
            bad_input_source=BAD_MEDIA,
            dropped=_DROPPED,
            idle_timeout_s=idle_timeout_s,
        )
        self._api = api
        self._from_number = from_number
        self.resumable = resumable
        self._replaced = False  # the Voice API replaced the call's NCCO: the socket ends

    # -- caller → edge -----------------------------------------------------

    def _on_binary(self, data: bytes) -> LegEvent | None:
        """L16 16 kHz: already canonical audio; odd, empty or oversize messages are refused."""
        size = len(data)
        if size == 0 or size % 2 or size > MAX_AUDIO_BYTES:
            self._malformed("oversize audio" if size > MAX_AUDIO_BYTES else "odd audio size")
            return None
        return self._audio(data)

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

    # -- edge → caller -----------------------------------------------------

    def send_frame(self, frame: bytes, talkspurt_start: bool) -> None:
        transport = self._writable()
        if transport is None or not self._has_room(transport):
            return
        if len(frame) == FRAME_BYTES:
            transport.write(_BINARY_HEADER + frame)
        else:  # the pacer sends canonical frames; anything else still goes out whole
            transport.write(frame_header(len(frame), OP_BINARY) + frame)
        self.stats.frames_out += 1

    def clear(self) -> None:
        """Barge-in: Vonage drops the audio it still holds."""
        self.stats.clears += 1
        self._write_text(CLEAR_MESSAGE)

    # -- call control ------------------------------------------------------

    async def hangup(self) -> None:
        """End the call through the Voice API when configured; the socket closes after.

        The bridge closes the socket once the call's end is written
        (``calls.machine.TEARDOWN``): the ``connect`` ends, and the call reaches the
        ``notify`` after it, which finds the call over and answers no NCCO, so Vonage
        ends it. The caller is released even without the API or when it fails.
        """
        if self._api is not None and self.info.provider_call_id:
            await self._api.hangup(self.info.provider_call_id)

    async def hand_off(self) -> None:
        """A drain: close the socket; Vonage goes on to the ``notify`` any worker answers."""
        if not self.resumable:
            raise NotSupported("this call's NCCO does not come back to the edge")
        await self.close()

    def network_state(self) -> dict[str, Any]:
        """The Vonage call's ``uuid``, which the socket that comes back must name."""
        return {"uuid": self.info.provider_call_id}

    async def send_dtmf(self, request: DtmfRequest) -> None:
        """The Voice API plays the agent's keys into the call (its DTMF endpoint)."""
        if self._api is None:
            raise NotSupported("the Vonage Voice API is not configured; cannot send DTMF")
        await self._api.send_dtmf(self.info.provider_call_id, request)

    async def transfer(self, destination: str) -> None:
        """Replace the call's NCCO with a ``connect`` to ``destination``; Vonage closes us."""
        if self._api is None:
            raise RuntimeError("the Vonage Voice API is not configured; cannot transfer")
        self._replaced = True  # the socket's end that follows is no break
        try:
            await self._api.transfer(self.info.provider_call_id, destination, self._from_number)
        except BaseException:
            self._replaced = False
            raise

    async def _socket_gone(self) -> LegEnded | None:
        """The socket ended: the call moved on (``moved``, see the module), unless the edge
        transferred it (the NCCO was replaced; nothing follows this socket)."""
        if self._replaced:
            return self._end("completed")
        return await super()._socket_gone()
