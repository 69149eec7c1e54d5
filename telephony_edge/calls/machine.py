"""The call's life as a sans-I/O state machine.

Theory of operation
-------------------
A :class:`CallMachine` holds one call's state and takes one event at a time
together with the current time; it returns the :data:`Action`\\ s that its
I/O shell (:class:`~telephony_edge.calls.bridge.CallBridge`) must carry out.
No asyncio, no sockets, no clock inside: its tests feed events and times.

States (the record's :class:`~telephony_edge.calls.record.CallState`), only
forward::

    connecting ──► active ──► ending ──► ended
        │                       ▲
        └───────────────────────┘

The machine starts in ``connecting``: the media is here, and the shell is
moving the record out of ``created`` with a compare-and-set (:class:`Start`
once that succeeded). :class:`AgentReady` makes it ``active``. The FIRST
event that ends the call (the caller hanging up, the agent, the API, a
limit, a failure, the shell's task being cancelled) fixes ``call_status``
and moves to ``ending``, emitting the teardown actions in one list:
:data:`TEARDOWN`, each exactly once, because no other transition leads
into ``ending``, except :class:`Superseded`: a call that another worker (or
a status callback) ended before its media got here is not this worker's to
end, so only its local resources are let go (:data:`RELEASE_ONLY`); and a
call that goes on on another worker (:class:`HandOff`: a drain moves it; a
:class:`LegGone` with ``moved``: the network is bringing it to the edge again)
is handed off: its live state saved for the worker that takes it on, the
agent link closed and the network let go (:func:`hand_off`), with no end
written and no webhook. :class:`TeardownDone` then moves to ``ended``. Every later event is
ignored, so "ended exactly once" is a property of the table below, tested
by feeding every event in every state.

Rules: the table is the whole truth about which event does what in which
state; code is only for what a table cannot say (which ``call_status`` a
command means, deadline arithmetic). Audio frames do not pass through the
machine: the shell relays them while the machine is ``active`` and reports
caller activity with :meth:`CallMachine.note_activity`, one float store per
frame.

Answering-machine detection (when the call's ``voicemail`` setting asks for
it) comes in as :class:`AmdReport` events, from the network or the edge's own
detector. The first one fixes the result. A machine gets what the setting
says: ``hangup`` ends the call ``voicemail-hangup`` at once;
``leave_message`` waits for the end of its greeting (a report with
``message_end``, bounded by ``VOICEMAIL_WAIT_S``), then tells the agent
core, whose ``end_call`` then ends the call ``voicemail-message``. A human
or an unknown answer is told to the agent core at once, and the call goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from telephony_edge.calls import dtmf
from telephony_edge.calls.record import CallState, CallStatus
from telephony_edge.routing import normalize_destination

END_CALL_PLAYOUT_S = 15.0  # how long an agent's goodbye may play after end_call
VOICEMAIL_WAIT_S = 130.0  # how long a machine's greeting may last before the message anyway


# -- events ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    """The shell runs: open the agent link, arm the limits."""


@dataclass(frozen=True, slots=True)
class Superseded:
    """The call ended elsewhere before its media got here (it is not this worker's to end)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Refused:
    """The call may not run here (draining, agent at its limit)."""

    reason: str


@dataclass(frozen=True, slots=True)
class AgentReady:
    """The agent core answered ``onready``."""


@dataclass(frozen=True, slots=True)
class AgentFailed:
    """The agent link could not be opened (``stage``: connect, initiate, …)."""

    stage: str
    message: str


@dataclass(frozen=True, slots=True)
class AgentClosed:
    """The agent core closed the link, or writing to it failed."""

    reason: str


@dataclass(frozen=True, slots=True)
class AgentCommand:
    """A control message of the agent core (pause, clear, end_call, transfer_call, …)."""

    method: str
    data: dict[str, Any] = field(default_factory=dict)
    playout_empty: bool = True


@dataclass(frozen=True, slots=True)
class PlayoutDrained:
    """The edge's buffer of agent audio ran empty."""


@dataclass(frozen=True, slots=True)
class LegGone:
    """The network side ended (``error``: it failed rather than hung up)."""

    provider_status: str
    error: str | None = None
    timeout: bool = False  # the network's media stopped: end ``timeout``, hang up
    moved: bool = False  # the network brings the call to the edge again: it goes on elsewhere


@dataclass(frozen=True, slots=True)
class Control:
    """A request from outside the media path: the API's hang-up or transfer, drain."""

    action: str  # "hangup" | "transfer"
    destination: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class HandOff:
    """The call goes on on another worker (``cause``: ``drain``): this one lets it go."""

    cause: str


@dataclass(frozen=True, slots=True)
class TransferDone:
    """The network carried out (or refused) a transfer the machine asked for."""

    destination: str
    by: str  # "agent" | "api"
    error: str | None = None


@dataclass(frozen=True, slots=True)
class AmdReport:
    """Who answered (``human``/``machine``/``unknown``), as ``source`` found after ``after_ms``.

    ``message_end``: a machine's greeting is over (``beep``: with a beep).
    """

    result: str
    source: str
    after_ms: int
    message_end: bool = False
    beep: bool = False


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed: check the deadlines."""


@dataclass(frozen=True, slots=True)
class Cancelled:
    """The shell's task was cancelled (worker shutdown, the handler went away)."""


@dataclass(frozen=True, slots=True)
class Failed:
    """Something in the shell raised where nothing should (``where``: which part)."""

    where: str
    error: str


@dataclass(frozen=True, slots=True)
class TeardownDone:
    """The shell carried out every teardown action."""


Event = (
    Start
    | Superseded
    | Refused
    | AgentReady
    | AgentFailed
    | AgentClosed
    | AgentCommand
    | PlayoutDrained
    | LegGone
    | Control
    | HandOff
    | TransferDone
    | AmdReport
    | Tick
    | Cancelled
    | Failed
    | TeardownDone
)


# -- actions -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenAgent:
    """Prepare the session (prefetch, variables) and open the agent link."""


@dataclass(frozen=True, slots=True)
class GoLive:
    """Deliver the caller audio held so far, then relay; start playing agent audio."""


@dataclass(frozen=True, slots=True)
class SetPaused:
    paused: bool


@dataclass(frozen=True, slots=True)
class ClearAudio:
    """Barge-in: drop the edge's buffer and tell the network to drop its own."""


@dataclass(frozen=True, slots=True)
class Transfer:
    destination: str
    by: str


@dataclass(frozen=True, slots=True)
class ReportToAgent:
    """Tell the agent core something failed (its request is refused; the call goes on).

    ``bad_input``: the request itself was malformed (counted as the core's bad input).
    """

    method: str
    message: str
    bad_input: bool = False


@dataclass(frozen=True, slots=True)
class SendDtmf:
    """Press the agent's keys toward the caller (after those it asked for before)."""

    request: dtmf.DtmfRequest


@dataclass(frozen=True, slots=True)
class SendAmdResult:
    """Tell the agent core who answered (``amd_result``); a machine's greeting is over."""

    result: str
    beep: bool


@dataclass(frozen=True, slots=True)
class WriteState:
    """Write the state change to the coordinator: compare-and-set from one of ``previous``."""

    state: CallState
    previous: tuple[CallState, ...]


@dataclass(frozen=True, slots=True)
class StopTasks:
    """Cancel every task of the call except the teardown itself."""


@dataclass(frozen=True, slots=True)
class HangupNetwork:
    """The caller is still there: end the call on the network.

    ``after_playout``: the agent ended it, so the network first plays what it still
    holds of the agent's last words (a playout lead sent ahead), or the caller
    never hears the goodbye's end.
    """

    after_playout: bool = False


@dataclass(frozen=True, slots=True)
class CloseAgent:
    pass


@dataclass(frozen=True, slots=True)
class LegStats:
    """Read the leg's media statistics into the record, for its final write."""


@dataclass(frozen=True, slots=True)
class CloseLeg:
    pass


@dataclass(frozen=True, slots=True)
class ReleaseSlot:
    """Give back the agent's concurrency slot and the call's ownership."""


@dataclass(frozen=True, slots=True)
class QueueWebhook:
    """Queue the end-of-call webhook (and count the call's outcome)."""


@dataclass(frozen=True, slots=True)
class SaveLive:
    """Write the call's live state now, marked as moving for ``cause``, for the next worker."""

    cause: str


@dataclass(frozen=True, slots=True)
class HandOffLeg:
    """Let the network bring the call to another worker (Twilio: close the stream)."""


Action = (
    OpenAgent
    | GoLive
    | SetPaused
    | ClearAudio
    | Transfer
    | ReportToAgent
    | SendDtmf
    | SendAmdResult
    | WriteState
    | StopTasks
    | HangupNetwork
    | CloseAgent
    | LegStats
    | CloseLeg
    | ReleaseSlot
    | QueueWebhook
    | SaveLive
    | HandOffLeg
)

#: The states the owner's final write may find the record in: created too, because the
#: owner's end wins over a record whose move to connecting was cut short.
ENDED_FROM = (CallState.CREATED, CallState.CONNECTING, CallState.ACTIVE)

#: What every path into ``ending`` emits, in this order (hang-up only while the
#: caller is still on the network). The shell carries out each one even when
#: an earlier one fails. The leg closes after the end is written: a network that
#: brings a call back to the edge when its media goes (Twilio's ``<Redirect>``)
#: then finds it over, and is told to hang up rather than given a new stream.
TEARDOWN: tuple[Action, ...] = (
    StopTasks(),
    HangupNetwork(),
    CloseAgent(),
    LegStats(),
    ReleaseSlot(),
    WriteState(CallState.ENDED, ENDED_FROM),
    CloseLeg(),
    QueueWebhook(),
)
#: The agent ended the call: its last words play out at the network before the hang-up.
TEARDOWN_AFTER_PLAYOUT: tuple[Action, ...] = tuple(
    HangupNetwork(after_playout=True) if isinstance(a, HangupNetwork) else a for a in TEARDOWN
)
#: A call that ended elsewhere first: only this worker's resources are let go.
RELEASE_ONLY: tuple[Action, ...] = (StopTasks(), HangupNetwork(), CloseAgent(), CloseLeg())


def hand_off(cause: str) -> list[Action]:
    """What a call that goes on elsewhere emits: no hang-up, no end written, no webhook;
    the agent slot stays with the call (its next owner takes the same one)."""
    return [StopTasks(), SaveLive(cause), CloseAgent(), HandOffLeg()]


# -- the machine ----------------------------------------------------------------

Handler = Callable[["CallMachine", Any, float], list[Action]]


@dataclass(frozen=True, slots=True)
class Limits:
    max_duration_s: float = 3600.0
    inactivity_timeout_s: float = 120.0


class CallMachine:
    """One call's state; see the module docstring."""

    def __init__(
        self,
        limits: Limits,
        now: float,
        voicemail: str = "",
        *,
        resumed: bool = False,
        elapsed_s: float = 0.0,
    ) -> None:
        """``voicemail``: what a machine gets (``hangup``, ``leave_message``; "": no detection).

        ``resumed``: the call was live on another worker (its record may be ``active``
        already); ``elapsed_s``: how long it has run, counted in its maximum duration.
        """
        self.state = CallState.CONNECTING
        self.call_status: CallStatus | None = None
        self.error_message: str | None = None
        self.provider_status: str | None = None
        self.transferred_to: str | None = None
        self.hangup_network = True
        self.moved: str | None = None  # handed off to another worker, for this cause
        self._resumed = resumed
        self._limits = limits
        self._started = now - elapsed_s
        self._last_activity = now
        self._end_by: float | None = None  # end_call: goodbye playing until then
        self._transferring = False
        self._voicemail = voicemail
        self.amd: dict[str, Any] | None = None  # the first report, for the payload's voip.amd
        self._message_by: float | None = None  # a machine's greeting: the message is due then
        self._leaving_message = False
        self._held: list[Action] = []  # for the agent core, once it is ready

    # -- the table's entry point ---------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Action]:
        """Take ``event`` at time ``now``; return what the shell must do."""
        entry = TABLE.get((self.state, type(event)))
        if entry is None:
            return []  # not meaningful in this state (e.g. anything once ending)
        return entry(self, event, now)

    def note_activity(self, now: float) -> None:
        """The caller spoke or the agent played audio: the call is not idle."""
        self._last_activity = now

    @property
    def ending_after_playout(self) -> bool:
        """``end_call`` came while audio was queued: the call ends once it has played."""
        return self._end_by is not None

    def next_deadline(self) -> float | None:
        """When to feed the next :class:`Tick` (None once ending)."""
        if self.state in (CallState.ENDING, CallState.ENDED):
            return None
        limits = self._limits
        deadlines = [
            self._started + limits.max_duration_s,
            self._last_activity + limits.inactivity_timeout_s,
        ]
        deadlines += [at for at in (self._end_by, self._message_by) if at is not None]
        return min(deadlines)

    # -- handlers (what the table cannot say) ----------------------------------------

    def _end(
        self,
        status: CallStatus,
        error: str | None = None,
        *,
        hangup: bool = True,
        after_playout: bool = False,
    ) -> list[Action]:
        self.state = CallState.ENDING
        self.call_status = status
        self.error_message = error
        self.hangup_network = hangup
        teardown = TEARDOWN_AFTER_PLAYOUT if after_playout else TEARDOWN
        return [a for a in teardown if hangup or not isinstance(a, HangupNetwork)]

    def _agent_end(self) -> list[Action]:
        """The agent core ended the call (``end_call``, its session over, its goodbye
        played here): the network plays what it holds of the goodbye, then hangs up."""
        return self._end(self._agent_status, after_playout=True)

    def _start(self, event: Start, now: float) -> list[Action]:
        return [OpenAgent()]

    def _superseded(self, event: Superseded, now: float) -> list[Action]:
        self.state = CallState.ENDING
        self.error_message = event.reason
        return list(RELEASE_ONLY)

    def _refused(self, event: Refused, now: float) -> list[Action]:
        return self._end(CallStatus.ERROR, event.reason)

    def _agent_ready(self, event: AgentReady, now: float) -> list[Action]:
        self.state = CallState.ACTIVE
        held, self._held = self._held, []
        previous = _LIVE if self._resumed else (CallState.CONNECTING,)
        return [WriteState(CallState.ACTIVE, previous), GoLive(), *held]

    def _agent_failed(self, event: AgentFailed, now: float) -> list[Action]:
        return self._end(CallStatus.ERROR, f"agent core {event.stage}: {event.message}")

    def _agent_closed(self, event: AgentClosed, now: float) -> list[Action]:
        return self._end(CallStatus.ERROR, event.reason)

    def _leg_gone(self, event: LegGone, now: float) -> list[Action]:
        if event.moved:
            return self._hand_off(HandOff("network"), now)
        self.provider_status = event.provider_status
        if event.timeout:
            return self._end(CallStatus.TIMEOUT, event.error)
        if event.error:
            return self._end(CallStatus.ERROR, f"network leg failed: {event.error}", hangup=False)
        return self._end(CallStatus.USER_ENDED, hangup=False)

    def _command(self, event: AgentCommand, now: float) -> list[Action]:
        method = event.method
        if method == "pause":
            return [SetPaused(True)]
        if method == "unpause":
            return [SetPaused(False)]
        if method == "clear":
            return [ClearAudio()]
        if method == "onsessionended":
            return self._agent_end()
        if method == "end_call":
            if event.playout_empty:
                return self._agent_end()
            self._end_by = now + END_CALL_PLAYOUT_S  # let the goodbye play, bounded
            return []
        if method == "transfer_call":
            return self._transfer(str(event.data.get("destination", "")), "agent")
        if method == "send_dtmf":
            try:
                return [SendDtmf(dtmf.parse(event.data))]
            except dtmf.BadDtmf as exc:
                return [ReportToAgent("send_dtmf", f"send_dtmf refused: {exc}", bad_input=True)]
        return []

    def _transfer(self, raw: str, by: str) -> list[Action]:
        try:
            destination = normalize_destination(raw)
        except ValueError as exc:
            refused = f"transfer refused: {exc}"
            return [ReportToAgent("transfer_call", refused)] if by == "agent" else []
        if self._transferring:
            return [ReportToAgent("transfer_call", "a transfer is already under way")]
        self._transferring = True
        return [Transfer(destination, by)]

    def _transfer_done(self, event: TransferDone, now: float) -> list[Action]:
        self._transferring = False
        if event.error is not None:
            if event.by == "agent":
                return [ReportToAgent("transfer_call", f"transfer failed: {event.error}")]
            return []
        self.transferred_to = event.destination
        status = CallStatus.AGENT_ENDED if event.by == "agent" else CallStatus.API_ENDED
        return self._end(status, hangup=False)

    def _drained(self, event: PlayoutDrained, now: float) -> list[Action]:
        if self._end_by is None:
            return []
        return self._agent_end()

    def _hand_off(self, event: HandOff, now: float) -> list[Action]:
        self.state = CallState.ENDING
        self.moved = event.cause
        return hand_off(event.cause)

    def _control(self, event: Control, now: float) -> list[Action]:
        if event.action == "transfer":
            return self._transfer(event.destination, "api")
        return self._end(CallStatus.API_ENDED)

    def _tick(self, event: Tick, now: float) -> list[Action]:
        limits = self._limits
        if now - self._started >= limits.max_duration_s:
            return self._end(
                CallStatus.TIMEOUT, f"maximum call duration {limits.max_duration_s:g}s reached"
            )
        if now - self._last_activity >= limits.inactivity_timeout_s:
            return self._end(
                CallStatus.TIMEOUT, f"no activity for {limits.inactivity_timeout_s:g}s"
            )
        if self._end_by is not None and now >= self._end_by:
            return self._agent_end()
        if self._message_by is not None and now >= self._message_by:
            return self._message_due(beep=False)
        return []

    @property
    def _agent_status(self) -> CallStatus:
        """How the agent core's end of the call counts: after a voicemail message, as that."""
        return CallStatus.VOICEMAIL_MESSAGE if self._leaving_message else CallStatus.AGENT_ENDED

    def _amd(self, event: AmdReport, now: float) -> list[Action]:
        if not self._voicemail:
            return []  # detection was not asked for
        if self.amd is None:
            self.amd = {
                "result": event.result,
                "beep": event.beep,
                "source": event.source,
                "decided_after_ms": event.after_ms,
            }
        elif self.amd["result"] != "machine" or event.result != "machine":
            return []  # the first result stands; later machine reports say the greeting ended
        if event.result != "machine":
            return self._tell(SendAmdResult(event.result, False))
        if self._voicemail == "hangup":
            return self._end(CallStatus.VOICEMAIL_HANGUP)
        if self._leaving_message:
            return []
        if event.message_end:
            self.amd["beep"] = event.beep
            return self._message_due(event.beep)
        if self._message_by is None:
            self._message_by = now + VOICEMAIL_WAIT_S
        return []

    def _message_due(self, beep: bool) -> list[Action]:
        self._leaving_message = True
        self._message_by = None
        return self._tell(SendAmdResult("machine", beep))

    def _tell(self, action: Action) -> list[Action]:
        if self.state is CallState.CONNECTING:
            self._held.append(action)
            return []
        return [action]

    def _cancelled(self, event: Cancelled, now: float) -> list[Action]:
        return self._end(CallStatus.ERROR, "the call's task was cancelled")

    def _failed(self, event: Failed, now: float) -> list[Action]:
        return self._end(CallStatus.ERROR, f"internal error in {event.where}: {event.error}")

    def _teardown_done(self, event: TeardownDone, now: float) -> list[Action]:
        self.state = CallState.ENDED
        return []


_LIVE = (CallState.CONNECTING, CallState.ACTIVE)

#: (state, event type) → handler. Absent pairs are ignored.
TABLE: dict[tuple[CallState, type[Any]], Handler] = {
    (CallState.CONNECTING, Start): CallMachine._start,
    (CallState.CONNECTING, Superseded): CallMachine._superseded,
    (CallState.CONNECTING, Refused): CallMachine._refused,
    (CallState.CONNECTING, AgentReady): CallMachine._agent_ready,
    (CallState.CONNECTING, AgentFailed): CallMachine._agent_failed,
    **{(s, AgentClosed): CallMachine._agent_closed for s in _LIVE},
    (CallState.ACTIVE, AgentCommand): CallMachine._command,
    (CallState.ACTIVE, PlayoutDrained): CallMachine._drained,
    **{(s, TransferDone): CallMachine._transfer_done for s in _LIVE},
    **{(s, LegGone): CallMachine._leg_gone for s in _LIVE},
    **{(s, Control): CallMachine._control for s in _LIVE},
    **{(s, HandOff): CallMachine._hand_off for s in _LIVE},
    **{(s, AmdReport): CallMachine._amd for s in _LIVE},
    **{(s, Tick): CallMachine._tick for s in _LIVE},
    **{(s, Cancelled): CallMachine._cancelled for s in _LIVE},
    **{(s, Failed): CallMachine._failed for s in _LIVE},
    (CallState.ENDING, TeardownDone): CallMachine._teardown_done,
}
