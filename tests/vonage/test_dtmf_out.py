"""The agent's keys on Vonage: the Voice API's DTMF endpoint, against the strict stand-in.

A whole call: the simulated Vonage call reaches the edge, the test's agent
core sends ``send_dtmf``, and the stand-in (``fake_voice_api.py``) checks the
request as Vonage does: the application's JWT, ``PUT /v1/calls/{uuid}/dtmf``,
a body of ``digits`` alone, of ``0-9 * # p``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from telephony_edge.calls.dtmf import DtmfRequest
from telephony_edge.vonage.api import VoiceApi, VonageApiError
from tests.conftest import wait_for
from tests.dtmf_core import DtmfCore
from tests.vonage.fake_voice_api import FakeVoiceApi
from tests.vonage.harness import APPLICATION_ID, CALLER, LOCAL_NUMBER, private_key_pem


@pytest.fixture(name="keys")
def fixture_keys(tmp_path: Path) -> tuple[Path, bytes]:
    return private_key_pem(tmp_path)


@pytest.fixture(name="fake_api")
async def fixture_fake_api(keys: tuple[Path, bytes]) -> AsyncIterator[FakeVoiceApi]:
    fake = await FakeVoiceApi(APPLICATION_ID, keys[1]).start()
    yield fake
    await fake.close()


async def test_the_agents_keys_are_played_into_the_call_through_the_voice_api(
    make_vonage_edge: Any,
    fake_api: FakeVoiceApi,
    keys: tuple[Path, bytes],
    session: aiohttp.ClientSession,
) -> None:
    core = await DtmfCore([{"digits": "1w#", "duration_ms": 100}, {"digits": "A"}]).start()
    edge = await make_vonage_edge(
        vonage={
            "application_id": APPLICATION_ID,
            "private_key_path": str(keys[0]),
            "api_base_url": fake_api.url,
        },
        agent_core={"url": core.url},
    )
    call = edge.call(session)
    fake = fake_api.add_call(call.uuid, to=LOCAL_NUMBER, from_=CALLER)
    await call.post_answer()
    assert call.result.answer is not None and call.result.answer.websocket is not None
    await call.open_socket(call.result.answer.websocket)
    await call.stream_audio([], silence_after_s=1.0)
    await wait_for(lambda: fake.dtmf and core.errors, 5)
    assert fake.dtmf == ["1p#"]  # w is Vonage's p: the same half second
    [call_id] = core.calls
    assert core.errors[call_id] == [
        {
            "request": "send_dtmf",
            "message": "send_dtmf failed: Vonage plays the keys 0-9, * and # only (not A-D)",
        }
    ]
    await call.hang_up()
    assert fake_api.refused == []
    await core.server.close()


async def test_the_stand_in_refuses_what_vonage_refuses(
    fake_api: FakeVoiceApi, keys: tuple[Path, bytes]
) -> None:
    fake_api.add_call("call-1", to=LOCAL_NUMBER, from_=CALLER)
    api = VoiceApi(APPLICATION_ID, keys[0].read_bytes(), base_url=fake_api.url)
    try:
        await api.send_dtmf("call-1", DtmfRequest("9*"))
        assert fake_api.calls["call-1"].dtmf == ["9*"]
        with pytest.raises(VonageApiError, match="404"):
            await api.send_dtmf("no-such-call", DtmfRequest("1"))
        with pytest.raises(VonageApiError, match="400"):
            await api._request("PUT", "/v1/calls/call-1/dtmf", {"digits": "12w"})
        with pytest.raises(VonageApiError, match="400"):
            await api._request("PUT", "/v1/calls/call-1/dtmf", {"digits": "1", "loop": 2})
    finally:
        await api.close()
