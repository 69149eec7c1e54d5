"""The stream a live Twilio call waits for after the agent's keys: handed to its leg, once.

Theory of operation
-------------------
A call's audio is a ``<Connect><Stream>``, a bidirectional Media Stream, and
Twilio plays keys into a call only from TwiML: ``<Play digits>``. A live
call's TwiML is replaced through the REST API's call update, which ends the
stream it was running. So :meth:`TwilioMediaLeg.send_dtmf
<telephony_edge.twilio.media.TwilioMediaLeg.send_dtmf>` replaces it with
``<Play digits>`` followed by the same ``<Connect><Stream>`` (:func:`play_then_stream`):
Twilio stops the stream (``stop``, then the socket closes), plays the keys to
the caller, and opens a new stream to the edge; the call goes on over it,
with the same bridge and agent link.

The new stream's URL is this worker's (``public_url``), as the first one's
was: the call's bridge runs here. Its ``start`` carries the call id, a
handover id and a token bound to both (subject ``call_id|handover|id``).
:meth:`StreamHandover.arrived` checks the token, that the handover is awaited
here and that the stream is the same Twilio call, and gives the socket to the
waiting leg (:class:`NewStream`); the id is forgotten then, on the leg's
timeout, or when the call ends. Anything else is refused 1008 before any
audio is read, as a first stream with a bad token is. One handover waits per
call at most (the bridge sends one ``send_dtmf`` at a time), so the table is
bounded by the worker's live calls.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass

from aiohttp import web
from twilio.twiml.voice_response import VoiceResponse

from telephony_edge.calls.dtmf import KEYS, PAUSE, DtmfRequest
from telephony_edge.calls.leg import NotSupported
from telephony_edge.tokens import StreamTokens, TokenError
from telephony_edge.twilio import twiml
from telephony_edge.twilio.media import StreamRejected, StreamStart

CALL_ID_PARAM = "call_id"  # the same <Parameter> names as the first stream's
TOKEN_PARAM = "token"
HANDOVER_PARAM = "handover"
TWILIO_KEYS = frozenset(KEYS[:12]) | {PAUSE}  # <Play digits>: 0-9 * # and w (half a second)


@dataclass(frozen=True, slots=True)
class NewStream:
    """A stream that came for a handover; its handler keeps the socket until ``released``."""

    ws: web.WebSocketResponse
    request: web.BaseRequest
    start: StreamStart
    released: asyncio.Future[None]


@dataclass(frozen=True, slots=True)
class Expected:
    """A handover a leg waits for: ``arrival`` resolves with the new stream."""

    handover_id: str
    call_id: str
    call_sid: str
    digits: str
    parameters: dict[str, str]
    arrival: asyncio.Future[NewStream]


def subject(call_id: str, handover_id: str) -> str:
    return f"{call_id}|handover|{handover_id}"


def play_then_stream(
    digits: str, stream_url: str, parameters: dict[str, str], resume_url: str
) -> str:
    """``<Play digits>``, then ``<Connect><Stream>`` again and the resume ``<Redirect>``
    (:mod:`telephony_edge.twilio.resume`): the TwiML a call is updated with."""
    response = VoiceResponse()
    response.play(digits=digits)
    response.append(twiml.connect_element(stream_url, parameters))
    response.append(twiml.resume_redirect(resume_url))
    return str(response.to_xml())


class StreamHandover:
    """The handovers this worker's calls wait for; see the module docstring."""

    def __init__(self, tokens: StreamTokens, public_url: str) -> None:
        self.tokens = tokens
        self.public_url = public_url
        self.stream_url = twiml.stream_url(public_url)
        self._waiting: dict[str, Expected] = {}
        self._running: set[asyncio.Task[None]] = set()  # calls whose first handler is gone

    def __len__(self) -> int:
        return len(self._waiting)

    def expect(self, request: DtmfRequest, call_id: str, call_sid: str) -> tuple[Expected, str]:
        """A new handover for the call's keys: what it waits for, and the TwiML that plays
        them and connects the new stream. NotSupported for keys Twilio does not play."""
        if not set(request.digits) <= TWILIO_KEYS:
            raise NotSupported("Twilio's <Play digits> plays the keys 0-9, * and # only (not A-D)")
        handover_id = secrets.token_urlsafe(12)
        parameters = {
            CALL_ID_PARAM: call_id,
            HANDOVER_PARAM: handover_id,
            TOKEN_PARAM: self.tokens.issue(subject(call_id, handover_id)),
        }
        arrival: asyncio.Future[NewStream] = asyncio.get_running_loop().create_future()
        expected = Expected(handover_id, call_id, call_sid, request.digits, parameters, arrival)
        self._waiting[handover_id] = expected
        resume_url = twiml.resume_url(self.public_url, call_id)
        return expected, play_then_stream(request.digits, self.stream_url, parameters, resume_url)

    def forget(self, expected: Expected) -> None:
        """The leg no longer waits (the stream came, did not, or the call ended)."""
        self._waiting.pop(expected.handover_id, None)
        if not expected.arrival.done():
            expected.arrival.cancel()

    def keep(self, run: asyncio.Task[None]) -> None:
        """A call's task whose first stream's handler went (its connection was lost for
        the agent's keys): kept until the call ends."""
        self._running.add(run)
        run.add_done_callback(self._running.discard)

    def arrived(self, start: StreamStart) -> Expected:
        """The handover ``start`` is for; StreamRejected (1008) for anything not awaited here."""
        params = start.parameters
        call_id = params.get(CALL_ID_PARAM, "")
        handover_id = params.get(HANDOVER_PARAM, "")
        try:
            self.tokens.verify(params.get(TOKEN_PARAM, ""), subject(call_id, handover_id))
        except TokenError as exc:
            raise StreamRejected(str(exc)) from None
        except ValueError:  # non-ASCII digits in the expiry: still just a bad token
            raise StreamRejected("malformed stream token") from None
        expected = self._waiting.get(handover_id)
        if expected is None or expected.arrival.done():
            raise StreamRejected("no call on this worker waits for this stream")
        if expected.call_sid != start.call_sid:
            raise StreamRejected("the stream belongs to another Twilio call")
        del self._waiting[handover_id]
        return expected
