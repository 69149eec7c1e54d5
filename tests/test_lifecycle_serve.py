"""A call's life against a real ``telephony-edge serve``: drain, status callbacks, set-up, retries.

The edge runs as a subprocess (``serve_process``); Twilio's REST API (the
strict stand-in) and the customer's end-of-call webhook receiver run in a
thread of this process with their own event loop, so they serve the edge
whatever the test's loop is doing, across tests and during a shutdown.
Twilio itself (voice webhook, Media Streams, status callbacks) is played by
the test over real sockets on 127.0.0.1.

Every test asserts the end-of-call webhooks of its own call only (a
receiver shared by the module also gets other tests' calls), and "exactly
one" after waiting long enough for a second one (the setup reaper's cycle,
a racing teardown) to have come.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from telephony_edge.calls.webhooks import SIGNATURE_HEADER as EDGE_SIGNATURE
from telephony_edge.calls.webhooks import verify_signature
from telephony_edge.twilio.signature import SIGNATURE_HEADER, compute_signature
from telephony_edge.twilio.simulator import SimulatedCall
from tests.conftest import (
    ServeProcess,
    free_port,
    start_serve_process,
    stop_serve_process,
    wait_for,
)
from tests.twilio.fake_twilio import FakeCall, FakeTwilio
from tests.twilio.harness import (
    ACCOUNT_SID,
    API_KEY,
    AUTH_TOKEN,
    CALLER,
    LOCAL_NUMBER,
    OUTBOUND_NUMBER,
    WEBHOOK_SECRET,
    answered,
    callee_answers,
    serve_call,
)

FAKE_TWILIO_PORT = free_port()
RECEIVER_PORT = free_port()
SETUP_TTL_S = 1.0
DRAIN_GRACE_S = 1.0
AUTH = {"Authorization": f"Bearer {API_KEY}"}
CALLEE = "+15555550142"


def lifecycle_config() -> dict[str, Any]:
    return {
        "server": {"drain_grace_s": DRAIN_GRACE_S},
        "api": {"private_key": API_KEY},
        "twilio": {
            "enabled": True,
            "account_sid": ACCOUNT_SID,
            "auth_token": AUTH_TOKEN,
            "api_base_url": f"http://127.0.0.1:{FAKE_TWILIO_PORT}",
            "validate_signatures": True,
        },
        "webhooks": {
            "signing_secret": WEBHOOK_SECRET,
            "allow_private_targets": True,  # the receiver is on 127.0.0.1
            "backoff_base_s": 0.05,
            "max_attempts": 3,
        },
        "agents": {
            "demo": {
                "prompt": "You are the demo agent.",
                "first_message": "Hello.",
                "session_data_webhook": f"http://127.0.0.1:{RECEIVER_PORT}/ended",
            }
        },
        "regions": {"local": {"public_url": "http://127.0.0.1"}},
        "numbers": {
            LOCAL_NUMBER: {"provider": "twilio", "agent_id": "demo", "region": "local"},
            OUTBOUND_NUMBER: {"provider": "twilio", "agent_id": "demo", "region": "local"},
        },
        "calls": {"setup_ttl_s": SETUP_TTL_S, "inactivity_timeout_s": 30},
    }


# -- Twilio's REST API and the customer's receiver, in a thread of their own ----------


@dataclass
class EndOfCall:
    headers: dict[str, str]
    body: bytes

    @property
    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


class SlowHangupTwilio(FakeTwilio):
    """The REST stand-in; ``during_update`` runs before a call update is answered.

    Twilio sends a hung-up call's ``completed`` status callback at about the
    time it answers the hang-up; awaiting it inside the REST answer puts it
    for certain inside the edge's teardown (which is awaiting that answer).
    """

    during_update: Callable[[FakeCall], Awaitable[None]] | None = None

    async def _update(self, request: web.Request) -> web.Response:
        response = await super()._update(request)
        call = self.calls.get(request.match_info["call_sid"])
        hook = self.during_update
        if hook is not None and call is not None and response.status == 200:
            await hook(call)
        return response


@dataclass
class Outside:
    """What the edge talks to: Twilio's REST API and the end-of-call receiver."""

    loop: asyncio.AbstractEventLoop
    fake: SlowHangupTwilio
    received: list[EndOfCall] = field(default_factory=list)

    def run(self, coro: Awaitable[Any], timeout: float = 10.0) -> Any:
        """Run ``coro`` on the outside loop (from the test's thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def webhooks(self, call_id: str) -> list[EndOfCall]:
        return [hook for hook in list(self.received) if hook.payload.get("call_id") == call_id]

    async def exactly_one_webhook(
        self, call_id: str, *, within: float = 10.0, settle: float = 0.5
    ) -> dict[str, Any]:
        """Wait for the call's end-of-call webhook; after ``settle`` more seconds, still one.

        Its signature must verify with the edge's secret.
        """
        await wait_for(lambda: self.webhooks(call_id), within)
        await asyncio.sleep(settle)
        hooks = self.webhooks(call_id)
        assert len(hooks) == 1, [h.payload for h in hooks]
        [hook] = hooks
        assert verify_signature(WEBHOOK_SECRET, hook.headers[EDGE_SIGNATURE], hook.body)
        return hook.payload


@pytest.fixture(scope="module")
def outside() -> Iterator[Outside]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="outside", daemon=True)
    thread.start()
    fake = SlowHangupTwilio(ACCOUNT_SID, AUTH_TOKEN, {LOCAL_NUMBER, OUTBOUND_NUMBER})
    box = Outside(loop, fake)

    async def ended(request: web.Request) -> web.Response:
        box.received.append(EndOfCall(dict(request.headers), await request.read()))
        return web.Response(status=204)

    async def start() -> TestServer:
        await fake.start(FAKE_TWILIO_PORT)
        app = web.Application()
        app.router.add_post("/ended", ended)
        server = TestServer(app, host="127.0.0.1", port=RECEIVER_PORT)
        await server.start_server()
        return server

    receiver: TestServer = box.run(start())
    yield box
    box.run(receiver.close())
    box.run(fake.close())
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


@pytest.fixture(scope="module")
def edge(outside: Outside, serve_process: Any) -> Iterator[ServeProcess]:
    """One edge for the module's tests but the SIGTERM one; stopped while ``outside`` runs."""
    started: ServeProcess = serve_process(lifecycle_config())
    yield started
    stop_serve_process(started)


