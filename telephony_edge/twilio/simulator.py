"""A stand-in for Twilio toward a running edge: try the edge without a Twilio account.

:class:`SimulatedCall` does what Twilio does for one inbound call: it signs
and POSTs the voice webhook (``X-Twilio-Signature`` with the auth token, as
:class:`RequestValidator` computes it), follows the ``<Connect><Stream>`` of
the TwiML answer, sends ``connected`` and ``start`` (with the
``<Parameter>``s as ``customParameters``), streams the caller's audio as
20 ms μ-law ``media`` messages at real time (with sequence numbers, chunk
numbers and timestamps), and plays what the edge sends back at real time
on a model of Twilio's playout buffer: ``mark``s are echoed once the audio
sent before them has played, ``clear`` drops the unplayed audio and echoes
the pending marks at once. A new TwiML through the REST stand-in ends the
stream; when it is ``<Play digits>`` and a ``<Connect><Stream>`` (the agent's
keys) the call "plays" the digits (kept in ``digits_played``, refused unless
they are ``0-9 * # w``, as Twilio's ``<Play>`` takes) and opens the new stream,
with a new ``streamSid``. A stream that ends while the call does not (the
edge closed it, or its connection dropped, with no hang-up or new TwiML
through the REST stand-in and no caller hang-up) is what Twilio documents for
``<Connect>``: the TwiML goes on with the next verb. The simulator follows a
``<Redirect>`` there (signed, as Twilio requests it), runs the TwiML it gets:
a new stream (its own ``streamSid``; the caller's audio said meanwhile is
lost, as on a real call), or the end; each such break and the audio gap the
caller heard are kept in ``resumes``. What the caller heard is kept on a
timeline, so the WAV written at the end has the gaps and cuts a caller would
hear.

:func:`simulate_call` runs one whole call; tests and ``bench/twilio_load.py``
run hundreds of them in one process (one shared HTTP session, two tasks per
call, the μ-law payloads encoded once).

The CLI also serves a stand-in of Twilio's REST API
(:mod:`telephony_edge.twilio.rest_standin`) for its call, so an edge pointed
at it (``deploy/demo.yaml``) hangs up and transfers without reaching Twilio.
A call that failed (the edge did not connect it, or ended it before the
agent spoke) exits 1 with the reason on one line.

CLI (:mod:`.simulate_cli`): ``telephony-edge simulate twilio --url BASE --to NUMBER --wav IN.wav
--out REPLY.wav``.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from xml.etree import ElementTree

import aiohttp
import orjson

from telephony_edge.simulate import (
    DEFAULT_FROM,
    PlayoutBuffer,
    drop_connection,
)
from telephony_edge.twilio.rest_standin import (
    DEFAULT_ACCOUNT_SID,
    TwilioRestStandIn,
)
from telephony_edge.twilio.signature import SIGNATURE_HEADER, compute_signature
from telephony_edge.twilio.sim_parts import (
    CHUNK_S,
    RATE,
    SILENCE_PAYLOAD,
    ULAW_SILENCE,
    Resume,
    SimulationResult,
    StreamInstruction,
    TwimlAnswer,
    encode_payloads,
    load_wav_ulaw,
    new_sid,
    parse_twiml,
    write_wav_ulaw,
)
from telephony_edge.twilio.sim_twiml import CallTwiml, ignore_result

__all__ = [
    "RATE",
    "SimulatedCall",
    "SimulationResult",
    "StreamInstruction",
    "TwimlAnswer",
    "encode_payloads",
    "load_wav_ulaw",
    "parse_twiml",
    "simulate_call",
    "write_wav_ulaw",
]


@dataclass(eq=False, slots=True)
class _PendingMark:
    name: str
    handle: asyncio.TimerHandle | None = None


class _Playout(PlayoutBuffer):
    """Twilio's playout buffer for one call (μ-law, 8 kHz), with the marks it has yet to play."""

    __slots__ = ("marks",)

    def __init__(self, t0: float) -> None:
        super().__init__(t0, rate=RATE, width=1, silence=ULAW_SILENCE)
        self.marks: list[_PendingMark] = []


