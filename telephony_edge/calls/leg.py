"""The contract every network leg (Twilio, Vonage, SIP, WebRTC, test) implements.

A leg turns its network's wire format into canonical frames (PCM16 LE mono
16 kHz, 20 ms, see ``telephony_edge.audio.frames``) and back, and carries out
call control on its network. It knows nothing of the agent: the bridge reads
caller events with :meth:`Leg.recv` and gives it agent audio one frame at a
time, at real time, in one of two ways that the leg declares as its ``clock``:

* ``PUSHED``: the worker's pacer owns the clock and calls
  :meth:`Leg.send_frame` every 20 ms while agent audio plays (Twilio,
  Vonage, RTP). The call is synchronous: sending never waits on the
  network, so one slow peer cannot hold up the clock of every other call.
* ``PULLED``: the network's own sender asks for frames (aiortc calls an
  outbound track's ``recv()``); the bridge :meth:`Leg.attach`\\ es a
  :class:`FrameSource` and the leg calls :meth:`FrameSource.next_frame` at
  its own pace, sending silence when it returns None.

A leg declares how many frames to send ahead at the start of each talkspurt
(``playout_lead_frames``: a WebSocket network with a jitter buffer wants a
few, RTP none), and what it can do (``capabilities``); anything else raises
:class:`NotSupported`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, Literal, Protocol

from telephony_edge.calls.dtmf import DtmfRequest

Direction = Literal["inbound", "outbound"]


class NotSupported(Exception):
    """The network cannot do what was asked (DTMF out, a kind of transfer, dialling …)."""


class Clock(StrEnum):
    """Who paces the agent audio toward the network."""

    PUSHED = "pushed"
    PULLED = "pulled"


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a leg can do on its network beyond carrying audio."""

    clear: bool = True
    dtmf_out: bool = False
    transfer_to_number: bool = False
    transfer_to_sip: bool = False

    def can_transfer_to(self, destination: str) -> bool:
        """Whether a normalised destination (E.164 or ``sip:``) is one this leg can reach."""
        if destination.startswith("+"):
            return self.transfer_to_number
        return self.transfer_to_sip


@dataclass(frozen=True, slots=True)
class LegInfo:
    """Who is on the network side of a call; ``provider`` is a registered provider's name."""

    provider: str
    direction: Direction
    from_: str
    to: str
    provider_call_id: str = ""


@dataclass(frozen=True, slots=True)
class Dtmf:
    """The caller pressed a key (0-9, *, #, A-D)."""

    digit: str


@dataclass(frozen=True, slots=True)
class Played:
    """The network reports the agent's audio up to ``mark`` was heard (Twilio mark)."""

    mark: str


@dataclass(frozen=True, slots=True)
class LegEnded:
    """The network side is gone. Always the last event a leg yields.

    ``status`` is the network's own word when it has one (Twilio's
    ``completed``, ``busy``, ``no-answer``, ``failed``, ``canceled``; SIP's
    ``BYE``); ``error`` is set when the leg failed rather than hung up.
    """

    status: str = "completed"
    error: str | None = None
    timeout: bool = False
    """The network's media stopped (no RTP for its configured time): the call ends
    ``timeout`` and the edge hangs up."""
    moved: bool = False
    """The call is not over: the network is bringing it to the edge again (Twilio: the
    stream ended without ``stop``, and the call's TwiML goes on to ``<Redirect>``), and
    whichever worker it reaches takes it on (``telephony_edge.calls.migration``)."""


LegEvent = bytes | Dtmf | Played | LegEnded


class FrameSource(Protocol):
    """Where a PULLED leg takes agent audio from (the bridge)."""

    def next_frame(self) -> bytes | None:
        """The next 20 ms canonical frame to play, or None for silence."""


class Leg(abc.ABC):
    """One network side of a call."""

    info: LegInfo
    clock: ClassVar[Clock] = Clock.PUSHED
    playout_lead_frames: int = 0  # per class, or per leg where it is configured
    #: the network brings this call back to the edge if its worker is lost or lets it go
    #: (:meth:`hand_off`): its live state is kept for another worker (``calls.migration``)
    resumable: bool = False
    capabilities: ClassVar[Capabilities] = Capabilities()
    #: set by the call's bridge: a leg that makes caller frames in a callback of its own
    #: (SIP's pacer tick, WebRTC's decoded Opus) offers each here first, and queues it for
    #: :meth:`recv` if the sink says False (see ``CallBridge._caller_frame_now``)
    frame_sink: Callable[[bytes], bool] | None = None

    @abc.abstractmethod
    async def recv(self) -> LegEvent:
        """Next caller event: a canonical 640-byte frame, a DTMF key, a mark, or LegEnded.

        After LegEnded is returned, every later call returns LegEnded again.
        """

    def send_frame(self, frame: bytes, talkspurt_start: bool) -> None:
        """PUSHED legs: send one canonical 20 ms agent frame to the caller now.

        Synchronous: a leg whose network is backed up drops the frame and
        counts it. ``talkspurt_start`` marks the first frame after silence
        (RTP sets the marker bit and jumps the timestamp).
        """
        raise NotSupported(f"{type(self).__name__} is not pushed by the pacer")

    def attach(self, source: FrameSource) -> None:
        """PULLED legs: from now on take agent frames from ``source``."""
        raise NotSupported(f"{type(self).__name__} does not pull its audio")

    @abc.abstractmethod
    def clear(self) -> None:
        """Drop whatever agent audio the network itself still has buffered (barge-in)."""

    async def send_dtmf(self, request: DtmfRequest) -> None:
        """Press the agent's keys toward the caller (``capabilities.dtmf_out``).

        Returns once the network has them: played (RTP, SIP INFO, the data
        channel) or accepted by its API (Twilio, Vonage); raises what the
        network raised. The bridge sends one request at a time.
        """
        raise NotSupported(f"{type(self).__name__} cannot send DTMF")

    @abc.abstractmethod
    async def hangup(self) -> None:
        """End the call on the network (the edge or the agent decided)."""

    async def transfer(self, destination: str) -> None:
        """Hand the caller to ``destination`` (E.164 number or SIP URI) on the network."""
        raise NotSupported(f"{type(self).__name__} cannot transfer calls")

    async def hand_off(self) -> None:
        """Let the network bring the live call to another worker (``resumable`` legs).

        Twilio: the stream closes and the call's TwiML goes on to the ``<Redirect>``
        any worker answers. Called once the call's live state is saved; the leg is
        closed after it.
        """
        raise NotSupported(f"{type(self).__name__} cannot hand its call to another worker")

    def network_state(self) -> dict[str, Any]:
        """The network's identity of the call, for its live state (Twilio: CallSid and
        streamSid): what the worker that takes the call on checks the network against."""
        return {}

    def agent_text(self, role: str, text: str, final: bool) -> None:
        """The agent's text as it comes (``user``: ``ontranscript``, ``assistant``:
        ``onresponsetext``), for networks that can show it (WebRTC captions)."""
        return None  # most networks carry audio only

    async def media_stats(self) -> dict[str, Any]:
        """The media path's statistics (RTP loss, jitter, round-trip time) for ``voip.media``.

        Read once, just before :meth:`close`; networks whose media the edge
        does not see packet by packet (the WebSocket ones) have none.
        """
        return {}

    @abc.abstractmethod
    async def close(self) -> None:
        """Release sockets and tasks. Idempotent; called once the call has ended."""
