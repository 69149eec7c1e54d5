"""The public API against a local stand-in of Twilio's REST API: outbound calls, control."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from prometheus_client import REGISTRY

from telephony_edge.calls.record import CallState, CallStatus
from telephony_edge.config_loading import ConfigError, load_settings
from telephony_edge.twilio.simulator import SimulatedCall, parse_twiml
from tests.conftest import free_port, wait_for
from tests.twilio.harness import (  # noqa: F401 - the Twilio fixtures
    API_KEY,
    AUTH_TOKEN,
    CALLER,
    OUTBOUND_NUMBER,
    TwilioEdge,
    fixture_crm,
    fixture_fake_twilio,
    fixture_make_twilio_edge,
    fixture_session,
    fixture_twilio_edge,
)

AUTH = {"Authorization": f"Bearer {API_KEY}"}
CALLEE = "+15555550142"


async def post(
    session: aiohttp.ClientSession,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = AUTH,
) -> tuple[int, dict[str, Any]]:
    async with session.post(url, json=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def start_outbound(
    edge: TwilioEdge, session: aiohttp.ClientSession, **overrides: Any
) -> tuple[int, dict[str, Any]]:
    body = {
        "from_phone": OUTBOUND_NUMBER,
        "to_phone": CALLEE,
        "agent_id": "echo",
        "metadata": {"userName": "Ada"},
        "include_metadata_in_prompt": True,
        **overrides,
    }
    return await post(session, edge.base + "/start_outbound_call", body)


async def answer(edge: TwilioEdge, session: aiohttp.ClientSession, call_id: str) -> SimulatedCall:
    """Twilio: the callee picked up; fetch the TwiML from the call's Url, open its stream."""
    twilio_call = next(iter(edge.fake.calls.values()))
    call = SimulatedCall(
        session,
        edge.base,
        to=twilio_call.to,
        from_=twilio_call.from_,
        auth_token=AUTH_TOKEN,
        account_sid=twilio_call.account_sid,
        call_sid=twilio_call.sid,
        voice_path=f"/twilio/voice?call_id={call_id}",
        direction="outbound-api",
    )
    stream = parse_twiml(await call.post_webhook()).stream
    assert stream is not None and stream.parameters["call_id"] == call_id
    await call.open_stream(stream)
    return call


async def test_outbound_call_is_placed_through_twilio_and_hung_up_by_the_api(
    twilio_edge: TwilioEdge, session: aiohttp.ClientSession
) -> None:
    status, body = await start_outbound(twilio_edge, session)
    assert status == 200, body
    call_id = body["call_id"]
    [request] = twilio_edge.fake.requests
    assert request.status == 201
    assert request.path.endswith(f"/Accounts/{twilio_edge.fake.account_sid}/Calls.json")
    form = request.form
    assert form["To"] == [CALLEE] and form["From"] == [OUTBOUND_NUMBER]
    assert form["Url"] == [f"{twilio_edge.base}/twilio/voice?call_id={call_id}"]
    assert form["Method"] == ["POST"]
    assert form["StatusCallback"] == [f"{twilio_edge.base}/twilio/status?call_id={call_id}"]
    assert form["StatusCallbackEvent"] == ["initiated", "ringing", "answered", "completed"]
    [twilio_call] = twilio_edge.fake.calls.values()
    assert body["provider_call_id"] == twilio_call.sid

    service = twilio_edge.services.call_service
    record = await service.get(call_id)
    assert record is not None
    assert (record.direction, record.from_, record.to) == ("outbound", OUTBOUND_NUMBER, CALLEE)
    assert record.provider_call_id == twilio_call.sid
    assert record.metadata == {"userName": "Ada"} and record.include_metadata_in_prompt

    call = await answer(twilio_edge, session, call_id)
    await call.stream_audio([], silence_after_s=0.3)
    assert call.result.frames_received > 0  # the agent speaks to the callee
    status, body = await post(session, f"{twilio_edge.base}/calls/{call_id}/hangup")
    assert status == 200, body
    assert await call.wait_closed(5)
    await call.finish()
    assert twilio_call.status == "completed"  # hung up through the REST API
    await wait_for(lambda: service.manager.get(call_id) is None, 5)
    record = await service.get(call_id)
    assert record is not None and record.call_status is CallStatus.API_ENDED
    [ended] = await twilio_edge.crm.wait(1)
    assert ended["call_status"] == "api-ended"
    assert ended["voip"]["direction"] == "outbound"


