"""Drain end to end: SIGTERM on one of two real workers sharing a Redis, with live calls.

Workers A and B (``telephony-edge serve``) share the session's ``redis-server``
under a fresh key prefix, with Twilio, Vonage and SIP enabled. A carries a live
Twilio call and a live Vonage call when it gets SIGTERM. Then, in order:

- A's ``/readyz`` answers 503 at once (the balancer stops sending it calls), and
  its SIP port answers OPTIONS and INVITE 503 (a trunk fails over to B);
- a new Twilio call reaching A gets TwiML ``<Redirect>`` to B, and a new Vonage
  call reaching A an NCCO ``connect`` to B's socket: both are bridged on B;
- the live Vonage caller hangs up inside the grace period: ``user-ended``;
- the live Twilio call outlasts the grace period: A ends it (``api-ended``,
  hung up through Twilio's REST API) and closes its stream normally;
- A exits 0, and every call's end-of-call webhook arrived exactly once.

Twilio's REST API and the end-of-call receiver are ``test_lifecycle_serve``'s
(a thread with its own loop); Twilio and Vonage are played by their simulators.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import aiohttp
import pytest
import yaml

from telephony_edge.twilio.simulator import parse_twiml
from telephony_edge.vonage.simulator import SimulatedVonageCall
from tests import test_lifecycle_serve as lifecycle
from tests.conftest import (
    ServeProcess,
    free_port,
    start_serve_process,
    stop_serve_process,
    wait_for,
)
from tests.sip.test_udp_edge import Caller, open_socket, sdp
from tests.test_lifecycle_serve import Outside, live_call, log_problems
from tests.twilio.harness import CALLER, LOCAL_NUMBER, serve_call

outside = lifecycle.outside  # the module-scoped Twilio REST stand-in and webhook receiver

DRAIN_GRACE_S = 5.0
VONAGE_NUMBER = "+15555550166"
VONAGE_SECRET = "vonage-signature-secret-drain-0001"


def drain_config(redis_url: str, prefix: str, worker_id: str) -> dict[str, Any]:
    """``test_lifecycle_serve``'s edge plus Vonage and SIP, on Redis under ``prefix``."""
    config = lifecycle.lifecycle_config()
    config["server"] = {"drain_grace_s": DRAIN_GRACE_S, "worker_id": worker_id}
    config["coordination"] = {"redis_url": redis_url, "key_prefix": prefix}
    config["vonage"] = {"enabled": True, "signature_secret": VONAGE_SECRET}
    rtp = free_port()
    config["sip"] = {
        "enabled": True,
        "bind_host": "127.0.0.1",
        "port": free_port(),
        "rtp_port_min": rtp,
        "rtp_port_max": rtp + 1,
    }
    config["numbers"][VONAGE_NUMBER] = {"provider": "vonage", "agent_id": "demo", "region": "local"}
    return config


@pytest.fixture
def workers(
    redis_server: Any, outside: Outside, tmp_path: Path
) -> Iterator[tuple[ServeProcess, ServeProcess]]:
    prefix = f"te-drain-{uuid.uuid4().hex[:12]}:"
    started = [
        start_serve_process(drain_config(redis_server.url, prefix, f"worker-{n}"), tmp_path / n)
        for n in ("a", "b")
    ]
    yield started[0], started[1]
    for edge in started:
        stop_serve_process(edge)


@pytest.fixture(name="session")
async def fixture_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def vonage_call(edge: ServeProcess, session: aiohttp.ClientSession) -> SimulatedVonageCall:
    return SimulatedVonageCall(
        session, edge.base_url, to=VONAGE_NUMBER, from_=CALLER, signature_secret=VONAGE_SECRET
    )


async def bridged_vonage_call(
    call: SimulatedVonageCall,
) -> tuple[str, asyncio.Task[None]]:
    """Answer, open the socket the NCCO names, hear the greeting; keep sending silence."""
    await call.post_answer()
    answer = call.result.answer
    assert answer is not None and answer.websocket is not None, call.result
    await call.open_socket(answer.websocket)
    talking = asyncio.create_task(call.silence_until(lambda _: False, 60))
    await wait_for(lambda: call.result.frames_received > 0, 5)
    return answer.websocket.uri, talking


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def ready_status(session: aiohttp.ClientSession, edge: ServeProcess) -> int:
    async with session.get(edge.base_url + "/readyz") as resp:
        return resp.status


