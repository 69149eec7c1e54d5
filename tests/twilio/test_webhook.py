"""Voice and status webhooks: signatures, routing, the TwiML answers."""

from __future__ import annotations

import aiohttp

from telephony_edge.calls.record import CallState, CallStatus
from telephony_edge.twilio.signature import SIGNATURE_HEADER, compute_signature
from telephony_edge.twilio.simulator import parse_twiml
from tests.twilio.harness import (
    AUTH_TOKEN,
    CALLER,
    EU_NUMBER,
    EU_PUBLIC_URL,
    LOCAL_NUMBER,
    TwilioEdge,
)


async def test_valid_signature_answers_with_a_stream_and_creates_the_call(
    twilio_edge: TwilioEdge, session: aiohttp.ClientSession
) -> None:
    call = twilio_edge.call(session)
    answer = parse_twiml(await call.post_webhook())
    assert answer.stream is not None
    assert answer.stream.url == f"ws://127.0.0.1:{twilio_edge.port}/twilio/stream"
    params = answer.stream.parameters
    assert set(params) == {"token", "call_id"}
    record = await twilio_edge.services.call_service.get(params["call_id"])
    assert record is not None
    assert (record.provider, record.direction, record.state) == (
        "twilio",
        "inbound",
        CallState.CREATED,
    )
    assert (record.from_, record.to, record.agent_id) == (CALLER, LOCAL_NUMBER, "echo")
    assert record.provider_call_id == call.call_sid
    twilio_edge.twilio.tokens.verify(params["token"], record.call_id)


async def test_forged_and_unsigned_voice_webhooks_are_refused(
    twilio_edge: TwilioEdge, session: aiohttp.ClientSession
) -> None:
    call = twilio_edge.call(session)
    url = call.base_url + "/twilio/voice"
    fields = call.webhook_fields()
    forged = compute_signature("not-the-auth-token", url, fields)
    for headers in ({}, {SIGNATURE_HEADER: forged}, {SIGNATURE_HEADER: ""}):
        async with session.post(url, data=fields, headers=headers) as resp:
            assert resp.status == 403
    # a valid signature over other fields (a tampered To) is refused too
    good = compute_signature(AUTH_TOKEN, url, fields)
    tampered = {**fields, "To": "+15555550111"}
    async with session.post(url, data=tampered, headers={SIGNATURE_HEADER: good}) as resp:
        assert resp.status == 403
    assert await twilio_edge.services.coordinator.list_active_calls() == []


async def test_signature_is_checked_against_the_public_url(
    make_twilio_edge: object, session: aiohttp.ClientSession
) -> None:
    # Behind a proxy Twilio signs https://edge.example.com/..., not the local address.
    edge: TwilioEdge = await make_twilio_edge(  # type: ignore[operator]
        server={"host": "127.0.0.1", "public_url": "https://edge.example.com", "region": "us"},
    )
    local = edge.call(session)
    try:
        await local.post_webhook()
        raise AssertionError("a signature over the local URL must not pass")
    except RuntimeError as exc:
        assert "403" in str(exc)
    proxied = edge.call(session, public_url="https://edge.example.com")
    answer = parse_twiml(await proxied.post_webhook())
    assert answer.stream is not None
    assert answer.stream.url == "wss://edge.example.com/twilio/stream"


async def test_unknown_number_gets_a_polite_goodbye(
    twilio_edge: TwilioEdge, session: aiohttp.ClientSession
) -> None:
    call = twilio_edge.call(session, to="+15555550000")
    answer = parse_twiml(await call.post_webhook())
    assert answer.stream is None
    assert answer.hangup
    assert answer.say and "sorry" in answer.say[0].lower()
    assert await twilio_edge.services.coordinator.list_active_calls() == []


async def test_number_of_another_region_streams_to_that_region(
    twilio_edge: TwilioEdge, session: aiohttp.ClientSession
) -> None:
    call = twilio_edge.call(session, to=EU_NUMBER)
    answer = parse_twiml(await call.post_webhook())
    assert answer.stream is not None
    assert answer.stream.url == EU_PUBLIC_URL.replace("https://", "wss://") + "/twilio/stream"
    params = answer.stream.parameters
    assert params["to"] == EU_NUMBER and params["from"] == CALLER and params["token"]
    assert "call_id" not in params  # the EU edge creates the call
    assert await twilio_edge.services.coordinator.list_active_calls() == []


async def test_status_callback_is_signed_and_ends_a_call_that_never_answered(
    twilio_edge: TwilioEdge, session: aiohttp.ClientSession
) -> None:
    service = twilio_edge.services.call_service
    record = await service.create(
        agent_id="echo", provider="twilio", direction="outbound", from_=LOCAL_NUMBER, to=CALLER
    )
    url = f"{twilio_edge.base}/twilio/status?call_id={record.call_id}"
    fields = {"CallSid": "CA" + "1" * 32, "CallStatus": "busy", "AccountSid": "AC" + "0" * 32}
    async with session.post(url, data=fields) as resp:
        assert resp.status == 403
    forged = compute_signature("wrong", url, fields)
    async with session.post(url, data=fields, headers={SIGNATURE_HEADER: forged}) as resp:
        assert resp.status == 403
    stored = await service.get(record.call_id)
    assert stored is not None and stored.state is CallState.CREATED

    signature = compute_signature(AUTH_TOKEN, url, fields)
    async with session.post(url, data=fields, headers={SIGNATURE_HEADER: signature}) as resp:
        assert resp.status == 204
    stored = await service.get(record.call_id)
    assert stored is not None
    assert stored.provider_status == "busy"
    assert stored.state is CallState.ENDED
    assert stored.call_status is CallStatus.ERROR
    ended = await twilio_edge.crm.wait(1)
    assert ended[0]["call_id"] == record.call_id
    assert ended[0]["call_status"] == "error"
