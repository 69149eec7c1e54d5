"""The Twilio Media Streams leg: one bidirectional ``<Connect><Stream>`` WebSocket.

Theory of operation
-------------------
Twilio opens the WebSocket, sends ``connected`` then ``start`` (stream and
call ids, our ``<Parameter>``s, the media format), then one ``media``
message per 20 ms of caller audio (160 bytes of 8 kHz μ-law, base64), plus
``dtmf`` when a key is pressed, ``mark`` when audio we sent before a mark has
been played, and ``stop`` when the call or stream ends. :func:`read_start`
handles the opening; :class:`TwilioMediaLeg` everything after it.

Caller audio is decoded where it is read, in :meth:`TwilioMediaLeg.recv`, so
there is no reader task and no queue per call. Agent audio leaves in
:meth:`TwilioMediaLeg.send_frame` as ``media`` messages of 20 ms μ-law whose
JSON is two precomputed byte strings around the base64 payload, written to
the transport with a precomputed WebSocket frame header (``wsframe``): the
send is synchronous. When the socket is backed up, frames are dropped and
counted rather than awaited: the worker's pacer must never wait on one slow
network. The leg asks for ``PLAYOUT_LEAD_FRAMES`` at the start of each
talkspurt, to prime Twilio's own buffer.

The agent's keys (:meth:`TwilioMediaLeg.send_dtmf`) replace the call's TwiML
with ``<Play digits>`` and the stream again, which ends this stream: the leg
then waits for the new one (:mod:`telephony_edge.twilio.handover`) and goes on
over it, its ``stop`` and close no end of the call. The caller's audio pauses
meanwhile, and the agent's is dropped (counted) while no stream takes it.

A stream that closes without ``stop``, whose connection drops (a reset, no
close frame), or that goes silent and is closed (its call answered with the
resume ``<Redirect>`` after the stream: ``resumable``) is not the end of the
call: Twilio goes on with that TwiML, and whichever worker answers, this one
too, takes the call over (:mod:`telephony_edge.twilio.resume`), so the leg
ends ``moved`` (:class:`~telephony_edge.wsleg.SocketLeg`). A
drain hands the call off the same way, closing the stream itself
(:meth:`TwilioMediaLeg.hand_off`).

Marks: Twilio echoes a ``mark`` once the audio sent before it has played,
and echoes every pending one at once on ``clear``. The leg marks the agent
audio every ``MARK_INTERVAL_S`` while it flows, so the bridge hears
(:class:`Played`) what the caller has actually heard.

Rules: a malformed or unexpected message is counted, logged (rate-limited,
with the call id) and skipped; it never raises out of the leg. Sequence
numbers are checked; gaps are counted. Nothing here logs per frame.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import WebSocketError, WSCloseCode, WSMsgType, web

from telephony_edge import metrics
from telephony_edge.audio.frames import FRAME_BYTES, FrameSplitter
from telephony_edge.audio.g711 import Law
from telephony_edge.audio.transcode import G711Decoder, G711Encoder
from telephony_edge.calls.dtmf import DtmfRequest
from telephony_edge.calls.leg import (
    Capabilities,
    Dtmf,
    LegEnded,
    LegEvent,
    LegInfo,
    NotSupported,
    Played,
)
from telephony_edge.logs import sampled
from telephony_edge.twilio.rest import TwilioRest
from telephony_edge.wsframe import frame_header
from telephony_edge.wsleg import PLAYOUT_LEAD_MS, SocketLeg, SocketRejected, SocketStats

if TYPE_CHECKING:
    from telephony_edge.twilio.handover import Expected, NewStream, StreamHandover

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024
START_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 10.0  # Twilio sends media every 20 ms; this much silence means it is gone
HANDOVER_TIMEOUT_S = 10.0  # the stream back after the agent's keys, beyond their own time
KEY_S = 0.5  # what one key (or w) of <Play digits> may take, for that wait
MARK_INTERVAL_S = 0.2
LATE_GAP_S = 0.03  # agent frames this far apart (10 ms behind their slot) are late
TALKSPURT_GAP_S = 0.2  # farther apart: a pause in the agent's speech, not lateness
DTMF_DIGITS = frozenset("0123456789*#ABCD")
EXPECTED_FORMAT = ("audio/x-mulaw", 8000, 1)
# Twilio numbers a stream's messages from 1, 50 a second: 2**31 is over a year of
# audio, so anything beyond is not a sequence number but malformed input.
MAX_SEQUENCE_NUMBER = 2**31 - 1
# What one message can add to the gap counter: 60 s of media. A larger jump is
# counted as this, so one message cannot push the metric to absurd values.
MAX_COUNTED_GAP = 3000

BAD_MEDIA = "twilio-media"  # the bad-input source of a stream's messages after start
BAD_START = metrics.BAD_INPUT.labels(source="twilio-stream")  # a stream refused before audio
_DROPPED = metrics.FRAMES_DROPPED.labels(reason="twilio_backpressure")
_LATE_SENDS = metrics.TWILIO_LATE_SENDS


class StreamRejected(SocketRejected):
    """The stream's opening was not acceptable; close with ``code``."""


