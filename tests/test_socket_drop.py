"""A carrier's media socket that drops while its worker lives is no end of the call (issue 24).

Per network, on one edge with real sockets (``tests/twilio/harness.py``,
``tests/vonage/harness.py``): the connection between the carrier's simulator and the
edge is cut (a TCP reset, no close frame) mid-call. The carrier goes on as it documents
(Twilio: the ``<Redirect>`` after ``<Connect><Stream>``; Vonage: the NCCO's ``notify``
after the websocket ``connect``), the edge (here: the same worker) takes the call on with
its conversation, and the call's one end-of-call webhook names one move, cause
``network``. A caller who hangs up as the socket drops gets no resumption: the carrier's
final status (Twilio's status callback, Vonage's event ``completed``) ends the call once.
What differs between the networks is in the small :class:`Carrier` adapters.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from telephony_edge.agent.demo import DemoCoreSettings
from telephony_edge.calls.record import CallStatus
from telephony_edge.services import Services
from telephony_edge.twilio.signature import SIGNATURE_HEADER, compute_signature
from tests.conftest import wait_for
from tests.twilio.harness import (  # noqa: F401 - the fixtures
    ACCOUNT_SID,
    AUTH_TOKEN,
    Crm,
    TwilioEdge,
    fixture_crm,
    fixture_fake_twilio,
    fixture_make_twilio_edge,
    fixture_session,
    fixture_twilio_edge,
)
from tests.vonage.harness import (  # noqa: F401 - the fixtures
    VonageEdge,
    fixture_make_vonage_edge,
    fixture_vonage_edge,
)

GREETING = "Hi"  # the harnesses' agent's first message


class Carrier:
    """One network's simulated call toward its edge (see the module docstring)."""

    services: Services
    crm: Crm

    async def answered(self, session: aiohttp.ClientSession) -> tuple[Any, str]:
        """A call whose agent has greeted; the simulated call and its call id."""
        raise NotImplementedError

    def caller(self, call: Any) -> asyncio.Task[None]:
        """The caller stays on the line (silence at real time) until cancelled."""
        raise NotImplementedError

    def gaps(self, call: Any) -> list[float]:
        """The caller's audio gap at each break the call came back from."""
        raise NotImplementedError

    def breaks(self, call: Any) -> int:
        """How many times the carrier went on after the call's socket."""
        raise NotImplementedError

    async def hang_up(self, call: Any) -> None:
        raise NotImplementedError

    async def completed(self, session: aiohttp.ClientSession, call: Any, call_id: str) -> None:
        """The carrier's word that the call is over (its final status to the edge)."""
        raise NotImplementedError


class Twilio(Carrier):
    def __init__(self, edge: TwilioEdge) -> None:
        self.edge, self.services, self.crm = edge, edge.services, edge.crm

    async def answered(self, session: aiohttp.ClientSession) -> tuple[Any, str]:
        call = self.edge.call(session)
        await call.post_webhook()
        answer = call.result.answer
        assert answer is not None and answer.stream is not None
        await call.open_stream(answer.stream)
        await call.wait_for_greeting()
        return call, answer.stream.parameters["call_id"]

    def caller(self, call: Any) -> asyncio.Task[None]:
        return asyncio.create_task(call.stream_audio([], silence_after_s=30))

    def gaps(self, call: Any) -> list[float]:
        return [r.gap_s for r in call.result.resumes if r.gap_s is not None]

    def breaks(self, call: Any) -> int:
        return len(call.result.resumes)

    async def hang_up(self, call: Any) -> None:
        await call.stop()  # Twilio's ``stop``

    async def completed(self, session: aiohttp.ClientSession, call: Any, call_id: str) -> None:
        url = f"{self.edge.base}/twilio/status?call_id={call_id}"
        fields = {"CallSid": call.call_sid, "CallStatus": "completed", "AccountSid": ACCOUNT_SID}
        signed = {SIGNATURE_HEADER: compute_signature(AUTH_TOKEN, url, fields)}
        async with session.post(url, data=fields, headers=signed) as resp:
            assert resp.status == 204


