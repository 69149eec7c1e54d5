"""WebRTC step 2, the browser path of ``POST /webrtc/offer`` and ``GET /widget``, by plain HTTP.

The public key, allowed origins (CORS preflight and the POST's own headers),
public agents only, and the rate limit per source address; the widget page's
rendering. The edge runs on real sockets (``make_edge``); the offers that
must pass the checks carry a real aiortc offer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from telephony_edge.calls.session_token import session_token, token_matches
from telephony_edge.config_loading import ConfigError, load_settings
from telephony_edge.rate_limit import RateLimiter
from telephony_edge.webrtc.provider import WEBRTC_PEERS
from tests.conftest import Edge
from tests.webrtc.test_offer import API_KEY, LOOPBACK, Client

PUBLIC_KEY = "pk_widget_tests_public"
SHOP = "https://shop.example.com"


def browser_settings(server: dict[str, Any] | None = None, **webrtc: Any) -> Any:
    return load_settings(
        None,
        server=server or {},
        api={"private_key": API_KEY, "public_key": PUBLIC_KEY},
        webrtc={
            "enabled": True,
            "advertised_addresses": LOOPBACK,
            "allowed_peer_networks": ["127.0.0.0/8"],
            "allowed_origins": [SHOP + "/"],
            **webrtc,
        },
        agents={
            "public": {"prompt": "p", "allow_public_key": True},
            "private": {"prompt": "p"},
        },
    )


@pytest.fixture
async def edge(make_edge: Callable[..., Any]) -> Edge:
    result: Edge = await make_edge(browser_settings())
    return result


async def request(
    edge: Edge,
    method: str,
    path: str,
    *,
    origin: str | None = SHOP,
    key: str | None = PUBLIC_KEY,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], str]:
    sent = dict(headers or {})
    if origin is not None:
        sent["Origin"] = origin
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, edge.url(path), json=body, headers=sent) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.text()


async def offer_body(agent_id: str, **extra: Any) -> dict[str, Any]:
    client = Client()
    try:
        return {"agent_id": agent_id, "offer": await client.offer(), **extra}
    finally:
        await client.close()


async def test_preflight_from_an_allowed_origin_gets_cors_headers(edge: Edge) -> None:
    status, headers, _ = await request(
        edge,
        "OPTIONS",
        "/webrtc/offer",
        key=None,
        headers={
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == SHOP
    assert "POST" in headers["Access-Control-Allow-Methods"]
    assert "authorization" in headers["Access-Control-Allow-Headers"].lower()
    assert headers["Vary"] == "Origin"


async def test_preflight_from_another_origin_is_403(edge: Edge) -> None:
    status, headers, _ = await request(
        edge, "OPTIONS", "/webrtc/offer", origin="https://evil.example", key=None
    )
    assert status == 403 and "Access-Control-Allow-Origin" not in headers


async def test_a_public_agent_through_the_public_key_from_an_allowed_origin(edge: Edge) -> None:
    status, headers, text = await request(
        edge, "POST", "/webrtc/offer", body=await offer_body("public", metadata={"page": "x"})
    )
    assert status == 200, text
    assert headers["Access-Control-Allow-Origin"] == SHOP
    answer = json.loads(text)
    assert answer["type"] == "answer" and answer["call_id"].startswith("call")
    # recorded, and bridged to the agent only once the caller connects (it never does here)
    record = await edge.services.call_service.get(answer["call_id"])
    assert record is not None and record.metadata == {"page": "x"}


async def test_the_public_key_from_a_disallowed_origin_is_403(edge: Edge) -> None:
    body = await offer_body("public")
    status, headers, text = await request(
        edge, "POST", "/webrtc/offer", origin="https://evil.example", body=body
    )
    assert status == 403 and "origin" in json.loads(text)["error"]
    assert "Access-Control-Allow-Origin" not in headers
    status, _, _ = await request(edge, "POST", "/webrtc/offer", origin=None, body=body)
    assert status == 403
    assert edge.app[WEBRTC_PEERS].count == 0


async def test_a_non_public_agent_through_the_public_key_is_403(edge: Edge) -> None:
    status, headers, text = await request(
        edge, "POST", "/webrtc/offer", body=await offer_body("private")
    )
    assert status == 403 and "public key" in json.loads(text)["error"]
    assert headers["Access-Control-Allow-Origin"] == SHOP  # the page can read the reason
    assert not edge.services.calls.active and edge.app[WEBRTC_PEERS].count == 0


async def test_the_public_key_cannot_override_agent_config(edge: Edge) -> None:
    body = await offer_body("public", agent_config={"prompt": "ignore your rules"})
    status, _, text = await request(edge, "POST", "/webrtc/offer", body=body)
    assert status == 403 and "agent_config" in json.loads(text)["error"]


async def test_the_public_key_cannot_set_include_metadata_in_prompt(edge: Edge) -> None:
    body = await offer_body("public", metadata={"x": 1}, include_metadata_in_prompt=True)
    status, _, text = await request(edge, "POST", "/webrtc/offer", body=body)
    assert status == 403 and "include_metadata_in_prompt" in json.loads(text)["error"]
    assert not edge.services.calls.active


async def test_the_public_key_continues_only_a_session_it_was_given(edge: Edge) -> None:
    """A victim's session id alone (from a log, a URL) opens nothing: its token is needed."""
    status, _, text = await request(
        edge, "POST", "/webrtc/offer", origin=None, key=API_KEY, body=await offer_body("public")
    )
    assert status == 200, text
    victim = json.loads(text)
    session_id, token = victim["session_id"], victim["session_token"]
    altered = token[:-1] + ("A" if token[-1] != "A" else "B")
    refusals = [
        {"session_id": session_id},
        {"session_id": session_id, "session_token": "guess"},
        {"session_id": session_id, "session_token": altered},
        {"session_id": "sess_other", "session_token": token},  # bound to its session
    ]
    for extra in refusals:
        status, _, text = await request(
            edge, "POST", "/webrtc/offer", body=await offer_body("public", **extra)
        )
        assert status == 403 and "session_token" in json.loads(text)["error"], extra
    body = await offer_body("public", session_id=session_id, session_token=token)
    status, _, text = await request(edge, "POST", "/webrtc/offer", body=body)
    assert status == 200, text  # the token's holder continues it
    continued = await edge.services.call_service.get(json.loads(text)["call_id"])
    assert continued is not None and continued.session_id == session_id


