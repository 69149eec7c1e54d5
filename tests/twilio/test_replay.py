"""Replays of a captured voice webhook: re-split under its signature, or sent again later.

Twilio signs the URL plus every field's name and value, sorted by name and
concatenated. Moving text across a field boundary (``CallSid`` swallowing
``CallStatus``'s name and value, ``Direction`` swallowing ``From``) keeps
the signed string, so the signature still checks out. None of these may
create a call, on this worker or another one sharing Redis, however late.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from telephony_edge.calls.record import CallState
from telephony_edge.twilio.signature import SIGNATURE_HEADER, compute_signature
from telephony_edge.twilio.simulator import TwimlAnswer, parse_twiml
from tests.twilio.harness import AUTH_TOKEN, TwilioEdge

Fields = dict[str, str]


def sid_swallows_status(fields: Fields) -> Fields:
    """``CallSid=CA…CallStatusringing``: a new CallSid for every replay, before the fix."""
    out = {k: v for k, v in fields.items() if k != "CallStatus"}
    out["CallSid"] = fields["CallSid"] + "CallStatus" + fields["CallStatus"]
    return out


def version_swallows_sid(fields: Fields) -> Fields:
    """``ApiVersion=2010-04-01CallSidCA…``: no CallSid at all, so nothing to dedup by."""
    out = {k: v for k, v in fields.items() if k != "CallSid"}
    out["ApiVersion"] = fields["ApiVersion"] + "CallSid" + fields["CallSid"]
    return out


def direction_swallows_from(fields: Fields) -> Fields:
    """``Direction=inboundFrom+1555…``: the same CallSid from another (empty) caller."""
    out = {k: v for k, v in fields.items() if k != "From"}
    out["Direction"] = fields["Direction"] + "From" + fields["From"]
    return out


RESPLITS = [sid_swallows_status, version_swallows_sid, direction_swallows_from]


async def _post(
    session: aiohttp.ClientSession, url: str, fields: Fields, signature: str
) -> tuple[int, str]:
    async with session.post(url, data=fields, headers={SIGNATURE_HEADER: signature}) as resp:
        return resp.status, await resp.text()


async def _answered(
    session: aiohttp.ClientSession, url: str, fields: Fields, signature: str
) -> TwimlAnswer:
    status, text = await _post(session, url, fields, signature)
    assert status == 200, text
    return parse_twiml(text)


async def _call_ids(edge: TwilioEdge) -> set[str]:
    return {str(doc.data["call_id"]) for doc in await edge.services.coordinator.list_active_calls()}


def _captured(edge: TwilioEdge, session: aiohttp.ClientSession) -> tuple[str, Fields, str]:
    """A genuine voice webhook: its URL, fields and signature."""
    call = edge.call(session)
    url = edge.base + "/twilio/voice"
    fields = call.webhook_fields()
    return url, fields, compute_signature(AUTH_TOKEN, url, fields)


@pytest.mark.parametrize("resplit", RESPLITS, ids=lambda f: f.__name__)
async def test_a_resplit_webhook_under_a_captured_signature_creates_no_call(
    twilio_edge: TwilioEdge, session: aiohttp.ClientSession, resplit: Callable[[Fields], Fields]
) -> None:
    url, fields, signature = _captured(twilio_edge, session)
    first = await _answered(session, url, fields, signature)
    assert first.stream is not None
    call_id = first.stream.parameters["call_id"]

    forged = resplit(fields)
    assert compute_signature(AUTH_TOKEN, url, forged) == signature  # the signature still holds
    status, _ = await _post(session, url, forged, signature)
    assert status == 403
    assert await _call_ids(twilio_edge) == {call_id}


async def test_an_identical_replay_after_the_old_dedup_window_creates_no_second_call(
    make_twilio_edge: Callable[..., Any], session: aiohttp.ClientSession
) -> None:
    # the CallSid's mapping used to live 4 x setup_ttl_s (20 min by default; 2 s here)
    edge: TwilioEdge = await make_twilio_edge(
        calls={"inactivity_timeout_s": 30, "setup_ttl_s": 0.5}
    )
    url, fields, signature = _captured(edge, session)
    first = await _answered(session, url, fields, signature)
    assert first.stream is not None
    call_id = first.stream.parameters["call_id"]
    await edge.crm.wait(1)  # no stream came: the set-up reaper ended the call
    await asyncio.sleep(2.5)  # past the old window

    replay = await _answered(session, url, fields, signature)
    assert replay.stream is None and replay.hangup  # a refusal, not a new call
    assert await _call_ids(edge) == set()
    record = await edge.services.call_service.get(call_id)
    assert record is not None and record.state is CallState.ENDED
    await asyncio.sleep(1.0)  # a second call would be reaped and reported by now
    assert len(edge.crm.received) == 1


async def test_a_retry_while_the_call_waits_for_its_stream_gets_the_same_call(
    twilio_edge: TwilioEdge, session: aiohttp.ClientSession
) -> None:
    url, fields, signature = _captured(twilio_edge, session)
    first = await _answered(session, url, fields, signature)
    again = await _answered(session, url, fields, signature)
    assert first.stream is not None and again.stream is not None
    assert again.stream.parameters["call_id"] == first.stream.parameters["call_id"]


async def test_replays_on_another_worker_sharing_redis_create_no_call(
    make_twilio_edge: Callable[..., Any], session: aiohttp.ClientSession, redis_server: Any
) -> None:
    coordination = {"redis_url": redis_server.url, "key_prefix": f"replay{secrets.token_hex(4)}:"}
    a: TwilioEdge = await make_twilio_edge(coordination=coordination)
    b: TwilioEdge = await make_twilio_edge(coordination=coordination)
    path_url, fields, _ = _captured(a, session)
    # both workers sit behind one public URL: Twilio signs that one
    signature = compute_signature(AUTH_TOKEN, path_url, fields)
    first = await _answered(session, path_url, fields, signature)
    assert first.stream is not None
    call_id = first.stream.parameters["call_id"]

    on_b = b.base + "/twilio/voice"
    for resplit in RESPLITS:
        forged = resplit(fields)
        b_signature = compute_signature(AUTH_TOKEN, on_b, fields)
        assert compute_signature(AUTH_TOKEN, on_b, forged) == b_signature
        status, _ = await _post(session, on_b, forged, b_signature)
        assert status == 403, resplit.__name__
    retried = await _answered(session, on_b, fields, compute_signature(AUTH_TOKEN, on_b, fields))
    assert retried.stream is not None
    assert retried.stream.parameters["call_id"] == call_id
    assert await _call_ids(a) == {call_id}