@pytest.fixture(name="session")
async def fixture_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


# -- Twilio, played by the test ---------------------------------------------------------


async def live_call(
    edge: ServeProcess, outside: Outside, session: aiohttp.ClientSession
) -> tuple[SimulatedCall, str, asyncio.Task[None]]:
    """An inbound call Twilio's REST API knows, streaming caller audio at real time.

    Returns once the demo agent's greeting arrives; the task keeps sending
    (silence) until the stream is closed or the task cancelled.
    """
    call = serve_call(edge.base_url, session)
    outside.fake.add_call(call.call_sid, to=LOCAL_NUMBER, from_=CALLER)
    stream = await answered(call)
    await call.open_stream(stream)
    talking = asyncio.create_task(call.stream_until_quiet(until=lambda r: False, max_s=30))
    await wait_for(lambda: call.result.frames_received > 0, 5)
    return call, stream.parameters["call_id"], talking


async def post_signed(
    session: aiohttp.ClientSession, edge: ServeProcess, path: str, fields: dict[str, str]
) -> int:
    """POST a form as Twilio does, signed for ``edge``'s public URL + ``path`` (with query)."""
    url = edge.base_url + path
    headers = {SIGNATURE_HEADER: compute_signature(AUTH_TOKEN, url, fields)}
    async with session.post(url, data=fields, headers=headers) as resp:
        return resp.status


def status_fields(call_sid: str, call_status: str, direction: str = "inbound") -> dict[str, str]:
    return {
        "AccountSid": ACCOUNT_SID,
        "ApiVersion": "2010-04-01",
        "CallSid": call_sid,
        "CallStatus": call_status,
        "Direction": direction,
        "From": CALLER,
        "To": LOCAL_NUMBER,
    }


async def get_call(session: aiohttp.ClientSession, edge: ServeProcess, call_id: str) -> Any:
    async with session.get(f"{edge.base_url}/calls/{call_id}", headers=AUTH) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def assistant_said(payload: dict[str, Any]) -> list[str]:
    chat = json.loads(payload["chat"])  # a JSON string, as documented
    return [entry["content"] for entry in chat if entry.get("role") == "assistant"]


def log_problems(log: str) -> list[str]:
    return [
        line
        for line in log.splitlines()
        if "Traceback" in line or '"level": "error"' in line or "InvalidTransition" in line
    ]


