"""Agent-core pools per region: least-loaded healthy endpoint first, failing ones benched.

Why: a region runs several agent cores; one that is down must cost a call
no more than one connect attempt, and a core that keeps failing must stop
costing calls at all for a while. Each endpoint has a :class:`Breaker`
(sans-I/O, the clock injected, so its rules are tested without waiting):
``max_failures`` consecutive connect failures open it for ``bench_s``
seconds; then it is half-open and one call may try it (success closes it,
failure opens it again).

:meth:`AgentCorePool.candidates` orders a region's endpoints for one call:
closed or half-open ones by load (calls this worker has on the endpoint,
plus what the endpoint itself reported through ``/agent-cores/heartbeat``,
if it did), then benched ones by when their bench ends. A benched endpoint
is tried only after every other one failed, so a region whose cores all
failed recently still gets its calls attempted rather than refused
outright. The :class:`~telephony_edge.agent.link.AgentLink` walks the list
within its call-setup budget.

Endpoints come from ``regions.<r>.agent_core_urls`` and from agent cores
that register themselves (:meth:`AgentCorePool.update_registered`, fed from
the coordinator's heartbeats); a registered endpoint drops out when its
heartbeat expires.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from telephony_edge import metrics

#: heartbeat ids of self-registered agent cores (beside the workers' own ids)
AGENT_CORE_PREFIX = "agent-core:"


@dataclass(slots=True)
class Breaker:
    """Circuit breaker of one endpoint: closed → open (benched) → half-open → closed."""

    max_failures: int = 3
    bench_s: float = 30.0
    failures: int = 0
    opened_at: float | None = None
    probing: bool = False  # the half-open try is under way

    def state(self, now: float) -> str:
        if self.opened_at is None:
            return "closed"
        if now - self.opened_at < self.bench_s:
            return "open"
        return "half-open"

    def available(self, now: float) -> bool:
        """Whether a call may try the endpoint now (half-open: only one at a time)."""
        state = self.state(now)
        return state == "closed" or (state == "half-open" and not self.probing)

    def attempt(self, now: float) -> None:
        if self.state(now) == "half-open":
            self.probing = True

    def succeeded(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.probing = False

    def abandoned(self) -> None:
        """The try was cancelled before it told anything: a half-open probe may go again."""
        self.probing = False

    def failed(self, now: float) -> None:
        self.failures += 1
        if self.probing or self.failures >= self.max_failures:
            self.opened_at = now
            self.probing = False

    def bench_ends(self) -> float:
        return (self.opened_at or 0.0) + self.bench_s


@dataclass(slots=True)
class Endpoint:
    url: str
    breaker: Breaker
    calls: int = 0  # links of this worker on it (open or being opened)
    reported_load: float = 0.0
    capacity: float | None = None
    registered: bool = False

    @property
    def load(self) -> float:
        return self.calls + self.reported_load

    @property
    def full(self) -> bool:
        return self.capacity is not None and self.reported_load >= self.capacity


@dataclass
class AgentCorePool:
    """Every region's agent-core endpoints and their health, for one worker."""

    max_failures: int = 3
    bench_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    _regions: dict[str, dict[str, Endpoint]] = field(default_factory=dict)
    _configured: dict[str, set[str]] = field(default_factory=dict)

    @classmethod
    def from_regions(cls, regions: Mapping[str, Iterable[str]], **options: Any) -> AgentCorePool:
        pool = cls(**options)
        for region, urls in regions.items():
            for url in urls:
                pool._add(region, str(url))
                pool._configured.setdefault(region, set()).add(str(url))
        return pool

    def _add(self, region: str, url: str) -> Endpoint:
        endpoints = self._regions.setdefault(region, {})
        endpoint = endpoints.get(url)
        if endpoint is None:
            endpoint = Endpoint(url, Breaker(self.max_failures, self.bench_s))
            endpoints[url] = endpoint
            metrics.AGENT_CORE_ENDPOINT_UP.labels(url=url).set(1)
        return endpoint

    def has(self, region: str | None) -> bool:
        return region is not None and bool(self._regions.get(region))

    def candidates(self, region: str) -> list[str]:
        """The region's endpoints in the order one call should try them."""
        now = self.clock()
        endpoints = list(self._regions.get(region, {}).values())
        ready = [e for e in endpoints if e.breaker.available(now) and not e.full]
        ready.sort(key=lambda e: e.load)
        rest = [e for e in endpoints if e not in ready]
        rest.sort(key=lambda e: (e.full, e.breaker.bench_ends(), e.load))
        return [e.url for e in ready + rest]

    def _find(self, url: str) -> list[Endpoint]:
        return [eps[url] for eps in self._regions.values() if url in eps]

    def attempt(self, url: str) -> None:
        """A call starts connecting to ``url``: it counts toward its load from now."""
        now = self.clock()
        for endpoint in self._find(url):
            endpoint.calls += 1
            endpoint.breaker.attempt(now)

    def succeeded(self, url: str) -> None:
        for endpoint in self._find(url):
            endpoint.breaker.succeeded()
            metrics.AGENT_CORE_ENDPOINT_UP.labels(url=url).set(1)

    def failed(self, url: str) -> None:
        """Connecting to ``url`` failed: count it, maybe bench it, and drop the call's load."""
        now = self.clock()
        metrics.AGENT_CORE_ENDPOINT_FAILURES.labels(url=url).inc()
        for endpoint in self._find(url):
            endpoint.calls = max(0, endpoint.calls - 1)
            endpoint.breaker.failed(now)
            if endpoint.breaker.state(now) != "closed":
                metrics.AGENT_CORE_ENDPOINT_UP.labels(url=url).set(0)

    def released(self, url: str) -> None:
        """A call's link to ``url`` closed."""
        for endpoint in self._find(url):
            endpoint.calls = max(0, endpoint.calls - 1)

    def abandoned(self, url: str) -> None:
        """Connecting to ``url`` was cancelled (the call ended first): its load goes, and no
        verdict on the endpoint (a half-open probe is free to try again)."""
        for endpoint in self._find(url):
            endpoint.calls = max(0, endpoint.calls - 1)
            endpoint.breaker.abandoned()

    def state(self, url: str) -> str:
        now = self.clock()
        states = [e.breaker.state(now) for e in self._find(url)]
        return states[0] if states else "unknown"

    def update_registered(self, entries: Mapping[str, Mapping[str, Any]]) -> None:
        """Take the self-registered agent cores' latest heartbeats (heartbeat id → info).

        Registered endpoints no longer heartbeating leave the pool (their
        breaker state with them); configured ones stay.
        """
        seen: set[tuple[str, str]] = set()
        for key, info in entries.items():
            if not key.startswith(AGENT_CORE_PREFIX):
                continue
            url, region = str(info.get("url", "")), str(info.get("region", ""))
            if not url or not region:
                continue
            endpoint = self._add(region, url)
            endpoint.registered = True
            endpoint.reported_load = float(info.get("load", 0) or 0)
            capacity = info.get("capacity")
            endpoint.capacity = float(capacity) if capacity else None
            seen.add((region, url))
        for region, endpoints in self._regions.items():
            for url in list(endpoints):
                configured = url in self._configured.get(region, set())
                if not configured and (region, url) not in seen and endpoints[url].calls == 0:
                    del endpoints[url]


@dataclass(slots=True)
class PoolChoice:
    """The endpoints one call may try (in order), reporting back to the pool."""

    pool: AgentCorePool
    urls: list[str]

    def attempt(self, url: str) -> None:
        self.pool.attempt(url)

    def succeeded(self, url: str) -> None:
        self.pool.succeeded(url)

    def failed(self, url: str) -> None:
        self.pool.failed(url)

    def released(self, url: str) -> None:
        self.pool.released(url)

    def abandoned(self, url: str) -> None:
        self.pool.abandoned(url)
