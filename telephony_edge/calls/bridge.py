"""The bridge: the I/O shell around one call's :class:`CallMachine`.

Theory of operation
-------------------
One call = one network leg + one agent link + the pumps between them. The
:class:`~telephony_edge.calls.machine.CallMachine` decides; the bridge feeds
it events (what the leg, the agent core, the clock and the API say) and
carries out the actions it returns. Nothing here decides how a call ends.

``run()`` starts reading the leg at once, before the agent link exists, so
the caller's first words are buffered (bounded) rather than lost and the
network never waits on the agent core. In parallel it prepares the session
(prefetch webhook, variables) and opens the link; on ``onready`` the buffer
is flushed in order and caller audio then flows straight through.

Agent audio goes into the :class:`Playout` and leaves one 20 ms frame at a
time through the call's :class:`~telephony_edge.calls.agent_playout.AgentPlayout`:
pushed by the worker's :class:`Pacer` into a PUSHED leg, or pulled by a
PULLED leg's own sender.

Ending: the first event that ends the call makes the machine return its
teardown actions. ``run()`` carries them out in a task of their own that it
shields, so that whatever happens to the caller of ``run()`` (its task is
cancelled, once or many times) every action runs, each even if the one
before it failed: the tasks of the call stop, the network is hung up if the
caller is still there, the link closes, the leg's statistics are read, the
agent slot is released, the record is written ``ended``, the leg closes and
the end-of-call webhook is queued.
A call that goes on on another worker (a drain, a stream the network brings
back to the edge) is handed off instead: its live state saved, the network let
go, nothing written as over (:mod:`telephony_edge.calls.migration`). The bridge
gives the call's state to the live-state writer on demand
(:meth:`CallBridge.live_snapshot`), and a bridge that resumes a call starts
from the conversation so far.
"""

from __future__ import annotations

import asyncio
import audioop
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from telephony_edge import badinput, failpoints, metrics, tracing
from telephony_edge.agent import messages
from telephony_edge.agent.link import AgentLink, AgentLinkError, AgentMessage, LinkClosed
from telephony_edge.amd.detector import AmdDetector, Verdict
from telephony_edge.amd.policy import Voicemail
from telephony_edge.audio.frames import FRAME_MS
from telephony_edge.calls import machine as m
from telephony_edge.calls import relay_latency, transfer_run
from telephony_edge.calls.agent_playout import SLOW_RELAY_S, AgentPlayout
from telephony_edge.calls.bridge_hooks import (
    DEFAULT_LIMITS,
    AudioTap,
    BridgeLimits,
    CallHooks,
    Conversation,
)
from telephony_edge.calls.caller_clock import CallerClock
from telephony_edge.calls.dtmf_queue import DtmfQueue
from telephony_edge.calls.leg import Dtmf, Leg, LegEnded, LegEvent, NotSupported, Played
from telephony_edge.calls.live_state import LiveSnapshot
from telephony_edge.calls.pacing import Pacer
from telephony_edge.calls.playout import Playout
from telephony_edge.calls.record import CallRecord, CallState
from telephony_edge.calls.trace import CallTrace
from telephony_edge.calls.trim import TRIMMER
from telephony_edge.coord.health import CoordinatorUnavailable
from telephony_edge.logs import current_call_id

log = logging.getLogger(__name__)

_C2A = relay_latency.CALLER_TO_AGENT
_loop, _perf = asyncio.get_running_loop, time.perf_counter  # per caller frame
_CONCEALED = metrics.CALLER_FRAMES_FILLED.labels(kind="concealment")
_SILENCE = metrics.CALLER_FRAMES_FILLED.labels(kind="silence")
_AHEAD = metrics.FRAMES_DROPPED.labels(reason="ahead_of_call_clock")
_PREBUFFER_OVERFLOW = metrics.FRAMES_DROPPED.labels(reason="prebuffer_overflow")

ACTIVITY_RMS = 300  # about -40 dBFS: caller frames below it do not count as activity
HANGUP_TIMEOUT_S = 5.0
MEDIA_STATS_TIMEOUT_S = 1.0
#: the agent core's requests the machine decides on; the rest the bridge records
COMMANDS = frozenset(
    {
        messages.PAUSE,
        messages.UNPAUSE,
        messages.CLEAR,
        messages.END_CALL,
        messages.TRANSFER_CALL,
        messages.SEND_DTMF,
        messages.ONSESSIONENDED,
    }
)


class CallOver(Exception):
    """The call ended elsewhere before its media got here."""


