"""Outbound calls, hang-up and transfer through the Voice API, against a strict stand-in."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from telephony_edge.calls.record import CallStatus
from telephony_edge.vonage.api import VoiceApi, VonageApiError
from telephony_edge.vonage.simulator import SimulatedVonageCall
from tests.conftest import wait_for
from tests.vonage.fake_voice_api import FakeVoiceApi
from tests.vonage.harness import (
    API_KEY,
    APPLICATION_ID,
    CALLER,
    LOCAL_NUMBER,
    SECRET,
    VonageEdge,
    private_key_pem,
)


@pytest.fixture(name="keys")
def fixture_keys(tmp_path: Path) -> tuple[Path, bytes]:
    return private_key_pem(tmp_path)


@pytest.fixture(name="fake_api")
async def fixture_fake_api(keys: tuple[Path, bytes]) -> AsyncIterator[FakeVoiceApi]:
    fake = await FakeVoiceApi(APPLICATION_ID, keys[1]).start()
    yield fake
    await fake.close()


@pytest.fixture(name="api_edge")
async def fixture_api_edge(
    make_vonage_edge: Any, fake_api: FakeVoiceApi, keys: tuple[Path, bytes]
) -> VonageEdge:
    edge: VonageEdge = await make_vonage_edge(
        vonage={
            "application_id": APPLICATION_ID,
            "private_key_path": str(keys[0]),
            "api_base_url": fake_api.url,
        }
    )
    return edge


@pytest.fixture(name="pems")
def fixture_pems(keys: tuple[Path, bytes], tmp_path: Path) -> tuple[bytes, bytes]:
    """The application's private key and another application's, as PEM."""
    (tmp_path / "other").mkdir()
    other, _ = private_key_pem(tmp_path / "other")
    return keys[0].read_bytes(), other.read_bytes()


async def test_the_stand_in_refuses_another_applications_key(
    fake_api: FakeVoiceApi, pems: tuple[bytes, bytes]
) -> None:
    api = VoiceApi(APPLICATION_ID, pems[1], base_url=fake_api.url)
    with pytest.raises(VonageApiError, match="401") as info:
        await api.hangup("any")
    assert info.value.status == 401
    await api.close()
    wrong_id = VoiceApi("another-app", pems[0], base_url=fake_api.url)
    with pytest.raises(VonageApiError, match="application_id"):
        await wrong_id.hangup("any")
    await wrong_id.close()


async def test_outbound_call_is_placed_answered_and_hung_up_through_the_api(
    api_edge: VonageEdge, fake_api: FakeVoiceApi, session: aiohttp.ClientSession
) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    body = {"agent_id": "echo", "from_phone": LOCAL_NUMBER, "to_phone": CALLER}
    async with session.post(
        api_edge.base + "/start_outbound_call", json=body, headers=headers
    ) as resp:
        assert resp.status in (200, 201), await resp.text()
        call_id = (await resp.json())["call_id"]
    [fake] = fake_api.calls.values()
    assert (fake.to, fake.from_) == (CALLER, LOCAL_NUMBER)
    assert fake.answer_url.endswith(f"/vonage/answer?call_id={call_id}")
    assert fake.event_url.endswith(f"/vonage/event?call_id={call_id}")
    # Vonage fetches the NCCO from the answer URL, then connects the socket
    answer_path = fake.answer_url.split(str(api_edge.port), 1)[1]
    call = SimulatedVonageCall(
        session,
        api_edge.base,
        to=CALLER,
        from_=LOCAL_NUMBER,
        signature_secret=SECRET,
        answer_path=answer_path,
        uuid=fake.uuid,
    )
    [action, _resume] = await call.post_answer()
    assert action["endpoint"][0]["headers"]["call_id"] == call_id
    assert action["from"] == LOCAL_NUMBER.removeprefix("+")
    assert call.result.answer is not None and call.result.answer.websocket is not None
    await call.open_socket(call.result.answer.websocket)
    await call.silence_until(lambda _: call.result.frames_received > 0, 3)
    async with session.post(api_edge.base + f"/calls/{call_id}/hangup", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
    assert await call.wait_closed(5)
    await call.finish()
    assert fake.updates == [{"action": "hangup"}] and fake.status == "completed"
    record = await api_edge.services.call_service.get(call_id)
    assert record is not None and record.call_status is CallStatus.API_ENDED
    assert fake_api.refused == []


async def test_a_refused_dial_is_a_provider_error_with_vonages_message(
    api_edge: VonageEdge, fake_api: FakeVoiceApi, session: aiohttp.ClientSession
) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    body = {"agent_id": "echo", "from_phone": LOCAL_NUMBER, "to_phone": "+15555550999"}
    async with session.post(
        api_edge.base + "/start_outbound_call", json=body, headers=headers
    ) as resp:
        text = await resp.text()
        assert resp.status in (400, 502), text
        assert "not reachable" in text


async def test_agent_transfer_replaces_the_ncco_with_a_connect(
    api_edge: VonageEdge, fake_api: FakeVoiceApi, session: aiohttp.ClientSession
) -> None:
    call = api_edge.call(session)
    fake = fake_api.add_call(call.uuid, to=LOCAL_NUMBER, from_=CALLER)
    await call.post_answer()
    assert call.result.answer is not None and call.result.answer.websocket is not None
    ws = call.result.answer.websocket
    await call.open_socket(ws)
    # DTMF 0: the demo core asks for a transfer to its default destination
    await call.stream_audio([], silence_after_s=0.3, dtmf=[(0.1, "0")])
    await wait_for(lambda: bool(fake.updates), 5)
    [update] = fake.updates
    assert update == {
        "action": "transfer",
        "destination": {
            "type": "ncco",
            "ncco": [
                {
                    "endpoint": [{"number": "15555550123", "type": "phone"}],
                    "from": LOCAL_NUMBER.removeprefix("+"),
                    "action": "connect",
                }
            ],
        },
    }
    await call.hang_up(event=False)  # Vonage moves the caller on and closes the socket
    record = await api_edge.services.call_service.get(ws.headers["call_id"])
    assert record is not None and record.transferred_to == "+15555550123"
    assert fake_api.refused == []
