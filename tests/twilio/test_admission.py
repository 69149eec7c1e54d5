"""Admission: a full or draining worker takes no new call; Twilio is redirected to one that does."""

from __future__ import annotations

import asyncio
from xml.etree import ElementTree

import aiohttp
from aiohttp.test_utils import TestServer

from telephony_edge.app import create_app, set_local_address
from telephony_edge.calls.admission import (
    full_reason,
    least_loaded_worker,
    other_ready_worker,
    worker_info,
)
from telephony_edge.calls.leg import LegEnded
from telephony_edge.calls.record import CallState
from telephony_edge.twilio.simulator import parse_twiml
from tests.conftest import TestLeg, free_port, wait_for
from tests.twilio.fake_twilio import FakeTwilio
from tests.twilio.harness import API_KEY, OUTBOUND_NUMBER, Crm, TwilioEdge, twilio_settings

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def _info(url: str, active: int, maximum: int = 10, accepting: bool = True) -> dict[str, object]:
    return worker_info(
        public_url=url, region="us", active_calls=active, max_calls=maximum, accepting=accepting
    )


def test_the_least_loaded_other_worker_taking_calls_is_chosen() -> None:
    workers = {
        "me": _info("http://me", 0),
        "full": _info("http://full", 10),
        "draining": _info("http://draining", 0, accepting=False),
        "same-lb": _info("http://me/", 0),  # behind our own URL: no help
        "busy": _info("http://busy", 8),
        "light": _info("http://light", 2),
        "agent-core:ws://x": {"url": "ws://x", "region": "us"},
    }
    assert other_ready_worker(workers, self_id="me", own_url="http://me", region="us") == (
        "http://light"
    )
    del workers["light"], workers["busy"]
    assert other_ready_worker(workers, self_id="me", own_url="http://me", region="us") is None
    assert full_reason(5, 5, True) == "this worker is at its maximum of 5 calls"
    assert full_reason(0, 5, False) and full_reason(4, 5, True) is None


def test_a_call_is_handed_to_the_least_loaded_worker_whatever_its_url() -> None:
    """A SIP call moved on a drain goes to a worker by id (the proxy in front finds it by
    the route in Redis): one behind our own URL is as good as any."""
    workers = {
        "me": _info("http://me", 0),
        "full": _info("http://full", 10),
        "draining": _info("http://draining", 0, accepting=False),
        "busy": _info("http://me", 8),
        "light": _info("http://me", 2),
        "agent-core:ws://x": {"url": "ws://x", "region": "us"},
    }
    assert least_loaded_worker(workers, "me") == "light"
    del workers["light"], workers["busy"]
    assert least_loaded_worker(workers, "me") is None


def _redirect_url(document: str) -> str | None:
    element = ElementTree.fromstring(document).find("Redirect")
    return None if element is None else element.text


async def test_a_full_worker_redirects_twilio_to_a_ready_worker_else_says_goodbye(
    fake_twilio: FakeTwilio, crm: Crm, session: aiohttp.ClientSession
) -> None:
    port = free_port()
    settings = twilio_settings(
        port,
        fake_twilio.url,
        crm.url,
        server={
            "host": "127.0.0.1",
            "port": port,
            "public_url": f"http://127.0.0.1:{port}",
            "region": "us",
            "max_calls": 1,
        },
    )
    app = create_app(settings)
    server = TestServer(app, host="127.0.0.1", port=port)
    await server.start_server()
    set_local_address(app, "127.0.0.1", port)
    try:
        await _full_worker(TwilioEdge(server, app, port, fake_twilio, crm), session)
    finally:
        await server.close()


async def _full_worker(edge: TwilioEdge, session: aiohttp.ClientSession) -> None:
    service = edge.services.call_service
    leg = TestLeg()
    record = await service.create(agent_id="echo", provider="test", direction="inbound")
    task = asyncio.create_task(service.run(record, leg))
    await wait_for(lambda: record.state is CallState.ACTIVE)
    # no other worker known: a polite goodbye, and the API says why
    answer = parse_twiml(await edge.call(session).post_webhook())
    assert answer.stream is None and answer.hangup and answer.say
    body = {"from_phone": OUTBOUND_NUMBER, "to_phone": "+15555550142", "agent_id": "echo"}
    async with session.post(edge.base + "/start_outbound_call", json=body, headers=AUTH) as resp:
        assert resp.status == 503
        assert "maximum of 1 calls" in (await resp.json())["error"]
    # another worker heartbeats with room: Twilio is sent there
    other = _info("https://b.edge.example.com", 3)
    await edge.services.coordinator.heartbeat("worker-b", other, ttl=30)
    redirected = edge.call(session)
    document = await redirected.post_webhook()
    assert _redirect_url(document) == "https://b.edge.example.com/twilio/voice?edge_hop=1"
    # nothing of the refused call is stored, so the worker it goes to can take its CallSid
    assert (
        await edge.services.coordinator.peek_pending(f"provider-call:twilio:{redirected.call_sid}")
        is None
    )
    # a call redirected twice already is not sent on again
    call = edge.call(session)
    call.voice_path = "/twilio/voice?edge_hop=2"
    answer = parse_twiml(await call.post_webhook())
    assert answer.hangup and _redirect_url(await call.post_webhook()) is None
    leg.events.put_nowait(LegEnded("completed"))
    await asyncio.wait_for(task, 5)
    async with session.get(edge.base + "/readyz") as resp:
        assert resp.status == 200
    assert parse_twiml(await edge.call(session).post_webhook()).stream is not None