async def test_the_api_key_is_required_everywhere(
    twilio_edge: TwilioEdge, session: aiohttp.ClientSession
) -> None:
    url = twilio_edge.base
    wrong = [
        None,
        {"Authorization": "Bearer nope"},
        {"Authorization": f"Bearer {API_KEY[:-1]}X"},
        {"Authorization": f"Basic {API_KEY}"},
        {"Authorization": API_KEY},
    ]
    for headers in wrong:
        status, body = await post(session, url + "/start_outbound_call", {}, headers)
        assert status == 401 and "error" in body
        status, _ = await post(session, url + "/calls/call_x/hangup", {}, headers)
        assert status == 401
        status, _ = await post(session, url + "/calls/call_x/transfer", {}, headers)
        assert status == 401
        async with session.get(url + "/calls/call_x", headers=headers) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert twilio_edge.fake.requests == []


async def test_outbound_requests_are_validated_before_twilio_is_asked(
    twilio_edge: TwilioEdge, session: aiohttp.ClientSession
) -> None:
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"from_phone": "+15555550111"}, 400, "from_phone"),  # not one of ours
        ({"from_phone": "12"}, 400, "from_phone"),
        ({"to_phone": "not a number"}, 400, "to_phone"),
        ({"to_phone": "+0123"}, 400, "to_phone"),
        ({"to_phone": "(415) 555-0142"}, 400, "to_phone: '(415) 555-0142' has no country code"),
        ({"to_phone": None}, 400, "to_phone"),
        ({"agent_id": ""}, 400, "agent_id"),
        ({"agent_id": "nobody"}, 404, "agent"),
        ({"metadata": "x"}, 400, "metadata"),
        ({"agent_config": [1]}, 400, "agent_config"),
        ({"include_metadata_in_prompt": "yes"}, 400, "include_metadata_in_prompt"),
    ]
    for overrides, expected, word in cases:
        status, body = await start_outbound(twilio_edge, session, **overrides)
        assert status == expected, (overrides, body)
        assert word in body["error"], body
    status, body = await post(session, twilio_edge.base + "/start_outbound_call", [1, 2])
    assert status == 400
    async with session.post(
        twilio_edge.base + "/start_outbound_call", data=b"{nope", headers=AUTH
    ) as resp:
        assert resp.status == 400
    assert twilio_edge.fake.requests == []
    # written-out numbers are normalised
    status, body = await start_outbound(
        twilio_edge, session, from_phone="+1 (555) 555-0177", to_phone="001 555 555 0142"
    )
    assert status == 200, body
    assert twilio_edge.fake.requests[-1].form["To"] == [CALLEE]


async def test_twilio_refusals_are_reported_and_end_the_call(
    twilio_edge: TwilioEdge, session: aiohttp.ClientSession
) -> None:
    twilio_edge.fake.numbers.discard(OUTBOUND_NUMBER)  # not verified on the account
    status, body = await start_outbound(twilio_edge, session)
    assert status == 400 and body["provider_code"] == 21210, body
    record = await twilio_edge.services.call_service.get(body["call_id"])
    assert record is not None and record.state is CallState.ENDED
    assert record.call_status is CallStatus.ERROR

    twilio_edge.fake.auth_token = "rotated"  # the edge's credentials no longer work
    status, body = await start_outbound(twilio_edge, session)
    assert status == 502 and body["provider_code"] == 20003, body
    assert [r.status for r in twilio_edge.fake.requests] == [400, 401]