class Vonage(Carrier):
    def __init__(self, edge: VonageEdge) -> None:
        self.edge, self.services, self.crm = edge, edge.services, edge.crm

    async def answered(self, session: aiohttp.ClientSession) -> tuple[Any, str]:
        call = self.edge.call(session)
        await call.post_answer()
        answer = call.result.answer
        assert answer is not None and answer.websocket is not None
        await call.open_socket(answer.websocket)
        await call.wait_for_greeting()
        return call, answer.websocket.headers["call_id"]

    def caller(self, call: Any) -> asyncio.Task[None]:
        return asyncio.create_task(call.silence_until(lambda _: False, 30))

    def gaps(self, call: Any) -> list[float]:
        return list(call.result.gaps_s)

    def breaks(self, call: Any) -> int:
        return len(call.result.notified)

    async def hang_up(self, call: Any) -> None:
        await call.hang_up()  # the socket closes, then the event webhook's ``completed``

    async def completed(self, session: aiohttp.ClientSession, call: Any, call_id: str) -> None:
        assert await call.post_event("completed", duration="3") == 204


@pytest.fixture(name="carrier", params=["twilio", "vonage"])
def fixture_carrier(request: pytest.FixtureRequest) -> Carrier:
    if request.param == "twilio":
        return Twilio(request.getfixturevalue("twilio_edge"))
    return Vonage(request.getfixturevalue("vonage_edge"))


def chat(payload: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e["role"], e["content"]) for e in json.loads(str(payload["chat"]))]


async def test_a_socket_dropped_on_a_live_worker_is_resumed_not_ended(
    carrier: Carrier, session: aiohttp.ClientSession
) -> None:
    call, call_id = await carrier.answered(session)
    caller = carrier.caller(call)
    call.drop()

    await wait_for(lambda: bool(carrier.gaps(call)), 10)
    [gap] = carrier.gaps(call)
    assert 0 < gap < 2.0 and carrier.breaks(call) == 1
    assert not caller.done(), "the call went on"
    service = carrier.services.call_service
    record = await service.get(call_id)
    assert record is not None and record.call_status is None
    [move] = record.migrations
    assert move["cause"] == "network"
    assert move["from_worker"] == move["to_worker"] == service.worker_id

    caller.cancel()
    await carrier.hang_up(call)
    [payload] = await carrier.crm.wait(1)
    assert payload["call_status"] == "user-ended"
    assert chat(payload) == [
        ("assistant", GREETING),
        ("assistant", DemoCoreSettings().resumed_text),
    ]
    assert [m["cause"] for m in payload["migrations"]] == ["network"]
    await asyncio.sleep(0.5)
    assert len(carrier.crm.received) == 1


async def test_a_hang_up_as_the_socket_drops_ends_the_call_once(
    carrier: Carrier, session: aiohttp.ClientSession
) -> None:
    call, call_id = await carrier.answered(session)
    call.drop(hang_up=True)  # the carrier goes no further after the socket
    service = carrier.services.call_service
    await wait_for(lambda: service.manager.get(call_id) is None, 5)  # let go: no word of an end
    await carrier.completed(session, call, call_id)
    [payload] = await carrier.crm.wait(1, within=5)
    assert payload["call_status"] == "user-ended" and "migrations" not in payload
    assert chat(payload) == [("assistant", GREETING)]
    record = await service.get(call_id)
    assert record is not None and record.call_status is CallStatus.USER_ENDED
    assert carrier.breaks(call) == 0
    await asyncio.sleep(0.5)
    assert len(carrier.crm.received) == 1


async def test_a_caller_hang_up_ends_the_call_once_and_is_not_resumed(
    carrier: Carrier, session: aiohttp.ClientSession
) -> None:
    """The normal end: Twilio's ``stop``; Vonage closes the socket (which alone says
    nothing) and reports ``completed``."""
    call, call_id = await carrier.answered(session)
    await carrier.hang_up(call)
    [payload] = await carrier.crm.wait(1, within=5)
    assert payload["call_status"] == "user-ended" and "migrations" not in payload
    assert chat(payload) == [("assistant", GREETING)]
    record = await carrier.services.call_service.get(call_id)
    assert record is not None and record.call_status is CallStatus.USER_ENDED
    assert carrier.breaks(call) == 0
    await asyncio.sleep(0.5)
    assert len(carrier.crm.received) == 1
