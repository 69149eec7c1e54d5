"""The agent's keys on Twilio: ``<Play digits>`` through the REST API, and the stream back.

A live call's audio is a ``<Connect><Stream>``; Twilio plays keys into a call
only from TwiML, and replacing a call's TwiML ends its stream. So the edge
updates the call with ``<Play digits>`` and the same ``<Connect><Stream>``,
and the call goes on over the new stream. Here the REST API is the project's
stand-in (``twilio/rest_standin.py``: Basic auth, the account, the call, a
form with ``Twiml`` checked as Twilio checks it) and Twilio's side of the call
is the simulator, which runs the new TwiML as Twilio does: it ends the
stream, plays the digits, and connects the new stream. The agent core is the
test's own: it sends ``send_dtmf`` once the caller pressed ``*``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any
from xml.etree import ElementTree

import aiohttp
import pytest

from telephony_edge.twilio.handover import HANDOVER_PARAM, subject
from telephony_edge.twilio.rest_standin import CallUpdate, TwilioRestStandIn
from telephony_edge.twilio.simulator import SimulatedCall, StreamInstruction
from tests.conftest import free_port, wait_for
from tests.dtmf_core import DtmfCore
from tests.twilio.harness import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    CALLER,
    LOCAL_NUMBER,
    TwilioEdge,
    answered,
)


class StandIn(TwilioRestStandIn):
    """The REST stand-in on a free port of 127.0.0.1."""

    url = ""


@pytest.fixture(name="standin")
async def fixture_standin() -> AsyncIterator[StandIn]:
    rest = StandIn(ACCOUNT_SID, AUTH_TOKEN)
    port = free_port()
    await rest.start(port)
    rest.url = f"http://127.0.0.1:{port}"
    yield rest
    await rest.close()


async def edge_for(
    make_twilio_edge: Callable[..., Any], standin: StandIn, core: DtmfCore
) -> TwilioEdge:
    await core.start()
    twilio = {
        "enabled": True,
        "account_sid": ACCOUNT_SID,
        "auth_token": AUTH_TOKEN,
        "api_base_url": standin.url,
        "stream_token_ttl_s": 30,
    }
    edge: TwilioEdge = await make_twilio_edge(twilio=twilio, agent_core={"url": core.url})
    return edge


async def call_in(
    edge: TwilioEdge,
    standin: StandIn,
    session: aiohttp.ClientSession,
    on_update: Callable[[SimulatedCall, CallUpdate], None] | None = None,
) -> tuple[SimulatedCall, list[str]]:
    """A call whose stream is up; the TwiML documents the edge sent, as the stand-in took them."""
    call = edge.call(session)
    documents: list[str] = []

    def updated(update: CallUpdate) -> None:
        documents.append(update.twiml or "")
        (on_update or SimulatedCall.on_rest_update)(call, update)

    standin.add_call(call.call_sid, to=LOCAL_NUMBER, from_=CALLER, on_update=updated)
    await call.open_stream(await answered(call))
    return call, documents


async def test_the_keys_are_played_and_the_call_goes_on_over_the_new_stream(
    make_twilio_edge: Callable[..., Any],
    standin: StandIn,
    session: aiohttp.ClientSession,
) -> None:
    core = DtmfCore([{"digits": "1w2#", "duration_ms": 100}], trigger="*")
    edge = await edge_for(make_twilio_edge, standin, core)
    call, documents = await call_in(edge, standin, session)
    first_stream = call.stream_sid
    await call.stream_audio([], silence_after_s=0.3, dtmf=[(0.1, "*")])
    await wait_for(lambda: call.result.streams == 2, 10)
    assert call.result.digits_played == ["1w2#"]
    assert call.stream_sid != first_stream

    [document] = documents
    root = ElementTree.fromstring(document)
    assert [child.tag for child in root] == ["Play", "Connect", "Redirect"]
    assert root[0].attrib == {"digits": "1w2#"}
    stream = root.find("Connect/Stream")
    assert stream is not None and stream.get("url") == f"ws://127.0.0.1:{edge.port}/twilio/stream"
    params = {p.get("name"): p.get("value") for p in stream.iter("Parameter")}
    assert set(params) == {"call_id", "token", HANDOVER_PARAM}

    # the same call goes on: a key pressed on the new stream reaches the same agent core
    await call.stream_audio([], silence_after_s=0.5, dtmf=[(0.1, "5")])
    [call_id] = core.calls
    await wait_for(lambda: core.keys[call_id] == ["*", "5"])
    assert params["call_id"] == call_id
    await call.stop()
    [payload] = await edge.crm.wait()
    assert payload["call_id"] == call_id and payload["call_status"] == "user-ended"
    assert core.errors == {}
    assert len(edge.twilio.handover) == 0
    await core.server.close()


async def test_keys_twilio_does_not_play_and_a_refused_update_go_back_to_the_core(
    make_twilio_edge: Callable[..., Any],
    standin: StandIn,
    session: aiohttp.ClientSession,
) -> None:
    core = DtmfCore([{"digits": "A"}, {"digits": "1"}], trigger="*")
    edge = await edge_for(make_twilio_edge, standin, core)
    call, documents = await call_in(edge, standin, session)
    standin.calls[call.call_sid].status = "completed"  # Twilio's side of it is over
    await call.stream_audio([], silence_after_s=0.3, dtmf=[(0.1, "*")])
    [call_id] = core.calls
    await wait_for(lambda: len(core.errors[call_id]) == 2)
    assert [e["message"] for e in core.errors[call_id]] == [
        "send_dtmf failed: Twilio's <Play digits> plays the keys 0-9, * and # only (not A-D)",
        "send_dtmf failed: Twilio refused dtmf: Unable to update record: Call is not"
        " in-progress. Cannot redirect. (code 21220)",
    ]
    assert documents == [] and call.result.streams == 1  # nothing changed on the call
    await call.stream_audio([], silence_after_s=0.2, dtmf=[(0.05, "7")])
    await wait_for(lambda: core.keys[call_id] == ["*", "7"])  # the stream is still the call's
    await call.stop()
    assert len(edge.twilio.handover) == 0
    await core.server.close()


async def test_a_stream_that_does_not_come_back_ends_the_call_error(
    make_twilio_edge: Callable[..., Any],
    standin: StandIn,
    session: aiohttp.ClientSession,
) -> None:
    core = DtmfCore([{"digits": "9"}], trigger="*")
    edge = await edge_for(make_twilio_edge, standin, core)
    edge.twilio.handover_timeout_s = 0.5

    def ends_only(call: SimulatedCall, update: CallUpdate) -> None:  # no new stream
        call.result.rest_update = update.describe()
        call._ending = asyncio.ensure_future(call._end_stream())

    call, _ = await call_in(edge, standin, session, ends_only)
    await call.stream_audio([], silence_after_s=0.3, dtmf=[(0.1, "*")])
    [payload] = await edge.crm.wait(within=15)
    assert payload["call_status"] == "error"
    assert "Twilio did not connect the stream again" in payload["error_message"]
    assert len(edge.twilio.handover) == 0
    await core.server.close()


async def test_streams_no_call_waits_for_are_refused_before_any_audio(
    make_twilio_edge: Callable[..., Any],
    standin: StandIn,
    session: aiohttp.ClientSession,
) -> None:
    core = DtmfCore()
    edge = await edge_for(make_twilio_edge, standin, core)
    url = f"ws://127.0.0.1:{edge.port}/twilio/stream"
    tokens = edge.twilio.tokens
    forged = [
        {"call_id": "c1", HANDOVER_PARAM: "h1", "token": "1.forged"},
        # a genuine token, for a handover nobody waits for
        {"call_id": "c1", HANDOVER_PARAM: "h1", "token": tokens.issue(subject("c1", "h1"))},
    ]
    for parameters in forged:
        stray = edge.call(session)
        await stray.open_stream(StreamInstruction(url, parameters))
        assert await stray.wait_closed(5)
        assert stray.ws is not None and stray.ws.close_code == 1008
    await core.server.close()


async def test_no_keys_where_another_worker_shares_the_public_url(
    make_twilio_edge: Callable[..., Any],
    standin: StandIn,
    session: aiohttp.ClientSession,
) -> None:
    """Behind one load balancer the new stream could reach the other worker: refused, and
    the call goes on (the stream is not given up for keys that could not come back)."""
    core = DtmfCore([{"digits": "1"}], trigger="*")
    edge = await edge_for(make_twilio_edge, standin, core)
    info = {"public_url": edge.base, "accepting": True}
    await edge.services.coordinator.heartbeat("another-worker", info, 60)
    call, documents = await call_in(edge, standin, session)
    await call.stream_audio([], silence_after_s=0.3, dtmf=[(0.1, "*")])
    [call_id] = core.calls
    await wait_for(lambda: core.errors[call_id])
    [error] = core.errors[call_id]
    assert "give each worker its own server.public_url" in error["message"]
    assert documents == [] and call.result.streams == 1
    await call.stop()
    await core.server.close()