@dataclass(frozen=True, slots=True)
class StreamStart:
    """What Twilio's ``start`` message says about the stream."""

    stream_sid: str
    call_sid: str
    account_sid: str
    parameters: dict[str, str]
    tracks: tuple[str, ...] = ("inbound",)
    next_sequence: int = 0


@dataclass(slots=True)
class StreamStats(SocketStats):
    """Per-stream counters, for the leg's end-of-call log line and tests."""

    sequence_gaps: int = 0
    late_sends: int = 0
    marks_sent: int = 0
    marks_played: int = 0
    handovers: int = 0  # streams taken over after the agent's keys


async def read_start(ws: web.WebSocketResponse, timeout_s: float = START_TIMEOUT_S) -> StreamStart:
    """Read ``connected`` and ``start``; raise :class:`StreamRejected` for anything else."""
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                msg = await ws.receive()
                if isinstance(msg.data, WebSocketError):  # aiohttp closed it: 1007, 1002 …
                    reason = "WebSocket protocol error before start"
                    raise StreamRejected(reason, code=msg.data.code)
                if msg.type is not WSMsgType.TEXT:
                    raise StreamRejected(f"stream closed or sent {msg.type.name} before start")
                data = _loads(msg.data)
                event = data.get("event") if data is not None else None
                if event == "connected":
                    continue
                if event != "start" or data is None:
                    raise StreamRejected(f"expected 'start', got {str(event)[:40]!r}")
                return _parse_start(data)
    except TimeoutError:
        BAD_START.inc()
        raise StreamRejected(f"no 'start' within {timeout_s:g}s") from None
    except StreamRejected:
        BAD_START.inc()
        raise


def _parse_start(data: dict[str, Any]) -> StreamStart:
    """The ``start`` message, every field type-checked: it comes from whoever connected.

    A wrong media format (or one that is not even an object) is 1003
    (unsupported data); any other ill-typed field is 1008. Nothing is
    admitted, claimed or created before this returns.
    """
    start = data.get("start")
    if not isinstance(start, dict):
        raise StreamRejected("'start' message without a start object")
    stream_sid = start.get("streamSid") or data.get("streamSid")
    call_sid = start.get("callSid")
    if not isinstance(stream_sid, str) or not stream_sid or not isinstance(call_sid, str):
        raise StreamRejected("'start' message without streamSid/callSid")
    media_format = start.get("mediaFormat")
    if not isinstance(media_format, dict):
        raise StreamRejected(
            f"mediaFormat is {type(media_format).__name__}, not an object",
            code=WSCloseCode.UNSUPPORTED_DATA,
        )
    fmt = (
        media_format.get("encoding"),
        _int(media_format.get("sampleRate")),
        _int(media_format.get("channels")),
    )
    if fmt != EXPECTED_FORMAT:
        raise StreamRejected(
            f"unsupported media format {str(fmt)[:80]}; expected {EXPECTED_FORMAT!r}",
            code=WSCloseCode.UNSUPPORTED_DATA,
        )
    raw_params = start.get("customParameters") or {}
    if not isinstance(raw_params, dict) or not all(isinstance(v, str) for v in raw_params.values()):
        raise StreamRejected("customParameters is not an object of strings")
    tracks = start.get("tracks", ["inbound"])
    if not isinstance(tracks, list) or not all(isinstance(t, str) for t in tracks):
        raise StreamRejected("tracks is not a list of strings")
    account_sid = start.get("accountSid", "")
    if not isinstance(account_sid, str):
        raise StreamRejected("accountSid is not a string")
    raw_seq = data.get("sequenceNumber")
    seq = _int(raw_seq)
    if raw_seq is not None and (seq is None or seq > MAX_SEQUENCE_NUMBER):
        raise StreamRejected("sequenceNumber is not a sequence number")
    return StreamStart(
        stream_sid=stream_sid,
        call_sid=call_sid,
        account_sid=account_sid,
        parameters=dict(raw_params),
        tracks=tuple(tracks) or ("inbound",),
        next_sequence=seq + 1 if seq is not None else 0,
    )


