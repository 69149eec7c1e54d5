"""What every WebSocket media leg shares (Twilio Media Streams, Vonage's audio socket).

Theory of operation
-------------------
Such a network opens a WebSocket to the edge and then streams the caller's
audio in messages, 20 ms at a time. :class:`SocketLeg` reads them in
:meth:`SocketLeg.recv` (no reader task, no queue per call), hands each text
or binary message to the network's hook (``_on_text`` / ``_on_binary``) and
turns whatever audio they decode into canonical 640-byte frames. It notices
a socket gone silent with ONE timer per call every ``idle_timeout_s`` (not a
timeout around every receive, which would cost a timer per frame), and ends
with :class:`LegEnded` however the socket ends.

Toward the caller, subclasses write their messages straight to the transport
(``wsframe``) after :meth:`SocketLeg._writable` and :meth:`SocketLeg._has_room`:
the send is synchronous and, when the socket is backed up, the frame is
dropped and counted, never awaited.

Rules: a malformed or unexpected message is bad input
(:func:`telephony_edge.badinput.report`: counted under the leg's
``bad_input_source``, a warning with the call id rate-limited per sender)
and skipped; it never raises out of the leg. A WebSocket protocol error
(a text frame that is not UTF-8, a bad opcode: aiohttp closes with 1007 or
1002) is bad input too, and ends the leg.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from aiohttp import WebSocketError, WSCloseCode, WSMsgType, web
from prometheus_client import Counter

from telephony_edge import badinput
from telephony_edge.audio.frames import FRAME_BYTES, FRAME_MS, FrameSplitter
from telephony_edge.calls.leg import Leg, LegEnded, LegEvent, LegInfo
from telephony_edge.calls.record import CallRecord
from telephony_edge.logs import sampled
from telephony_edge.wsframe import frame_header

if TYPE_CHECKING:
    from telephony_edge.calls.migration import Resumption

log = logging.getLogger(__name__)

MAX_REASONS = 32  # distinct malformed reasons kept per socket for its end-of-call line
SEND_BUFFER_LIMIT = 32 * 1024  # bytes queued in the socket before frames are dropped
PLAYOUT_LEAD_MS = 200  # ahead of real time at a talkspurt's start: a real path's jitter
LET_GO_S = 5.0  # a call whose connection was lost: how long its handler waits for it to move
# (below the transport's 64 KiB high-water mark, so a write never waits for a drain)


class SocketRejected(Exception):
    """A media socket's opening was not acceptable; close it with ``code``."""

    def __init__(self, reason: str, code: int = WSCloseCode.POLICY_VIOLATION) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class CallRunner(Protocol):
    async def run(
        self, record: CallRecord, leg: Leg, resumed: Resumption | None = None
    ) -> CallRecord: ...


async def open_socket(
    request: web.Request, *, max_msg_size: int, what: str
) -> web.WebSocketResponse:
    """Accept a network's media WebSocket (400 for a plain HTTP request)."""
    ws = web.WebSocketResponse(max_msg_size=max_msg_size, autoping=True, compress=False)
    if not ws.can_prepare(request).ok:
        raise web.HTTPBadRequest(text=f"this is a WebSocket endpoint ({what})\n")
    await ws.prepare(request)
    return ws


_refused: dict[str, int] = {}  # sockets refused for capacity, per network (sampled log)
#: the bad-input source of a network's refused openings (counted where they are refused)
_REFUSED_SOURCE = {"Twilio": "twilio-stream", "Vonage": "vonage-ws"}


def peer_host(ws: web.WebSocketResponse) -> str | None:
    """The address a socket came from (None once it is gone)."""
    peer = ws.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else None


async def refuse(
    ws: web.WebSocketResponse, network: str, exc: SocketRejected, **extra: object
) -> web.WebSocketResponse:
    """Close a socket whose opening was refused, with the protocol's code and a warning.

    A refusal for capacity (1013) is logged sampled; any other is the
    sender's bad input, logged rate-limited per sender (it was counted
    where it was refused).
    """
    if exc.code == WSCloseCode.TRY_AGAIN_LATER:
        count = _refused[network] = _refused.get(network, 0) + 1
        if sampled(count):
            log.warning(
                "%s media socket refused: %s",
                network,
                exc.reason,
                extra={**extra, "close_code": int(exc.code), "refused": count},
            )
    else:
        source = _REFUSED_SOURCE.get(network, f"{network.lower()}-ws")
        reason = f"{exc.reason}: closed {int(exc.code)}"
        badinput.report(source, reason, peer_host(ws), count=False)
    await ws.close(code=exc.code, message=exc.reason[:120].encode())
    return ws