async def test_transfer_and_read_a_live_call_through_the_api(
    twilio_edge: TwilioEdge, session: aiohttp.ClientSession
) -> None:
    status, body = await start_outbound(twilio_edge, session)
    call_id = body["call_id"]
    call = await answer(twilio_edge, session, call_id)
    await call.stream_audio([], silence_after_s=0.2)

    async with session.get(f"{twilio_edge.base}/calls/{call_id}", headers=AUTH) as resp:
        assert resp.status == 200
        view = await resp.json()
    assert view["call_id"] == call_id and view["from"] == OUTBOUND_NUMBER
    assert view["state"] == "active" and view["provider"] == "twilio"

    url = f"{twilio_edge.base}/calls/{call_id}/transfer"
    for bad in ({}, {"destination": "reception"}, {"destination": "sip:nohost"}):
        status, body = await post(session, url, bad)
        assert status == 400, body
    status, body = await post(session, url, {"destination": "sip:desk@pbx.example.com"})
    assert status == 200, body
    [twilio_call] = twilio_edge.fake.calls.values()
    assert twilio_call.updates[-1]["Twiml"] == [
        '<?xml version="1.0" encoding="UTF-8"?>'
        "<Response><Dial><Sip>sip:desk@pbx.example.com</Sip></Dial></Response>"
    ]
    assert await call.wait_closed(5)
    await call.finish()
    record = await twilio_edge.services.call_service.get(call_id)
    assert record is not None and record.transferred_to == "sip:desk@pbx.example.com"

    for path in ("/calls/call_unknown/hangup", "/calls/call_unknown/transfer"):
        status, body = await post(session, twilio_edge.base + path, {"destination": CALLER})
        assert status == 404, body
    async with session.get(f"{twilio_edge.base}/calls/call_unknown", headers=AUTH) as resp:
        assert resp.status == 404


async def test_hanging_up_a_ringing_call_cancels_it_through_twilio(
    twilio_edge: TwilioEdge, session: aiohttp.ClientSession
) -> None:
    status, body = await start_outbound(twilio_edge, session)
    call_id = body["call_id"]
    status, body = await post(session, f"{twilio_edge.base}/calls/{call_id}/hangup")
    assert status == 200, body
    [twilio_call] = twilio_edge.fake.calls.values()
    assert twilio_call.updates == [{"Status": ["completed"]}]
    record = await twilio_edge.services.call_service.get(call_id)
    assert record is not None and record.state is CallState.ENDED
    assert record.call_status is CallStatus.API_ENDED
    # Twilio then asks for the TwiML of a call that is over: a goodbye, no stream
    call = SimulatedCall(
        session,
        twilio_edge.base,
        to=CALLEE,
        from_=OUTBOUND_NUMBER,
        auth_token=AUTH_TOKEN,
        call_sid=twilio_call.sid,
        voice_path=f"/twilio/voice?call_id={call_id}",
    )
    answer_ = parse_twiml(await call.post_webhook())
    assert answer_.stream is None and answer_.hangup


async def test_control_of_a_call_whose_owner_lease_lapsed_is_409_and_reaps_it(
    twilio_edge: TwilioEdge, session: aiohttp.ClientSession
) -> None:
    # a bridged call of a worker that died: live record, no lease, no bridge here
    coordinator = twilio_edge.services.coordinator
    for action, body in (("hangup", None), ("transfer", {"destination": "+15555550123"})):
        call_id = f"call_lost_{action}"
        record = {"call_id": call_id, "state": "active", "agent_id": "echo", "provider": "twilio"}
        record["direction"] = "inbound"
        await coordinator.create_call(call_id, record)
        async with session.post(
            f"{twilio_edge.base}/calls/{call_id}/{action}", json=body, headers=AUTH
        ) as resp:
            assert resp.status == 409, await resp.text()
            assert "lost" in (await resp.json())["error"]
        doc = await coordinator.get_call(call_id)
        assert doc is not None
        assert (doc.data["state"], doc.data["call_status"]) == ("ended", "error")
        assert doc.data["error_message"] == "the worker handling the call was lost"


