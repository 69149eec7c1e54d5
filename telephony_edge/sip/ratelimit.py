"""Per-source request limits for SIP, every method (sans-I/O: the time is passed in).

Theory of operation
-------------------
Anyone can send the SIP port OPTIONS, REGISTER or garbage INVITEs at line
rate, and each request that reaches the user agent costs a parse and a
transaction kept for Timer J (32 s over UDP). :class:`RequestGate` runs on the
raw bytes *before* the UA: a CRLF keep-alive passes; any other message, a
request of any method or a response (which costs a parse too, and a flood of
made-up ``SIP/2.0 200`` is as cheap to send as one of OPTIONS), takes a token
from its source's bucket (an IPv4 address, or an IPv6 /64: :mod:`~telephony_edge.sip.sources`;
:class:`TokenBuckets`: ``rate`` per second, ``burst`` at once). A trunk's
ordinary traffic (Twilio's limit is 30 calls/s, 3 or 4 requests a call) stays
well under the default 200/s. The operator's own trunks (``trusted``: their
CIDRs, or a proxy such as Kamailio in front of the edge, which sends
everyone's traffic from one address) have buckets of their own with a higher
rate; whether a source is trusted is decided once per source (cached, bounded).

Over the limit:

* UDP: dropped silently. The source address of a datagram is not proven, so
  a 503 would reflect the flood at whoever it names; a 503 also tells a proxy
  that *this server* is overloaded, and it fails over all its traffic
  (RFC 3261 §21.5.4; RFC 6357 §4 on 503's on/off amplification), when only
  one source is over its share; and a genuine UDP client's own
  retransmissions (Timers A and E) resend what was dropped once tokens are
  back. Kamailio's ``pike`` and SBCs drop the same way.
* TCP: ``503 Service Unavailable`` with ``Retry-After`` (stateless, no
  transaction kept). The handshake proved the source, so nothing is
  reflected, and a request over a reliable transport is never retransmitted:
  a silent drop would cost the client its whole Timer F/B (32 s).

Memory is bounded: the buckets are an LRU of ``max_sources`` addresses (an
evicted source starts again with a full bucket, which costs an attacker the
work of sending from ``max_sources`` other addresses first).
"""

from __future__ import annotations

import math
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from telephony_edge.sip.message import Request, build_response
from telephony_edge.sip.parse import ParseError, parse_message
from telephony_edge.sip.sources import source_key
from telephony_edge.sip.ua_records import KNOWN_METHODS

MAX_SOURCES = 10_000


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class TokenBuckets:
    """A token bucket per key, the least recently used forgotten past ``max_keys``."""

    def __init__(self, rate: float, burst: float, max_keys: int = MAX_SOURCES) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now: float) -> float:
        """0 when a token was taken, else the seconds until one is back."""
        bucket = self._buckets.get(key)
        if bucket is None:
            while len(self._buckets) >= self.max_keys:
                self._buckets.popitem(last=False)
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(self.burst, bucket.tokens + max(0.0, now - bucket.at) * self.rate)
            bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate


@dataclass(frozen=True, slots=True)
class Limited:
    """A request over its source's limit: ``answer`` to send back (TCP), or None (dropped)."""

    method: str  # one of KNOWN_METHODS, or "other" (it names a metric label)
    answer: bytes | None
    retry_after: int


def peek_method(data: bytes) -> str | None:
    """A request's method without parsing it, ``response`` for a response, None for a
    keep-alive (the metric's label: one of a bounded set)."""
    if not data.strip(b"\r\n"):
        return None
    if data.startswith(b"SIP/2.0 "):
        return "response"
    word = data[: data.find(b" ", 0, 32)].decode("ascii", "replace").upper()
    return word if word in KNOWN_METHODS else "other"


class RequestGate:
    """Which requests reach the UA; see the module docstring."""

    def __init__(
        self,
        rate: float,
        burst: int,
        max_sources: int = MAX_SOURCES,
        *,
        trusted: Callable[[str], bool] | None = None,
        trusted_rate: float | None = None,
        trusted_burst: int | None = None,
    ) -> None:
        self.buckets = TokenBuckets(rate, burst, max_sources)
        self.trusted_buckets = TokenBuckets(
            trusted_rate or rate, trusted_burst or burst, max_sources
        )
        self._trusted = trusted
        self._known: OrderedDict[str, bool] = OrderedDict()  # source → trusted
        self.max_sources = max_sources

    def check(self, data: bytes, source: str, transport: str, now: float) -> Limited | None:
        """None when ``data`` may go to the UA, else how it is refused."""
        method = peek_method(data)
        if method is None:
            return None
        if self.trusted(source):
            wait = self.trusted_buckets.take(source, now)
        else:
            wait = self.buckets.take(source_key(source), now)
        if not wait:
            return None
        retry_after = max(1, math.ceil(wait))
        answer = _busy(data, retry_after) if transport != "UDP" else None
        return Limited(method, answer, retry_after)

    def trusted(self, source: str) -> bool:
        """Whether ``source`` is one of the operator's trunks (decided once, cached)."""
        if self._trusted is None:
            return False
        known = self._known.get(source)
        if known is None:
            known = self._known[source] = self._trusted(source)
            while len(self._known) > self.max_sources:
                self._known.popitem(last=False)
        return known


def _busy(data: bytes, retry_after: int) -> bytes | None:
    """A stateless 503 with Retry-After (§21.5.4), or None when no answer can be built."""
    try:
        request = parse_message(data)
    except ParseError:
        return None
    if not isinstance(request, Request) or request.method == "ACK":
        return None  # an ACK is never answered
    headers = [("Retry-After", str(retry_after))]
    return build_response(request, 503, None, headers, to_tag=secrets.token_hex(8)).to_bytes()
