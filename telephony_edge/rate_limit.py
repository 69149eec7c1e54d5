"""A token bucket per source address, for what a public endpoint lets each client do.

Bounded in memory: past ``MAX_TRACKED_SOURCES`` the full buckets are forgotten,
then the oldest half.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

MAX_TRACKED_SOURCES = 10_000


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """A token bucket per source address: ``burst`` at once, ``per_minute`` refill."""

    def __init__(self, per_minute: float, burst: int) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self._buckets: dict[str, _Bucket] = {}

    def take(self, source: str, now: float | None = None) -> float:
        """0 when allowed, else the seconds until a token is available."""
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) >= MAX_TRACKED_SOURCES:
                self._prune(now)
            bucket = self._buckets[source] = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    def _prune(self, now: float) -> None:
        full = [
            s for s, b in self._buckets.items() if b.tokens + (now - b.at) * self.rate >= self.burst
        ]
        for source in full:
            del self._buckets[source]
        if len(self._buckets) >= MAX_TRACKED_SOURCES:  # all busy: forget the oldest
            oldest = sorted(self._buckets, key=lambda s: self._buckets[s].at)
            for source in oldest[: len(oldest) // 2]:
                del self._buckets[source]
