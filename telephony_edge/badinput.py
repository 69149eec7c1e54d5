"""Bad input from outside the edge: counted, and logged as a warning that cannot flood.

Theory of operation
-------------------
Anyone who can reach a port can send the edge garbage: a SIP datagram, a
stream that cannot be framed, a WebSocket message, a webhook body. That is
the sender's fault, not the edge's, so it is never an ERROR line and never a
traceback. :func:`report` counts every one in
``telephony_edge_bad_input_total{source}`` (``source`` names the protocol:
``sip-udp``, ``twilio-media`` …) and logs a WARNING naming the error, the
sender and the call id where one is known.

Rules
-----
* The warning is rate-limited per sender and source (:class:`RateLimiter`):
  the first bad input of a kind from an address in ``interval_s`` is
  logged, the rest only counted, and the next line logged for them carries
  how many were left out (``suppressed``). The metric counts every one.
* Memory is bounded: the sender table keeps at most ``max_sources``
  addresses, least recently seen evicted, because an attacker chooses its
  source addresses (spoofed UDP costs nothing). For the same reason all
  senders together get at most ``max_lines`` lines per ``interval_s``; what
  is left out then is summed into one line at the start of the next window.
* The error is a short fixed phrase or an exception's type name, never the
  sender's bytes (:func:`phrase` cuts a message where it starts quoting
  them): a log line must not carry what an attacker chose, or a credential
  that was in a bad header.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from telephony_edge import metrics

log = logging.getLogger(__name__)

INTERVAL_S = 60.0
MAX_SOURCES = 4096
MAX_LINES = 100  # per interval, all senders together
MAX_ERROR_CHARS = 120


@dataclass(slots=True)
class _Sender:
    logged_at: float  # start of the sender's window (when its last line was logged)
    suppressed: int = 0  # bad inputs since then that were not logged


@dataclass(frozen=True, slots=True)
class Admitted:
    """A line may be logged; ``suppressed`` were left out for this sender before it."""

    suppressed: int


class RateLimiter:
    """Which bad-input warnings get a log line; see the module docstring."""

    def __init__(
        self,
        interval_s: float = INTERVAL_S,
        max_sources: int = MAX_SOURCES,
        max_lines: int = MAX_LINES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval_s = interval_s
        self.max_sources = max_sources
        self.max_lines = max_lines
        self.clock = clock
        self._senders: OrderedDict[str, _Sender] = OrderedDict()
        self._window_start = float("-inf")
        self._lines = 0  # lines logged in the current global window
        self._overflow = 0  # left out by the global budget or with an evicted sender

    def __len__(self) -> int:
        return len(self._senders)

    def admit(self, sender: str) -> Admitted | None:
        """Whether to log this sender's bad input now (None: count it only)."""
        now = self.clock()
        entry = self._senders.get(sender)
        if entry is not None:
            self._senders.move_to_end(sender)
            if now - entry.logged_at < self.interval_s:
                entry.suppressed += 1
                return None
        if not self._budget(now):
            if entry is None:
                self._overflow += 1  # not remembered: the table would fill with spoofs
            else:
                entry.suppressed += 1  # its next line will say so
            return None
        if entry is None:
            entry = self._remember(sender, _Sender(now))
        left_out, entry.suppressed, entry.logged_at = entry.suppressed, 0, now
        return Admitted(left_out)

    def take_overflow(self) -> int:
        """Lines left out by the global budget or by eviction since the last call (then 0)."""
        count, self._overflow = self._overflow, 0
        return count

    def _budget(self, now: float) -> bool:
        if now - self._window_start >= self.interval_s:
            self._window_start, self._lines = now, 0
        if self._lines >= self.max_lines:
            return False
        self._lines += 1
        return True

    def _remember(self, sender: str, entry: _Sender) -> _Sender:
        while len(self._senders) >= self.max_sources:
            _, evicted = self._senders.popitem(last=False)
            self._overflow += evicted.suppressed
        self._senders[sender] = entry
        return entry


LIMITER = RateLimiter()


def report(
    source: str,
    error: str,
    peer: str | None,
    *,
    port: int | None = None,
    call_id: str | None = None,
    count: bool = True,
    limiter: RateLimiter | None = None,
) -> None:
    """One bad input from ``peer`` (an address): counted under ``source``, warned rate-limited.

    ``count=False`` when the caller counted it already (or it is a refusal
    that is not the sender's fault, e.g. no capacity, and only the line is wanted).
    """
    if count:
        metrics.BAD_INPUT.labels(source=source).inc()
    limiter = limiter or LIMITER
    sender = peer or "unknown"
    admitted = limiter.admit(f"{source} {sender}")
    if admitted is None:
        return
    overflow = limiter.take_overflow()
    if overflow:
        log.warning(
            "bad input: %d more warnings left out (too many senders)",
            overflow,
            extra={"suppressed": overflow},
        )
    error = error[:MAX_ERROR_CHARS]
    where = sender if port is None else f"{sender}:{port}"
    extra: dict[str, object] = {"source": source, "error": error, "peer": where}
    if call_id:
        extra["call_id"] = call_id
    if admitted.suppressed:
        extra["suppressed"] = admitted.suppressed
    log.warning("bad %s input from %s: %s", source, where, error, extra=extra)


_QUOTE = re.compile(r"""\s*(?:\bin\s+)?['"<\[(].*$|:\s.*$""", re.S)


_TRAILING = re.compile(r"(?:[,;]?\s+(?:not|got|is|was))?[\s,;]*$")


def phrase(message: str) -> str:
    """An error message up to where it quotes the input: ``bad Via 'x;y'`` → ``bad Via``."""
    cut = _TRAILING.sub("", _QUOTE.sub("", message))
    return cut[:MAX_ERROR_CHARS] or "malformed"
