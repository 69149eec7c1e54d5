"""The answer and event webhooks: signatures, routing, the NCCO, statuses."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import pytest
from vonage_voice.models.connect_endpoints import WebsocketEndpoint
from vonage_voice.models.ncco import Connect, Notify, Talk

from telephony_edge.calls.record import CallState, CallStatus
from telephony_edge.vonage import ncco
from telephony_edge.vonage.signature import SignatureRejected, check_token, sign
from telephony_edge.vonage.webhook import MAX_WS_EVENTS, merge_details
from tests.vonage.harness import EU_NUMBER, SECRET, VonageEdge

BODY = b'{"to":"15555550299","from":"15555550100","uuid":"u-1"}'


def test_a_token_vonage_signed_for_the_body_is_accepted() -> None:
    claims = check_token(sign(SECRET, BODY), SECRET, BODY, max_age_s=300)
    assert claims["iss"] == "Vonage"


@pytest.mark.parametrize(
    ("make_token", "reason"),
    [
        (lambda: sign("another-secret-of-enough-length-not-ours", BODY), "signature"),
        (lambda: sign(SECRET, BODY, exp=int(time.time()) - 10), "invalid token"),
        (lambda: sign(SECRET, BODY, now=time.time() - 3600), "too long ago"),
        (lambda: sign(SECRET, b'{"to":"15555550100"}'), "payload_hash"),
        (lambda: sign(SECRET), "without payload_hash"),
        (lambda: "not.a.jwt", "invalid token"),
    ],
    ids=["forged", "expired", "stale", "other-body", "no-hash", "garbage"],
)
def test_forged_expired_or_mismatched_tokens_are_refused(
    make_token: Callable[[], str], reason: str
) -> None:
    # signed when the test runs, not when it is collected: a long run would make them stale
    with pytest.raises(SignatureRejected, match=reason):
        check_token(make_token(), SECRET, BODY, max_age_s=300)


async def _raw_answer(
    edge: VonageEdge, session: aiohttp.ClientSession, body: bytes, token: str | None
) -> aiohttp.ClientResponse:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with session.post(edge.base + "/vonage/answer", data=body, headers=headers) as resp:
        await resp.read()
        return resp


@pytest.mark.parametrize("kind", ["unsigned", "forged", "expired", "other-body"])
async def test_unsigned_or_forged_answer_webhooks_get_401_and_create_nothing(
    vonage_edge: VonageEdge, session: aiohttp.ClientSession, kind: str
) -> None:
    token = {
        "unsigned": None,
        "forged": sign("another-secret-of-enough-length-not-ours", BODY),
        "expired": sign(SECRET, BODY, exp=int(time.time()) - 5),
        "other-body": sign(SECRET, b"{}"),
    }[kind]
    resp = await _raw_answer(vonage_edge, session, BODY, token)
    assert resp.status == 401
    assert await vonage_edge.services.coordinator.list_active_calls() == []


def _validated_connect(action: dict[str, Any]) -> Connect:
    """The action read back through the SDK's models (their field names, not the wire's)."""
    [endpoint] = action["endpoint"]
    ws = WebsocketEndpoint(
        uri=endpoint["uri"], contentType=endpoint["content-type"], headers=endpoint["headers"]
    )
    return Connect(endpoint=[ws], from_=action["from"], eventUrl=action.get("eventUrl"))


@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_answer_connects_a_local_number_to_the_socket_with_a_one_use_token(
    vonage_edge: VonageEdge, session: aiohttp.ClientSession, method: Any
) -> None:
    call = vonage_edge.call(session, method=method)
    [action, notify] = await call.post_answer()
    # the NCCO is exactly what the SDK's models produce for it
    connect = _validated_connect(action)
    assert [connect.model_dump(by_alias=True, exclude_none=True, mode="json")] == [action]
    [endpoint] = action["endpoint"]
    assert endpoint["type"] == "websocket"
    assert endpoint["uri"] == f"ws://127.0.0.1:{vonage_edge.port}/vonage/ws"
    assert endpoint["content-type"] == "audio/l16;rate=16000"
    headers = endpoint["headers"]
    assert set(headers) == {"edge_token", "call_id", "vonage_uuid"}
    # then a notify any worker answers, should the socket end without the call (issue 24)
    resume_url = f"{vonage_edge.base}/vonage/resume?call_id={headers['call_id']}&hop=0&g=0"
    assert notify == {
        "action": "notify",
        "payload": {"after": "websocket"},
        "eventUrl": [resume_url],
        "eventMethod": "GET",
    }
    Notify.model_validate(notify)
    assert headers["vonage_uuid"] == call.uuid
    record = await vonage_edge.services.call_service.get(headers["call_id"])
    assert record is not None and record.state is CallState.CREATED
    assert (record.provider, record.provider_call_id) == ("vonage", call.uuid)
    # the same uuid answered again (Vonage retries) is the same call
    [again, _] = await call.post_answer()
    assert again["endpoint"][0]["headers"]["call_id"] == headers["call_id"]
    assert len(await vonage_edge.services.coordinator.list_active_calls()) == 1


def test_ws_url_follows_the_public_url_scheme() -> None:
    assert ncco.ws_url("https://edge.example.com/") == "wss://edge.example.com/vonage/ws"
    assert ncco.ws_url("http://127.0.0.1:8080") == "ws://127.0.0.1:8080/vonage/ws"


async def test_unknown_number_gets_a_talk_and_another_region_its_socket(
    vonage_edge: VonageEdge, session: aiohttp.ClientSession
) -> None:
    unknown = vonage_edge.call(session, to="+15555550999")
    actions = await unknown.post_answer()
    assert actions == [Talk(text=ncco.UNKNOWN_NUMBER_MESSAGE).model_dump(exclude_none=True)]
    eu = vonage_edge.call(session, to=EU_NUMBER)
    [action] = await eu.post_answer()
    endpoint = action["endpoint"][0]
    assert endpoint["uri"] == "wss://eu.edge.example.com/vonage/ws"
    assert "call_id" not in endpoint["headers"] and endpoint["headers"]["to"] == EU_NUMBER
    assert await vonage_edge.services.coordinator.list_active_calls() == []


@pytest.mark.parametrize(
    ("status", "call_status"),
    [
        ("busy", CallStatus.ERROR),
        ("timeout", CallStatus.ERROR),
        ("unanswered", CallStatus.ERROR),
        ("rejected", CallStatus.ERROR),
        ("failed", CallStatus.ERROR),
        ("cancelled", CallStatus.API_ENDED),
        ("completed", CallStatus.USER_ENDED),
    ],
)
async def test_a_final_status_before_the_socket_ends_the_call_with_its_webhook(
    vonage_edge: VonageEdge, session: aiohttp.ClientSession, status: str, call_status: CallStatus
) -> None:
    call = vonage_edge.call(session)
    [action, _resume] = await call.post_answer()
    call_id = action["endpoint"][0]["headers"]["call_id"]
    for step in ("started", "ringing", status):
        assert await call.post_event(step) == 204
    record = await vonage_edge.services.call_service.get(call_id)
    assert record is not None and record.state is CallState.ENDED
    assert record.call_status is call_status and record.provider_status == status
    [payload] = await vonage_edge.crm.wait(1)
    assert payload["call_status"] == call_status.value


async def test_event_webhooks_must_be_signed(
    vonage_edge: VonageEdge, session: aiohttp.ClientSession
) -> None:
    body = orjson.dumps({"status": "completed", "uuid": "u-1"})
    async with session.post(vonage_edge.base + "/vonage/event", data=body) as resp:
        assert resp.status == 401
    headers = {"Authorization": f"Bearer {sign(SECRET, b'{}')}"}
    async with session.post(vonage_edge.base + "/vonage/event", data=body, headers=headers) as r:
        assert r.status == 401


async def test_the_socket_legs_events_never_overwrite_the_calls_status(
    vonage_edge: VonageEdge, session: aiohttp.ClientSession
) -> None:
    """Events of the ``connect``'s own WebSocket leg (its own uuid, at the connect's event
    URL; on outbound calls the call's own event URL is the same) are recorded beside the
    call's, and even a final status of theirs neither overwrites the call's provider
    status nor ends it.
    """
    call = vonage_edge.call(session)
    [action, _resume] = await call.post_answer()
    call_id = action["endpoint"][0]["headers"]["call_id"]
    assert await call.post_event("answered", network="US-FIXED") == 204
    # the connect names an event URL for its socket leg, which finds the call by its id
    [event_url] = action["eventUrl"]
    assert event_url == f"{vonage_edge.base}/vonage/event?call_id={call_id}"
    ws_leg = vonage_edge.call(
        session, uuid="ws-leg-uuid", event_path=event_url.removeprefix(vonage_edge.base)
    )
    for status in ("started", "answered", "completed"):
        assert await ws_leg.post_event(status, to="wss://edge.example/vonage/ws") == 204
    # a socket-leg event by its uuid alone (its ``to`` a number) is not the call's either
    assert await ws_leg.post_event("disconnected") == 204
    record = await vonage_edge.services.call_service.get(call_id)
    assert record is not None and record.provider_status == "answered"
    assert record.state is not CallState.ENDED and record.call_status is None
    doc = await vonage_edge.services.coordinator.get_call(call_id)
    assert doc is not None
    details = doc.data["provider_details"]
    assert details["network"] == "US-FIXED"
    assert details["conversation_uuid"] == call.conversation_uuid
    websocket = details["websocket"]
    assert websocket["uuid"] == "ws-leg-uuid" and websocket["status"] == "disconnected"
    statuses = [e["status"] for e in websocket["events"]]
    assert statuses == ["started", "answered", "completed", "disconnected"]
    # the call's own completed: merged with its network details, and it ends the call
    assert await call.post_event("completed", rate="0.0120", price="0.0012", duration="6") == 204
    record = await vonage_edge.services.call_service.get(call_id)
    assert record is not None and record.provider_status == "completed"
    assert record.state is CallState.ENDED
    doc = await vonage_edge.services.coordinator.get_call(call_id)
    assert doc is not None
    details = doc.data["provider_details"]
    assert (details["network"], details["rate"], details["price"], details["duration"]) == (
        "US-FIXED",
        "0.0120",
        "0.0012",
        "6",
    )
    assert [e["status"] for e in details["websocket"]["events"]] == statuses


def test_merge_details_keeps_the_latest_network_fields_and_a_bounded_event_list() -> None:
    details: dict[str, Any] = {}
    details = merge_details(details, {"status": "ringing", "network": "A"}, websocket=False)
    details = merge_details(
        details, {"status": "answered", "network": "B", "x": "1"}, websocket=False
    )
    assert details == {"network": "B"}  # only the known network fields; no status
    for i in range(MAX_WS_EVENTS + 3):
        event = {"status": f"s{i}", "timestamp": str(i), "uuid": "w"}
        details = merge_details(details, event, websocket=True)
        details = merge_details(details, event, websocket=True)  # a retry: recorded once
    events = details["websocket"]["events"]
    assert len(events) == MAX_WS_EVENTS and events[-1] == {
        "status": f"s{MAX_WS_EVENTS + 2}",
        "timestamp": str(MAX_WS_EVENTS + 2),
    }
    assert details["network"] == "B" and details["websocket"]["uuid"] == "w"
