"""The public-key rate limits behind a reverse proxy (issue 22): per client, with a global cap.

Caddy (:mod:`tests.caddy`) runs in front of the edge as ``deploy/Caddyfile``
does and connects from 127.0.0.1; each visitor connects to it from its own
loopback address (127.0.0.10, .11 …), so Caddy's ``X-Forwarded-For`` names
a different client for each. An offer with a bad SDP gets 400 once it is
past the limits, 429 when a limit refuses it. The defaults are a bucket of
5 per client: before issue 22 the 6th visitor behind one proxy got 429.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from telephony_edge.metrics import PUBLIC_OFFERS_REFUSED
from tests.caddy import caddy
from tests.conftest import Edge
from tests.webrtc.test_browser_path import PUBLIC_KEY, SHOP, browser_settings

BAD_OFFER = {"agent_id": "public", "offer": {"sdp": "hello", "type": "offer"}}
VISITORS = [f"127.0.0.{10 + i}" for i in range(6)]
OUTSIDER = "127.0.0.99"  # a client that is not a proxy, connecting to the edge directly


async def offer(url: str, source: str, headers: dict[str, str] | None = None) -> int:
    """POST a public-key offer to ``url`` from the local address ``source``; the status."""
    sent = {"Origin": SHOP, "Authorization": f"Bearer {PUBLIC_KEY}", **(headers or {})}
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.post(url, json=BAD_OFFER, headers=sent) as resp,
    ):
        return resp.status


async def edge_behind(make_edge: Callable[..., Any], **server: Any) -> Edge:
    edge: Edge = await make_edge(browser_settings(server))
    return edge


def refused(limit: str) -> float:
    return PUBLIC_OFFERS_REFUSED.labels(limit=limit)._value.get()


async def test_visitors_behind_a_trusted_proxy_each_have_their_own_bucket(
    make_edge: Callable[..., Any], tmp_path: Path
) -> None:
    edge = await edge_behind(make_edge, trusted_proxies=["127.0.0.1"])
    before = refused("client")
    async with caddy(tmp_path, edge.server.port or 0) as proxy:
        url = proxy.url("/webrtc/offer")
        assert [await offer(url, visitor) for visitor in VISITORS] == [400] * 6
        # each still has a bucket of its own: the first visitor's 6th offer is refused
        assert [await offer(url, VISITORS[0]) for _ in range(5)] == [400] * 4 + [429]
        assert await offer(url, VISITORS[1]) == 400
    assert refused("client") == before + 1


async def test_an_untrusted_hops_header_is_ignored(
    make_edge: Callable[..., Any], tmp_path: Path
) -> None:
    """Caddy is not in ``trusted_proxies``: its visitors share its one bucket."""
    edge = await edge_behind(make_edge, trusted_proxies=["127.0.0.2"])
    async with caddy(tmp_path, edge.server.port or 0) as proxy:
        statuses = [await offer(proxy.url("/webrtc/offer"), visitor) for visitor in VISITORS]
    assert statuses == [400] * 5 + [429]


async def test_a_spoofed_header_from_an_untrusted_client_does_not_evade_the_limit(
    make_edge: Callable[..., Any], tmp_path: Path
) -> None:
    edge = await edge_behind(make_edge, trusted_proxies=["127.0.0.1"])
    # straight to the edge, a new made-up address in each header: still one client
    statuses = [
        await offer(
            edge.url("/webrtc/offer"),
            OUTSIDER,
            {"X-Forwarded-For": f"198.51.100.{i}", "Forwarded": f"for=203.0.113.{i}"},
        )
        for i in range(6)
    ]
    assert statuses == [400] * 5 + [429]
    # through the trusted proxy: Caddy replaces the client's X-Forwarded-For, and the
    # Forwarded header it passes through is not the one the edge reads
    async with caddy(tmp_path, edge.server.port or 0) as proxy:
        statuses = [
            await offer(
                proxy.url("/webrtc/offer"),
                VISITORS[0],
                {"X-Forwarded-For": f"198.51.100.{i}", "Forwarded": f"for=203.0.113.{i}"},
            )
            for i in range(6)
        ]
    assert statuses == [400] * 5 + [429]


async def test_the_global_cap_holds_behind_a_trusted_proxy(
    make_edge: Callable[..., Any], tmp_path: Path
) -> None:
    settings = browser_settings(
        {"trusted_proxies": ["127.0.0.1"]}, public_global_burst=4, public_global_rate_per_minute=1
    )
    edge: Edge = await make_edge(settings)
    before = refused("global")
    async with caddy(tmp_path, edge.server.port or 0) as proxy:
        statuses = [await offer(proxy.url("/webrtc/offer"), visitor) for visitor in VISITORS]
    assert statuses == [400] * 4 + [429] * 2
    assert refused("global") == before + 2


async def test_a_proxy_that_writes_forwarded(make_edge: Callable[..., Any], tmp_path: Path) -> None:
    """``client_address_header: forwarded`` reads RFC 7239's header (Caddy told to write it)."""
    edge = await edge_behind(
        make_edge, trusted_proxies=["127.0.0.1"], client_address_header="forwarded"
    )
    port = edge.server.port or 0
    async with caddy(tmp_path, port, header_up=['Forwarded "for={remote_host}"']) as proxy:
        statuses = [await offer(proxy.url("/webrtc/offer"), visitor) for visitor in VISITORS]
    assert statuses == [400] * 6
    # the X-Forwarded-For that Caddy writes too is not read in this mode
    (tmp_path / "xff").mkdir()
    edge = await edge_behind(
        make_edge, trusted_proxies=["127.0.0.1"], client_address_header="forwarded"
    )
    async with caddy(tmp_path / "xff", edge.server.port or 0) as proxy:
        statuses = [await offer(proxy.url("/webrtc/offer"), visitor) for visitor in VISITORS]
    assert statuses == [400] * 5 + [429]
