"""The relay-latency histogram, counted in bulk: it is observed for every 20 ms frame.

``telephony_edge_relay_latency_seconds`` gets one observation per frame each
way, 100 a second per call. prometheus_client's ``Histogram.observe`` walks
the buckets in Python and takes two locks (the sum's and the bucket's): about
a microsecond, a few per cent of the worker's CPU at a hundred calls. Here an
observation is a ``bisect`` and two additions into a plain list; the counts go
into the histogram every ``FLUSH_EVERY`` observations and whenever a call ends
(:meth:`RelayLatency.flush`), so a scrape during calls misses at most that
many and one after them misses none. A frame slow enough to carry its call's
trace id as an exemplar is observed directly, as before.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from telephony_edge import metrics

FLUSH_EVERY = 64


class RelayLatency:
    """One direction's observations, added to its histogram child in bulk."""

    __slots__ = ("_bounds", "_child", "_counts", "_pending", "_sum")

    def __init__(self, child: Any) -> None:
        """``child``: a labelled child of a prometheus_client ``Histogram``."""
        self._child = child
        self._bounds: list[float] = list(child._upper_bounds)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._pending = 0

    def observe(self, seconds: float, exemplar: dict[str, str] | None = None) -> None:
        """One frame's latency; ``exemplar``: observed at once, with it (a slow frame)."""
        if exemplar:
            self._child.observe(seconds, exemplar)
            return
        self._counts[bisect_left(self._bounds, seconds)] += 1  # first bucket with le >= it
        self._sum += seconds
        self._pending += 1
        if self._pending >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        """Add what was counted here to the histogram."""
        if not self._pending:
            return
        child, counts = self._child, self._counts
        for i, count in enumerate(counts):
            if count:
                child._buckets[i].inc(count)
                counts[i] = 0
        child._sum.inc(self._sum)
        self._sum = 0.0
        self._pending = 0


CALLER_TO_AGENT = RelayLatency(metrics.RELAY_LATENCY_SECONDS.labels(direction="caller_to_agent"))
AGENT_TO_CALLER = RelayLatency(metrics.RELAY_LATENCY_SECONDS.labels(direction="agent_to_caller"))


def flush() -> None:
    """Both directions' counts into the histogram (a call ended)."""
    CALLER_TO_AGENT.flush()
    AGENT_TO_CALLER.flush()
