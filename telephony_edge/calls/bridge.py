"""The bridge: one call = one network leg + one agent link + the pumps between them.

Theory of operation
-------------------
``run()`` starts reading the leg at once, before the agent link exists, so
the caller's first words are buffered (bounded) rather than lost and the
network never waits on the agent core. In parallel it prepares the session
(prefetch webhook, variables) and opens the link; on ``onready`` the buffer
is flushed in order and caller audio then flows straight through.

Agent audio goes into the :class:`Playout` and is played one 20 ms frame per
tick of the worker's :class:`Pacer`, after a lead of a few frames at the
start of each talkspurt (``BridgeLimits.playout_lead_frames``) that primes
the network's jitter buffer. ``pause``/``unpause`` gate the playout;
``clear`` empties it and tells the leg to clear the network's buffer.

Whoever ends the call first sets ``call_status`` (the first cause wins):
the caller (leg ended → ``user-ended``), the agent (``end_call``,
``transfer_call``, ``onsessionended`` → ``agent-ended``), the API or drain
(``api-ended``), the limits (``timeout``) or a failure (``error``). Then one
teardown path cancels every task of the call, hangs up the network if the
caller is still there, and closes the link and the leg.
"""

from __future__ import annotations

import asyncio
import audioop
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from telephony_edge import metrics
from telephony_edge.agent import messages
from telephony_edge.agent.link import AgentLink, AgentLinkError, AgentMessage, LinkClosed
from telephony_edge.audio.frames import FRAME_MS
from telephony_edge.calls.leg import Dtmf, Leg, LegEnded, LegEvent, Played
from telephony_edge.calls.pacing import Pacer
from telephony_edge.calls.playout import Playout
from telephony_edge.calls.record import CallRecord, CallState, CallStatus
from telephony_edge.logs import current_call_id

log = logging.getLogger(__name__)

_C2A = metrics.RELAY_LATENCY_SECONDS.labels(direction="caller_to_agent")
_A2C = metrics.RELAY_LATENCY_SECONDS.labels(direction="agent_to_caller")
_PREBUFFER_OVERFLOW = metrics.FRAMES_DROPPED.labels(reason="prebuffer_overflow")

ACTIVITY_RMS = 300  # about -40 dBFS: caller frames below it do not count as activity
END_CALL_PLAYOUT_S = 15.0  # how long an agent's goodbye may play after end_call
HANGUP_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class BridgeLimits:
    max_duration_s: float = 3600.0
    inactivity_timeout_s: float = 120.0
    preconnect_buffer_s: float = 10.0
    playout_max_s: float = 120.0
    playout_lead_frames: int = 3
    """Frames sent ahead at the start of each talkspurt, to prime the network's
    jitter buffer so a late tick of a busy worker is not a gap the caller hears.
    Barge-in still stops at once: ``clear`` drops them in the network too."""


@dataclass(slots=True)
class Conversation:
    """What the agent core reported during the call, for the end-of-call webhook."""

    chat: list[dict[str, Any]] = field(default_factory=list)
    function_calls: list[dict[str, Any]] = field(default_factory=list)
    chars_used: int = 0


Prepare = Callable[[], Awaitable[dict[str, Any]]]