async def test_list_calls_refuses_bad_queries(
    twilio_edge: TwilioEdge, session: aiohttp.ClientSession
) -> None:
    for query in ("state=ended", "state=bogus", "limit=0", "limit=501", "limit=x", "nope=1"):
        async with session.get(f"{twilio_edge.base}/calls?{query}", headers=AUTH) as resp:
            assert resp.status == 400, query
    async with session.get(f"{twilio_edge.base}/calls") as resp:
        assert resp.status == 401
    async with session.get(f"{twilio_edge.base}/calls?limit=5", headers=AUTH) as resp:
        assert resp.status == 200
        assert await resp.json() == {"calls": [], "next_cursor": None}


# -- a call's agent_config: unknown keys refused at every level (issue 17) ----------------

MINIMAL_OFFER = {"type": "offer", "sdp": "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"}
UNKNOWN_KEYS: list[tuple[dict[str, Any], str]] = [
    (
        {"recordin": {"enabled": True}},
        "agent_config.recordin: unknown key; did you mean recording? "
        "(free-form settings for the agent core go under extra:)",
    ),
    (
        {"recording": {"enabld": True}},
        "agent_config.recording.enabld: unknown key; did you mean enabled?",
    ),
    (
        {"voicemail": {"detect": True, "detector": {"greting_ms": 900}}},
        "agent_config.voicemail.detector.greting_ms: unknown key; did you mean greeting_ms?",
    ),
    (
        {"session_data_webhook": {"url": "https://crm.example.com/x", "timout": 3}},
        "agent_config.session_data_webhook.timout: unknown key; did you mean timeout?",
    ),
    (
        {"prompt": "Hi", "first_mesage": "Hello", "recording": {"format": "flac"}},
        "agent_config.recording.format: Input should be 'wav', 'mp3' or 'ogg'; "
        "agent_config.first_mesage: unknown key; did you mean first_message? "
        "(free-form settings for the agent core go under extra:)",
    ),
]