async def run_leg(
    calls: CallRunner, record: CallRecord, leg: SocketLeg, resumed: Resumption | None = None
) -> None:
    """Run the call on ``leg`` (``resumed``: taken over from another worker); close it and
    log its counters however the call ends.

    aiohttp cancels the handler of a connection that is lost (``handler_cancellation``).
    That is no end of a resumable call: its network carries it on after the socket, and
    the leg, seeing the socket gone, lets it move (``moved``). So the call's run is shielded
    from that cancellation and let go by itself (at most ``LET_GO_S``); any other call's run
    is cancelled, and the call ends ``error``.
    """
    run = asyncio.ensure_future(calls.run(record, leg, resumed))
    try:
        await asyncio.shield(run)
    except asyncio.CancelledError:
        if leg.resumable and leg.connection_gone:
            await asyncio.wait({run}, timeout=LET_GO_S)
        if not run.done():
            run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        raise
    finally:
        await leg.close()
        log.info(
            "%s media socket closed",
            leg.network,
            extra={"call_id": record.call_id, **dataclasses.asdict(leg.stats)},
        )


@dataclass(slots=True)
class SocketStats:
    """Per-socket counters, for the leg's end-of-call log line and tests."""

    frames_in: int = 0
    frames_out: int = 0
    frames_dropped: int = 0
    malformed: int = 0
    clears: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