class CallBridge:
    """Bridges one leg and one agent link until the call ends."""

    def __init__(
        self,
        record: CallRecord,
        leg: Leg,
        link: AgentLink,
        pacer: Pacer,
        prepare: Prepare,
        limits: BridgeLimits = BridgeLimits(),
    ) -> None:
        self.record = record
        self.call_id = record.call_id
        self.leg = leg
        self.link = link
        self.conversation = Conversation()
        self._pacer = pacer
        self._prepare = prepare
        self._limits = limits
        self._playout = Playout(limits.playout_max_s)
        self._prebuffer: deque[LegEvent] = deque()
        self._prebuffer_max = int(limits.preconnect_buffer_s * 1000 / FRAME_MS)
        self._ready = False
        self._ended = asyncio.Event()
        self._hangup_network = True
        self._end_after_playout: float | None = None
        self._talkspurt = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_activity = 0.0
        self._first_frame_at: float | None = None
        self._handlers: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {
            messages.PAUSE: self._on_pause,
            messages.UNPAUSE: self._on_unpause,
            messages.CLEAR: self._on_clear,
            messages.ONTRANSCRIPT: self._on_transcript,
            messages.ONRESPONSETEXT: self._on_response_text,
            messages.FUNCTION_CALL: self._on_function_call,
            messages.END_CALL: self._on_end_call,
            messages.TRANSFER_CALL: self._on_transfer_call,
            messages.ONSESSIONENDED: self._on_session_ended,
        }

    # -- lifecycle ---------------------------------------------------------

    async def run(self) -> CallRecord:
        """Bridge until the call ends; return the final record (state ``ended``)."""
        token = current_call_id.set(self.call_id)
        try:
            self.record.advance(CallState.CONNECTING)
            self._last_activity = asyncio.get_running_loop().time()
            self._spawn(self._pump_caller(), "caller")
            self._spawn(self._connect(), "connect")
            self._spawn(self._watchdog(), "watchdog")
            await self._ended.wait()
            await self._teardown()
            return self.record
        finally:
            current_call_id.reset(token)

    def finish(self, status: CallStatus, error: str | None = None, *, hangup: bool = True) -> None:
        """End the call for ``status`` (the first cause wins); teardown follows in run()."""
        if self._ended.is_set():
            return
        self.record.set_status(status, error)
        self._hangup_network = hangup
        extra = {"call_id": self.call_id, "call_status": str(status)}
        if error:
            log.warning("call ending: %s", error, extra=extra)
        else:
            log.info("call ending", extra=extra)
        self._ended.set()

    async def end(self, reason: str) -> None:
        """End the call from outside the media path (hang-up API, drain)."""
        log.info("ended by the edge: %s", reason, extra={"call_id": self.call_id})
        self.finish(CallStatus.API_ENDED)

    async def transfer(self, destination: str) -> None:
        """Transfer from outside the media path (API): the network does it, then the call ends."""
        await self.leg.transfer(destination)
        self.record.transferred_to = destination
        self.finish(CallStatus.API_ENDED, hangup=False)

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(f"{name}-{self.call_id}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error(
                "call task %s failed",
                task.get_name(),
                exc_info=exc,
                extra={"call_id": self.call_id},
            )
            self.finish(CallStatus.ERROR, f"internal error in {task.get_name()}: {exc}")

    async def _teardown(self) -> None:
        self.record.advance(CallState.ENDING)
        self._pacer.unsubscribe(self)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._hangup_network:
            try:
                await asyncio.wait_for(self.leg.hangup(), HANGUP_TIMEOUT_S)
            except (
                Exception
            ) as exc:  # the call is over either way; say why the network may not know
                log.warning("hang-up on the network failed: %r", exc)
        await self.link.close()
        await self.leg.close()
        self.record.advance(CallState.ENDED)

    # -- caller → agent ----------------------------------------------------

    async def _pump_caller(self) -> None:
        leg, link, loop = self.leg, self.link, asyncio.get_running_loop()
        perf = time.perf_counter
        try:
            while True:
                event = await leg.recv()
                if type(event) is bytes:
                    if self._first_frame_at is None:
                        self._first_frame_at = loop.time()
                    if audioop.rms(event, 2) > ACTIVITY_RMS:
                        self._last_activity = loop.time()
                    if self._ready:
                        t0 = perf()
                        await link.send_audio(event)
                        _C2A.observe(perf() - t0)
                    else:
                        self._buffer_early(event)
                elif isinstance(event, LegEnded):
                    self.record.provider_status = event.status
                    if event.error:
                        self.finish(
                            CallStatus.ERROR, f"network leg failed: {event.error}", hangup=False
                        )
                    else:
                        self.finish(CallStatus.USER_ENDED, hangup=False)
                    return
                elif self._ready:
                    await self._send_leg_event(event)
                else:
                    self._buffer_early(event)
        except ConnectionError as exc:  # writing to a link the core has dropped
            self.finish(CallStatus.ERROR, f"agent core link lost: {exc}")

    def _buffer_early(self, event: LegEvent) -> None:
        if len(self._prebuffer) >= self._prebuffer_max:
            self._prebuffer.popleft()
            _PREBUFFER_OVERFLOW.inc()
        self._prebuffer.append(event)

    async def _send_leg_event(self, event: LegEvent) -> None:
        if isinstance(event, bytes):
            await self.link.send_audio(event)
        elif isinstance(event, Dtmf):
            log.info("dtmf %s", event.digit)
            await self.link.send_message(messages.DTMF, {"digit": event.digit})
        elif isinstance(event, Played):
            await self.link.send_message(messages.PLAYBACK, {"stream_id": event.mark})

    # -- agent link setup --------------------------------------------------

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            initiate = await self._prepare()
            await self.link.open(initiate)
        except AgentLinkError as exc:
            metrics.AGENT_LINK_FAILURES.labels(stage=exc.stage).inc()
            self.finish(CallStatus.ERROR, str(exc))
            return
        held = 0
        while self._prebuffer:  # in order; the caller pump appends meanwhile
            event = self._prebuffer.popleft()
            held += type(event) is bytes
            await self._send_leg_event(event)
        metrics.FRAMES_PREBUFFERED.inc(held)
        self._ready = True
        self.record.advance(CallState.ACTIVE)
        if self._first_frame_at is not None:
            metrics.CALL_SETUP_SECONDS.observe(loop.time() - self._first_frame_at)
        self._pacer.subscribe(self, self._tick)
        await self._pump_agent()

    # -- agent → caller ----------------------------------------------------

    async def _pump_agent(self) -> None:
        link, playout = self.link, self._playout
        perf = time.perf_counter
        while True:
            event = await link.recv()
            if type(event) is bytes:
                playout.push(event, perf())
            elif isinstance(event, AgentMessage):
                handler = self._handlers.get(event.method)
                if handler is not None:
                    await handler(event.data)
                elif event.method not in messages.CORE_TO_EDGE:
                    log.info("agent core sent unknown method %r; ignored", event.method)
            elif isinstance(event, LinkClosed):
                if not self._ended.is_set():
                    self.finish(
                        CallStatus.ERROR,
                        f"agent core closed the link mid-call (code {event.code})",
                    )
                return

    async def _tick(self) -> None:
        burst = 1 if self._talkspurt else 1 + self._limits.playout_lead_frames
        for _ in range(burst):
            item = self._playout.pop()
            if item is None:
                self._talkspurt = False
                if self._end_after_playout is not None and (
                    not len(self._playout) or time.monotonic() > self._end_after_playout
                ):
                    self.finish(CallStatus.AGENT_ENDED)
                return
            self._talkspurt = True
            frame, cost = item
            t0 = time.perf_counter()
            try:
                await self.leg.send_frame(frame)
            except Exception as exc:  # the clock serves every call: never let one break it
                log.exception("sending to the network failed", extra={"call_id": self.call_id})
                self.finish(CallStatus.ERROR, f"network leg failed: {exc!r}")
                return
            _A2C.observe(cost + time.perf_counter() - t0)
        self._last_activity = asyncio.get_running_loop().time()

    # -- agent messages ----------------------------------------------------

    async def _on_pause(self, data: dict[str, Any]) -> None:
        self._playout.paused = True

    async def _on_unpause(self, data: dict[str, Any]) -> None:
        self._playout.paused = False

    async def _on_clear(self, data: dict[str, Any]) -> None:
        dropped = self._playout.clear()
        log.info("barge-in: cleared %d buffered frames", dropped)
        await self.leg.clear()

    async def _on_transcript(self, data: dict[str, Any]) -> None:
        self._chat("user", data)

    async def _on_response_text(self, data: dict[str, Any]) -> None:
        if self._chat("assistant", data):
            self.conversation.chars_used += len(str(data.get("text", "")))

    def _chat(self, role: str, data: dict[str, Any]) -> bool:
        if not data.get("is_final", True) or not data.get("text"):
            return False
        self.conversation.chat.append(
            {"role": role, "content": str(data["text"]), "ts": time.time()}
        )
        return True

    async def _on_function_call(self, data: dict[str, Any]) -> None:
        self.conversation.function_calls.append({**data, "ts": time.time()})

    async def _on_end_call(self, data: dict[str, Any]) -> None:
        log.info("agent asked to end the call: %s", data.get("reason", ""))
        if len(self._playout) == 0:
            self.finish(CallStatus.AGENT_ENDED)
        else:  # let the goodbye play out, bounded
            self._end_after_playout = time.monotonic() + END_CALL_PLAYOUT_S

    async def _on_transfer_call(self, data: dict[str, Any]) -> None:
        destination = str(data.get("destination", "")).strip()
        if not destination:
            log.warning("agent asked for a transfer without a destination; ignored")
            return
        log.info("agent transfers the call to %s", destination)
        await self.leg.transfer(destination)
        self.record.transferred_to = destination
        self.finish(CallStatus.AGENT_ENDED, hangup=False)

    async def _on_session_ended(self, data: dict[str, Any]) -> None:
        self.finish(CallStatus.AGENT_ENDED)

    # -- limits ------------------------------------------------------------

    async def _watchdog(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        limits = self._limits
        while True:
            now = loop.time()
            if now - started >= limits.max_duration_s:
                self.finish(
                    CallStatus.TIMEOUT, f"maximum call duration {limits.max_duration_s:g}s reached"
                )
                return
            idle = now - self._last_activity
            if idle >= limits.inactivity_timeout_s:
                self.finish(CallStatus.TIMEOUT, f"no activity for {limits.inactivity_timeout_s:g}s")
                return
            next_check = min(
                limits.max_duration_s - (now - started), limits.inactivity_timeout_s - idle
            )
            await asyncio.sleep(max(0.05, min(next_check, 1.0)))
