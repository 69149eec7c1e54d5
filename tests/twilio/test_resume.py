"""``GET /twilio/resume`` (the ``<Redirect>`` after every stream) and the stream it brings back,
on one edge: what it refuses, what it answers a call that is over, how far a call goes on
without a stream that holds. The two-worker ends are ``tests/test_failover.py``."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import parse_qs, urlencode, urlsplit
from xml.etree import ElementTree

import aiohttp

from telephony_edge.agent.demo import DemoCoreSettings
from telephony_edge.calls.record import CallStatus
from telephony_edge.socket_resume import resume_subject
from telephony_edge.twilio import twiml
from telephony_edge.twilio.resume import MAX_HOPS, RESUME_PARAM
from telephony_edge.twilio.signature import SIGNATURE_HEADER, compute_signature
from telephony_edge.twilio.simulator import SimulatedCall, parse_twiml
from tests.conftest import wait_for
from tests.twilio.harness import ACCOUNT_SID, AUTH_TOKEN, TwilioEdge


async def ask(
    edge: TwilioEdge, session: aiohttp.ClientSession, call: SimulatedCall, url: str
) -> tuple[int, str]:
    """GET ``url`` (a resume URL) as Twilio follows the ``<Redirect>``: signed, its fields."""
    fields = {**call.webhook_fields(), "CallStatus": "in-progress"}
    full = f"{url}&{urlencode(fields)}"
    headers = {SIGNATURE_HEADER: compute_signature(AUTH_TOKEN, full, {})}
    async with session.get(edge.base + full.removeprefix(edge.base), headers=headers) as resp:
        return resp.status, await resp.text()


def verbs(document: str) -> list[str]:
    return [verb.tag for verb in ElementTree.fromstring(document)]


async def test_every_stream_is_followed_by_the_resume_redirect(
    twilio_edge: TwilioEdge, session: aiohttp.ClientSession
) -> None:
    call = twilio_edge.call(session)
    document = await call.post_webhook()
    assert verbs(document) == ["Connect", "Redirect"]
    answer = parse_twiml(document)
    assert answer.redirect_method == "GET" and answer.stream is not None
    query = parse_qs(urlsplit(answer.redirect or "").query)
    assert query["call_id"] == [answer.stream.parameters["call_id"]]
    assert (query["hop"], query["g"]) == (["0"], ["0"]) and query["n"][0]


async def test_resume_requests_that_are_malformed_forged_or_for_no_live_call(
    twilio_edge: TwilioEdge, session: aiohttp.ClientSession
) -> None:
    call = twilio_edge.call(session)
    await call.post_webhook()
    answer = call.result.answer
    assert answer is not None and answer.stream is not None and answer.redirect is not None
    call_id = answer.stream.parameters["call_id"]

    assert (await ask(twilio_edge, session, call, f"{twilio_edge.base}/twilio/resume?x=1"))[
        0
    ] == 400
    async with session.get(answer.redirect) as resp:  # unsigned
        assert resp.status == 403
    # the call never streamed: nothing to resume, Twilio is told to hang up
    status, document = await ask(twilio_edge, session, call, answer.redirect)
    assert status == 200 and verbs(document) == ["Hangup"]
    assert (await ask(twilio_edge, session, call, answer.redirect))[0] == 403  # once each
    other = twilio_edge.call(session)  # another Twilio call naming this call id
    status, document = await ask(
        twilio_edge, session, other, twiml.resume_url(twilio_edge.base, call_id)
    )
    assert status == 200 and verbs(document) == ["Hangup"]


async def test_a_live_call_streams_again_until_redirects_run_out(
    twilio_edge: TwilioEdge, session: aiohttp.ClientSession
) -> None:
    call = twilio_edge.call(session)
    await call.post_webhook()
    answer = call.result.answer
    assert answer is not None and answer.stream is not None
    await call.open_stream(answer.stream)
    call_id = answer.stream.parameters["call_id"]
    service = twilio_edge.services.call_service
    await wait_for(lambda: service.manager.get(call_id) is not None)
    await wait_for(lambda: call.result.frames_received > 0, 5)  # the call is active

    url = twiml.resume_url(twilio_edge.base, call_id, hop=3)
    status, document = await ask(twilio_edge, session, call, url)
    assert status == 200 and verbs(document) == ["Connect", "Redirect"]
    again = parse_twiml(document)
    assert again.stream is not None
    params = again.stream.parameters
    assert params[RESUME_PARAM] == "0" and params["call_id"] == call_id
    twilio_edge.twilio.tokens.verify(params["token"], resume_subject(call_id, 0))
    query = parse_qs(urlsplit(again.redirect or "").query)
    assert (query["hop"], query["g"]) == (["4"], ["0"])  # no stream held since: counting on

    last = twiml.resume_url(twilio_edge.base, call_id, hop=MAX_HOPS)
    status, document = await ask(twilio_edge, session, call, last)
    assert status == 200 and verbs(document) == ["Say", "Hangup"]

    # a resumed stream whose token is not for this call's generation is refused
    stale = {**params, RESUME_PARAM: "7"}
    other = SimulatedCall(session, twilio_edge.base, to=call.to, call_sid=call.call_sid)
    await other.open_stream(again.stream, parameters=stale)
    assert await other.wait_closed(5)
    assert (await other.finish()).close_code == 1008
    await call.stop()


async def _streaming(edge: TwilioEdge, session: aiohttp.ClientSession) -> tuple[SimulatedCall, str]:
    """A call whose agent has greeted, the caller still there."""
    call = edge.call(session)
    await call.post_webhook()
    answer = call.result.answer
    assert answer is not None and answer.stream is not None
    await call.open_stream(answer.stream)
    await call.wait_for_greeting()
    return call, answer.stream.parameters["call_id"]


def _chat(payload: dict[str, object]) -> list[tuple[str, str]]:
    return [(e["role"], e["content"]) for e in json.loads(str(payload["chat"]))]


async def test_a_stream_dropped_on_a_live_worker_is_resumed_not_ended(
    twilio_edge: TwilioEdge, session: aiohttp.ClientSession
) -> None:
    """The stream's connection breaks (a reset, no close frame, no ``stop``) while the worker
    lives: Twilio follows the <Redirect>, the call comes back (here) with its chat."""
    call, call_id = await _streaming(twilio_edge, session)
    caller = asyncio.create_task(call.stream_audio([], silence_after_s=30))  # the caller stays
    call.drop()

    await wait_for(lambda: bool(call.result.resumes) and call.result.resumes[0].gap_s, 10)
    [resume] = call.result.resumes
    assert resume.hops == 1 and resume.gap_s is not None and 0 < resume.gap_s < 2.0
    assert not caller.done(), "the call went on"
    service = twilio_edge.services.call_service
    record = await service.get(call_id)
    assert record is not None and record.call_status is None
    [move] = record.migrations
    assert move["cause"] == "network"
    assert move["from_worker"] == move["to_worker"] == service.worker_id

    caller.cancel()
    await call.stop()  # the caller hangs up: ``stop``
    [payload] = await twilio_edge.crm.wait(1)
    assert payload["call_status"] == "user-ended"
    assert _chat(payload) == [("assistant", "Hi"), ("assistant", DemoCoreSettings().resumed_text)]
    assert [m["cause"] for m in payload["migrations"]] == ["network"]
    await asyncio.sleep(0.5)
    assert len(twilio_edge.crm.received) == 1


async def test_a_hang_up_as_the_stream_drops_ends_the_call_on_the_status_callback(
    twilio_edge: TwilioEdge, session: aiohttp.ClientSession
) -> None:
    """The caller hangs up as the stream's connection breaks: no ``stop``, no <Redirect>;
    Twilio's status callback ``completed`` ends the call, not resumed, one webhook."""
    call, call_id = await _streaming(twilio_edge, session)
    call.drop(hang_up=True)
    service = twilio_edge.services.call_service
    await wait_for(lambda: service.manager.get(call_id) is None, 5)  # let go: no word of an end
    url = f"{twilio_edge.base}/twilio/status?call_id={call_id}"
    fields = {"CallSid": call.call_sid, "CallStatus": "completed", "AccountSid": ACCOUNT_SID}
    signature = compute_signature(AUTH_TOKEN, url, fields)
    async with session.post(url, data=fields, headers={SIGNATURE_HEADER: signature}) as resp:
        assert resp.status == 204
    [payload] = await twilio_edge.crm.wait(1, within=5)
    assert payload["call_status"] == "user-ended" and "migrations" not in payload
    assert _chat(payload) == [("assistant", "Hi")]
    record = await service.get(call_id)
    assert record is not None and record.call_status is CallStatus.USER_ENDED
    assert call.result.resumes == []