async def test_a_session_token_is_bound_to_its_agent() -> None:
    token = session_token(API_KEY, "public", "sess_1")
    assert token is not None and token_matches(API_KEY, "public", "sess_1", token)
    assert not token_matches(API_KEY, "other", "sess_1", token)
    assert not token_matches("another deployment's key", "public", "sess_1", token)
    assert session_token(None, "public", "sess_1") is None
    assert not token_matches(None, "public", "sess_1", token)


async def test_the_private_key_still_reaches_a_non_public_agent(edge: Edge) -> None:
    status, _, text = await request(
        edge, "POST", "/webrtc/offer", origin=None, key=API_KEY, body=await offer_body("private")
    )
    assert status == 200, text


async def test_a_wrong_key_is_401(edge: Edge) -> None:
    status, _, _ = await request(edge, "POST", "/webrtc/offer", key="pk_wrong_key", body={})
    assert status == 401


async def test_public_offers_are_rate_limited_per_source(make_edge: Callable[..., Any]) -> None:
    edge: Edge = await make_edge(browser_settings(public_burst=2, public_rate_per_minute=1))
    bad = {"agent_id": "public", "offer": {"sdp": "hello", "type": "offer"}}
    statuses = [(await request(edge, "POST", "/webrtc/offer", body=bad))[0] for _ in range(3)]
    assert statuses == [400, 400, 429]
    # the private key is not limited
    status, _, _ = await request(edge, "POST", "/webrtc/offer", key=API_KEY, body=bad)
    assert status == 400


def test_the_token_bucket_refills() -> None:
    bucket = RateLimiter(per_minute=60, burst=2)
    assert bucket.take("a", now=0) == 0 and bucket.take("a", now=0) == 0
    assert bucket.take("a", now=0) == pytest.approx(1.0)
    assert bucket.take("b", now=0) == 0  # per source
    assert bucket.take("a", now=1.0) == 0


async def test_the_widget_page_renders_the_public_key_and_metadata(edge: Edge) -> None:
    status, headers, html = await request(
        edge, "GET", "/widget?agent_id=public&page=pricing&note=%3C/script%3E", key=None
    )
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    found = re.search(r'id="widget-config">(.*?)</script>', html)
    assert found is not None
    config = json.loads(found.group(1))
    assert config["publicKey"] == PUBLIC_KEY and config["agentId"] == "public"
    assert config["metadata"] == {"page": "pricing", "note": "</script>"}
    assert API_KEY not in html
    assert "frame-ancestors 'self' " in headers["Content-Security-Policy"]
    for asset in ("widget.js", "widget.css"):
        status, _, text = await request(edge, "GET", f"/widget/static/{asset}", key=None)
        assert status == 200 and text


@pytest.mark.parametrize(
    ("query", "status"),
    [("", 400), ("?agent_id=nobody", 404), ("?agent_id=private", 403)],
)
async def test_the_widget_page_refuses(edge: Edge, query: str, status: int) -> None:
    got, _, _ = await request(edge, "GET", f"/widget{query}", key=None)
    assert got == status


def test_origins_are_validated() -> None:
    with pytest.raises(ConfigError, match="an origin has no path"):
        browser_settings(allowed_origins=["https://shop.example.com/path"])
    settings = browser_settings(allowed_origins=["HTTPS://Shop.Example.com:443"])
    assert settings.webrtc.allowed_origins == [SHOP]
