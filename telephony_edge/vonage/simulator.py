"""A stand-in for Vonage toward a running edge: try the edge without a Vonage account.

:class:`SimulatedVonageCall` does what Vonage does for one inbound call: it
signs the answer webhook (a JWT, HS256 with the signature secret, with the
body's ``payload_hash``) and POSTs (or GETs) it, follows the NCCO's
``connect`` to the ``websocket`` endpoint, sends ``websocket:connected``
with the content type and the NCCO's headers, streams the caller's audio as
binary L16 16 kHz 640-byte frames at real time, and plays what the edge
sends back on a model of Vonage's bounded playout buffer (``clear`` drops
what has not played and is acknowledged with ``websocket:cleared``; audio
beyond the buffer's bound, 3072 messages, is dropped and counted, as Vonage
would). Hanging
up closes the socket, then the event webhook reports ``completed``.

As Vonage documents, an NCCO runs its actions in order, the next starting
when the one before finished: a ``connect`` to a websocket finishes when the
socket closes, and the call goes on with what follows it unless the caller
hung up. The simulator runs ``notify`` (a signed request to its
``eventUrl``; an NCCO in the answer replaces the rest of the current one),
``talk`` (noted) and a further websocket ``connect`` (a new socket, the
caller's audio going on into it); when the NCCO runs out the call is over
(``completed``). Each socket's first and last agent audio is kept, so the
gap the caller heard between two sockets is measured (``VonageResult.gaps_s``). A call
that failed (the edge did not connect it, or ended it before the agent
spoke) exits the CLI with 1 and the reason on one line.

CLI: ``telephony-edge simulate vonage --url BASE --to NUMBER --wav IN.wav --out REPLY.wav``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid as uuid_mod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
import orjson
from yarl import URL

from telephony_edge.simulate import (
    DEFAULT_FROM,
    PlayoutBuffer,
    drop_connection,
    load_wav_pcm,
    silent_end_reason,
    unanswered_reason,
    write_wav_pcm,
)
from telephony_edge.vonage.signature import query_payload, sign

RATE = 16000
FRAME_BYTES = 640  # 20 ms of L16 at 16 kHz
FRAME_S = 0.02
SILENCE = b"\x00" * FRAME_BYTES
CONTENT_TYPE = "audio/l16;rate=16000"
# Vonage buffers at most 3072 messages, "around 60 seconds of audio" (its play-audio-into-a-
# WebSocket tutorial): audio further ahead is dropped
BUFFER_LIMIT_S = 3072 * 0.02
# Vonage retries a request for an NCCO once after these (and a connection error or timeout)
NCCO_RETRY_STATUSES = frozenset({429, 503, 504})
# Vonage's event webhook timeouts: 1 s to connect, 10 s for the answer at most
NOTIFY_TIMEOUT = aiohttp.ClientTimeout(total=10.0, connect=1.0)

__all__ = ["SimulatedVonageCall", "VonageResult", "simulate_call"]


@dataclass(frozen=True, slots=True)
class WebsocketInstruction:
    """The ``connect`` action's ``websocket`` endpoint."""

    uri: str
    content_type: str
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class NccoAnswer:
    """What the simulator understood of the NCCO (the parts the edge uses).

    ``after``: the actions that follow the first websocket ``connect``, run
    once its socket closes while the caller is still there.
    """

    websocket: WebsocketInstruction | None
    talk: tuple[str, ...]
    after: tuple[dict[str, Any], ...] = ()


def _websocket_of(action: dict[str, Any]) -> WebsocketInstruction | None:
    """A ``connect`` action's websocket endpoint, if it has one."""
    if action.get("action") != "connect":
        return None
    for endpoint in action.get("endpoint", []):
        if isinstance(endpoint, dict) and endpoint.get("type") == "websocket":
            headers = endpoint.get("headers") or {}
            return WebsocketInstruction(
                uri=str(endpoint.get("uri", "")),
                content_type=str(endpoint.get("content-type", "")),
                headers={str(k): str(v) for k, v in headers.items()},
            )
    return None


def parse_ncco(actions: object) -> NccoAnswer:
    """Read the actions the edge answers with; raise ValueError for anything not an NCCO."""
    if not isinstance(actions, list) or not all(isinstance(a, dict) for a in actions):
        raise ValueError("an NCCO is a JSON array of actions")
    websocket = None
    talk: list[str] = []
    after: tuple[dict[str, Any], ...] = ()
    for i, action in enumerate(actions):
        if action.get("action") == "talk":
            talk.append(str(action.get("text", "")))
        elif websocket is None and (found := _websocket_of(action)) is not None:
            websocket, after = found, tuple(actions[i + 1 :])
    return NccoAnswer(websocket=websocket, talk=tuple(talk), after=after)