class CallBridge:
    """Bridges one leg and one agent link until the call ends."""

    def __init__(
        self,
        record: CallRecord,
        leg: Leg,
        link: AgentLink,
        pacer: Pacer,
        hooks: CallHooks,
        limits: BridgeLimits = DEFAULT_LIMITS,
        voicemail: Voicemail | None = None,
        edge_amd: bool = False,
        recorder: AudioTap | None = None,
        *,
        conversation: Conversation | None = None,
        resumed: bool = False,
        elapsed_s: float = 0.0,
    ) -> None:
        """``voicemail``: the call's detection setting; ``edge_amd``: run the edge's detector
        on the caller's audio (else the network reports through :meth:`report_amd`);
        ``recorder``: sees each caller frame read and each agent frame handed to the leg.
        ``resumed``: the call was live on another worker, ``elapsed_s`` ago, and had said
        ``conversation`` so far."""
        self.record = record
        self.call_id = record.call_id
        self.leg = leg
        self.link = link
        self.conversation = conversation or Conversation()
        self._pacer = pacer
        self._hooks = hooks
        self._limits = limits
        self._machine = m.CallMachine(
            m.Limits(limits.max_duration_s, limits.inactivity_timeout_s),
            time.monotonic(),
            voicemail.action if voicemail else "",
            resumed=resumed,
            elapsed_s=elapsed_s,
        )
        self._detector = AmdDetector(voicemail.detector) if voicemail and edge_amd else None
        self._playout = playout = Playout(limits.playout_max_s)
        self._prebuffer: deque[LegEvent] = deque()
        self._prebuffer_max = int(limits.preconnect_buffer_s * 1000 / FRAME_MS)
        self._ready = False  # caller audio goes straight to the agent
        self._pump_idle = False  # the caller pump waits for the leg: a frame may skip it
        self._ending = asyncio.Event()
        self._teardown_actions: list[m.Action] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._api_transfer: asyncio.Future[None] | None = None
        self._owns_end = False  # the final record write succeeded: ours to report
        self._first_frame_at: float | None = None
        self._recorder = recorder
        self._clock = CallerClock()
        self._fill_wake: asyncio.Future[None] | None = None
        self._dtmf = DtmfQueue(leg, self._spawn, self._refused_dtmf)
        self._trace = CallTrace(record)
        self._exemplar = self._trace.call.exemplar()  # on slow frames' relay latency
        self._agent = AgentPlayout(
            leg,
            pacer,
            playout,
            self._machine,
            recorder=recorder,
            exemplar=self._exemplar,
            drained=lambda: self._feed(m.PlayoutDrained()),
            failed=lambda exc: self._feed(m.Failed("network send", repr(exc))),
        )
        self._response_frames = 0  # … when the agent's latest response began
        self._mark = ""  # the latest of the network's marks: played up to there

    @property
    def state(self) -> CallState:
        return self._machine.state

    @property
    def can_hand_off(self) -> bool:
        """Whether the network can take this live call to another worker (a drain)."""
        live = self._machine.state in (CallState.CONNECTING, CallState.ACTIVE)
        return live and self.leg.resumable

    @property
    def handed_off(self) -> bool:
        """The call left this worker (a drain, its socket gone): its record is the next
        owner's, whatever this bridge still holds while it lets go."""
        return self._machine.moved is not None

    @property
    def ending_here(self) -> bool:
        """The call is ending on this worker (not handed off): it is over, not to resume."""
        machine = self._machine
        ending = machine.state in (CallState.ENDING, CallState.ENDED)
        return ending and machine.moved is None and machine.call_status is not None

    def live_snapshot(self) -> LiveSnapshot | None:
        """What a worker taking the call on needs (:mod:`.live_state`); None unless active."""
        return self._snapshot() if self._machine.state is CallState.ACTIVE else None

    def _snapshot(self) -> LiveSnapshot:
        conversation = self.conversation
        doc = {
            "network": self.leg.network_state(),
            "playback": {
                "agent_ms": self._agent.frames * FRAME_MS,
                "response_ms": (self._agent.frames - self._response_frames) * FRAME_MS,
                "mark": self._mark,
            },
            "chars_used": conversation.chars_used,
            "truncated": conversation.truncated,
        }
        return LiveSnapshot(doc, conversation.chat, conversation.function_calls)

    def hand_off(self, cause: str) -> None:
        """The call goes on on another worker (a drain): save it, let the network move it."""
        log.info("handing the call off: %s", cause, extra={"call_id": self.call_id})
        self._feed(m.HandOff(cause))

    # -- lifecycle ---------------------------------------------------------

    async def run(self) -> CallRecord:
        """Bridge until the call ends; return the final record (state ``ended``).

        Cancelling the caller's task ends the call (``error``) and still runs
        the whole teardown before CancelledError propagates.
        """
        token = current_call_id.set(self.call_id)
        scope = tracing.attach(self._trace.call)
        cancelled = False
        TRIMMER.call_started()
        try:
            self._spawn(self._pump_caller(), "caller")
            self.leg.frame_sink = self._caller_frame_now
            try:
                refusal = await self._hooks.begin(self.record)
            except CallOver as exc:
                self._feed(m.Superseded(str(exc)))
            else:
                self._feed(m.Start() if refusal is None else m.Refused(refusal))
            await self._ending.wait()
        except asyncio.CancelledError:
            cancelled = True
            self._feed(m.Cancelled())
        except Exception as exc:  # a bug in the shell: the call still ends properly
            log.exception("call bridge failed")
            self._feed(m.Failed("bridge", repr(exc)))
        finally:
            cancelled = await self._teardown_shielded() or cancelled
            self._trace.ended(self.record)
            relay_latency.flush()  # the call's last frames, before anyone reads the metric
            TRIMMER.call_ended()
            tracing.detach(scope)
            current_call_id.reset(token)
        if cancelled:
            raise asyncio.CancelledError
        return self.record

    async def end(self, reason: str) -> None:
        """End the call from outside the media path (hang-up API, drain): ``api-ended``."""
        log.info("ended by the edge: %s", reason, extra={"call_id": self.call_id})
        self._feed(m.Control("hangup", reason=reason))

    async def transfer(self, destination: str) -> None:
        """Transfer from outside the media path (API); raises what the network raised."""
        self._feed(m.Control("transfer", destination))
        pending = self._api_transfer
        if pending is None:
            raise NotSupported("the call cannot be transferred now")
        self._api_transfer = None
        await pending

    def report_amd(self, report: m.AmdReport) -> None:
        """The network's answering-machine detection reported (``after_ms`` < 0: unknown)."""
        if report.after_ms < 0:
            first = self._first_frame_at
            now = asyncio.get_running_loop().time()
            after_ms = 0 if first is None else round((now - first) * 1000)
            report = replace(report, after_ms=after_ms)
        self._feed_amd(report)

    def _detect(self, frame: bytes, detector: AmdDetector) -> None:
        """The edge's detector on one caller frame (the frame is relayed all the same)."""
        for found in detector.feed(frame):
            if isinstance(found, Verdict):
                self._feed_amd(m.AmdReport(found.result, "edge", found.after_ms))
            else:
                self._feed_amd(m.AmdReport("machine", "edge", found.after_ms, True, found.beep))
        if detector.done:
            self._detector = None

    def _feed_amd(self, report: m.AmdReport) -> None:
        """Give the machine a detection report; count the result that decides the call."""
        undecided = self._machine.amd is None
        self._feed(report)
        if undecided and self._machine.amd is not None:
            metrics.AMD_RESULTS.labels(source=report.source, result=report.result).inc()
            metrics.AMD_DECISION_SECONDS.labels(source=report.source).observe(
                report.after_ms / 1000
            )

    def _feed(self, event: m.Event) -> None:
        """Give the machine one event and carry out what it says."""
        was_ending = self._machine.state in (CallState.ENDING, CallState.ENDED)
        actions = self._machine.handle(event, time.monotonic())
        if not was_ending and self._machine.state is CallState.ENDING:
            self._on_ending()
            self._teardown_actions = actions
            self._ending.set()
            return
        for action in actions:
            self._do(action)
        self._arm_timer()

    def _on_ending(self) -> None:
        machine, record = self._machine, self.record
        if machine.moved is not None:  # it goes on elsewhere: the record is the next owner's
            log.info("call handed off (%s): it goes on on another worker", machine.moved)
            metrics.CALLS_HANDED_OFF.labels(cause=machine.moved).inc()
            return
        if machine.call_status is None:  # superseded: the record is someone else's
            log.info("call ended elsewhere: %s", machine.error_message)
            return
        record.set_status(machine.call_status, machine.error_message)
        record.transferred_to = machine.transferred_to or record.transferred_to
        record.provider_status = machine.provider_status or record.provider_status
        record.amd = machine.amd or record.amd
        if record.state is not CallState.ENDING:
            record.advance(CallState.ENDING)
        extra = {"call_id": self.call_id, "call_status": str(record.call_status)}
        if record.error_message:
            log.warning("call ending: %s", record.error_message, extra=extra)
        else:
            log.info("call ending", extra=extra)

    def _do(self, action: m.Action) -> None:
        if isinstance(action, m.OpenAgent):
            self._spawn(self._connect(), "connect")
        elif isinstance(action, m.GoLive):
            self._agent.start()
        elif isinstance(action, m.SetPaused):
            self._playout.paused = action.paused
        elif isinstance(action, m.ClearAudio):
            log.info("barge-in: cleared %d buffered frames", self._agent.clear())
        elif isinstance(action, m.Transfer):
            self._start_transfer(action)
        elif isinstance(action, m.ReportToAgent):
            self._spawn(self._report(action), "report")
        elif isinstance(action, m.SendDtmf):
            self._dtmf.put(action.request)
        elif isinstance(action, m.SendAmdResult):
            log.info("answering-machine detection: %s (beep: %s)", action.result, action.beep)
            data = {"result": action.result, "beep": action.beep}
            self._spawn(self._tell(messages.AMD_RESULT, data), "amd-result")
        elif isinstance(action, m.WriteState):
            self.record.advance(action.state)
            self._spawn(self._write_live_state(action.state, action.previous), "write-state")
        else:  # teardown actions only come with the move to ending
            raise AssertionError(f"unexpected action {action!r}")

    async def _write_live_state(self, state: CallState, previous: tuple[CallState, ...]) -> None:
        """Write a state change of a live call; an unreachable coordinator does not end it.

        The audio never waits on the coordinator, and a Redis outage must not
        cost a live call: the record catches up with the final write at teardown.
        A conflict (another worker ended the call) still ends it here. A write
        whose turn comes after the call moved on is not made: the record would
        be stored as it is now (``ending``), which only the teardown writes.
        """
        if self.record.state is not state:
            return
        try:
            await self._hooks.write_state(self.record, previous)
        except CoordinatorUnavailable as exc:
            log.warning("call state not written, the call goes on: %s", exc)

    def _spawn(self, coro: Awaitable[None], name: str) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        task.set_name(f"{name}-{self.call_id}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("call task %s failed", task.get_name(), exc_info=exc)
            self._feed(m.Failed(task.get_name().rsplit("-", 1)[0], repr(exc)))

    # -- timers --------------------------------------------------------------

    def _arm_timer(self) -> None:
        deadline = self._machine.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = None
        if deadline is not None:
            self._timer = asyncio.get_running_loop().call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        self._feed(m.Tick())

    # -- teardown -------------------------------------------------------------

    async def _teardown_shielded(self) -> bool:
        """Run the teardown to its end whatever happens to us; True if we were cancelled."""
        task = asyncio.ensure_future(self._teardown())
        cancelled = False
        while not task.done():
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                cancelled = True
        if not task.cancelled() and task.exception() is not None:
            log.error("call teardown failed", exc_info=task.exception())
        return cancelled

    async def _teardown(self) -> None:
        for action in self._teardown_actions:
            failpoints.hit(f"teardown.{type(action).__name__}")
            try:
                await self._undo(action)
            except Exception as exc:  # the next resource is released all the same
                # (a network or the coordinator away, mostly: said without a traceback)
                log.warning("teardown step %s failed: %r", type(action).__name__, exc)
        self._feed(m.TeardownDone())

    async def _undo(self, action: m.Action) -> None:
        if isinstance(action, m.StopTasks):
            await self._stop_tasks()
        elif isinstance(action, m.HangupNetwork):
            if action.after_playout:
                await asyncio.sleep(self._agent.network_holds_s(time.monotonic()))
            await asyncio.wait_for(self.leg.hangup(), HANGUP_TIMEOUT_S)
        elif isinstance(action, m.CloseAgent):
            await self.link.close()
        elif isinstance(action, m.LegStats):
            stats = await asyncio.wait_for(self.leg.media_stats(), MEDIA_STATS_TIMEOUT_S)
            self.record.media_stats = stats
        elif isinstance(action, m.CloseLeg):
            await self.leg.close()
        elif isinstance(action, m.ReleaseSlot):
            await self._hooks.release(self.record)
        elif isinstance(action, m.WriteState):
            self.record.advance(action.state)
            ending = action.state is CallState.ENDED  # the end carries the webhook it owes
            await self._hooks.write_state(
                self.record, action.previous, conversation=self.conversation if ending else None
            )
            failpoints.hit("teardown.written")
            self._owns_end = True
        elif isinstance(action, m.QueueWebhook):
            await self._hooks.finished(self.record, self.conversation, written=self._owns_end)
        elif isinstance(action, m.SaveLive):
            await self._hooks.save_live(self.call_id, self._snapshot(), action.cause)
        elif isinstance(action, m.HandOffLeg):
            try:
                await asyncio.wait_for(self.leg.hand_off(), HANGUP_TIMEOUT_S)
            finally:
                await self.leg.close()

    async def _stop_tasks(self) -> None:
        self.leg.frame_sink = None
        self._agent.stop()
        self._pacer.unsubscribe(self._clock)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._timer_at = None
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- caller → agent ----------------------------------------------------

    async def _pump_caller(self) -> None:
        leg, link = self.leg, self.link
        try:
            while True:
                self._pump_idle = True
                event = await leg.recv()
                self._pump_idle = False
                if type(event) is bytes:
                    if not self._take_caller_frame(event):  # the link is backed up: wait
                        t0 = _perf()
                        await link.send_audio(event)
                        _C2A.observe(_perf() - t0, self._exemplar)  # slow: a backed-up link
                elif isinstance(event, LegEnded):
                    self._feed(m.LegGone(event.status, event.error, event.timeout, event.moved))
                    return
                elif self._ready:
                    await self._send_leg_event(event)
                else:
                    self._buffer_early(event)
        except ConnectionError as exc:  # writing to a link the core has dropped
            self._feed(m.AgentClosed(f"agent core link lost: {exc}"))

    def _caller_frame_now(self, frame: bytes) -> bool:
        """A caller frame made in the leg's own callback (SIP's tick, WebRTC's Opus) and sent
        here, past its queue and the pump's wake-up; False: the pump takes it (busy, the
        agent not ready, the link backed up, detection running: it logs in the call's context)."""
        free = self._pump_idle and self._ready and self._detector is None
        if not free or self._ending.is_set() or not self.link.can_send_now():
            return False
        try:
            self._take_caller_frame(frame)  # sent: the link is not backed up (checked above)
        except Exception as exc:  # the call fails, as in its pump, not the leg's callback
            log.error("caller frame failed", exc_info=exc, extra={"call_id": self.call_id})
            self._feed(m.Failed("caller", repr(exc)))
        return True

    def _take_caller_frame(self, frame: bytes) -> bool:
        """One caller frame: recorded, watched for activity (and detection), then relayed,
        or held until the agent is ready; False: the link is backed up, the frame unsent."""
        now = _loop().time()
        recorder, detector = self._recorder, self._detector
        if recorder is not None:
            recorder.caller(frame)
        if self._first_frame_at is None:
            self._first_frame_at = now
        if audioop.rms(frame, 2) > ACTIVITY_RMS:
            self._machine.note_activity(now)
        if detector is not None:
            self._detect(frame, detector)
        if not self._ready:
            self._buffer_early(frame)
        elif not self._clock.admit(frame, now):
            _AHEAD.inc()  # a burst after a stall, or a fast clock
        else:
            t0 = _perf()
            if not self.link.send_audio_now(frame):
                return False
            cost = _perf() - t0
            _C2A.observe(cost, self._exemplar if cost > SLOW_RELAY_S else None)
        return True

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
            self._mark = event.mark
            await self.link.send_message(messages.PLAYBACK, {"stream_id": event.mark})

    def _start_caller_clock(self, loop: asyncio.AbstractEventLoop) -> None:
        """From now on the agent gets a frame every 20 ms, caller packets or not."""
        self._clock.start(loop.time())
        self._spawn(self._pump_fills(loop), "caller-clock")
        self._pacer.subscribe(self._clock, functools.partial(self._caller_tick, loop.time))

    def _caller_tick(self, now: Callable[[], float]) -> None:
        wake = self._fill_wake
        if wake is not None and not wake.done() and self._clock.behind(now()):
            wake.set_result(None)

    async def _pump_fills(self, loop: asyncio.AbstractEventLoop) -> None:
        """Send what the caller's clock fills in (concealment, then silence), when woken."""
        clock, link, detector, stats = self._clock, self.link, self._detector, self._clock.stats
        try:
            while True:
                self._fill_wake = loop.create_future()
                await self._fill_wake
                concealed, silence = stats.concealed, stats.silence
                for frame in clock.fills(loop.time()):
                    if detector is not None:
                        self._detect(frame, detector)
                    if not link.send_audio_now(frame):
                        await link.send_audio(frame)
                _CONCEALED.inc(stats.concealed - concealed)
                _SILENCE.inc(stats.silence - silence)
        except ConnectionError as exc:
            self._feed(m.AgentClosed(f"agent core link lost: {exc}"))

    # -- agent link setup --------------------------------------------------

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            with tracing.current(self._trace.setup):  # the prefetch webhook's parent
                initiate = await self._hooks.prepare(self.record)
            await self.link.open(self._trace.initiate(initiate, self.link.url))
        except AgentLinkError as exc:
            metrics.AGENT_LINK_FAILURES.labels(stage=exc.stage).inc()
            message = str(exc).removeprefix(f"agent core {exc.stage}: ")
            self._trace.link_failed(exc.stage, message)
            self._feed(m.AgentFailed(exc.stage, message))
            return
        self._trace.ready()
        self._feed(m.AgentReady())
        if self._machine.state is not CallState.ACTIVE:
            return
        held = 0
        try:
            while self._prebuffer:  # in order; the caller pump appends meanwhile
                event = self._prebuffer.popleft()
                held += type(event) is bytes
                await self._send_leg_event(event)
        except ConnectionError as exc:
            self._feed(m.AgentClosed(f"agent core link lost: {exc}"))
            return
        metrics.FRAMES_PREBUFFERED.inc(held)
        self._ready = True
        self._start_caller_clock(loop)
        if self._first_frame_at is not None:
            setup_s = loop.time() - self._first_frame_at
            metrics.CALL_SETUP_SECONDS.observe(setup_s, self._trace.call.exemplar())
        await self._pump_agent()

    # -- agent → caller ----------------------------------------------------

    async def _pump_agent(self) -> None:
        link, playout, limits = self.link, self._playout, self._limits
        conversation = self.conversation
        while True:
            event = await link.recv()
            if type(event) is bytes:
                playout.push(event, _perf())
            elif isinstance(event, AgentMessage):
                method, data = event.method, event.data
                if method in COMMANDS:
                    self._feed(m.AgentCommand(method, data, playout_empty=not len(playout)))
                elif method == messages.ONTRANSCRIPT:
                    self._chat("user", data)
                elif method == messages.ONRESPONSETEXT:
                    if self._chat("assistant", data):
                        conversation.chars_used += len(str(data.get("text", "")))
                elif method == messages.FUNCTION_CALL:
                    entry = {**data, "ts": time.time()}
                    conversation.add(
                        conversation.function_calls,
                        "function_calls",
                        limits.max_function_calls,
                        entry,
                    )
                elif method not in messages.CORE_TO_EDGE:
                    log.info("agent core sent unknown method %r; ignored", method)
            elif isinstance(event, LinkClosed):
                self._feed(
                    m.AgentClosed(f"agent core closed the link mid-call (code {event.code})")
                )
                return

    def _chat(self, role: str, data: dict[str, Any]) -> bool:
        text = str(data.get("text") or "")[: self._limits.max_text_chars]
        final = bool(data.get("is_final", True))
        self.leg.agent_text(role, text, final)
        if not final or not text:
            return False
        entry = {"role": role, "content": text, "ts": time.time()}
        self.conversation.add(self.conversation.chat, "chat", self._limits.max_chat_messages, entry)
        if role == "assistant":
            self._response_frames = self._agent.frames  # what plays next is this response
        return True

    # -- transfer and reports -------------------------------------------------

    def _start_transfer(self, action: m.Transfer) -> None:
        done = transfer_run.outcome_future(action)
        if action.by == "api":
            self._api_transfer = done
        self._spawn(self._run_transfer(action, done), "transfer")

    async def _run_transfer(self, action: m.Transfer, done: asyncio.Future[None]) -> None:
        self._feed(await transfer_run.run_transfer(self.leg, self._trace, action, done))

    async def _report(self, action: m.ReportToAgent) -> None:
        if action.bad_input:  # the core's own fault: counted, warned rate-limited
            reason = badinput.phrase(action.message.partition(": ")[2])
            self.link.bad_input(f"{action.method} refused ({reason})")
        else:
            log.warning("agent request %s refused: %s", action.method, action.message)
        await self._tell(messages.ERROR, {"request": action.method, "message": action.message})

    def _refused_dtmf(self, message: str) -> None:
        data = {"request": messages.SEND_DTMF, "message": message}
        self._spawn(self._tell(messages.ERROR, data), "report")

    async def _tell(self, method: str, data: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionError, AssertionError):  # link gone: nobody to tell
            await self.link.send_message(method, data)