class SocketLeg(Leg):
    """A call's audio over one WebSocket a network opened to the edge."""

    #: the network's name in log lines and error messages
    network: ClassVar[str]
    #: bytes queued in the socket past which frames are dropped
    send_buffer_limit: ClassVar[int] = SEND_BUFFER_LIMIT

    def __init__(
        self,
        ws: web.WebSocketResponse,
        request: web.BaseRequest,
        info: LegInfo,
        *,
        call_id: str,
        stats: SocketStats,
        bad_input_source: str,
        dropped: Counter,
        idle_timeout_s: float,
        playout_lead_ms: int,
    ) -> None:
        """``bad_input_source``: the ``source`` label its bad input is counted under;
        ``playout_lead_ms``: agent audio sent ahead at a talkspurt's start, for the network's
        playout buffer."""
        self.info = info
        self.playout_lead_frames = playout_lead_ms // FRAME_MS
        self.call_id = call_id
        self.stats = stats
        self._ws = ws
        self._transport = request.transport
        self._peer = request.remote
        self._bad_input_source = bad_input_source
        self._dropped_total = dropped
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
        if self._idle_timer is None:
            self._arm_idle_check()
        while True:
            msg = await self._ws.receive()  # the leg's socket: a network may hand over another
            self._received += 1
            if msg.type is WSMsgType.TEXT:
                event = self._on_text(msg.data)
            elif msg.type is WSMsgType.BINARY:
                event = self._on_binary(msg.data)
            elif msg.type is WSMsgType.ERROR and isinstance(msg.data, WebSocketError):
                exc = msg.data  # aiohttp closed the socket (with 1007, 1002 …) for a bad frame
                self._malformed(f"WebSocket protocol error: closed {exc.code}")
                return self._end("completed", f"{self.network} socket error: {exc!r}")
            elif self._idle_error is not None:  # closed by _idle_check
                return self._idle_ended(self._idle_error)
            else:  # CLOSE, CLOSING, CLOSED, or the connection lost (ERROR): no word of an end
                ended = await self._socket_gone()
                if ended is not None:
                    return ended
                continue  # another socket took over
            if event is not None:
                return event

    async def _socket_gone(self) -> LegEnded | None:
        """The socket closed or its connection dropped, with no word that the call ended
        (Twilio's ``stop``). For a ``resumable`` call the network goes on after the socket
        (Twilio's ``<Redirect>``, Vonage's ``notify``) and any worker carries the call on:
        the leg ends ``moved``. A network that hands the call another socket itself (Twilio
        after the agent's keys) returns None instead, and reading goes on there."""
        return self._end("completed", moved=self.resumable)

    def _idle_ended(self, error: str) -> LegEnded:
        """The socket went silent and was closed: a broken one. A ``resumable`` call goes
        on through its network (``moved``); else the leg ends (the call ``timeout``)."""
        if self.resumable:
            log.warning(
                "%s; the call goes on through %s",
                error,
                self.network,
                extra={"call_id": self.call_id},
            )
            return self._end("completed", error, moved=True)
        return self._end("timeout", error)

    def _on_text(self, text: str) -> LegEvent | None:
        """One text message → an event for the bridge, or None (handled here or skipped)."""
        self._malformed("text message")
        return None

    def _on_binary(self, data: bytes) -> LegEvent | None:
        """One binary message → an event for the bridge, or None (handled here or skipped)."""
        self._malformed("binary message")
        return None

    def _audio(self, pcm16: bytes) -> bytes | None:
        """Decoded caller audio of any size → the next canonical frame (the rest queued)."""
        self.stats.frames_in += 1
        if len(pcm16) == FRAME_BYTES and not self._splitter.pending:
            return pcm16
        frames = self._splitter.push(pcm16)
        if not frames:
            return None
        self._pending.extend(frames[1:])
        return frames[0]

    def _arm_idle_check(self) -> None:
        loop = asyncio.get_running_loop()
        self._idle_timer = loop.call_later(self._idle_timeout_s, self._idle_check)

    def _idle_check(self) -> None:
        """Close a socket that has gone silent (the networks send audio every 20 ms)."""
        if self._received == self._received_at_check and not self._ws.closed:
            self._idle_error = f"no message from {self.network} for {self._idle_timeout_s:g}s"
            log.warning(
                "%s media socket idle; closing it", self.network, extra={"call_id": self.call_id}
            )
            self._spawn_control(self._ws.close(code=WSCloseCode.GOING_AWAY))
            return
        self._received_at_check = self._received
        self._arm_idle_check()

    def _malformed(self, reason: str) -> None:
        """A message the network (or an impostor) should not have sent: bad input, skipped."""
        stats = self.stats
        stats.malformed += 1
        if reason in stats.reasons or len(stats.reasons) < MAX_REASONS:
            stats.reasons[reason] = stats.reasons.get(reason, 0) + 1
        badinput.report(self._bad_input_source, reason, self._peer, call_id=self.call_id)

    def _end(self, status: str, error: str | None = None, *, moved: bool = False) -> LegEnded:
        if self._ended is None:
            self._ended = LegEnded(status=status, error=error, moved=moved)
        return self._ended

    # -- edge → caller -----------------------------------------------------

    @property
    def connection_gone(self) -> bool:
        """The socket's connection is closed or closing (lost, or closed by either side)."""
        transport = self._transport
        return self._ws.closed or transport is None or transport.is_closing()

    def _writable(self) -> asyncio.Transport | None:
        """The transport, if the socket still takes messages."""
        transport = self._transport
        if self._ws.closed or transport is None or transport.is_closing():
            return None
        return transport

    def _has_room(self, transport: asyncio.Transport) -> bool:
        """Whether a frame fits in the socket now; if not it is dropped and counted."""
        if transport.get_write_buffer_size() <= self.send_buffer_limit:
            return True
        self._dropped_total.inc()
        self.stats.frames_dropped += 1
        return False

    def _write_text(self, message: bytes) -> None:
        """One text message, now; dropped if the socket is gone."""
        transport = self._writable()
        if transport is not None:
            transport.write(frame_header(len(message)) + message)

    def _spawn_control(self, coro: Coroutine[Any, Any, object]) -> None:
        task = asyncio.ensure_future(coro)
        self._control_tasks.add(task)
        task.add_done_callback(self._control_done)

    def _control_done(self, task: asyncio.Future[object]) -> None:
        self._control_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("control message not sent: %r", task.exception())

    async def close(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        for task in list(self._control_tasks):
            task.cancel()
        self._control_tasks.clear()
        if not self._ws.closed:
            await self._ws.close()
        self._end("completed")
