"""``GET /status``: a small live page for operators, behind the private API key.

What people glance at during an incident, from what the worker already
has: the live calls in the coordinator's index (the whole cluster's, and
this worker's share of them) by network and agent, the workers' heartbeats,
set-up time and relay latency percentiles from this worker's histograms,
its call outcomes since it started, and what each network adds
(``Provider.status_tables``: SIP's accounts and their registrations). HTML by default; JSON with
``?format=json`` or ``Accept: application/json``. The key is the API's
(``Authorization: Bearer <api.private_key>``, compared in constant time):
without a configured key the page answers 401, i.e. it is off.

Reading the index is bounded (``MAX_CALLS_READ``): past it the counts are
marked partial rather than the page taking longer.
"""

from __future__ import annotations

import html
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import Counter as PromCounter
from prometheus_client import Histogram

from telephony_edge import metrics
from telephony_edge.api import _authorize, _json_errors
from telephony_edge.services import SERVICES, Services

STATUS_PATH = "/status"
#: Calls per read of the index: a page's records are decoded between two awaits.
PAGE_SIZE = 200
#: What the counts need of each record (the rest is neither read nor decoded).
COUNTED_FIELDS = ("owner", "provider", "agent_id")
MAX_CALLS_READ = 10_000
QUANTILES = (0.5, 0.9, 0.99)


@dataclass(frozen=True, slots=True)
class CallCounts:
    """Live calls by network, by agent and in all."""

    total: int = 0
    by_provider: dict[str, int] = field(default_factory=dict)
    by_agent: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Status:
    worker_id: str
    region: str | None
    accepting: bool
    worker: CallCounts
    cluster: CallCounts
    cluster_partial: bool
    workers: dict[str, dict[str, Any]]
    setup_seconds: dict[str, float | None]
    relay_latency_seconds: dict[str, dict[str, float | None]]
    outcomes: dict[str, dict[str, int]]
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """Prometheus's ``histogram_quantile`` over cumulative ``(le, count)`` buckets.

    Linear within the bucket the rank falls in; the highest finite bound if it
    falls in ``+Inf``; None without observations.
    """
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            share = (rank - lower_count) / (count - lower_count)
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


def _quantiles(histogram: Histogram, **labels: str) -> dict[str, float | None]:
    buckets = [
        (float(sample.labels["le"]), sample.value)
        for family in histogram.collect()
        for sample in family.samples
        if sample.name.endswith("_bucket")
        and all(sample.labels.get(k) == v for k, v in labels.items())
    ]
    return {f"p{round(q * 100)}": histogram_quantile(q, buckets) for q in QUANTILES}


def _label_values(counter: PromCounter | Histogram, name: str) -> set[str]:
    return {
        sample.labels[name]
        for family in counter.collect()
        for sample in family.samples
        if name in sample.labels
    }


def _outcomes() -> dict[str, dict[str, int]]:
    """Calls ended since this worker started: provider → call_status → count."""
    out: dict[str, dict[str, int]] = {}
    for family in metrics.CALLS_TOTAL.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.value > 0:
                provider = out.setdefault(sample.labels["provider"], {})
                provider[sample.labels["status"]] = int(sample.value)
    return out


class _Tally:
    """Live calls counted by network and agent, a page at a time."""

    def __init__(self) -> None:
        self.total = 0
        self.providers: Counter[str] = Counter()
        self.agents: Counter[str] = Counter()

    def add(self, doc: Mapping[str, Any]) -> None:
        self.total += 1
        self.providers[str(doc.get("provider") or "?")] += 1
        self.agents[str(doc.get("agent_id") or "?")] += 1

    def counts(self) -> CallCounts:
        return CallCounts(
            self.total, dict(sorted(self.providers.items())), dict(sorted(self.agents.items()))
        )


