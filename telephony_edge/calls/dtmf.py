"""DTMF the agent sends (``send_dtmf``): what a request may hold, and its timing.

Theory of operation
-------------------
The agent core asks ``{"method": "send_dtmf", "data": {"digits": "1w23#",
"duration_ms": 250}}`` to press keys toward the caller (an IVR's menu, a PIN).
:func:`parse` checks it once for every network: keys ``0-9 * # A-D`` (``a-d``
taken as capitals), ``w`` for half a second of nothing between keys (as
Twilio's ``<Play digits>`` and Asterisk spell it), at most :data:`MAX_DIGITS`
characters, a tone length within :data:`MIN_DURATION_MS`..:data:`MAX_DURATION_MS`.
Anything else raises :class:`BadDtmf`, whose text goes back to the core in an
``error`` message; the call goes on.

Each network's leg then plays the request its own way. Those that time the
tones themselves (RFC 4733 on RTP, SIP INFO, the WebRTC data channel) follow
:func:`schedule`: each key sounds ``duration_ms``, then :data:`GAP_MS` of
silence before the next (ITU-T Q.24 asks for at least 40 ms of each), and a
``w`` adds :data:`PAUSE_MS` of silence. Twilio and Vonage time the tones on
their side and are given the keys, ``w`` translated to their own pause.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

KEYS: Final = "0123456789*#ABCD"
PAUSE: Final = "w"
MAX_DIGITS: Final = 32
MIN_DURATION_MS: Final = 40
MAX_DURATION_MS: Final = 2000
DEFAULT_DURATION_MS: Final = 250
GAP_MS: Final = 100
PAUSE_MS: Final = 500


class BadDtmf(ValueError):
    """A ``send_dtmf`` request the edge does not carry out; the text says why."""


@dataclass(frozen=True, slots=True)
class DtmfRequest:
    """Keys to press toward the caller, each sounding ``duration_ms``; ``w`` is a pause."""

    digits: str
    duration_ms: int = DEFAULT_DURATION_MS

    @property
    def keys(self) -> str:
        """The keys alone, pauses left out."""
        return self.digits.replace(PAUSE, "")


@dataclass(frozen=True, slots=True)
class Tone:
    """One key of a request: it starts ``start_ms`` after the request does."""

    key: str
    start_ms: int
    duration_ms: int


def parse(data: Mapping[str, Any]) -> DtmfRequest:
    """The request in a ``send_dtmf`` message's ``data``; :class:`BadDtmf` says what is wrong."""
    digits = data.get("digits")
    if not isinstance(digits, str) or not digits:
        raise BadDtmf("digits must be a non-empty string")
    if len(digits) > MAX_DIGITS:
        raise BadDtmf(f"digits longer than {MAX_DIGITS} characters")
    normal = "".join(c if c == PAUSE else c.upper() for c in digits)
    wrong = sorted({c for c in normal if c not in KEYS and c != PAUSE})
    if wrong:
        shown = "".join(wrong)[:8].encode("ascii", "backslashreplace").decode()
        raise BadDtmf(f"digits may hold 0-9 * # A-D and w (a pause), not {shown!r}")
    if normal.strip(PAUSE) == "":
        raise BadDtmf("digits hold no key, only pauses")
    duration = data.get("duration_ms", DEFAULT_DURATION_MS)
    if not isinstance(duration, int) or isinstance(duration, bool):
        raise BadDtmf("duration_ms must be an integer")
    if not MIN_DURATION_MS <= duration <= MAX_DURATION_MS:
        raise BadDtmf(f"duration_ms must be {MIN_DURATION_MS} to {MAX_DURATION_MS}")
    return DtmfRequest(normal, duration)


def schedule(request: DtmfRequest) -> Iterator[Tone]:
    """The request's keys with their start times, for networks that time the tones."""
    at = 0
    for char in request.digits:
        if char == PAUSE:
            at += PAUSE_MS
            continue
        yield Tone(char, at, request.duration_ms)
        at += request.duration_ms + GAP_MS


def total_ms(request: DtmfRequest) -> int:
    """How long the request takes from its first tone to the end of its last gap."""
    keys = len(request.keys)
    pauses = len(request.digits) - keys
    return keys * (request.duration_ms + GAP_MS) + pauses * PAUSE_MS
