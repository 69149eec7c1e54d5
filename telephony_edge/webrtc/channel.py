"""The call's data channel: the agent's text to the page, the page's requests to the edge.

When the peer opens a data channel (any label; the widget's is ``events``),
the edge sends it one JSON text message per agent text event (the last
:data:`MAX_EARLY_CAPTIONS` from before it opened first)::

    {"type": "transcript",    "text": "…", "final": true}   # ontranscript (the caller)
    {"type": "response_text", "text": "…", "final": true}   # onresponsetext (the agent)
    {"type": "dtmf", "digit": "5", "duration_ms": 250}       # a key the agent presses
    {"type": "hangup"}   # the edge ends the call (the agent hung up): do not resume it
    {"type": "move"}     # the worker is draining: re-offer with the resume token

and takes these from the page::

    {"type": "end"}                  # hang up: the call ends user-ended
    {"type": "dtmf", "digit": "5"}   # a key (0-9, *, #, A-D) for the agent, as DTMF

DTMF comes this way, both ways, because aiortc does not negotiate
``telephone-event`` (RFC 4733; its audio codecs are Opus, G.722, PCMU and
PCMA only) and has no ``RTCDTMFSender``. The agent's keys go one message a
key, at the key's time (:func:`telephony_edge.calls.dtmf.schedule`), so a
page or a bot on the other side gets them at the pace a phone would.

Anything else (over :data:`MAX_MESSAGE_BYTES`, binary, not JSON, an unknown
``type``, a bad digit) is :class:`Malformed`: the leg counts and logs it and
the call goes on. This module is sans-I/O; :mod:`telephony_edge.webrtc.leg`
moves the messages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final

from telephony_edge.calls.leg import Dtmf

MAX_MESSAGE_BYTES: Final = 1024
"""The largest message taken from the page (its messages are a few dozen bytes)."""
MAX_BUFFERED_BYTES: Final = 64 * 1024
"""Captions not yet sent past this (a peer that stopped reading) are dropped, not queued."""
MAX_EARLY_CAPTIONS: Final = 16
"""Captions kept for a channel not yet open (the greeting comes before it); older ones go."""
DIGITS: Final = frozenset("0123456789*#ABCD")
TYPES: Final = {"user": "transcript", "assistant": "response_text"}


class Malformed(ValueError):
    """A message from the page the edge does not take; the reason is the text."""


@dataclass(frozen=True, slots=True)
class EndRequested:
    """The page asked to hang up."""


PageRequest = EndRequested | Dtmf


def caption(role: str, text: str, final: bool) -> str:
    """The message for one agent text event (``role`` as in the call's chat)."""
    return json.dumps({"type": TYPES[role], "text": text, "final": final})


def key(digit: str, duration_ms: int) -> str:
    """The message for one key the agent presses (``send_dtmf``)."""
    return json.dumps({"type": "dtmf", "digit": digit, "duration_ms": duration_ms})


def notice(kind: str) -> str:
    """The message that tells the page the call ends here (``hangup``) or moves (``move``)."""
    return json.dumps({"type": kind})


def parse(message: str | bytes) -> PageRequest:
    """What the page asks for; :class:`Malformed` for anything else."""
    if isinstance(message, bytes):
        raise Malformed("binary message")
    if len(message.encode("utf-8", "surrogatepass")) > MAX_MESSAGE_BYTES:
        raise Malformed(f"message over {MAX_MESSAGE_BYTES} bytes")
    try:
        data = json.loads(message)
    except ValueError:
        raise Malformed("not JSON") from None
    except RecursionError:  # "[" * 1000 fits in the size limit
        raise Malformed("JSON nested too deep") from None
    if not isinstance(data, dict):
        raise Malformed("not a JSON object")
    kind = data.get("type")
    if kind == "end":
        return EndRequested()
    if kind == "dtmf":
        digit = data.get("digit")
        if not isinstance(digit, str) or digit.upper() not in DIGITS or len(digit) != 1:
            raise Malformed(f"dtmf digit must be one of 0-9 * # A-D, not {digit!r}")
        return Dtmf(digit.upper())
    raise Malformed(f"unknown type {str(kind)[:40]!r}")