async def test_sigterm_drains_one_worker_while_the_other_takes_new_calls(
    workers: tuple[ServeProcess, ServeProcess],
    outside: Outside,
    session: aiohttp.ClientSession,
) -> None:
    a, b = workers
    loop = asyncio.get_running_loop()
    # both workers' heartbeats are in Redis before A can hand a call to B
    await wait_for(lambda: b.metric("telephony_edge_coordinator_up") == 1, 5)

    twilio_live, twilio_live_id, twilio_talking = await live_call(a, outside, session)
    vonage_live = vonage_call(a, session)
    _, vonage_talking = await bridged_vonage_call(vonage_live)
    vonage_live_id = vonage_live.result.answer.websocket.headers["call_id"]  # type: ignore[union-attr]

    signalled = loop.time()
    a.process.send_signal(signal.SIGTERM)
    while await ready_status(session, a) != 503:
        assert loop.time() - signalled < 1.0, "/readyz still 200 a second after SIGTERM"
        await asyncio.sleep(0.02)
    assert await ready_status(session, b) == 200

    # SIP: A answers new INVITEs and OPTIONS 503 (a trunk fails over), B 200
    assert await sip_status(a, "OPTIONS") == 503
    assert await sip_status(a, "INVITE") == 503
    assert await sip_status(b, "OPTIONS") == 200

    # a new Twilio call reaching A: <Redirect> to B (Twilio POSTs the voice webhook there)
    redirected = serve_call(a.base_url, session)
    outside.fake.add_call(redirected.call_sid, to=LOCAL_NUMBER, from_=CALLER)
    redirect = ElementTree.fromstring(await redirected.post_webhook()).find("Redirect")
    assert redirect is not None and redirect.text, "no <Redirect>"
    assert redirect.text.startswith(f"{b.base_url}/twilio/voice?"), redirect.text
    voice_path = redirect.text.removeprefix(b.base_url)
    on_b = serve_call(b.base_url, session, call_sid=redirected.call_sid, voice_path=voice_path)
    stream = parse_twiml(await on_b.post_webhook()).stream
    assert stream is not None and stream.url.startswith(b.ws_url), stream
    await on_b.open_stream(stream)
    b_twilio_talking = asyncio.create_task(on_b.stream_until_quiet(until=lambda r: False, max_s=30))
    await wait_for(lambda: on_b.result.frames_received > 0, 5)
    b_twilio_id = stream.parameters["call_id"]

    # a new Vonage call reaching A: its NCCO connects the socket to B
    handed = vonage_call(a, session)
    uri, b_vonage_talking = await bridged_vonage_call(handed)
    assert uri.startswith(b.ws_url), uri
    assert a.metric("telephony_edge_calls_refused_total", reason="draining") >= 2

    # A's live calls go on meanwhile; the Vonage caller hangs up inside the grace period
    assert not twilio_live.ws.closed  # type: ignore[union-attr]
    assert not vonage_live.ws.closed  # type: ignore[union-attr]
    await stop(vonage_talking)
    await vonage_live.hang_up()
    assert loop.time() - signalled < DRAIN_GRACE_S * 0.8

    # the Twilio call outlasts the grace period: ended by A, its stream closed normally
    assert await twilio_live.wait_closed(DRAIN_GRACE_S + 5)
    assert loop.time() - signalled >= DRAIN_GRACE_S * 0.9
    await stop(twilio_talking)
    await twilio_live.finish()
    assert twilio_live.result.close_code == 1000
    while a.process.poll() is None:
        assert loop.time() - signalled < DRAIN_GRACE_S + 15, "A did not exit"
        await asyncio.sleep(0.05)
    assert a.process.returncode == 0

    # the calls on B are unharmed; end them
    assert not on_b.ws.closed and not handed.ws.closed  # type: ignore[union-attr]
    await stop(b_twilio_talking)
    await on_b.stop()
    await stop(b_vonage_talking)
    handed.base_url = b.base_url  # Vonage's event URL is the balancer's, which has only B now
    await handed.hang_up()

    live_twilio = await outside.exactly_one_webhook(twilio_live_id, within=5)
    assert live_twilio["call_status"] == "api-ended"
    assert [u.get("Status") for u in outside.fake.calls[twilio_live.call_sid].updates] == [
        ["completed"]
    ]
    live_vonage = await outside.exactly_one_webhook(vonage_live_id, within=5)
    assert live_vonage["call_status"] == "user-ended"
    assert live_vonage["voip"]["provider"] == "vonage"
    assert (await outside.exactly_one_webhook(b_twilio_id))["call_status"] == "user-ended"
    await wait_for(lambda: handed_hooks(outside, handed.uuid), 5)
    assert [h["call_status"] for h in handed_hooks(outside, handed.uuid)] == ["user-ended"]
    assert not log_problems(a.log), "\n".join(log_problems(a.log)[:5])
    b.assert_healthy()


async def sip_status(edge: ServeProcess, method: str) -> int:
    """The final status of a ``method`` sent to ``edge``'s SIP port (an INVITE with an offer)."""
    config = edge.log_path.with_suffix(".yaml")  # start_serve_process writes it beside the log
    port = yaml.safe_load(config.read_text())["sip"]["port"]
    caller = Caller(("127.0.0.1", port), "drain-test", await open_socket())
    try:
        caller.send(caller.request(method, sdp(free_port()) if method == "INVITE" else ""))
        return (await caller.response(method)).status
    finally:
        assert caller.sip.transport is not None
        caller.sip.transport.close()


def handed_hooks(outside: Outside, uuid: str) -> list[dict[str, Any]]:
    """End-of-call webhooks of the Vonage call ``uuid`` (one handed over has no call_id in
    its socket's headers: it was created on the worker it reached)."""
    return [
        hook.payload
        for hook in list(outside.received)
        if hook.payload.get("voip", {}).get("provider_call_id") == uuid
    ]