async def read_status(services: Services) -> Status:
    """The status now; the coordinator is read in pages, at most ``MAX_CALLS_READ`` calls.

    Each page is counted as it comes (between two reads), so no step of the
    event loop handles more than a page's calls.
    """
    me = services.worker_id
    worker, cluster = _Tally(), _Tally()
    cursor: str | None = None
    while True:
        page, cursor = await services.coordinator.page_active_calls(
            after=cursor, limit=PAGE_SIZE, fields=COUNTED_FIELDS
        )
        for _, doc in page:
            cluster.add(doc.data)
            if doc.data.get("owner") == me:
                worker.add(doc.data)
        if cursor is None or cluster.total >= MAX_CALLS_READ:
            break
    workers = await services.coordinator.live_workers()
    tables: dict[str, list[dict[str, Any]]] = {}
    for provider in services.providers.values():
        tables.update(await provider.status_tables())
    return Status(
        worker_id=me,
        region=services.settings.server.region,
        accepting=services.calls.accepting,
        worker=worker.counts(),
        cluster=cluster.counts(),
        cluster_partial=cursor is not None,
        workers=dict(sorted(workers.items())),
        setup_seconds=_quantiles(metrics.CALL_SETUP_SECONDS),
        relay_latency_seconds={
            direction: _quantiles(metrics.RELAY_LATENCY_SECONDS, direction=direction)
            for direction in sorted(_label_values(metrics.RELAY_LATENCY_SECONDS, "direction"))
        },
        outcomes=_outcomes(),
        tables=tables,
    )


def _wants_json(request: web.Request) -> bool:
    if request.query.get("format") == "json":
        return True
    return "application/json" in request.headers.get("Accept", "")


async def status_page(request: web.Request) -> web.Response:
    """``GET /status``: the page (HTML, or JSON on request)."""
    _authorize(request)
    status = await read_status(request.app[SERVICES])
    if _wants_json(request):
        return web.json_response(asdict(status))
    return web.Response(
        text=render_html(status),
        content_type="text/html",
        headers={"Cache-Control": "no-store", "Content-Security-Policy": "default-src 'none'"},
    )


def add_status_routes(app: web.Application) -> None:
    app.router.add_get(STATUS_PATH, _json_errors(status_page))


# -- HTML ------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f} ms"


def _cell(value: object) -> str:
    """A table cell's text: a missing value (a worker without a region) is a dash, not None."""
    return "-" if value is None else str(value)


def _table(head: Iterable[str], rows: Iterable[Iterable[object]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(cell))}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{th}</tr>{body or '<tr><td>none</td></tr>'}</table>"


def _calls_section(title: str, counts: CallCounts) -> str:
    return (
        f"<h2>{html.escape(title)}: {counts.total} live</h2>"
        + _table(("network", "calls"), counts.by_provider.items())
        + _table(("agent", "calls"), counts.by_agent.items())
    )


def render_html(status: Status) -> str:
    """The page: plain tables, no script; everything from the edge escaped."""
    partial = " (partial: index larger than the page reads)" if status.cluster_partial else ""
    workers = _table(
        ("worker", "region", "active", "max", "accepting"),
        (
            (wid, w.get("region"), w.get("active_calls"), w.get("max_calls"), w.get("accepting"))
            for wid, w in status.workers.items()
        ),
    )
    latency = _table(
        ("measure", *(f"p{round(q * 100)}" for q in QUANTILES)),
        [
            ("call set-up", *map(_ms, status.setup_seconds.values())),
            *(
                (f"relay {direction}", *map(_ms, values.values()))
                for direction, values in status.relay_latency_seconds.items()
            ),
        ],
    )
    outcomes = _table(
        ("network", "call_status", "calls"),
        (
            (provider, call_status, count)
            for provider, by_status in sorted(status.outcomes.items())
            for call_status, count in sorted(by_status.items())
        ),
    )
    state = "accepting calls" if status.accepting else "draining"
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<meta http-equiv='refresh' content='5'><title>telephony-edge status</title>"
        "<style>body{font:14px sans-serif;margin:1em}table{border-collapse:collapse;"
        "margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}</style>"
        "</head><body>"
        f"<h1>telephony-edge {html.escape(status.worker_id)}</h1>"
        f"<p>region {html.escape(status.region or 'not set')}, {state}</p>"
        + _calls_section("This worker", status.worker)
        + _calls_section("Cluster" + partial, status.cluster)
        + "<h2>Workers</h2>"
        + workers
        + "<h2>Latency on this worker (since start)</h2>"
        + latency
        + "<h2>Call outcomes on this worker (since start)</h2>"
        + outcomes
        + "".join(
            f"<h2>{html.escape(name.replace('_', ' '))}</h2>"
            + _table(rows[0].keys() if rows else (), (row.values() for row in rows))
            for name, rows in status.tables.items()
        )
        + "</body></html>"
    )
