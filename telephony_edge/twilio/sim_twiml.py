"""What Twilio does with a simulated call's TwiML beyond its first stream.

A mixin of :class:`~telephony_edge.twilio.simulator.SimulatedCall`: the
REST stand-in's updates (a hang-up or a transfer ends the call; new TwiML
with a stream, the agent's keys, is run), and the TwiML after a stream that
ended while the call did not: Twilio goes on with ``<Connect>``'s next verb,
here the ``<Redirect>`` the edge puts there, and runs what it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any
from urllib.parse import urlencode
from xml.etree import ElementTree

import aiohttp
import orjson

from telephony_edge.simulate import PlayoutBuffer
from telephony_edge.twilio.rest_standin import CallUpdate, play_digits
from telephony_edge.twilio.signature import SIGNATURE_HEADER, compute_signature
from telephony_edge.twilio.sim_parts import (
    Resume,
    SimulationResult,
    StreamInstruction,
    TwimlAnswer,
    new_sid,
    parse_twiml,
)

PLAY_DIGITS = re.compile(r"^[0-9*#w]+$")  # what Twilio's <Play digits> plays
KEY_S = 0.1  # how long the simulated call "plays" each key before its new stream
MAX_REDIRECTS = 25  # <Redirect>s a break follows before the simulated call gives up


class CallTwiml:
    """The TwiML side of a simulated call (see the module docstring)."""

    session: aiohttp.ClientSession
    base_url: str
    public_url: str
    auth_token: str
    account_sid: str
    call_sid: str
    stream_sid: str
    result: SimulationResult
    ws: aiohttp.ClientWebSocketResponse | None
    _loop: asyncio.AbstractEventLoop
    _t_start: float
    _playout: PlayoutBuffer | None
    _reader: asyncio.Task[None] | None
    _ending: asyncio.Task[None] | None
    _caller_hung_up: bool
    _switching: bool
    _completed: bool
    _twiml: TwimlAnswer | None
    _going_on: asyncio.Task[None] | None
    _resume: Resume | None
    _closed: asyncio.Event
    _media_head: bytes

    def webhook_fields(self) -> dict[str, str]:
        raise NotImplementedError

    async def open_stream(
        self, stream: StreamInstruction, *, parameters: dict[str, str] | None = None
    ) -> None:
        raise NotImplementedError

    async def _send(self, message: dict[str, Any]) -> None:
        raise NotImplementedError

    def _next_seq(self) -> int:
        raise NotImplementedError

    def on_rest_update(self, update: CallUpdate) -> None:
        """The edge hung the call up (or transferred it) through REST: Twilio ends the stream.
        A new stream in the TwiML (after ``<Play digits>``): the call goes on over it."""
        self.result.rest_update = update.describe()
        answer = parse_twiml(update.twiml) if update.twiml is not None else None
        if answer is not None and answer.stream is not None and self._ending is None:
            self._twiml = answer
            self._ending = asyncio.ensure_future(self._play_then_stream(update, answer.stream))
            self._ending.add_done_callback(ignore_result)
            return
        self._completed = True
        self.result.edge_closed = True
        if self._playout is not None:  # the call is over: what Twilio still held never plays
            self.result.unheard_frames += self._playout.clear(self._loop.time())
        if self._ending is None:
            self._ending = asyncio.ensure_future(self._end_stream())
            self._ending.add_done_callback(ignore_result)

    async def _end_stream(self) -> None:
        ws = self.ws
        if ws is None or ws.closed:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self._send(
                {
                    "event": "stop",
                    "sequenceNumber": str(self._next_seq()),
                    "streamSid": self.stream_sid,
                    "stop": {"accountSid": self.account_sid, "callSid": self.call_sid},
                }
            )
            await ws.close()

    async def _play_then_stream(self, update: CallUpdate, stream: StreamInstruction) -> None:
        """Twilio's run of the edge's new TwiML: the stream ends, the digits play, a new
        stream (its own ``streamSid``, numbered from 1) takes the call on."""
        self._switching = True
        try:
            await self._end_stream()
            if self._reader is not None:
                await asyncio.gather(self._reader, return_exceptions=True)
            digits = play_digits(update.twiml or "")
            if not all(PLAY_DIGITS.match(d) for d in digits):
                self.result.error = f"<Play digits> Twilio would not play: {digits!r}"
                return
            self.result.digits_played += digits
            await asyncio.sleep(KEY_S * sum(map(len, digits)))
            self._next_stream()
        finally:
            self._switching = False
        await self.open_stream(stream)
        self._ending = None

    def _next_stream(self) -> None:
        """A new stream of the call: its own ``streamSid``, numbered from 1."""
        self.stream_sid = new_sid("MZ")
        sid = orjson.dumps(self.stream_sid)
        self._media_head = b'{"event":"media","streamSid":' + sid + b',"sequenceNumber":"'

    def _goes_on(self, ws: aiohttp.ClientWebSocketResponse) -> bool:
        """Whether Twilio goes on with the TwiML after this stream's end (``<Connect>``'s
        next verb): the stream ended, and the call did not end with it."""
        answer = self._twiml
        return (
            ws is self.ws
            and ws.closed
            and not (self._caller_hung_up or self._completed or self._closed.is_set())
            and answer is not None
            and answer.redirect is not None
        )

    async def _go_on(self) -> None:
        """Twilio runs the TwiML after the ended stream: the ``<Redirect>`` (signed), then
        what it answers: a new stream, or the end of the call."""
        loop, playout = self._loop, self._playout
        assert playout is not None
        now = loop.time()
        resume = self._resume
        if resume is None:  # a new break (not a stream that failed while coming back)
            heard_until = min(playout.end, now)  # the stream's unplayed audio goes with it
            playout.clear(now)
            resume = Resume(now - self._t_start, heard_until - self._t_start)
            self._resume = resume
            self.result.resumes.append(resume)
        while not (self._caller_hung_up or self._completed):
            answer = self._twiml
            if answer is None or answer.redirect is None or resume.hops >= MAX_REDIRECTS:
                break
            resume.hops += 1
            try:
                document = await self._follow(answer.redirect, answer.redirect_method)
                self._twiml = answer = parse_twiml(document)
            except (RuntimeError, aiohttp.ClientError, ElementTree.ParseError, ValueError) as exc:
                self.result.error = f"<Redirect> failed: {exc}"
                break
            if answer.stream is None:
                break  # <Hangup/>, <Say>: the call ends there
            self._next_stream()
            try:
                await self.open_stream(answer.stream)
            except (aiohttp.ClientError, OSError):
                continue  # the stream did not connect: Twilio goes on to the next verb
            resume.streamed_at_s = loop.time() - self._t_start
            return
        self.result.edge_closed = not self._caller_hung_up
        self._closed.set()

    async def _follow(self, url: str, method: str) -> str:
        """Request ``url`` as Twilio requests a ``<Redirect>``, signed; the TwiML it answers.

        A POST carries the call's parameters as a form; a GET in the query, after the
        URL's own (Twilio then signs the whole URL, and no form)."""
        fields = {**self.webhook_fields(), "CallStatus": "in-progress"}
        if method == "GET":
            url = f"{url}{'&' if '?' in url else '?'}{urlencode(fields)}"
            fields = {}
        headers = {SIGNATURE_HEADER: compute_signature(self.auth_token, url, fields)}
        target = self.base_url + url.removeprefix(self.public_url)
        body = fields or None
        async with self.session.request(method, target, data=body, headers=headers) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise RuntimeError(f"<Redirect> answered {resp.status}: {text[:200].strip()}")
        return text


def ignore_result(task: asyncio.Future[Any]) -> None:
    """A done callback: the task's outcome is seen (no "exception never retrieved")."""
    if not task.cancelled():
        task.exception()
