"""``GET /status``: the operators' page, behind the private API key, HTML and JSON."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import aiohttp
import pytest

from telephony_edge.audio.frames import SILENCE_FRAME
from telephony_edge.calls.leg import LegEnded
from telephony_edge.calls.record import CallState
from telephony_edge.status import histogram_quantile
from tests.conftest import Edge, TestLeg, edge_settings, wait_for

KEY = "status-private-key-0001"
AGENT = "sales<b>"  # an agent id that must come out escaped in the HTML
AUTH = {"Authorization": f"Bearer {KEY}"}


def status_settings(**overrides: Any) -> Any:
    agents = {AGENT: {"prompt": "p", "first_message": "Hi"}}
    return edge_settings(api={"private_key": KEY}, agents=agents, **overrides)


@pytest.mark.parametrize(
    ("q", "expected"),
    [(0.5, 0.15), (0.25, 0.1), (0.99, 0.5), (0.0, 0.0)],
)
def test_histogram_quantile_interpolates_as_prometheus_does(q: float, expected: float) -> None:
    # 4 observations in (0.1, 0.2], 0 in (0.2, 0.5], then 4 past the last finite bound
    buckets = [(0.1, 2.0), (0.2, 6.0), (0.5, 6.0), (math.inf, 8.0)]
    assert histogram_quantile(q, buckets) == pytest.approx(expected)


def test_histogram_quantile_without_observations_is_none() -> None:
    assert histogram_quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]) is None
    assert histogram_quantile(0.5, []) is None


async def test_the_page_needs_the_private_key_and_is_off_without_one(make_edge: Any) -> None:
    keyed: Edge = await make_edge(status_settings())
    unkeyed: Edge = await make_edge(edge_settings())
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": "Bearer wrong-key-0000000"}, {"Authorization": KEY}):
            async with http.get(keyed.url("/status"), headers=headers) as resp:
                assert resp.status == 401
                assert resp.headers["WWW-Authenticate"] == "Bearer"
        async with http.get(unkeyed.url("/status"), headers=AUTH) as resp:
            assert resp.status == 401


async def test_live_calls_latency_and_outcomes_in_json_and_html(make_edge: Any) -> None:
    edge: Edge = await make_edge(status_settings())
    service = edge.services.call_service
    leg = TestLeg()
    record = await service.create(agent_id=AGENT, provider="test", direction="inbound")
    task = asyncio.create_task(service.run(record, leg))
    leg.events.put_nowait(SILENCE_FRAME)
    await wait_for(lambda: record.state is CallState.ACTIVE, 5)

    async with aiohttp.ClientSession() as http:
        async with http.get(edge.url("/status?format=json"), headers=AUTH) as resp:
            assert resp.status == 200
            live = await resp.json()
        async with http.get(edge.url("/status"), headers=AUTH) as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
            page = await resp.text()

        me = edge.services.worker_id
        assert live["worker_id"] == me and live["accepting"] is True
        for scope in ("worker", "cluster"):
            assert live[scope] == {"total": 1, "by_provider": {"test": 1}, "by_agent": {AGENT: 1}}
        assert live["cluster_partial"] is False
        assert live["workers"][me]["active_calls"] in (0, 1)  # as of its last heartbeat
        # the call's set-up was observed: every percentile is a time
        assert all(isinstance(v, float) and v >= 0 for v in live["setup_seconds"].values())
        assert set(live["setup_seconds"]) == {"p50", "p90", "p99"}

        assert "sales&lt;b&gt;" in page and AGENT not in page
        assert me in page and "accepting calls" in page

        leg.events.put_nowait(LegEnded("completed"))
        await task
        async with http.get(
            edge.url("/status"), headers={**AUTH, "Accept": "application/json"}
        ) as r:
            ended = await r.json()
    assert ended["worker"]["total"] == 0 and ended["cluster"]["total"] == 0
    assert ended["outcomes"]["test"][str(record.call_status)] >= 1


async def test_a_worker_without_region_shows_a_dash_not_none(make_edge: Any) -> None:
    edge: Edge = await make_edge(status_settings())
    me = edge.services.worker_id
    async with aiohttp.ClientSession() as http:
        async with http.get(edge.url("/status?format=json"), headers=AUTH) as resp:
            live = await resp.json()
        async with http.get(edge.url("/status"), headers=AUTH) as resp:
            page = await resp.text()
    assert live["workers"][me]["region"] is None  # JSON keeps null: it is data
    row = page[page.index(f"<td>{me}</td>") :].split("</tr>", 1)[0]
    assert "None" not in page
    assert "<td>-</td>" in row  # the region cell, as the page marks every missing value