@dataclass(slots=True)
class SocketSpan:
    """One websocket of the call, in the simulator's clock (seconds)."""

    opened_at: float
    first_audio_at: float | None = None
    last_audio_at: float | None = None
    closed_at: float | None = None
    close_code: int | None = None
    dropped: bool = False  # its connection was cut (drop): not the edge's close


def load_wav_l16(path: str | Path) -> bytes:
    """A WAV file of any rate, width and channel count as 16 kHz mono PCM16."""
    return load_wav_pcm(path, RATE)


def write_wav_l16(path: str | Path, pcm: bytes) -> None:
    write_wav_pcm(path, pcm, RATE)


def split_frames(pcm: bytes) -> list[bytes]:
    """640-byte frames, the last one padded with silence."""
    frames = [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)]
    if frames and len(frames[-1]) < FRAME_BYTES:
        frames[-1] += SILENCE[: FRAME_BYTES - len(frames[-1])]
    return frames


@dataclass(slots=True)
class VonageResult:
    """What happened on one simulated call."""

    uuid: str
    outcome: str = "pending"  # connected | answered-without-websocket | refused | failed
    answer: NccoAnswer | None = None
    http_status: int = 0
    close_code: int | None = None
    webhook_s: float | None = None
    first_audio_s: float | None = None  # websocket:connected sent → first agent audio
    frames_sent: int = 0
    frames_received: int = 0
    odd_frames: int = 0  # binary messages from the edge that were not 640 bytes
    frames_played: int = 0
    unheard_frames: int = 0  # agent audio still queued when the edge closed the socket: cut off
    overflow_frames: int = 0  # beyond the bounded buffer: dropped, as Vonage would
    late_frames: int = 0  # agent audio that came after the playout buffer ran dry mid-turn
    jitter_ms: list[int] = field(default_factory=list)  # arrival lateness histogram, 1 ms
    max_buffered_s: float = 0.0
    clears: int = 0
    clear_times: list[float] = field(default_factory=list)
    other_text: list[str] = field(default_factory=list)
    edge_closed: bool = False
    events_posted: list[tuple[str, int]] = field(default_factory=list)
    duration_s: float = 0.0
    heard_pcm: bytes = b""
    error: str = ""
    sockets: list[SocketSpan] = field(default_factory=list)
    notified: list[tuple[str, int]] = field(default_factory=list)  # (eventUrl, HTTP status)
    ncco_ended: bool = False  # the NCCO ran out after a socket closed: the call completed

    @property
    def gaps_s(self) -> list[float]:
        """Between consecutive sockets: the last agent audio on one to the first on the next."""
        heard = [
            (s.first_audio_at, s.last_audio_at)
            for s in self.sockets
            if s.first_audio_at is not None and s.last_audio_at is not None
        ]
        return [b[0] - a[1] for a, b in itertools.pairwise(heard)]

    def failure(self) -> str | None:
        """Why the call failed, in one line; None when the caller got through to the agent."""
        if self.outcome == "failed":
            return self.error or "the call failed"
        if self.outcome == "answered-without-websocket":
            return unanswered_reason("websocket", self.answer.talk if self.answer else ())
        if self.outcome == "refused":
            return f"the edge refused the audio socket (close {self.close_code})"
        if self.frames_received == 0 and self.edge_closed:
            return silent_end_reason("closed the audio socket", self.close_code)
        return None

    def summary(self) -> str:
        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value * 1000:.0f} ms"

        lines = [
            f"call {self.uuid}: {self.outcome}"
            + (f" ({self.error})" if self.error else "")
            + (f" close {self.close_code}" if self.close_code else ""),
            f"  answer webhook in {ms(self.webhook_s)}; first agent audio {ms(self.first_audio_s)}",
            f"  frames sent {self.frames_sent}, received {self.frames_received} "
            f"(played {self.frames_played}, over the buffer {self.overflow_frames}, "
            f"late {self.late_frames}, "
            f"not 640 bytes {self.odd_frames}), clears {self.clears}",
            f"  duration {self.duration_s:.1f} s"
            + (", the edge ended the call" if self.edge_closed else ""),
        ]
        if self.clears:
            lines.append(
                f"  barge-in: the edge cleared the agent's audio {self.clears} time(s) "
                f"(Vonage clear, first at {self.clear_times[0]:.1f} s)"
            )
        if self.answer is not None and self.answer.talk:
            lines.append(f"  said: {' / '.join(self.answer.talk)}")
        return "\n".join(lines)