def per_call_requests(agent_config: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every endpoint that takes a call's agent_config, with an otherwise valid body."""
    return [
        (
            "/start_outbound_call",
            {
                "from_phone": OUTBOUND_NUMBER,
                "to_phone": CALLEE,
                "agent_id": "echo",
                "agent_config": agent_config,
            },
        ),
        ("/register_sip_call", {"agent_id": "echo", "agent_config": agent_config}),
        ("/register_sip_call", {"agent_config": agent_config}),  # on sip.default_agent_id
        (
            "/webrtc/offer",
            {"agent_id": "echo", "agent_config": agent_config, "offer": MINIMAL_OFFER},
        ),
    ]


def metric_value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def every_network_edge(make_twilio_edge: Any) -> TwilioEdge:
    """The Twilio edge with SIP (registrations) and WebRTC (offers) on as well."""
    rtp_low = free_port() // 2 * 2
    edge: TwilioEdge = await make_twilio_edge(
        sip={
            "enabled": True,
            "port": 0,
            "rtp_port_min": rtp_low,
            "rtp_port_max": rtp_low + 20,
            "default_agent_id": "echo",
        },
        webrtc={
            "enabled": True,
            "advertised_addresses": ["127.0.0.1"],
            "allowed_peer_networks": ["127.0.0.0/8"],
        },
    )
    return edge


async def test_a_calls_agent_config_with_an_unknown_key_is_400_naming_it_on_every_endpoint(
    every_network_edge: TwilioEdge, session: aiohttp.ClientSession
) -> None:
    edge = every_network_edge
    refused = metric_value("telephony_edge_bad_input_total", source="api")
    for agent_config, error in UNKNOWN_KEYS:
        for path, body in per_call_requests(agent_config):
            status, answer = await post(session, edge.base + path, body)
            assert (status, answer["error"]) == (400, error), (path, agent_config)
    count = len(UNKNOWN_KEYS) * len(per_call_requests({}))
    assert metric_value("telephony_edge_bad_input_total", source="api") == refused + count
    assert edge.fake.requests == []  # Twilio was never asked
    assert await edge.services.coordinator.page_active_calls(
        where={"state": "setup"}, after=None, limit=10
    ) == ([], None)  # and no call was stored


async def test_documented_and_free_form_agent_config_keys_are_taken(
    every_network_edge: TwilioEdge, session: aiohttp.ClientSession
) -> None:
    """The platform's documented keys, and what stays open: extra, voice, tools, headers."""
    agent_config = {
        "prompt": "You help {userName}.",
        "first_message": "Hello!",
        "language": "de-DE",
        "voice": {"provider": "elevenlabs", "voice_id": "v1", "stability": 0.4},
        "tools": [{"name": "get_email", "webhook": {"url": "https://x.example"}, "any": [1]}],
        "extra_prompt_webhook": "https://crm.example.com/prefetch",
        "session_data_webhook": {"timeout": 5},  # the url comes from the stored agent
        "max_concurrent_calls": 3,
        "recording": {"enabled": True},
        "voicemail": {"detect": True, "action": "hangup", "detector": {"greeting_ms": 1200}},
        "extra": {"llm": {"model": "gpt-4o"}, "anything": {"nested": {"deep": True}}},
    }
    status, answer = await post(
        session,
        every_network_edge.base + "/register_sip_call",
        {"agent_id": "echo", "agent_config": agent_config},
    )
    assert status == 200, answer
    record = await every_network_edge.services.call_service.get(answer["call_id"])
    assert record is not None and record.agent_config == agent_config  # stored as given


def test_a_stored_agent_with_an_unknown_key_stops_the_edge_with_the_same_words() -> None:
    agents = {
        "a": {"recordin": {"enabled": True}},
        "b": {"recording": {"enabld": True}},
        "c": {"voicemail": {"detector": {"greting_ms": 900}}},
        "d": {"extra": {"whatever": 1}, "voice": {"anything": 2}},  # free-form: fine
    }
    with pytest.raises(ConfigError) as error:
        load_settings(None, agents=agents)
    assert str(error.value).splitlines() == [
        "agents.a.recordin: unknown key; did you mean recording? "
        "(free-form settings for the agent core go under extra:)",
        "agents.b.recording.enabld: unknown key; did you mean enabled?",
        "agents.c.voicemail.detector.greting_ms: unknown key; did you mean greeting_ms?",
    ]


UNSENDABLE_WEBHOOKS: list[tuple[dict[str, Any], str]] = [
    (
        {
            "session_data_webhook": {
                "url": "https://crm.example.com/x",
                "headers": {"X": "a\r\nB: c"},
            }
        },
        "agent_config.session_data_webhook.headers: header X: its value holds CR, LF or NUL",
    ),
    (
        {"session_data_webhook": "https://" + "a" * 64 + ".example.com/x"},
        "agent_config.session_data_webhook: "
        f"'https://{'a' * 64}.example.com/x': a host name label is longer than 63 (RFC 1035)",
    ),
]


async def test_a_webhook_no_request_could_carry_is_400_not_a_job_retried_for_ever(
    every_network_edge: TwilioEdge, session: aiohttp.ClientSession
) -> None:
    edge = every_network_edge
    for agent_config, error in UNSENDABLE_WEBHOOKS:
        for path, body in per_call_requests(agent_config):
            status, answer = await post(session, edge.base + path, body)
            assert (status, answer["error"]) == (400, error), (path, answer)
    assert edge.fake.requests == []


async def test_an_outbound_call_over_the_agents_limit_is_refused_before_anyone_is_rung(
    make_twilio_edge: Any, session: aiohttp.ClientSession
) -> None:
    edge: TwilioEdge = await make_twilio_edge(
        agents={"echo": {"prompt": "p", "max_concurrent_calls": 1}}
    )
    status, body = await start_outbound(edge, session)
    assert status == 200, body
    first = body["call_id"]
    status, body = await start_outbound(edge, session)
    assert status == 429 and "at its limit of 1" in body["error"], body
    assert len(edge.fake.requests) == 1  # the second callee's phone never rang
    coordinator = edge.services.coordinator
    assert await coordinator.agent_slots_in_use("echo") == 1
    # the first call ends before it was answered (busy): its slot is free for the next
    await edge.services.call_service.update_provider_status(first, "busy")
    assert await coordinator.agent_slots_in_use("echo") == 0
    status, body = await start_outbound(edge, session)
    assert status == 200, body
