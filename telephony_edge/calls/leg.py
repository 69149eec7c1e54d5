"""The contract every network leg (Twilio, Vonage, SIP, WebRTC, test) implements.

A leg turns its network's wire format into canonical frames (PCM16 LE mono
16 kHz, 20 ms, see ``telephony_edge.audio.frames``) and back, and carries out
call control on its network. It knows nothing of the agent: the bridge reads
caller events with :meth:`Leg.recv` and hands agent audio to
:meth:`Leg.send_frame` one frame at a time, at real time (the worker's pacer
owns the clock, so a leg never sleeps per frame).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Literal

Provider = Literal["twilio", "vonage", "sip", "webrtc", "test"]
Direction = Literal["inbound", "outbound"]


@dataclass(frozen=True, slots=True)
class LegInfo:
    """Who is on the network side of a call."""

    provider: Provider
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


LegEvent = bytes | Dtmf | Played | LegEnded


class Leg(abc.ABC):
    """One network side of a call."""

    info: LegInfo

    @abc.abstractmethod
    async def recv(self) -> LegEvent:
        """Next caller event: a canonical 640-byte frame, a DTMF key, a mark, or LegEnded.

        After LegEnded is returned, every later call returns LegEnded again.
        """

    @abc.abstractmethod
    async def send_frame(self, frame: bytes) -> None:
        """Send one canonical 20 ms agent frame to the caller now.

        Called by the pacer once per 20 ms while agent audio is playing, for
        every call of the worker in turn, so it must not wait on the network:
        a leg whose network is backed up drops the frame and counts it.
        """

    @abc.abstractmethod
    async def clear(self) -> None:
        """Drop whatever agent audio the network itself still has buffered (barge-in)."""

    @abc.abstractmethod
    async def hangup(self) -> None:
        """End the call on the network (the edge or the agent decided)."""

    @abc.abstractmethod
    async def transfer(self, destination: str) -> None:
        """Hand the caller to ``destination`` (E.164 number or SIP URI) on the network."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release sockets and tasks. Idempotent; called once the call has ended."""