# -- a. SIGTERM with a live call ------------------------------------------------------------


async def test_sigterm_drains_then_hangs_up_a_live_call_and_exits_0(
    outside: Outside, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    edge = start_serve_process(lifecycle_config(), tmp_path)
    try:
        call, call_id, talking = await live_call(edge, outside, session)
        loop = asyncio.get_running_loop()
        signalled = loop.time()
        edge.process.send_signal(signal.SIGTERM)

        # not ready at once: the balancer stops sending calls while this one goes on
        while True:
            async with session.get(edge.base_url + "/readyz") as resp:
                if resp.status == 503:
                    break
            assert loop.time() - signalled < DRAIN_GRACE_S * 0.8, "/readyz still 200"
            await asyncio.sleep(0.02)
        assert loop.time() - signalled < DRAIN_GRACE_S
        assert not call.ws.closed  # type: ignore[union-attr]

        # the grace runs out: the edge ends the call, hangs it up on Twilio, closes the stream
        assert await call.wait_closed(DRAIN_GRACE_S + 5)
        assert loop.time() - signalled >= DRAIN_GRACE_S * 0.9
        await talking
        await call.finish()
        assert call.result.close_code == 1000

        deadline = loop.time() + 15
        while edge.process.poll() is None:
            assert loop.time() < deadline, "the edge did not exit"
            await asyncio.sleep(0.05)
        assert edge.process.returncode == 0
    finally:
        stop_serve_process(edge)

    fake_call = outside.fake.calls[call.call_sid]
    assert fake_call.status == "completed"
    assert [u.get("Status") for u in fake_call.updates] == [["completed"]]
    # delivered before the process exited (the in-memory queue is flushed on shutdown)
    payload = await outside.exactly_one_webhook(call_id, within=0.1, settle=0)
    assert payload["call_status"] == "api-ended"
    assert payload["voip"]["provider_call_id"] == call.call_sid
    log = edge.log
    assert '"drained"' in log or "drained" in log
    assert not log_problems(log), "\n".join(log_problems(log)[:5])


# -- b. a status callback during a live call ------------------------------------------------


async def test_status_callbacks_during_a_live_call_change_only_the_provider_status(
    edge: ServeProcess, outside: Outside, session: aiohttp.ClientSession
) -> None:
    call, call_id, talking = await live_call(edge, outside, session)
    path = f"/twilio/status?call_id={call_id}"
    for call_status in ("in-progress", "completed"):
        assert (
            await post_signed(session, edge, path, status_fields(call.call_sid, call_status)) == 204
        )

    # the call goes on: the stream stays open and the record is live
    await asyncio.sleep(0.3)
    assert not call.ws.closed  # type: ignore[union-attr]
    view = await get_call(session, edge, call_id)
    assert (view["state"], view["call_status"]) == ("active", None)
    assert view["provider_status"] == "completed"  # merged next to the owner's fields
    sent = call.result.frames_sent
    await asyncio.sleep(0.2)
    assert call.result.frames_sent > sent and not call.ws.closed  # type: ignore[union-attr]

    talking.cancel()
    await asyncio.gather(talking, return_exceptions=True)
    await call.stop()  # the caller hangs up: the stream's end says how the call ended
    payload = await outside.exactly_one_webhook(call_id)
    assert payload["call_status"] == "user-ended"
    assert payload["error_message"] is None
    assert "Hello." in assistant_said(payload)  # the demo agent's greeting is in the chat
    view = await get_call(session, edge, call_id)
    assert (view["state"], view["call_status"]) == ("ended", "user-ended")
    assert view["provider_status"] == "completed"
    edge.assert_healthy()


# -- c. a status callback during the teardown of an API hang-up -------------------------------


async def test_status_callback_during_api_hangup_teardown_keeps_api_ended(
    edge: ServeProcess, outside: Outside, session: aiohttp.ClientSession
) -> None:
    body = {"from_phone": OUTBOUND_NUMBER, "to_phone": CALLEE, "agent_id": "demo"}
    async with session.post(edge.base_url + "/start_outbound_call", json=body, headers=AUTH) as r:
        assert r.status == 200, await r.text()
        placed = await r.json()
    call_id, sid = placed["call_id"], placed["provider_call_id"]
    assert outside.fake.calls[sid].status == "queued"

    # Twilio: the callee answers; fetch the call's TwiML, open its stream
    call = callee_answers(edge.base_url, session, sid, call_id, CALLEE)
    stream = await answered(call)
    assert stream.parameters["call_id"] == call_id
    await call.open_stream(stream)
    talking = asyncio.create_task(call.stream_until_quiet(until=lambda r: False, max_s=30))
    await wait_for(lambda: call.result.frames_received > 0, 5)

    # Twilio's completed callback lands while the edge waits for its REST hang-up's answer
    callbacks: list[int] = []

    async def completed_callback(fake_call: FakeCall) -> None:
        async with aiohttp.ClientSession() as twilio:
            fields = status_fields(fake_call.sid, "completed", "outbound-api")
            callbacks.append(
                await post_signed(twilio, edge, f"/twilio/status?call_id={call_id}", fields)
            )

    outside.fake.during_update = completed_callback
    try:
        async with session.post(f"{edge.base_url}/calls/{call_id}/hangup", headers=AUTH) as r:
            assert r.status == 200, await r.text()
        # and the same callback once more right after the API answered (Twilio may retry)
        fields = status_fields(sid, "completed", "outbound-api")
        assert await post_signed(session, edge, f"/twilio/status?call_id={call_id}", fields) == 204
        assert await call.wait_closed(5)
    finally:
        outside.fake.during_update = None
    await talking
    await call.finish()
    assert callbacks == [204]
    assert outside.fake.calls[sid].status == "completed"

    payload = await outside.exactly_one_webhook(call_id, settle=1.0)
    assert payload["call_status"] == "api-ended"  # not user-ended: the first cause wins
    assert payload["voip"]["direction"] == "outbound"
    assert "Hello." in assistant_said(payload)
    view = await get_call(session, edge, call_id)
    assert (view["state"], view["call_status"]) == ("ended", "api-ended")
    assert view["provider_status"] == "completed"
    edge.assert_healthy()


# -- d. a call whose stream never comes -----------------------------------------------------


async def test_a_call_whose_stream_never_connects_ends_error_once(
    edge: ServeProcess, outside: Outside, session: aiohttp.ClientSession
) -> None:
    call = serve_call(edge.base_url, session)
    stream = await answered(call)
    call_id = stream.parameters["call_id"]
    started = time.monotonic()
    payload = await outside.exactly_one_webhook(call_id, within=SETUP_TTL_S + 4, settle=1.0)
    assert time.monotonic() - started < SETUP_TTL_S + 3
    assert payload["call_status"] == "error"
    assert "media never arrived" in payload["error_message"]
    view = await get_call(session, edge, call_id)
    assert (view["state"], view["call_status"]) == ("ended", "error")
    assert "media never arrived" in view["error_message"]
    # a stream arriving after all is refused: the call is over
    await call.open_stream(stream)
    assert await call.wait_closed(5)
    assert (await call.finish()).close_code == 1008
    edge.assert_healthy()


async def test_caller_hanging_up_while_ringing_ends_the_call_at_once(
    edge: ServeProcess, outside: Outside, session: aiohttp.ClientSession
) -> None:
    call = serve_call(edge.base_url, session)
    call_id = (await answered(call)).parameters["call_id"]
    # an inbound number's status callback: the CallSid, no call_id in the URL
    fields = status_fields(call.call_sid, "completed")
    assert await post_signed(session, edge, "/twilio/status", fields) == 204
    view = await get_call(session, edge, call_id)
    assert (view["state"], view["call_status"]) == ("ended", "user-ended")
    assert view["provider_status"] == "completed"
    # one webhook, and none later from the setup reaper
    payload = await outside.exactly_one_webhook(call_id, within=2, settle=SETUP_TTL_S + 1)
    assert payload["call_status"] == "user-ended"
    assert payload["error_message"] is None
    # a CallSid the edge never saw changes nothing
    unknown = status_fields("CA" + "9" * 32, "completed")
    assert await post_signed(session, edge, "/twilio/status", unknown) == 204
    edge.assert_healthy()


# -- e. Twilio retries the voice webhook ----------------------------------------------------


async def test_a_retried_voice_webhook_streams_to_the_same_single_call(
    edge: ServeProcess, outside: Outside, session: aiohttp.ClientSession
) -> None:
    call = serve_call(edge.base_url, session)
    first = await answered(call)
    second = await answered(call)  # same CallSid: Twilio retried
    call_id = first.parameters["call_id"]
    assert second.parameters["call_id"] == call_id
    await call.open_stream(second)
    await call.stream_until_quiet(until=lambda r: r.frames_received > 0, max_s=5)
    assert call.result.frames_received > 0
    await call.stop()
    # one call: one end-of-call webhook for this CallSid, none from the reaper later
    payload = await outside.exactly_one_webhook(call_id, settle=SETUP_TTL_S + 0.5)
    assert payload["call_status"] == "user-ended"
    of_this_sid = [
        h for h in list(outside.received) if h.payload["voip"]["provider_call_id"] == call.call_sid
    ]
    assert len(of_this_sid) == 1
    edge.assert_healthy()


# -- f. an oversized message on an admitted stream ------------------------------------------


async def test_an_oversized_message_closes_the_stream_with_1009_cleanly(
    edge: ServeProcess, session: aiohttp.ClientSession
) -> None:
    huge = '{"event":"media","media":{"payload":"' + "A" * (1 << 20) + '"}}'
    for _ in range(10):
        call = serve_call(edge.base_url, session)
        await call.open_stream(await answered(call))
        await call.send_raw(huge)
        assert await call.wait_closed(5)
        assert (await call.finish()).close_code == 1009
        await asyncio.sleep(0.5)
        edge.assert_healthy()
        assert "InvalidTransition" not in edge.log


# -- 2. <Stream statusCallback> ---------------------------------------------------------------


async def test_stream_status_callback_error_ends_a_waiting_call(
    edge: ServeProcess, outside: Outside, session: aiohttp.ClientSession
) -> None:
    def errors_counted() -> float:
        return edge.metric(
            "telephony_edge_twilio_webhooks_total", kind="stream_status", outcome="stream-error"
        )

    before = errors_counted()
    call = serve_call(edge.base_url, session)
    twiml = await call.post_webhook()
    [element] = ElementTree.fromstring(twiml).iter("Stream")
    call_id = call.result.answer.stream.parameters["call_id"]  # type: ignore[union-attr]
    path = f"/twilio/stream-status?call_id={call_id}"
    assert element.get("statusCallback") == edge.base_url + path
    assert element.get("statusCallbackMethod") == "POST"

    # Twilio could not open the stream (well before the setup reaper's time is up)
    error = "Stream - WebSocket - Connection Refused"
    fields = {
        "AccountSid": ACCOUNT_SID,
        "CallSid": call.call_sid,
        "StreamSid": call.stream_sid,
        "StreamEvent": "stream-error",
        "StreamError": error,
        "Timestamp": "2026-01-01T00:00:00.000Z",
    }
    async with session.post(edge.base_url + path, data=fields) as resp:
        assert resp.status == 403  # unsigned
    assert await post_signed(session, edge, path, fields) == 204
    view = await get_call(session, edge, call_id)
    assert (view["state"], view["call_status"]) == ("ended", "error")
    assert error in view["error_message"]
    # the other events are counted and change nothing
    for event in ("stream-started", "stream-stopped", "stream-error"):
        assert await post_signed(session, edge, path, {**fields, "StreamEvent": event}) == 204
    payload = await outside.exactly_one_webhook(call_id, within=2, settle=SETUP_TTL_S + 0.5)
    assert payload["call_status"] == "error"
    assert error in payload["error_message"]
    assert errors_counted() == before + 2
    edge.assert_healthy()


async def test_stream_status_error_does_not_end_a_call_whose_stream_is_here(
    edge: ServeProcess, outside: Outside, session: aiohttp.ClientSession
) -> None:
    call, call_id, talking = await live_call(edge, outside, session)
    fields = {
        "AccountSid": ACCOUNT_SID,
        "CallSid": call.call_sid,
        "StreamSid": call.stream_sid,
        "StreamEvent": "stream-error",
        "StreamError": "late report",
    }
    path = f"/twilio/stream-status?call_id={call_id}"
    assert await post_signed(session, edge, path, fields) == 204
    await asyncio.sleep(0.2)
    assert not call.ws.closed  # type: ignore[union-attr]
    talking.cancel()
    await asyncio.gather(talking, return_exceptions=True)
    await call.stop()
    payload = await outside.exactly_one_webhook(call_id)
    assert payload["call_status"] == "user-ended"
    edge.assert_healthy()