class TwilioMediaLeg(SocketLeg):
    """A call's audio over Twilio Media Streams, as a :class:`Leg`."""

    network = "Twilio"
    stats: StreamStats

    capabilities = Capabilities(
        clear=True, dtmf_out=True, transfer_to_number=True, transfer_to_sip=True
    )

    def __init__(
        self,
        ws: web.WebSocketResponse,
        request: web.BaseRequest,
        start: StreamStart,
        info: LegInfo,
        *,
        call_id: str,
        rest: TwilioRest | None = None,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        playout_lead_ms: int = PLAYOUT_LEAD_MS,
        handover: StreamHandover | None = None,
        handover_timeout_s: float = HANDOVER_TIMEOUT_S,
        comes_back: Callable[[], Awaitable[bool]] | None = None,
        resumable: bool = False,
    ) -> None:
        """``handover``: this worker's table of awaited streams, for the agent's keys;
        ``comes_back``: whether a stream to this worker's public URL reaches this worker;
        ``resumable``: the call's TwiML goes on to the resume ``<Redirect>`` after the
        stream, so a stream that ends without ``stop`` is not the end of the call."""
        super().__init__(
            ws,
            request,
            info,
            call_id=call_id,
            stats=StreamStats(),
            playout_lead_ms=playout_lead_ms,
            bad_input_source=BAD_MEDIA,
            dropped=_DROPPED,
            idle_timeout_s=idle_timeout_s,
        )
        self.resumable = resumable
        self._rest = rest
        self._handover = handover
        self._handover_timeout_s = handover_timeout_s
        self._comes_back = comes_back
        self._expected: Expected | None = None  # a handover under way (the agent's keys)
        self._took_over = asyncio.Event()  # the awaited stream is the leg's now
        self._released: asyncio.Future[None] | None = None  # a handed-over socket's handler
        self._decoder = G711Decoder(Law.ULAW)
        self._encoder = G711Encoder(Law.ULAW)
        self._unmarked = 0
        self._last_sent = 0.0
        self._mark_timer: asyncio.TimerHandle | None = None
        self._use(start)

    def _use(self, start: StreamStart) -> None:
        """The stream's own numbering and message prefixes (again after a handover)."""
        self.start = start
        self._next_seq = start.next_sequence
        sid = orjson.dumps(start.stream_sid)
        self._media_prefix = b'{"event":"media","streamSid":' + sid + b',"media":{"payload":"'
        self._media_suffix = b'"}}'
        # every 20 ms frame is 160 bytes of μ-law, 216 of base64: one header fits them all
        self._media_len = len(self._media_prefix) + 216 + len(self._media_suffix)
        self._media_header = frame_header(self._media_len) + self._media_prefix
        self._clear_msg = b'{"event":"clear","streamSid":' + sid + b"}"
        self._mark_prefix = b'{"event":"mark","streamSid":' + sid + b',"mark":{"name":'

    # -- caller → edge -----------------------------------------------------

    def _on_text(self, text: str) -> LegEvent | None:
        """One message → an event for the bridge, or None (handled here or skipped).

        Only reading the message is guarded: what Twilio (or an impostor)
        sends may be anything, but a failure of the edge's own code past
        that point is a bug and propagates.
        """
        try:
            data = orjson.loads(text)
            event = data["event"]
            seq = data.get("sequenceNumber")
            if seq is not None and not self._check_sequence(seq):
                return None
            if event == "media":
                media = data["media"]
                if media.get("track", "inbound") not in ("inbound", "inbound_track"):
                    return None  # a <Connect> stream carries the caller only; be lenient
                pcm16 = self._decoder.decode_b64(media["payload"])
            elif event == "dtmf":
                digit = data["dtmf"]["digit"]
                if digit not in DTMF_DIGITS:
                    self._malformed("dtmf digit out of range")
                    return None
                return Dtmf(digit)
            elif event == "mark":
                name = str(data["mark"]["name"])
                self.stats.marks_played += 1
                return Played(name)
            elif event == "stop":
                if self._expected is not None:
                    return None  # ended for the agent's keys: a new stream comes
                return self._end("completed")
            else:
                reason = (
                    f"repeated {event!r}" if event in ("connected", "start") else "unknown event"
                )
                self._malformed(reason)
                return None
        except (orjson.JSONDecodeError, LookupError, TypeError, ValueError, AttributeError) as exc:
            self._malformed(type(exc).__name__)  # a bad base64 payload: binascii.Error
            return None
        if not pcm16:
            self._malformed("empty payload")
            return None
        return self._audio(pcm16)

    def _check_sequence(self, raw: object) -> bool:
        """Count gaps in Twilio's numbering; False (message skipped) if ``raw`` is not a number.

        One message adds at most ``MAX_COUNTED_GAP`` to the gap metric, and a
        number outside ``0..MAX_SEQUENCE_NUMBER`` is malformed, so a hostile
        ``sequenceNumber`` cannot inflate a counter or poison the next check.
        """
        n = _int(raw)
        if n is None or n > MAX_SEQUENCE_NUMBER:
            self._malformed("sequence number out of range")
            return False
        expected = self._next_seq
        self._next_seq = n + 1
        if n == expected or expected == 0:
            return True
        missing = n - expected
        if missing > 0:
            metrics.TWILIO_SEQUENCE_GAPS.inc(min(missing, MAX_COUNTED_GAP))
        self.stats.sequence_gaps += 1
        if sampled(self.stats.sequence_gaps):
            log.warning(
                "Twilio stream sequence gap: expected %d, got %d",
                expected,
                n,
                extra={"call_id": self.call_id, "gaps": self.stats.sequence_gaps},
            )
        return True

    # -- edge → caller -----------------------------------------------------

    def send_frame(self, frame: bytes, talkspurt_start: bool) -> None:
        transport = self._writable()
        if transport is None or not self._has_room(transport):
            return
        payload = self._encoder.encode_b64(frame)
        if len(payload) == 216:
            transport.write(self._media_header + payload + self._media_suffix)
        else:
            self._write_text(self._media_prefix + payload + self._media_suffix)
        self.stats.frames_out += 1
        self._unmarked += 1
        loop = asyncio.get_running_loop()
        now = loop.time()
        if LATE_GAP_S < now - self._last_sent < TALKSPURT_GAP_S:
            _LATE_SENDS.inc()  # Twilio's buffer (one frame deep at real time) ran dry
            self.stats.late_sends += 1
        self._last_sent = now
        if self._mark_timer is None:
            self._mark_timer = loop.call_later(MARK_INTERVAL_S, self._mark_due)

    def _mark_due(self) -> None:
        self._mark_timer = None
        if self._unmarked:
            self.mark(f"edge-{self.stats.frames_out}")

    def mark(self, name: str) -> None:
        """Ask Twilio to echo ``name`` once what was sent so far has played."""
        self._unmarked = 0
        self.stats.marks_sent += 1
        self._write_text(self._mark_prefix + orjson.dumps(name) + b"}}")

    def clear(self) -> None:
        """Barge-in: Twilio drops the audio it still holds (and echoes pending marks)."""
        self.stats.clears += 1
        self._unmarked = 0
        if self._mark_timer is not None:
            self._mark_timer.cancel()
            self._mark_timer = None
        self._write_text(self._clear_msg)

    # -- call control ------------------------------------------------------

    async def hangup(self) -> None:
        """End the call through Twilio's REST API (``Status=completed``).

        The stream closes with the leg, once the call's end is written: should the
        API fail, Twilio then goes on to the resume ``<Redirect>``, finds the call
        over and is told ``<Hangup/>`` (without it, the close alone ends a
        ``<Connect><Stream>`` call), so the caller is released either way.
        """
        if self._rest is not None and self.start.call_sid:
            await self._rest.hangup(self.start.call_sid)

    async def send_dtmf(self, request: DtmfRequest) -> None:
        """``<Play digits>`` and the stream again through the REST API; returns once the new
        stream is the leg's (:mod:`telephony_edge.twilio.handover`)."""
        rest, handover = self._rest, self._handover
        if rest is None or handover is None:
            raise NotSupported("Twilio's REST API is not configured; cannot send DTMF")
        if self._comes_back is not None and not await self._comes_back():
            raise NotSupported(
                "other workers answer at this worker's public URL, so the stream after the"
                " keys may reach one of them: give each worker its own server.public_url"
            )
        expected, document = handover.expect(request, self.call_id, self.start.call_sid)
        self._expected = expected
        self._took_over.clear()
        try:
            await rest.play_digits(self.start.call_sid, document)
            wait = self._handover_timeout_s + KEY_S * len(request.digits) + 1  # recv's first
            try:
                await asyncio.wait_for(self._took_over.wait(), wait)
            except TimeoutError:
                raise NotSupported("Twilio did not connect the stream again") from None
        finally:
            self._expected = None
            handover.forget(expected)

    @property
    def handing_over(self) -> bool:
        """The stream may end for the agent's keys: a new one takes the call on."""
        return self._expected is not None

    async def _socket_gone(self) -> LegEnded | None:
        """The stream ended without ``stop``: for the agent's keys, wait for the new one and
        take it over; else the call goes on through its TwiML's ``<Redirect>`` when it has
        one (``moved``), or is over."""
        expected = self._expected
        if expected is None:
            return await super()._socket_gone()
        wait = self._handover_timeout_s + KEY_S * len(expected.digits)
        try:
            new = await asyncio.wait_for(asyncio.shield(expected.arrival), wait)
        except TimeoutError:
            return self._end("completed", "Twilio did not connect the stream again")
        except asyncio.CancelledError:
            if not expected.arrival.cancelled():
                raise  # the call's own task, cancelled
            return self._end("completed")  # the keys did not go (the call ended meanwhile)
        self._take_over(new)
        return None

    def _take_over(self, new: NewStream) -> None:
        """The new stream is the leg's; the old one's handler (if handed over) may go."""
        self._release()
        self._ws = new.ws
        self._transport = new.request.transport
        self._peer = new.request.remote
        self._released = new.released
        self._pending.clear()
        self._splitter = FrameSplitter(FRAME_BYTES)
        if self._mark_timer is not None:
            self._mark_timer.cancel()
            self._mark_timer = None
        self._unmarked = 0
        self._use(new.start)
        self.stats.handovers += 1
        self._took_over.set()
        log.info(
            "Twilio stream handed over after the agent's keys",
            extra={"call_id": self.call_id, "stream_sid": new.start.stream_sid},
        )

    def _release(self) -> None:
        released, self._released = self._released, None
        if released is not None and not released.done():
            released.set_result(None)

    async def hand_off(self) -> None:
        """Close the stream: Twilio goes on to the ``<Redirect>`` after it, which the
        worker that takes the call over answers (a drain)."""
        if not self.resumable:
            raise NotSupported("this call's TwiML has no <Redirect> after its stream")
        await self.close()

    def network_state(self) -> dict[str, Any]:
        return {"call_sid": self.start.call_sid, "stream_sid": self.start.stream_sid}

    async def transfer(self, destination: str) -> None:
        """Replace the call's TwiML with ``<Dial>``; Twilio then ends this stream."""
        if self._rest is None:
            raise RuntimeError("Twilio REST API not configured; cannot transfer")
        await self._rest.transfer(self.start.call_sid, destination)

    async def close(self) -> None:
        if self._mark_timer is not None:
            self._mark_timer.cancel()
            self._mark_timer = None
        try:
            await super().close()
        finally:
            self._release()


def _loads(text: str) -> dict[str, Any] | None:
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _int(value: object) -> int | None:
    """A non-negative integer sent as a JSON number or a string of ASCII digits; else None.

    Bounded in length: ``int()`` of a huge digit string is slow (and refused
    past 4300 digits), and no field of Twilio's needs more than 18 digits.
    """
    if type(value) is str:  # Twilio's own form, every message: first
        return int(value) if 0 < len(value) <= 18 and value.isascii() and value.isdigit() else None
    if isinstance(value, int) and not isinstance(value, bool):
        return value if 0 <= value < 10**18 else None
    return None