class SimulatedVonageCall:
    """One inbound call as Vonage places it toward the edge at ``base_url``."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        *,
        to: str,
        from_: str = DEFAULT_FROM,
        signature_secret: str = "",
        answer_path: str = "/vonage/answer",
        event_path: str = "/vonage/event",
        method: Literal["GET", "POST"] = "POST",
        uuid: str | None = None,
    ) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.answer_path = answer_path
        self.event_path = event_path
        self.method = method
        self.to = to.removeprefix("+")  # Vonage sends numbers without the +
        self.from_ = from_.removeprefix("+")
        self.secret = signature_secret
        self.uuid = uuid or str(uuid_mod.uuid4())
        self.conversation_uuid = "CON-" + str(uuid_mod.uuid4())
        self.result = VonageResult(uuid=self.uuid)
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._loop = asyncio.get_event_loop()
        self._t_start = 0.0
        self._last_rx = 0.0
        self._playout: PlayoutBuffer | None = None
        self._reader: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()  # the current socket closed
        self._over = asyncio.Event()  # the call is over: the caller hung up or the NCCO ran out
        self._caller_hung_up = False  # then a closed socket is not the edge's doing
        self._rest: list[dict[str, Any]] = []  # the NCCO's actions after the running connect
        self._continuing: asyncio.Task[None] | None = None

    # -- webhooks ----------------------------------------------------------

    def answer_fields(self) -> dict[str, str]:
        return {
            "to": self.to,
            "from": self.from_,
            "uuid": self.uuid,
            "conversation_uuid": self.conversation_uuid,
            "region_url": "https://api-us-3.vonage.com",
        }

    def _auth(self, body: bytes, token: str | None, sign_it: bool) -> dict[str, str]:
        if token is not None:
            return {"Authorization": f"Bearer {token}"}
        if not sign_it:
            return {}
        return {"Authorization": f"Bearer {sign(self.secret, body)}"}

    async def post_answer(self, *, sign_it: bool = True, token: str | None = None) -> Any:
        """Ask for the NCCO; return it parsed (raises RuntimeError on non-200)."""
        fields = self.answer_fields()
        url = self.base_url + self.answer_path
        t0 = self._loop.time()
        if self.method == "GET":  # Vonage hashes the query as compact JSON, in order
            headers = self._auth(query_payload(fields.items()), token, sign_it)
            request = self.session.get(url, params=fields, headers=headers)
        else:
            body = orjson.dumps(fields)
            headers = self._auth(body, token, sign_it)
            headers["Content-Type"] = "application/json"
            request = self.session.post(url, data=body, headers=headers)
        async with request as resp:
            self.result.http_status = resp.status
            text = await resp.text()
            if resp.status != 200:
                raise RuntimeError(f"answer webhook answered {resp.status}: {text[:200].strip()}")
        self.result.webhook_s = self._loop.time() - t0
        actions = orjson.loads(text)
        self.result.answer = parse_ncco(actions)
        self._rest = list(self.result.answer.after)
        return actions

    async def post_event(self, status: str, **extra: str) -> int:
        """A signed event webhook (``completed`` when the caller hangs up); its HTTP status."""
        fields = {
            "status": status,
            "uuid": self.uuid,
            "conversation_uuid": self.conversation_uuid,
            "direction": "inbound",
            "from": self.from_,
            "to": self.to,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            **extra,
        }
        body = orjson.dumps(fields)
        headers = self._auth(body, None, True)
        headers["Content-Type"] = "application/json"
        async with self.session.post(
            self.base_url + self.event_path, data=body, headers=headers
        ) as resp:
            await resp.read()
            self.result.events_posted.append((status, resp.status))
            return resp.status

    # -- the socket ----------------------------------------------------------

    async def open_socket(
        self,
        instruction: WebsocketInstruction,
        *,
        headers: dict[str, str] | None = None,
        content_type: str | None = None,
        first_message: str | bytes | None = None,
    ) -> None:
        """Connect and send ``websocket:connected`` (or ``first_message``, for tests)."""
        self.ws = await self.session.ws_connect(instruction.uri, autoping=True)
        self._closed = asyncio.Event()
        if first_message is None:
            connected: dict[str, Any] = {
                "event": "websocket:connected",
                "content-type": content_type or instruction.content_type,
            }
            connected.update(instruction.headers if headers is None else headers)
            await self.ws.send_str(orjson.dumps(connected).decode())
        elif isinstance(first_message, bytes):
            await self.ws.send_bytes(first_message)
        else:
            await self.ws.send_str(first_message)
        now = self._loop.time()
        self.result.sockets.append(SocketSpan(opened_at=now))
        if self._playout is None:  # one caller, one playout across the call's sockets
            self._t_start = self._last_rx = now
            self._playout = PlayoutBuffer(
                self._t_start, rate=RATE, width=2, silence=SILENCE, limit_s=BUFFER_LIMIT_S
            )
        self._reader = asyncio.create_task(self._read(), name=f"vonage-sim-{self.uuid}")

    async def send_audio(self, frame: bytes) -> bool:
        """Send one frame; False once the call is over. Between two sockets (the NCCO going
        on) the caller's audio goes nowhere and the call goes on."""
        ws = self.ws
        dropped = bool(self.result.sockets) and self.result.sockets[-1].dropped
        if ws is None or ws.closed or dropped:
            return (dropped or self._continuing is not None) and not self._over.is_set()
        try:
            await ws.send_bytes(frame)
        except (ConnectionError, RuntimeError):
            return False
        self.result.frames_sent += 1
        return True

    async def send_raw(self, data: str | bytes) -> None:
        assert self.ws is not None
        if isinstance(data, bytes):
            await self.ws.send_bytes(data)
        else:
            await self.ws.send_str(data)

    async def send_dtmf(self, digit: str) -> None:
        await self.send_raw(
            orjson.dumps({"event": "websocket:dtmf", "digit": digit, "duration": 260}).decode()
        )

    async def stream_audio(
        self,
        frames: Sequence[bytes],
        *,
        silence_after_s: float = 0.0,
        dtmf: Sequence[tuple[float, str]] = (),
    ) -> None:
        """Send ``frames`` then silence at real time; ``dtmf``: (seconds from now, digit)."""
        loop = self._loop
        start = loop.time()
        pending = sorted(dtmf)
        total = len(frames) + round(silence_after_s / FRAME_S)
        for i in range(total):
            while pending and loop.time() - start >= pending[0][0]:
                await self.send_dtmf(pending.pop(0)[1])
            if not await self.send_audio(frames[i] if i < len(frames) else SILENCE):
                return
            delay = start + (i + 1) * FRAME_S - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        for _, digit in pending:
            await self.send_dtmf(digit)

    async def silence_until(self, done: Callable[[float], bool], max_s: float) -> None:
        """Send silence at real time until ``done(seconds elapsed)``, ``max_s`` or the end."""
        loop = self._loop
        start = loop.time()
        i = 0
        while not (self._closed.is_set() and self._continuing is None) and not self._over.is_set():
            elapsed = loop.time() - start
            if elapsed >= max_s or done(elapsed):
                return
            if not await self.send_audio(SILENCE):
                return
            i += 1
            delay = start + i * FRAME_S - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)

    def quiet_s(self) -> float:
        """How long the agent has been silent for the caller (nothing received or playing)."""
        end = self._playout.end if self._playout is not None else 0.0
        return self._loop.time() - max(self._last_rx, end)

    async def wait_for_greeting(self, *, quiet_s: float = 0.6, max_s: float = 30.0) -> None:
        """Listen (sending silence) until the agent's greeting has played."""

        def greeted(elapsed: float) -> bool:
            if self.result.frames_received == 0:
                return elapsed >= 5.0
            return self.quiet_s() >= quiet_s

        await self.silence_until(greeted, max_s)

    async def hang_up(self, *, event: bool = True) -> None:
        """The caller hangs up: Vonage closes the socket, then reports ``completed``."""
        self._caller_hung_up = True  # the NCCO goes no further
        if self._continuing is not None:
            self._continuing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._continuing
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()
        await self.finish()
        if event and not self.result.ncco_ended:  # else Vonage reported it as the NCCO ran out
            await self.post_event("completed", duration=str(round(self.result.duration_s)))

    def drop(self, *, hang_up: bool = False) -> None:
        """The socket's connection breaks (a reset, no close frame): the ``connect`` ends,
        and Vonage runs the NCCO's next action; with ``hang_up`` the caller hangs up at that
        moment, and the NCCO goes no further (the event webhook then says ``completed``)."""
        self._caller_hung_up = hang_up
        if self.ws is not None and not self.ws.closed:
            self.result.sockets[-1].dropped = True
            drop_connection(self.ws)

    async def on_api_update(self, body: dict[str, Any]) -> None:
        """The Voice API changed the call (a stand-in tells): ``hangup`` ends it, ``transfer``
        replaces its NCCO; either way the current NCCO runs no further."""
        if body.get("action") in ("hangup", "transfer"):
            self._rest.clear()
            if self._playout is not None:  # the connect is over: what Vonage held never plays
                self.result.unheard_frames += self._playout.clear(self._loop.time())

    async def wait_closed(self, within_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closed.wait(), within_s)
        return self._closed.is_set()

    async def wait_over(self, within_s: float) -> bool:
        """Whether the call is over (the NCCO ran out after its socket closed) in time."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._over.wait(), within_s)
        return self._over.is_set()

    # -- the NCCO after the socket ---------------------------------------------

    async def _go_on(self) -> None:
        """The ``connect`` ended with the caller still there: run the NCCO's next actions."""
        try:
            if await self._next_actions():
                return  # a new socket: this connect runs until it closes
            self.result.ncco_ended = True  # the NCCO ran out: Vonage completes the call
            await self.post_event("completed", duration=str(round(self.result.duration_s)))
        except (aiohttp.ClientError, OSError, ValueError) as exc:  # Vonage would end the call
            self.result.error = f"NCCO after the socket: {exc!r}"[:300]
        finally:
            self._continuing = None
        self._over.set()

    async def _next_actions(self) -> bool:
        """Run actions until a websocket ``connect`` (True: its socket is open) or the end."""
        while self._rest and not self._caller_hung_up:
            action = self._rest.pop(0)
            kind = action.get("action")
            if kind == "notify":
                await self._notify(action)
            elif kind == "talk":
                self.result.other_text.append(f"talk: {action.get('text', '')}"[:200])
            elif (websocket := _websocket_of(action)) is not None:
                await self.open_socket(websocket)
                return True
        return False

    async def _notify(self, action: dict[str, Any]) -> None:
        """``notify``: a signed request with the payload to the action's ``eventUrl``; an NCCO
        in the answer replaces what is left of the current one (Vonage's notify action).

        ``eventMethod`` GET sends the fields as query parameters (as Vonage sends a GET
        webhook), POST as a JSON body. As Vonage does for a request for an NCCO, it is
        tried once more after a connection error or timeout, or a 429, 503 or 504.
        """
        urls = action.get("eventUrl") or []
        if not isinstance(urls, list) or not urls:
            raise ValueError("notify without an eventUrl")
        payload = action.get("payload") or {}
        if not isinstance(payload, dict):
            raise ValueError("notify payload is not an object")
        fields: dict[str, Any] = {
            "payload": payload,
            "uuid": self.uuid,
            "conversation_uuid": self.conversation_uuid,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        }
        method = str(action.get("eventMethod") or "POST").upper()
        for attempt in range(2):
            try:
                status, text = await self._notify_once(str(urls[0]), method, fields)
            except (aiohttp.ClientConnectionError, TimeoutError):
                if attempt:
                    raise
                continue
            if status in NCCO_RETRY_STATUSES and not attempt:
                continue
            if status == 200 and text.strip():
                actions = orjson.loads(text)
                parse_ncco(actions)  # ValueError: not an NCCO
                self._rest = list(actions)
            return

    async def _notify_once(self, url: str, method: str, fields: dict[str, Any]) -> tuple[int, str]:
        if method == "GET":
            flat = {k: v for k, v in fields.items() if k != "payload"}
            flat.update({str(k): str(v) for k, v in fields["payload"].items()})
            target = URL(url).extend_query(flat)
            headers = self._auth(query_payload(target.query.items()), None, True)
            request = self.session.get(target, headers=headers, timeout=NOTIFY_TIMEOUT)
        else:
            body = orjson.dumps(fields)
            headers = self._auth(body, None, True)
            headers["Content-Type"] = "application/json"
            request = self.session.post(url, data=body, headers=headers, timeout=NOTIFY_TIMEOUT)
        async with request as resp:
            text = await resp.text()
            self.result.notified.append((url, resp.status))
            return resp.status, text

    async def finish(self) -> VonageResult:
        """Wait for the reader, settle the figures; idempotent."""
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                if self.ws is None or not self.ws.closed:
                    self._reader.cancel()
                await self._reader
            self._reader = None
        result = self.result
        if self._playout is not None:
            result.heard_pcm = self._playout.render()
            result.frames_played = len(self._playout.chunks)
            result.overflow_frames = self._playout.overflow
            result.max_buffered_s = self._playout.peak
            result.late_frames = self._playout.late
            result.jitter_ms = self._playout.jitter
            result.duration_s = self._loop.time() - self._t_start
        if self.ws is not None:
            result.close_code = self.ws.close_code
        return result

    async def _read(self) -> None:
        ws = self.ws
        assert ws is not None and self._playout is not None
        playout = self._playout
        result = self.result
        span = result.sockets[-1]
        try:
            async for msg in ws:
                now = self._loop.time()
                if msg.type is aiohttp.WSMsgType.BINARY:
                    if result.first_audio_s is None:
                        result.first_audio_s = now - self._t_start
                    result.frames_received += 1
                    if len(msg.data) != FRAME_BYTES:
                        result.odd_frames += 1
                    self._last_rx = now
                    if span.first_audio_at is None:
                        span.first_audio_at = now
                    span.last_audio_at = now
                    playout.push(now, msg.data)
                elif msg.type is aiohttp.WSMsgType.TEXT:
                    data = orjson.loads(msg.data)
                    if isinstance(data, dict) and data.get("action") == "clear":
                        result.clears += 1
                        result.clear_times.append(now - self._t_start)
                        playout.clear(now)
                        await ws.send_str('{"event":"websocket:cleared"}')
                    else:
                        result.other_text.append(str(msg.data)[:200])
        finally:
            gone = self._caller_hung_up or span.dropped  # not the edge's doing
            if ws.closed and not gone and ws.close_code is not None:
                result.edge_closed = True
                result.unheard_frames += playout.clear(self._loop.time())  # (as above)
            result.close_code = span.close_code = ws.close_code
            span.closed_at = self._loop.time()
            if ws.closed and not self._caller_hung_up and self._continuing is None:
                if self._rest:  # the NCCO goes on after the connect
                    self._continuing = asyncio.create_task(self._go_on(), name=f"ncco-{self.uuid}")
                else:
                    self._over.set()
            self._closed.set()