class SimulatedCall(CallTwiml):
    """One inbound call as Twilio places it toward the edge at ``base_url``."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        *,
        to: str,
        from_: str = DEFAULT_FROM,
        auth_token: str = "",
        account_sid: str = DEFAULT_ACCOUNT_SID,
        public_url: str | None = None,
        voice_path: str = "/twilio/voice",
        call_sid: str | None = None,
        direction: str = "inbound",
    ) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.public_url = (public_url or base_url).rstrip("/")
        self.voice_path = voice_path  # may carry a query (outbound calls: ?call_id=...)
        self.direction = direction
        self.to = to
        self.from_ = from_
        self.auth_token = auth_token
        self.account_sid = account_sid
        self.call_sid = call_sid or new_sid("CA")
        self.stream_sid = new_sid("MZ")
        self.result = SimulationResult(call_sid=self.call_sid)
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._seq = 0
        self._chunk = 0
        self._loop = asyncio.get_event_loop()
        self._t_post = 0.0
        self._t_start = 0.0
        self._audio_end: float | None = None
        self._last_rx = 0.0
        self._playout: _Playout | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ending: asyncio.Task[None] | None = None
        self._caller_hung_up = False  # then a closed socket is not the edge's doing
        self._dropped: aiohttp.ClientWebSocketResponse | None = None  # its connection cut
        self._switching = False  # the stream ends for a new one (the edge's keys)
        self._completed = False  # hung up or transferred through REST: no TwiML goes on
        self._twiml: TwimlAnswer | None = None  # the TwiML the call runs
        self._going_on: asyncio.Task[None] | None = None  # the TwiML after a stream's end
        self._resume: Resume | None = None  # a break whose new audio has not come yet
        self._closed = asyncio.Event()
        sid = orjson.dumps(self.stream_sid)
        self._media_head = b'{"event":"media","streamSid":' + sid + b',"sequenceNumber":"'

    # -- signalling --------------------------------------------------------

    def webhook_fields(self) -> dict[str, str]:
        return {
            "AccountSid": self.account_sid,
            "ApiVersion": "2010-04-01",
            "CallSid": self.call_sid,
            "CallStatus": "ringing",
            "Called": self.to,
            "Caller": self.from_,
            "Direction": self.direction,
            "From": self.from_,
            "To": self.to,
        }

    async def post_webhook(self, *, sign: bool = True, signature: str | None = None) -> str:
        """POST the signed voice webhook; return the TwiML (raises on non-200)."""
        fields = self.webhook_fields()
        headers = {}
        if signature is not None:
            headers[SIGNATURE_HEADER] = signature
        elif sign:
            url = self.public_url + self.voice_path
            headers[SIGNATURE_HEADER] = compute_signature(self.auth_token, url, fields)
        self._t_post = self._loop.time()
        async with self.session.post(
            self.base_url + self.voice_path, data=fields, headers=headers
        ) as resp:
            self.result.http_status = resp.status
            text = await resp.text()
            if resp.status != 200:
                raise RuntimeError(f"voice webhook answered {resp.status}: {text[:200].strip()}")
        self.result.webhook_s = self._loop.time() - self._t_post
        self.result.twiml = text
        self.result.answer = self._twiml = parse_twiml(text)
        return text

    async def post_amd_result(
        self, callback_url: str, answered_by: str, duration_ms: int, *, sign: bool = True
    ) -> int:
        """POST Twilio's asynchronous AMD result to the call's ``AsyncAmdStatusCallback``.

        ``callback_url`` is the one the call was created with (it names the
        edge's public URL; the request goes to ``base_url``, signed for it).
        Returns the HTTP status.
        """
        fields = {
            "AccountSid": self.account_sid,
            "CallSid": self.call_sid,
            "AnsweredBy": answered_by,
            "MachineDetectionDuration": str(duration_ms),
        }
        headers = {}
        if sign:
            headers[SIGNATURE_HEADER] = compute_signature(self.auth_token, callback_url, fields)
        target = self.base_url + callback_url.removeprefix(self.public_url)
        async with self.session.post(target, data=fields, headers=headers) as resp:
            return resp.status

    async def open_stream(
        self, stream: StreamInstruction, *, parameters: dict[str, str] | None = None
    ) -> None:
        """Connect to the stream URL and send ``connected`` and ``start``."""
        self.ws = await self.session.ws_connect(stream.url, autoping=True, max_msg_size=1 << 20)
        self.result.streams += 1
        await self._send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        self._seq = 1
        start = {
            "event": "start",
            "sequenceNumber": "1",
            "start": {
                "accountSid": self.account_sid,
                "streamSid": self.stream_sid,
                "callSid": self.call_sid,
                "tracks": ["inbound"],
                "customParameters": stream.parameters if parameters is None else parameters,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
            "streamSid": self.stream_sid,
        }
        await self._send(start)
        if self._playout is None:  # the call's first stream (not one after the edge's keys)
            self._t_start = self._loop.time()
            if self._t_post:
                self.result.setup_s = self._t_start - self._t_post
            self._playout = _Playout(self._t_start)
            self._last_rx = self._t_start
        self._reader = asyncio.create_task(self._read(), name=f"sim-read-{self.call_sid}")

    async def _send(self, message: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send_frame(orjson.dumps(message), aiohttp.WSMsgType.TEXT)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    # -- media out ---------------------------------------------------------

    async def send_media(self, payload_b64: bytes) -> bool:
        """One 20 ms ``media`` message (already base64); False once the call is over.

        Between two streams (the call goes on through its TwiML) the frame is lost."""
        ws = self.ws
        if ws is None or ws.closed or ws is self._dropped:
            if ws is None or self._closed.is_set() or self._caller_hung_up:
                return False
            self.result.frames_lost += 1
            return True
        seq = self._next_seq()
        self._chunk += 1
        ts = int((self._loop.time() - self._t_start) * 1000)
        message = b"".join(
            (
                self._media_head,
                str(seq).encode(),
                b'","media":{"track":"inbound","chunk":"',
                str(self._chunk).encode(),
                b'","timestamp":"',
                str(ts).encode(),
                b'","payload":"',
                payload_b64,
                b'"}}',
            )
        )
        try:
            await ws.send_frame(message, aiohttp.WSMsgType.TEXT)
        except (ConnectionError, RuntimeError):
            return False
        self.result.frames_sent += 1
        return True

    async def send_raw(self, text: str | bytes) -> None:
        """Anything at all on the stream (tests: malformed messages)."""
        assert self.ws is not None
        if isinstance(text, bytes):
            await self.ws.send_bytes(text)
        else:
            await self.ws.send_str(text)

    async def send_dtmf(self, digit: str) -> None:
        await self._send(
            {
                "event": "dtmf",
                "streamSid": self.stream_sid,
                "sequenceNumber": str(self._next_seq()),
                "dtmf": {"track": "inbound_track", "digit": digit},
            }
        )

    async def stream_audio(
        self,
        payloads: Sequence[bytes],
        *,
        silence_after_s: float = 0.0,
        dtmf: Sequence[tuple[float, str]] = (),
    ) -> None:
        """Send ``payloads`` then silence at real time, on an absolute 20 ms schedule.

        ``dtmf`` is a list of (seconds from now, digit).
        """
        loop = self._loop
        start = loop.time()
        if payloads and self.result.spoke_at_s is None:
            self.result.spoke_at_s = start - self._t_start
        pending = sorted(dtmf)
        total = len(payloads) + round(silence_after_s / CHUNK_S)
        for i in range(total):
            while pending and loop.time() - start >= pending[0][0]:
                await self.send_dtmf(pending.pop(0)[1])
            payload = payloads[i] if i < len(payloads) else SILENCE_PAYLOAD
            if not await self.send_media(payload):
                return
            if i == len(payloads) - 1:
                self._audio_end = loop.time()
            delay = start + (i + 1) * CHUNK_S - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -CHUNK_S:
                self.result.send_late += 1
        for _, digit in pending:
            await self.send_dtmf(digit)

    async def stream_until_quiet(
        self,
        *,
        quiet_s: float = 1.5,
        min_s: float = 1.0,
        max_s: float = 20.0,
        until: Callable[[SimulationResult], bool] | None = None,
    ) -> None:
        """Keep sending silence until the agent has been quiet for ``quiet_s``.

        Or, with ``until``, until it returns True for the result so far.
        """
        if until is not None:
            predicate = until
            await self._silence_until(lambda elapsed: predicate(self.result), max_s)
        else:
            await self._silence_until(
                lambda elapsed: elapsed >= min_s and self._quiet_s() >= quiet_s, max_s
            )

    async def wait_for_greeting(
        self, *, quiet_s: float = 0.6, first_audio_s: float = 5.0, max_s: float = 30.0
    ) -> None:
        """Listen (sending silence) until the agent's greeting has played, as a caller would.

        Done once agent audio has come and then ``quiet_s`` passed after it
        finished playing; or when none came within ``first_audio_s``.
        Speaking earlier would be a barge-in that cuts the greeting.
        """

        def greeted(elapsed: float) -> bool:
            if self.result.frames_received == 0:
                return elapsed >= first_audio_s
            return self._quiet_s() >= quiet_s

        await self._silence_until(greeted, max_s)

    async def _silence_until(self, done: Callable[[float], bool], max_s: float) -> None:
        """Send silence at real time until ``done(seconds elapsed)``, ``max_s`` or the end."""
        loop = self._loop
        start = loop.time()
        i = 0
        while not self._closed.is_set():
            elapsed = loop.time() - start
            if elapsed >= max_s or done(elapsed):
                return
            if not await self.send_media(SILENCE_PAYLOAD):
                return
            i += 1
            delay = start + i * CHUNK_S - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)

    def _quiet_s(self) -> float:
        """How long the agent has been silent for the caller (nothing received or playing)."""
        return self._loop.time() - max(self._last_rx, self._playout_end())

    def _playout_end(self) -> float:
        return self._playout.end if self._playout is not None else 0.0

    async def stop(self, *, close: bool = True) -> None:
        """Send ``stop`` (the caller hung up) and close the socket."""
        ws = self.ws
        self._caller_hung_up = True  # also between two streams: the TwiML goes no further
        if ws is not None and not ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self._send(
                    {
                        "event": "stop",
                        "sequenceNumber": str(self._next_seq()),
                        "streamSid": self.stream_sid,
                        "stop": {"accountSid": self.account_sid, "callSid": self.call_sid},
                    }
                )
                if close:
                    await ws.close()
        await self.finish()

    def drop(self, *, hang_up: bool = False) -> None:
        """The stream's connection breaks (a reset, no close frame): Twilio goes on with the
        TwiML after ``<Connect>``; with ``hang_up`` the caller hangs up at that moment, and
        the TwiML goes no further (Twilio's status callback says ``completed``)."""
        self._caller_hung_up = hang_up
        if self.ws is not None and not self.ws.closed:
            self._dropped = self.ws
            drop_connection(self.ws)

    async def finish(self) -> SimulationResult:
        """Wait for the reader, settle the figures; idempotent."""
        going_on, self._going_on = self._going_on, None
        if going_on is not None and not going_on.done():
            going_on.cancel()
            await asyncio.gather(going_on, return_exceptions=True)
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                if self.ws is not None and self.ws.closed:
                    await self._reader
                else:
                    self._reader.cancel()
                    await self._reader
            self._reader = None
        result = self.result
        playout = self._playout
        if playout is not None:
            for mark in playout.marks:
                if mark.handle is not None:
                    mark.handle.cancel()
            playout.marks.clear()
            result.heard_ulaw = playout.render()
            result.frames_played = len(playout.chunks)
            result.late_frames = playout.late
            result.jitter_ms = playout.jitter
            result.max_buffered_s = playout.peak
            result.duration_s = self._loop.time() - self._t_start
        if self.ws is not None:
            result.close_code = self.ws.close_code
        return result

    @property
    def over(self) -> bool:
        """The call ended: its stream is gone and no TwiML brings another."""
        return self._closed.is_set()

    async def wait_closed(self, within_s: float) -> bool:
        """Wait up to ``within_s`` for the edge to close the stream; whether it did."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closed.wait(), within_s)
        return self._closed.is_set()

    # -- media in ----------------------------------------------------------

    async def _read(self) -> None:
        ws = self.ws
        assert ws is not None and self._playout is not None
        playout = self._playout
        loop = self._loop
        result = self.result
        try:
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    continue
                now = loop.time()
                data = orjson.loads(msg.data)
                event = data.get("event")
                if event == "media":
                    ulaw = binascii.a2b_base64(data["media"]["payload"])
                    if result.first_audio_s is None:
                        result.first_audio_s = now - self._t_start
                    if self._resume is not None:  # the first audio after a break
                        self._resume.first_audio_at_s = now - self._t_start
                        heard_until = self._t_start + self._resume.heard_until_s
                        self._resume.gap_s = max(0.0, now - heard_until)
                        self._resume = None
                    if (
                        self._audio_end is not None
                        and result.reply_latency_s is None
                        and now > self._audio_end
                    ):
                        result.reply_latency_s = now - self._audio_end
                    result.frames_received += 1
                    if self._audio_end is not None:
                        result.reply_frames += 1
                    self._last_rx = now
                    playout.push(now, ulaw)
                elif event == "mark":
                    result.marks_received += 1
                    self._queue_mark(str(data["mark"]["name"]), now)
                elif event == "clear":
                    result.clears += 1
                    result.clear_times.append(now - self._t_start)
                    playout.clear(now)
                    marks, playout.marks = playout.marks, []
                    for mark in marks:  # Twilio echoes every pending mark on clear
                        if mark.handle is not None:
                            mark.handle.cancel()
                        self._echo_mark(mark.name)
        finally:
            self.result.close_code = ws.close_code
            if self._switching:  # a stream ended for the next one is not the call's end
                pass
            elif self._goes_on(ws):
                self._going_on = asyncio.ensure_future(self._go_on())
                self._going_on.add_done_callback(ignore_result)
            else:
                if ws.closed and not self._caller_hung_up and ws.close_code is not None:
                    self.result.edge_closed = True
                self._closed.set()

    def _queue_mark(self, name: str, now: float) -> None:
        playout = self._playout
        assert playout is not None
        if playout.end <= now:
            self._echo_mark(name)
            return
        mark = _PendingMark(name)

        def due() -> None:
            with contextlib.suppress(ValueError):
                playout.marks.remove(mark)
            self._echo_mark(name)

        mark.handle = self._loop.call_at(playout.end, due)
        playout.marks.append(mark)

    def _echo_mark(self, name: str) -> None:
        if self.ws is None or self.ws.closed:
            return
        self.result.marks_echoed += 1
        task = asyncio.ensure_future(self._send_mark(name))
        task.add_done_callback(ignore_result)

    async def _send_mark(self, name: str) -> None:
        # numbered when sent, so sequence numbers stay in order with the media
        ws = self.ws
        assert ws is not None
        message = orjson.dumps(
            {
                "event": "mark",
                "sequenceNumber": str(self._next_seq()),
                "streamSid": self.stream_sid,
                "mark": {"name": name},
            }
        )
        await ws.send_frame(message, aiohttp.WSMsgType.TEXT)


async def simulate_call(
    base_url: str,
    *,
    to: str,
    audio_ulaw: bytes | None = None,
    payloads: Sequence[bytes] | None = None,
    from_: str = DEFAULT_FROM,
    auth_token: str = "",
    account_sid: str = DEFAULT_ACCOUNT_SID,
    public_url: str | None = None,
    session: aiohttp.ClientSession | None = None,
    speak_after: float | Literal["greeting"] = 0.0,
    silence_after_s: float = 0.0,
    dtmf: Sequence[tuple[float, str]] = (),
    until_quiet: bool = True,
    quiet_s: float = 1.5,
    max_tail_s: float = 20.0,
    hang_up: bool = True,
    rest: TwilioRestStandIn | None = None,
) -> SimulationResult:
    """Place one whole simulated call and return what happened.

    Caller audio is ``audio_ulaw`` (8 kHz μ-law) or pre-encoded ``payloads``
    (:func:`encode_payloads`, shared between calls), sent ``speak_after``
    seconds into the stream, or once the agent's greeting has played
    (``"greeting"``, what a caller does). After it, silence for
    ``silence_after_s``, then (``until_quiet``) until the agent has been quiet
    for ``quiet_s``; then ``stop``, unless the edge ended the call first.
    ``rest``: the REST stand-in the edge is pointed at, told of this call.
    """
    own = session is None
    if session is None:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    call = SimulatedCall(
        session,
        base_url,
        to=to,
        from_=from_,
        auth_token=auth_token,
        account_sid=account_sid,
        public_url=public_url,
    )
    if rest is not None:
        rest.add_call(call.call_sid, to=to, from_=from_, on_update=call.on_rest_update)
    try:
        try:
            await call.post_webhook()
        except (RuntimeError, aiohttp.ClientError, ElementTree.ParseError) as exc:
            call.result.outcome = "failed"
            call.result.error = str(exc)
            return call.result
        answer = call.result.answer
        if answer is None or answer.stream is None:
            call.result.outcome = "answered-without-stream"
            return call.result
        try:
            await call.open_stream(answer.stream)
        except (aiohttp.ClientError, OSError) as exc:
            call.result.outcome = "failed"
            call.result.error = f"stream connect failed: {exc!r}"
            return call.result
        call.result.outcome = "streamed"
        if payloads is None:
            payloads = encode_payloads(audio_ulaw or b"")
        if speak_after == "greeting":
            await call.wait_for_greeting()
        elif speak_after > 0:
            await call.stream_audio((), silence_after_s=speak_after)
        await call.stream_audio(payloads, silence_after_s=silence_after_s, dtmf=dtmf)
        if until_quiet and not call.over:
            await call.stream_until_quiet(quiet_s=quiet_s, max_s=max_tail_s)
        if call.over:
            await call.finish()
        elif hang_up:
            await call.stop()
        else:
            await call.finish()
        if call.result.close_code not in (None, 1000) and call.result.frames_received == 0:
            call.result.outcome = "refused"
        return call.result
    finally:
        if own:
            await session.close()
