"""``GET /twilio/resume`` (the ``<Redirect>`` after every stream) and the stream it brings back,
on one edge: what it refuses, what it answers a call that is over, how far a call goes on
without a stream that holds. The two-worker ends are ``tests/test_failover.py``."""

from __future__ import annotations

from urllib.parse import parse_qs, urlencode, urlsplit
from xml.etree import ElementTree

import aiohttp

from telephony_edge.socket_resume import resume_subject
from telephony_edge.twilio import twiml
from telephony_edge.twilio.resume import MAX_HOPS, RESUME_PARAM
from telephony_edge.twilio.signature import SIGNATURE_HEADER, compute_signature
from telephony_edge.twilio.simulator import SimulatedCall, parse_twiml
from tests.conftest import wait_for
from tests.twilio.harness import AUTH_TOKEN, TwilioEdge


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
