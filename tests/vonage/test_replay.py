"""Replays of a captured Vonage answer token: bound to its request, used once, on every worker."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid as uuid_mod
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import pytest

from telephony_edge.vonage import ncco
from telephony_edge.vonage.signature import SignatureRejected, check_token, sign
from tests.vonage.harness import CALLER, LOCAL_NUMBER, SECRET, VonageEdge

Fields = dict[str, str]


def answer_fields(uuid: str | None = None, from_: str = CALLER) -> Fields:
    return {
        "to": LOCAL_NUMBER.removeprefix("+"),
        "from": from_.removeprefix("+"),
        "uuid": uuid or str(uuid_mod.uuid4()),
        "conversation_uuid": "CON-" + str(uuid_mod.uuid4()),
    }


def signed_as_vonage(method: str, fields: Fields, **claims: Any) -> str:
    """The token Vonage sends: its payload hash covers the body, or a GET's query.

    For a GET, Vonage hashes the query parameters as a JSON object in the
    order sent, without whitespace (its "verify the payload" procedure).
    """
    payload = orjson.dumps(fields)  # compact; for a GET, the query in the same order
    return sign(SECRET, payload, **claims)


async def _answer(
    edge: VonageEdge, session: aiohttp.ClientSession, method: str, fields: Fields, token: str
) -> tuple[int, Any]:
    url = edge.base + "/vonage/answer"
    headers = {"Authorization": f"Bearer {token}"}
    if method == "GET":
        request = session.get(url, params=fields, headers=headers)
    else:
        headers["Content-Type"] = "application/json"
        request = session.post(url, data=orjson.dumps(fields), headers=headers)
    async with request as resp:
        text = await resp.text()
        return resp.status, orjson.loads(text) if resp.status == 200 else text


async def _call_ids(edge: VonageEdge) -> set[str]:
    return {str(doc.data["call_id"]) for doc in await edge.services.coordinator.list_active_calls()}


def _connected_call(actions: Any) -> str:
    [action, resume] = actions
    assert (action["action"], resume["action"]) == ("connect", "notify"), actions
    return str(action["endpoint"][0]["headers"]["call_id"])


async def test_a_captured_get_token_is_refused_for_another_uuid_or_caller(
    vonage_edge: VonageEdge, session: aiohttp.ClientSession
) -> None:
    # (a POST token for another body: tests/vonage/test_webhook.py, "other-body")
    method = "GET"
    fields = answer_fields()
    token = signed_as_vonage(method, fields)
    status, actions = await _answer(vonage_edge, session, method, fields, token)
    assert status == 200
    call_id = _connected_call(actions)

    for other in (
        {**fields, "uuid": str(uuid_mod.uuid4())},
        {**fields, "from": "15555550142"},
        {**fields, "uuid": str(uuid_mod.uuid4()), "from": "15555550142"},
    ):
        status, _ = await _answer(vonage_edge, session, method, other, token)
        assert status == 401
    assert await _call_ids(vonage_edge) == {call_id}


async def test_a_get_token_without_payload_hash_is_refused(
    vonage_edge: VonageEdge, session: aiohttp.ClientSession
) -> None:
    # it would vouch for any query: any uuid, any caller
    status, _ = await _answer(vonage_edge, session, "GET", answer_fields(), sign(SECRET))
    assert status == 401
    assert await _call_ids(vonage_edge) == set()


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_token_is_used_once(
    vonage_edge: VonageEdge, session: aiohttp.ClientSession, method: str
) -> None:
    fields = answer_fields()
    token = signed_as_vonage(method, fields)
    status, actions = await _answer(vonage_edge, session, method, fields, token)
    assert status == 200
    call_id = _connected_call(actions)
    status, _ = await _answer(vonage_edge, session, method, fields, token)
    assert status == 401
    # Vonage's own retry is signed anew, and finds the same call
    status, actions = await _answer(
        vonage_edge, session, method, fields, signed_as_vonage(method, fields)
    )
    assert status == 200 and _connected_call(actions) == call_id


async def test_a_known_uuid_with_another_caller_or_conversation_is_refused(
    vonage_edge: VonageEdge, session: aiohttp.ClientSession
) -> None:
    fields = answer_fields()
    status, actions = await _answer(
        vonage_edge, session, "POST", fields, signed_as_vonage("POST", fields)
    )
    call_id = _connected_call(actions)
    for other in (
        {**fields, "from": "15555550142"},
        {**fields, "conversation_uuid": "CON-" + str(uuid_mod.uuid4())},
    ):
        status, _ = await _answer(
            vonage_edge, session, "POST", other, signed_as_vonage("POST", other)
        )
        assert status == 403
    assert await _call_ids(vonage_edge) == {call_id}


async def test_an_answer_replayed_after_the_old_dedup_window_creates_no_second_call(
    make_vonage_edge: Callable[..., Any], session: aiohttp.ClientSession
) -> None:
    # the uuid's mapping used to live 4 x setup_ttl_s (20 min by default; 2 s here)
    edge: VonageEdge = await make_vonage_edge(
        calls={"inactivity_timeout_s": 30, "setup_ttl_s": 0.5}
    )
    fields = answer_fields()
    status, actions = await _answer(edge, session, "POST", fields, signed_as_vonage("POST", fields))
    call_id = _connected_call(actions)
    await edge.crm.wait(1)  # no socket came: the set-up reaper ended the call
    await asyncio.sleep(2.5)
    status, actions = await _answer(edge, session, "POST", fields, signed_as_vonage("POST", fields))
    assert status == 200
    assert actions == ncco.talk(ncco.GONE_MESSAGE)  # a refusal, not a new call
    assert await _call_ids(edge) == set()
    await asyncio.sleep(1.0)
    assert len(edge.crm.received) == 1
    assert edge.crm.received[0]["call_id"] == call_id


async def test_a_token_used_on_one_worker_is_refused_on_another(
    make_vonage_edge: Callable[..., Any], session: aiohttp.ClientSession, redis_server: Any
) -> None:
    coordination = {"redis_url": redis_server.url, "key_prefix": f"vreplay{secrets.token_hex(4)}:"}
    a: VonageEdge = await make_vonage_edge(coordination=coordination)
    b: VonageEdge = await make_vonage_edge(coordination=coordination)
    fields = answer_fields()
    token = signed_as_vonage("POST", fields)
    status, actions = await _answer(a, session, "POST", fields, token)
    call_id = _connected_call(actions)
    status, _ = await _answer(b, session, "POST", fields, token)
    assert status == 401
    other = {**fields, "from": "15555550142"}
    status, _ = await _answer(b, session, "POST", other, signed_as_vonage("POST", other))
    assert status == 403
    assert await _call_ids(b) == {call_id}


def test_a_token_for_another_application_is_refused() -> None:
    body = orjson.dumps(answer_fields())
    mine = "aaaaaaaa-0000-4000-8000-000000000001"
    token = sign(SECRET, body, application_id="bbbbbbbb-0000-4000-8000-000000000002")
    with pytest.raises(SignatureRejected, match="another application"):
        check_token(token, SECRET, body, max_age_s=300, application_id=mine)
    ours = sign(SECRET, body, application_id=mine, now=time.time())
    assert check_token(ours, SECRET, body, max_age_s=300, application_id=mine)["iss"] == "Vonage"