async def simulate_call(
    base_url: str,
    *,
    to: str,
    audio: bytes,
    from_: str = DEFAULT_FROM,
    signature_secret: str = "",
    session: aiohttp.ClientSession | None = None,
    speak_after: float | Literal["greeting"] = "greeting",
    dtmf: Sequence[tuple[float, str]] = (),
    quiet_s: float = 1.5,
    max_tail_s: float = 20.0,
) -> VonageResult:
    """Place one whole simulated call (``audio``: 16 kHz PCM16) and return what happened."""
    own = session is None
    if session is None:
        session = aiohttp.ClientSession()
    call = SimulatedVonageCall(
        session, base_url, to=to, from_=from_, signature_secret=signature_secret
    )
    try:
        try:
            await call.post_answer()
        except (RuntimeError, aiohttp.ClientError, ValueError) as exc:
            call.result.outcome = "failed"
            call.result.error = str(exc)
            return call.result
        answer = call.result.answer
        if answer is None or answer.websocket is None:
            call.result.outcome = "answered-without-websocket"
            return call.result
        await call.post_event("answered")
        try:
            await call.open_socket(answer.websocket)
        except (aiohttp.ClientError, OSError) as exc:
            call.result.outcome = "failed"
            call.result.error = f"websocket connect failed: {exc!r}"
            return call.result
        call.result.outcome = "connected"
        if speak_after == "greeting":
            await call.wait_for_greeting()
        elif speak_after > 0:
            await call.stream_audio((), silence_after_s=speak_after)
        await call.stream_audio(split_frames(audio), silence_after_s=0.2, dtmf=dtmf)
        await call.silence_until(
            lambda elapsed: elapsed >= 1.0 and call.quiet_s() >= quiet_s, max_tail_s
        )
        await call.hang_up()
        if call.result.close_code not in (None, 1000) and call.result.frames_received == 0:
            call.result.outcome = "refused"
        return call.result
    finally:
        if own:
            await session.close()
